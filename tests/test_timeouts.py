"""Every timeout is waited out in full and not much longer: each one set short here, and the time
it took measured on real sockets from both sides (never before it, within a second after it).
The upper bounds are generous (a second past the timeout, on a loaded machine), the lower ones
exact: a timeout cut short is the defect these catch."""

import socket
import time

import pytest

from fake_redis import Silence
from friendlyhello import http_client
from helpers import redis_env, refused_env, serving

SLACK = 1.0  # seconds after a timeout by which it must have taken effect


def closed_after(sock):
    """Seconds until the server closes ``sock`` (the first recv that returns nothing); what it
    received before that."""
    started = time.monotonic()
    received = b""
    sock.settimeout(10)
    while chunk := sock.recv(65536):
        received += chunk
    return time.monotonic() - started, received


@pytest.mark.slow  # waits out a whole timeout: for the quick loop's time
def test_a_kept_alive_connection_is_let_idle_the_whole_idle_timeout_after_an_answer():
    with serving(refused_env(IDLE_TIMEOUT="0.3")) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        took, received = closed_after(sock)
    assert received == b"" and 0.3 <= took < 0.3 + SLACK


@pytest.mark.slow  # waits out a whole timeout: for the quick loop's time
def test_a_kept_alive_connection_still_serves_just_before_its_idle_timeout():
    with serving(refused_env(IDLE_TIMEOUT="0.5")) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        for pause in (0.35, 0.35, 0):  # each answer starts the idle time anew
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            time.sleep(pause)  # the idle time itself: most of the timeout, twice over in all


@pytest.mark.slow  # waits out a whole timeout: for the quick loop's time
def test_a_proxy_header_that_never_finishes_is_waited_for_the_whole_idle_timeout():
    env = refused_env(TRUSTED_PROXIES="127.0.0.1", PROXY_PROTOCOL="v1", IDLE_TIMEOUT="0.3")
    with serving(env) as server, socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7")
        took, received = closed_after(sock)
    assert received == b"" and 0.3 <= took < 0.3 + SLACK


def test_a_page_waits_on_a_silent_redis_for_its_timeout_and_no_longer(fake_redis):
    fake_redis.script(Silence())
    with serving({**redis_env(fake_redis), "REDIS_TIMEOUT": "0.3"}) as server:
        started = time.monotonic()
        page = server.get("/")
        took = time.monotonic() - started
    assert page.text.endswith("counter disabled</i>") and 0.3 <= took < 0.3 + SLACK


def test_the_shutdown_delay_goes_on_serving_for_its_whole_length_then_the_port_closes():
    with serving(refused_env(SHUTDOWN_DELAY="0.3")) as server:
        started = time.monotonic()
        server.server.stop()
        during = server.get("/healthz")  # still served
        server.thread.join(0.3 + SLACK + 1)
        took = time.monotonic() - started
    assert during.status == 200 and 0.3 <= took < 0.3 + SLACK


@pytest.mark.slow  # waits out a whole timeout: for the quick loop's time
def test_the_drain_waits_for_a_request_in_flight_for_the_drain_timeout_and_no_longer(fake_redis):
    fake_redis.script(Silence())
    with serving({**redis_env(fake_redis), "REDIS_TIMEOUT": "20", "DRAIN_TIMEOUT": "0.3"}) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # waits on a Redis that never answers
        fake_redis.wait_for_commands(1)
        started = time.monotonic()
        server.server.stop()
        server.thread.join(0.3 + SLACK + 1)
        took = time.monotonic() - started
    assert 0.3 <= took < 0.3 + SLACK


def test_watch_s_client_gives_a_silent_server_its_whole_timeout_and_no_more():
    with socket.create_server(("127.0.0.1", 0)) as silent:
        conn = http_client.Connection("127.0.0.1", silent.getsockname()[1])
        started = time.monotonic()
        try:
            conn.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", started + 0.3)
        except TimeoutError:
            took = time.monotonic() - started
        conn.close()
    assert 0.3 <= took < 0.3 + SLACK


@pytest.mark.parametrize("head, expected", [(b"GET / HTTP/1.1\r\nHost: slow", b"HTTP/1.1 408"), (b"", b"")],
                         ids=["a slow head: 408", "idle: closed"])
def test_the_idle_timeout_is_waited_out_in_full_before_a_connection_is_let_go(head, expected):
    with serving({**refused_env(), "IDLE_TIMEOUT": "0.25"}) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(head)
        answer = sock.recv(100)
        took = time.monotonic() - started
    assert answer.startswith(expected) and (answer == b"") == (expected == b"")
    assert 0.25 <= took < 0.25 + 1.0
