"""Shutdown's second timer: with the port closed, the requests in flight are let finish within
DRAIN_TIMEOUT, and then the process exits at once."""

import socket
import threading
import time

import pytest

from fake_redis import Delay, Silence
from helpers import Process, readme, redis_env, serving, wait_until

README = readme()


@pytest.mark.slow  # waits out real timeouts and delays
def test_during_the_drain_the_port_is_closed_while_a_request_in_flight_finishes(fake_redis):
    fake_redis.script(Delay(0.5, b":1\r\n"))
    with serving({**redis_env(fake_redis), "DRAIN_TIMEOUT": "5"}) as server:
        replies = []
        in_flight = threading.Thread(target=lambda: replies.append(server.get("/")))
        in_flight.start()
        fake_redis.wait_for_commands(1)
        server.server.stop()

        def refused():
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
                return False
            except ConnectionRefusedError:
                return True
            except ConnectionResetError:  # queued as the port closed: try again
                return False

        wait_until(refused, within=0.3)
        still_in_flight = in_flight.is_alive()
        in_flight.join(5)
    assert still_in_flight  # the port closed before the request in flight was answered
    assert replies[0].status == 200 and replies[0].text.endswith("</b> 1")


@pytest.mark.slow  # a process, waiting out its drain
def test_the_drain_timeout_ends_a_request_that_never_finishes_and_the_process_exits_at_once(fake_redis):
    fake_redis.script(Silence())
    proc = Process({**redis_env(fake_redis), "PORT": "0", "BIND": "127.0.0.1", "REDIS_TIMEOUT": "5",
                    "DRAIN_TIMEOUT": "0.5"})
    proc.wait_listening()
    client = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    fake_redis.wait_for_commands(1)
    started = time.monotonic()
    proc.signal()
    code = proc.wait(5)
    took = time.monotonic() - started
    answer = client.recv(100)
    client.close()
    proc.finish()
    assert code == 0 and answer == b""  # closed unanswered: its wait outlasted the drain
    assert 0.5 <= took < 0.5 + 1.0  # the drain timer, not Redis's 5 s timeout
