"""/status/CODE and /delay/SECONDS: an answer of any status, or after a wait, for testing what
clients, proxies and probes make of them; always on, bounded, counting no visit, and a
delayed answer held by the loop, not by a thread."""

import socket
import threading
import time

import pytest

from helpers import raw_exchange, redis_env, refused_env, serving, wait_until

STATUS_LINES = {200: b"HTTP/1.1 200 OK\r\n", 299: b"HTTP/1.1 299 \r\n", 418: b"HTTP/1.1 418 I'm a Teapot\r\n",
                503: b"HTTP/1.1 503 Service Unavailable\r\n", 599: b"HTTP/1.1 599 \r\n"}


def test_status_answers_the_code_asked_for_and_counts_no_visit(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        answers = {code: [raw_exchange(server.port, b"%s /status/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                       % (method, code)) for method in (b"GET", b"HEAD")] for code in STATUS_LINES}
        empty = {code: raw_exchange(server.port, b"GET /status/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                    % code) for code in (204, 304)}
        scraped = server.get("/metrics").text
    for code, (answer, head) in answers.items():
        line = STATUS_LINES[code]
        assert answer.startswith(line) and answer.endswith(b"\r\n\r\n" + line[9:].strip() + b"\n"), code
        assert head.startswith(line) and head.endswith(b"\r\n\r\n"), code
        assert f'http_requests_total{{method="GET",route="/status/",code="{code}"}} 1' in scraped
    for code, answer in empty.items():  # no content: neither a body nor a length
        assert answer.startswith(b"HTTP/1.1 %d " % code) and answer.endswith(b"\r\n\r\n")
        assert b"Content-Length" not in answer
    assert fake_redis.visits == 0


BAD = ["/status/", "/status/199", "/status/600", "/status/2000", "/status/abc", "/status/20", "/delay/", "/delay/31",
       "/delay/-1", "/delay/nan", "/delay/1e1", "/delay/1.2345", "/delay/inf"]


def test_a_status_or_delay_out_of_bounds_is_a_400_that_says_what_is_allowed():
    with serving(refused_env()) as server:
        answers = {path: server.get(path) for path in BAD}
    for path, answer in answers.items():
        assert answer.status == 400, path
        assert answer.text == ("the status must be a whole number from 200 to 599: /status/503\n"
                               if path.startswith("/status/") else
                               "the delay must be a number of seconds from 0 to 30: /delay/1.5\n"), path


def test_others_paths_below_are_not_found():
    with serving(refused_env()) as server:
        assert [server.get(p).status for p in ("/status/200/x", "/statusx/200", "/delay/1/2")] == [404, 404, 404]


@pytest.mark.slow  # waits out real timeouts and delays
def test_a_delayed_answer_comes_after_its_delay_and_holds_no_thread_while_others_are_served(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        server.get("/")  # Redis is known to be up: its thread runs
        threads_before = threading.active_count()
        done = []

        def delayed():
            started = time.monotonic()
            answer = server.get("/delay/0.4")
            done.append((answer.status, answer.text, time.monotonic() - started))

        clients = [threading.Thread(target=delayed) for _ in range(20)]
        for client in clients:
            client.start()
        wait_until(lambda: len(server.server.responder._held_until) == 20, what="twenty answers held")
        held = threading.active_count() - threads_before - len(clients)
        started = time.monotonic()
        page = server.get("/")
        page_took = time.monotonic() - started
        for client in clients:
            client.join(5)
    assert held == 0  # twenty answers held, no thread of the server's for any of them
    assert page.status == 200 and page_took < 0.2  # the loop serves on meanwhile
    assert len(done) == 20 and all(status == 200 and text == "waited 0.4 s\n" for status, text, _ in done)
    assert all(0.4 <= took < 0.4 + 0.3 for _, _, took in done), sorted(took for _, _, took in done)
    assert fake_redis.visits == 2


def test_a_delay_of_nothing_answers_at_once():
    with serving(refused_env()) as server:
        started = time.monotonic()
        answer = server.get("/delay/0")
    assert (answer.status, answer.text) == (200, "waited 0 s\n") and time.monotonic() - started < 0.2


def test_a_request_pipelined_behind_a_delayed_one_is_answered_after_it_in_order():
    with serving(refused_env()) as server, socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /delay/0.2 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/201 HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: close\r\n\r\n")
        answers = b""
        while chunk := sock.recv(65536):
            answers += chunk
        took = time.monotonic() - started
    assert answers.startswith(b"HTTP/1.1 200 ") and answers.index(b"waited 0.2 s") < answers.index(b"HTTP/1.1 201 ")
    assert 0.2 <= took < 0.2 + 0.3
