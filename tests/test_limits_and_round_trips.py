"""How much at once: connections past MAX_CONNECTIONS wait in the backlog, the pages of one
turn go to Redis together, the pages that wait while Redis answers share the next round trip,
and a client that pipelines many requests keeps nobody else waiting."""

import io
import socket
import threading
import time

import pytest

import hello_server
from fake_redis import Delay
from friendlyhello import logs, settings
from helpers import (
    metric_sample,
    readme,
    redis_env,
    refused_env,
    serving,
    wait_until,
)

README = readme()


def test_connections_past_max_connections_wait_in_the_backlog_until_one_closes():
    with serving({**refused_env(), "MAX_CONNECTIONS": "2"}) as server:
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(2)]
        for sock in held:  # both accepted and served
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(1000).startswith(b"HTTP/1.1 200")
        third = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        third.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        third.settimeout(0.25)
        with pytest.raises(TimeoutError):
            third.recv(1000)  # in the backlog: not accepted while two are open
        held[0].close()
        third.settimeout(5)
        answer = third.recv(1000)
        third.close()
        held[1].close()
    assert answer.startswith(b"HTTP/1.1 200")


def test_pages_asked_for_in_one_turn_of_the_loop_go_to_redis_together(fake_redis):
    config = settings.load_config(["--port", "0", "--bind", "127.0.0.1"], redis_env(fake_redis))
    log = logs.Log(config.access_log, config.log_format, {}, io.StringIO(), io.StringIO())
    server = hello_server.wire(config, hello_server.open_ports(config, None), log, "h")
    handed_over, submit = [], server.redis_thread.submit
    server.redis_thread.submit = lambda requests: (handed_over.append(len(requests)), submit(requests))
    clients = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(5)]
    for client in clients:  # all five asked before the loop's first turn
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    loop = threading.Thread(target=server.serve)
    loop.start()
    try:
        pages = sorted(int(client.recv(65536).rsplit(b" ", 1)[1]) for client in clients)
    finally:
        server.stop()
        loop.join(5)
        for client in clients:
            client.close()
    assert pages == [1, 2, 3, 4, 5]
    assert handed_over == [5]  # one wake-up of the Redis thread for the turn's five
    assert fake_redis.visit_counts == [5]  # and one command, in one round trip


def test_pages_waiting_while_redis_answers_go_in_one_round_trip(fake_redis):
    fake_redis.script(Delay(0.25, b":1\r\n"))
    fake_redis.store[b"counter"] = b"1"  # as the scripted first visit left it
    pages = []
    with serving(redis_env(fake_redis)) as server:
        first = threading.Thread(target=lambda: pages.append(server.get("/").text))
        first.start()
        fake_redis.wait_for_commands(1)
        others = [threading.Thread(target=lambda: pages.append(server.get("/").text)) for _ in range(5)]
        for thread in others:  # in turns of the loop of their own: each added to what waits
            thread.start()
            time.sleep(0.02)
        for thread in [first, *others]:
            thread.join(5)
        scraped = server.get("/metrics").text
    assert metric_sample(scraped, "friendlyhello_redis_pipeline_size_count") == 2  # one trip, then one for five
    assert metric_sample(scraped, "friendlyhello_redis_pipeline_size_sum") == 6
    assert metric_sample(scraped, "friendlyhello_visits_total") == 6
    assert fake_redis.visit_counts == [1, 5]  # the five visits in one command, counting five
    assert sorted(int(page.rsplit(" ", 1)[1]) for page in pages) == [1, 2, 3, 4, 5, 6]  # each a number of its own


def test_a_client_pipelining_many_requests_cannot_keep_another_waiting_until_it_is_done():
    """Each turn of the loop serves a few of one connection's pipelined requests, then the
    others': the one request sent just after 400 pipelined ones is not answered last."""
    with serving(refused_env(ACCESS_LOG="all")) as server, \
            socket.create_connection(("127.0.0.1", server.port)) as greedy, \
            socket.create_connection(("127.0.0.1", server.port)) as other:
        greedy.sendall(b"".join(b"GET /healthz?greedy=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in range(400)))
        other.sendall(b"GET /healthz?other HTTP/1.1\r\nHost: x\r\n\r\n")
        assert other.recv(65536).startswith(b"HTTP/1.1 200")
        got = 0
        while got < 400 * 100:  # every greedy answer, read (at least 100 bytes each)
            got += len(greedy.recv(1 << 20))
        wait_until(lambda: len(server.log_lines()) >= 401)
    order = [line for line in server.log_lines() if "/healthz?" in line]
    place = next(n for n, line in enumerate(order) if "?other" in line)
    assert len(order) == 401 and place < 200, place
