"""HTTP/1.1 as RFC 9110 and 9112 say it: framing, Host, targets, line endings, closing,
content negotiation and prefetch. Written as a parser differential where it matters: a
request that hides a second one must never get the second one answered."""

import json
import re
import socket

import pytest

from helpers import raw_exchange, redis_env, refused_env, serving, without_id

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"




def statuses(answer):
    """The status codes of every response in a raw answer, in order."""
    return [int(status) for status in re.findall(rb"HTTP/1\.1 ([0-9]{3}) ", answer)]


def headers_of(answer):
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in head)}


# -- framing: one request, never two (RFC 9112 6.3) --------------------------------------------

@pytest.mark.parametrize("head, status", [
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nContent-Length: 40\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40, 40\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +40\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x28\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 40\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", 400),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \x0bchunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nX: a\r\n Transfer-Encoding: chunked\r\n\r\n", 400),  # folding
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400),
    (b"GET / HTTP/1.01\r\nHost: x\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n", 400),
], ids=lambda v: None if isinstance(v, bytes) else str(v))
def test_a_request_whose_framing_is_in_doubt_is_refused_and_nothing_after_it_is_parsed(fake_redis, head, status):
    with serving(redis_env(fake_redis)) as server:
        answer = raw_exchange(server.port, head + SMUGGLED)
        log = "\n".join(server.log_lines())
    assert statuses(answer) == [status], answer
    assert headers_of(answer)["connection"] == "close"
    assert "/smuggled" not in log and fake_redis.commands == []


@pytest.mark.parametrize("head", [
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED),
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(SMUGGLED),
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
], ids=["content-length", "chunked", "get-with-chunked"])
def test_a_request_with_a_body_is_answered_once_and_its_body_never_read_as_a_request(fake_redis, head):
    with serving(redis_env(fake_redis)) as server:
        answer = raw_exchange(server.port, head + SMUGGLED)
    assert len(statuses(answer)) == 1 and statuses(answer)[0] in (200, 405), answer
    assert headers_of(answer)["connection"] == "close"


# -- Connection, Host and the request target ----------------------------------------------------

@pytest.mark.parametrize("fields", [
    b"Connection: keep-alive, close\r\n",
    b"Connection: keep-alive\r\nConnection: close\r\n",
    b"Connection: TE, close\r\nTE: trailers\r\n",
    b"Connection: CLOSE\r\n",
])
def test_any_close_option_closes_the_connection_after_the_response(fake_redis, fields):
    with serving({**redis_env(fake_redis), "IDLE_TIMEOUT": "30"}) as server:
        answer = raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n" + SMUGGLED,
                              timeout=3)  # a connection kept open would time this out
    assert statuses(answer) == [200]
    assert headers_of(answer)["connection"] == "close"


@pytest.mark.parametrize("fields, status", [
    (b"", 400),
    (b"Host: a\r\nHost: b\r\n", 400),
    (b"Host: a b\r\n", 400),
    (b"Host: a/b\r\n", 400),
    (b"Host: [::1\r\n", 400),
    (b"Host: user@a\r\n", 400),
    (b"Host: example.com:80\r\n", 200),
    (b"Host: [::1]:4000\r\n", 200),
    (b"Host: 127.0.0.1\r\n", 200),
    (b"Host:\r\n", 200),
])
def test_http_1_1_needs_exactly_one_valid_host(fields, status):
    with serving(refused_env()) as server:
        answer = raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\n" + fields + b"Connection: close\r\n\r\n")
    assert statuses(answer) == [status]


def test_http_1_0_may_leave_host_out_and_keep_alive_when_it_asks(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        answer = raw_exchange(server.port, b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                                           b"GET /healthz HTTP/1.0\r\n\r\n")
    assert statuses(answer) == [200, 200]
    assert b"Connection: keep-alive" in answer and answer.count(b"Connection: close") == 1


@pytest.mark.parametrize("target, status, body", [
    (b"http://127.0.0.1:4000/", 200, b"Visits:</b> 1"),
    (b"HTTP://example.com/healthz", 200, b"ok\n"),
    (b"http://example.com", 200, b"Visits:</b> 1"),
    (b"http://example.com?x=1", 200, b"Visits:</b> 1"),
    (b"http://example.com:80?refresh=1", 200, b"Visits:</b> 1"),
    (b"http://example.com/nope?x=1", 404, b"404 not found\n"),
    (b"http://example.com/nope/x?y=/z", 404, b"404 not found\n"),
    (b"http://example.com/a://b", 404, b"404 not found\n"),
    (b"http://example.com/healthz://x", 404, b"404 not found\n"),  # the authority ends at the first /
    (b"http://example.com?x=1?y=2", 200, b"Visits:</b> 1"),  # ... or the first ?
    (b"ftp://example.com/", 400, b"400 Bad Request\n"),
    (b"http://user:pw@example.com/", 400, b"400 Bad Request\n"),
    (b"healthz", 400, b"400 Bad Request\n"),
    (b"*", 400, b"400 Bad Request\n"),
])
def test_absolute_form_targets_are_served_like_their_path(fake_redis, target, status, body):
    with serving(redis_env(fake_redis)) as server:
        answer = raw_exchange(server.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [status]
    assert answer.endswith(body)


# -- one rule for line endings; every response alike ---------------------------------------------

@pytest.mark.parametrize("raw", [
    b"\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"\r\n\r\nGET /healthz HTTP/1.1\nHost: x\n\nGET /healthz HTTP/1.1\nHost: x\nConnection: close\n\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\nGET /healthz HTTP/1.1\r\nHost: x\nConnection: close\r\n\r\n",
    b"GET /healthz HTTP/1.1\nHost: x\r\n\r\n\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\n\r\n",
], ids=["bare-lf-before", "bare-lf-everywhere", "crlf-then-lf", "mixed"])
def test_lf_and_crlf_end_lines_alike_everywhere(raw):
    with serving(refused_env()) as server:
        answer = raw_exchange(server.port, raw)
    assert statuses(answer) == [200, 200], answer


@pytest.mark.parametrize("raw, status", [
    (b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
    (b"DELETE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
    (b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nX: " + b"v" * 20000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\nHost: x", 408),
], ids=["404", "405", "501", "505", "400", "414", "431", "408"])
def test_every_response_errors_included_carries_the_common_headers(raw, status):
    with serving(refused_env(IDLE_TIMEOUT="0.1", VERSION="7", REPLICA_ID="r\u00e9")) as server:
        answer = raw_exchange(server.port, raw)
    headers = headers_of(answer)
    assert statuses(answer) == [status]
    assert (headers["friendlyhello-replica"], headers["friendlyhello-version"]) == ("r%C3%A9", "7")
    assert headers["server"].startswith("friendlyhello/") and headers["x-content-type-options"] == "nosniff"
    assert headers["date"].endswith(" GMT") and headers["cache-control"] == "no-store"
    assert int(headers["content-length"]) == len(answer.split(b"\r\n\r\n", 1)[1])


def test_after_an_error_the_server_reads_and_drops_what_the_client_still_sends():
    """An HTTP/2 client (curl --http2-prior-knowledge) keeps sending frames around the 505. A
    socket closed with bytes arriving answers them with a reset, which can destroy the answer
    before the client reads it; the server shuts its sending side and drains instead."""
    with serving(refused_env()) as server, socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        answer = b""
        while chunk := sock.recv(4096):  # the whole 505, then the server's end of sending
            answer += chunk
        for _ in range(2):  # to a closed socket, the first send draws a reset, the second fails
            sock.sendall(b"\x00" * 65536)
        assert sock.recv(10) == b""
    assert statuses(answer) == [505]


# -- what counts as a visit: content negotiation and prefetch ------------------------------------

@pytest.mark.parametrize("accept, json_wanted", [
    ("application/json", True),
    ("application/JSON", True),
    ("Application/Json; charset=utf-8", True),
    ("text/html;q=0, application/json", True),
    ("text/html;q=0.5, application/json;q=0.9", True),
    ("application/*", True),
    ("application/json-seq", False),
    ("application/json;q=0", False),
    ("text/html, application/json", False),
    ("*/*", False),
    ("", False),
    ("image/png", False),
    ("text/html,application/xhtml+xml,application/json;q=0.9,*/*;q=0.8", False),
    ("application/json;q=2", False),  # a q past 1 is malformed: the range is ignored
    ("image/webp;q=0.5, " * 40 + "application/json", True),  # longer than what is remembered
    ("text/html;q=1, application/json", False),  # no q is q=1: a tie, and ties go to HTML
    ("*/*;q=0.5, text/html;q=0", True),  # q=0 is "not this", and the exact range wins over */*
    ("text/html;q=x, application/json", True),  # a malformed q drops its range, not the rest
    ("application/json;q=0.5, text/*;q=0.9, text/html;q=0.1", True),  # the exact range beats text/*
    ("*/*;q=0.1, application/json;q=0.05", False),  # */* ranks HTML too
    ("*/*;q=0.9, text/*;q=0.2", True),  # text/* beats */* for HTML, in any order
])
def test_accept_is_parsed_with_q_values_wildcards_and_case(fake_redis, accept, json_wanted):
    with serving(redis_env(fake_redis)) as server:
        reply = server.get("/", headers={"Accept": accept})
    assert reply.headers["Content-Type"] == ("application/json" if json_wanted else "text/html; charset=utf-8")
    if json_wanted:
        assert json.loads(reply.body)["visits"] == 1


@pytest.mark.parametrize("field", ["Sec-Purpose: prefetch", "Sec-Purpose: prefetch;prerender", "Purpose: prefetch",
                                   "X-Purpose: preview", "X-Moz: prefetch",
                                   "Sec-Purpose: Prefetch, anonymous-client-ip"])
def test_a_prefetch_is_declined_without_counting_and_the_real_view_counts_once(fake_redis, field):
    name, value = field.split(": ")
    with serving(redis_env(fake_redis)) as server:
        prefetch = server.get("/", headers={name: value})
        view = server.get("/")
        probe = server.get("/healthz", headers={name: value})
    assert prefetch.status == 503 and prefetch.headers["Cache-Control"] == "no-store"
    assert view.status == 200 and view.body.endswith(b"Visits:</b> 1")
    assert probe.status == 200  # only a page that counts declines a prefetch
    assert fake_redis.visits == len(fake_redis.commands) == 1


# -- a form is a POST like any other; the number of header fields -------------------------------

@pytest.mark.parametrize("content_type", [b"multipart/form-data; boundary=x", b"multipart/mixed",
                                          b"application/x-www-form-urlencoded", b"message/rfc822"])
def test_a_form_post_without_a_body_is_405_like_any_post(fake_redis, content_type):
    with serving(redis_env(fake_redis)) as server:
        answer = raw_exchange(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: " + content_type +
                              b"\r\nConnection: close\r\n\r\n")
    assert statuses(answer) == [405] and fake_redis.visits == 0


@pytest.mark.parametrize("fields, status", [(98, 200), (99, 200), (100, 431), (101, 431)])
def test_a_head_of_100_header_fields_or_more_is_431(fields, status):
    others = b"".join(b"X-%d: v\r\n" % i for i in range(fields - 2))
    with serving(refused_env()) as server:
        answer = raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + others +
                              b"Connection: close\r\n\r\n")
    assert statuses(answer) == [status]


@pytest.mark.parametrize("head, status", [
    (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 405),  # the one place * is a target; no method here takes it
    (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /replicas?refresh=abc?refresh=5 HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # the query runs from the first ?
])
def test_a_target_is_read_as_rfc_9112_and_3986_say(head, status):
    with serving(refused_env()) as server:
        answer = raw_exchange(server.port, head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert statuses(answer) == [status]


def test_pages_and_the_replica_view_vary_by_accept_and_answer_200(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        answers = [server.get(path, headers=headers) for path in ("/", "/replicas")
                   for headers in ({}, {"Accept": "application/json"})]
        scraped = server.get("/metrics")
    assert [(a.status, a.headers["Vary"]) for a in answers] == [(200, "Accept")] * 4
    assert scraped.status == 200


def test_a_head_past_the_limits_is_logged_counted_and_closed():
    with serving(refused_env()) as server:
        answer = raw_exchange(server.port, b"GET / HTTP/1.1\r\nX: " + b"v" * 20000 + b"\r\n\r\n")
        log = server.log_lines()
        scraped = server.get("/metrics").text
    assert answer.startswith(b"HTTP/1.1 431 ") and b"\r\nConnection: close\r\n" in answer
    assert [without_id(line) for line in log] == ['127.0.0.1 "- -" 431 0.0ms']
    assert 'http_requests_total{method="other",route="other",code="431"} 1' in scraped
    assert 'http_request_duration_seconds_bucket{method="other",route="other",le="0.005"} 1' in scraped
