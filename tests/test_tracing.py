"""Following one request: its id (X-Request-Id), kept when it came with a good one and made
here otherwise, on every answer and in the log; its W3C traceparent read strictly, the trace and
this server's span logged, and /echo saying what came. Then through real nginx ($request_id)
and HAProxy (unique-id-format): the proxy's id is the one the server answers and logs."""

import json
import re
import socket

import pytest

from helpers import free_port, refused_env, serving
from test_proxies import end_proxy, exchange, run_proxy

MADE_HERE = r"[0-9a-f]{12}-[0-9a-f]+"
TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def ask(port, path="/echo", *fields, method="GET", body=b""):
    """One request with these extra header fields (bytes); the answer's head and body."""
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n".encode()
    answer = exchange(port, head + b"".join(f + b"\r\n" for f in fields) + b"Connection: close\r\n\r\n" + body)
    head, _, rest = answer.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def answered_id(head):
    found = re.findall(r"^X-Request-Id: ([^\r\n]*)", head, re.M | re.I)  # HAProxy writes it lowercase
    assert len(found) == 1, head
    return found[0]


@pytest.mark.parametrize("given", ["a", "x" * 64, "nginx-7f3a:9/~!", "7F000001:8296_7F00001E:1F90_4F7B0A69_0003:790A"])
def test_a_request_id_of_1_to_64_visible_ascii_characters_is_kept_answered_and_logged(given):
    with serving(refused_env()) as server:
        head, body = ask(server.port, "/echo", b"X-Request-Id: " + given.encode())
        log = server.log_lines()
    assert answered_id(head) == given and json.loads(body)["request_id"] == given
    assert log[-1].endswith(f" id={given}")


@pytest.mark.parametrize("fields", [
    [b"X-Request-Id: " + b"x" * 65], [b"X-Request-Id: has space"], [b"X-Request-Id: caf\xc3\xa9"],
    [b"X-Request-Id:"], [b"X-Request-Id: a", b"X-Request-Id: b"], [],
], ids=["65 characters", "a space", "not ascii", "empty", "two", "none"])
def test_any_other_request_id_is_replaced_by_one_made_here_and_no_two_are_alike(fields):
    with serving(refused_env(LOG_FORMAT="json")) as server:
        heads = [ask(server.port, "/", *fields)[0] for _ in range(3)]
        log = [json.loads(line) for line in server.log_lines()]
    ids = [answered_id(head) for head in heads]
    assert all(re.fullmatch(MADE_HERE, i) for i in ids) and len(set(ids)) == 3
    assert [line["request_id"] for line in log] == ids


def head_of(port, data):
    """The head of the first answer to ``data`` (the connection may stay open: a WebSocket)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        seen = b""
        while b"\r\n\r\n" not in seen and (chunk := sock.recv(65536)):
            seen += chunk
    return seen.partition(b"\r\n\r\n")[0].decode("latin-1")


def test_every_answer_carries_its_id_refusals_upgrades_streams_and_errors_too():
    upgrade = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    with serving(refused_env(MAX_BODY="10")) as server:
        answers = {
            "404": head_of(server.port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"),
            "405": head_of(server.port, b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            "413": head_of(server.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n"),
            "206": head_of(server.port, b"GET /bytes/100 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n"),
            "101": head_of(server.port, upgrade),
            "400": head_of(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n"),
            "414": head_of(server.port, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"),
        }
    for status, head in answers.items():
        assert head.split(" ", 2)[1] == status, head[:100]
        assert re.fullmatch(MADE_HERE, answered_id(head))


def test_a_valid_traceparent_gives_this_server_a_span_of_its_own_in_the_log_and_in_echo():
    traceparent = f"00-{TRACE}-{PARENT}-01".encode()
    with serving(refused_env(LOG_FORMAT="json")) as server:
        _, body = ask(server.port, "/echo", b"traceparent: " + traceparent, b"tracestate: congo=t61rcWkgMzE",
                      b"tracestate: rojo=00f067aa0ba902b7")
        line = json.loads(server.log_lines()[-1])
    trace = json.loads(body)["trace"]
    assert trace == {"traceparent": traceparent.decode(), "valid": True, "trace_id": TRACE, "parent_id": PARENT,
                     "flags": "01", "span_id": trace["span_id"],
                     "tracestate": "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"}
    assert re.fullmatch(r"[0-9a-f]{16}", trace["span_id"]) and trace["span_id"] != PARENT
    assert (line["trace_id"], line["span_id"]) == (TRACE, trace["span_id"])


def test_the_text_log_says_the_id_and_the_trace_at_the_line_s_end():
    with serving(refused_env()) as server:
        ask(server.port, "/echo", b"X-Request-Id: r-1", f"traceparent: 00-{TRACE}-{PARENT}-00".encode())
        line = server.log_lines()[-1]
    assert re.fullmatch(rf'127\.0\.0\.1 "GET /echo" 200 [0-9.]+ms id=r-1 trace={TRACE} span=[0-9a-f]{{16}}', line)


INVALID = {"uppercase": f"00-{TRACE.upper()}-{PARENT}-01", "version 01": f"01-{TRACE}-{PARENT}-01",
           "version ff": f"ff-{TRACE}-{PARENT}-01", "zero trace": f"00-{'0' * 32}-{PARENT}-01",
           "zero parent": f"00-{TRACE}-{'0' * 16}-01", "short": f"00-{TRACE[:-1]}-{PARENT}-01",
           "more": f"00-{TRACE}-{PARENT}-01-extra", "one flag digit": f"00-{TRACE}-{PARENT}-1",
           "underscores": f"00_{TRACE}_{PARENT}_01", "markup": "<script>"}


def test_an_invalid_traceparent_is_left_out_of_the_log_and_shown_flagged_in_echo():
    with serving(refused_env(LOG_FORMAT="json")) as server:
        shown = {kind: json.loads(ask(server.port, "/echo", b"traceparent: " + value.encode())[1])["trace"]
                 for kind, value in INVALID.items()}
        lines = [json.loads(line) for line in server.log_lines()]
    assert shown == {kind: {"traceparent": v, "valid": False, "tracestate": None} for kind, v in INVALID.items()}
    assert len(lines) == len(INVALID) and not any("trace_id" in line or "span_id" in line for line in lines)


def test_two_traceparents_are_invalid_and_an_odd_byte_in_one_is_shown_escaped():
    with serving(refused_env()) as server:
        _, two = ask(server.port, "/echo", f"traceparent: 00-{TRACE}-{PARENT}-01".encode(),
                     f"traceparent: 00-{TRACE}-{PARENT}-01".encode())
        odd = exchange(server.port, b"GET /echo HTTP/1.1\r\nHost: x\r\ntraceparent: 00-\xe2\x80\xae\r\n"
                                    b"Connection: close\r\n\r\n").partition(b"\r\n\r\n")[2].decode()
    assert json.loads(two)["trace"]["valid"] is False
    assert "\ntrace: invalid traceparent 00-\\u202e (ignored)\n" in odd and "\u202e" not in odd


def proxied(kind, tmp_path):
    """Pages through a real nginx or HAProxy that gives each request an id of its own: the id
    the server answered with, the one it logged, and (nginx) the one nginx logged."""
    plain, listen = free_port(), free_port()
    template = "nginx-ids.conf" if kind == "nginx" else "haproxy-ids.cfg"
    with serving({**refused_env(), "PORT": str(plain)}) as server:
        proxy = run_proxy(kind, template, tmp_path, [listen], http_port=listen, plain_port=server.port)
        try:
            heads = [ask(listen, "/", b"X-Request-Id: client-made")[0] for _ in range(2)]
        finally:
            end_proxy(proxy)
        logged = [line.rsplit(" id=", 1)[1] for line in server.log_lines()]
    return [answered_id(head) for head in heads], logged


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_behind_nginx_and_haproxy_the_id_the_proxy_made_is_the_one_answered_and_logged(kind, tmp_path):
    answered, logged = proxied(kind, tmp_path)
    assert answered == logged and len(set(answered)) == 2 and "client-made" not in answered
    if kind == "nginx":  # $request_id: 32 hex digits, in nginx's own log too
        assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in answered)
        assert (tmp_path / "access.log").read_text().split() == [answered[0], "200", answered[1], "200"]
    else:  # unique-id-format's: the client's and the frontend's address and port, in hex
        pattern = r"7F000001:[0-9A-F]+_7F000001:[0-9A-F]+_[0-9A-F]+_[0-9A-F]+:[0-9A-F]+"
        assert all(re.fullmatch(pattern, i) for i in answered), answered
