"""The admin port: faults turned on and off at run time by whoever holds the token, each change
taking effect at once on the main port, logged, and visible; the hang; the crash."""

import contextlib
import http.client
import io
import json
import re
import select
import socket
import time

import pytest

import hello_server
from fake_redis import Delay
from friendlyhello import admin, listening, logs, settings
from friendlyhello import server as server_module
from helpers import (
    Process,
    children,
    flagged,
    process_alive,
    redis_env,
    refused_env,
    replica_view,
    request,
    serving,
    wait_until,
)

TOKEN = "test-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def with_admin(env):
    """A server in this process with its admin port, as main wires one; crashes are recorded."""
    with serving(env) as server:
        config = settings.load_config(["--port", "0", "--bind", "127.0.0.1", "--admin-port", "0",
                                       "--admin-token", TOKEN], {})
        crashes = []
        port = hello_server.open_admin(config, listening.listen(config, "ADMIN_PORT"), server.server.faults,
                                       server.server.log, server.server.waker.wake, crashes.append)
        server.admin, server.crashes, server.admin_port = port.port, crashes, port
        try:
            yield server
        finally:
            port.close()


def ask(server, method, path, headers=BEARER, body=None):
    """An admin request: (status, the JSON answer, the headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.admin, timeout=5)
    try:
        conn.request(method, path, body=body, headers={**headers, **(
            {"Content-Type": "application/x-www-form-urlencoded"} if body else {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response.headers
    finally:
        conn.close()


def test_without_the_token_nothing_is_said_and_nothing_changes():
    with with_admin(refused_env()) as server:
        answers = [ask(server, "POST", "/faults/live?state=fail", headers) for headers in (
            {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": TOKEN})]
        missing = ask(server, "GET", "/nothing-here", {})
        live = server.get("/healthz").status
        said = server.error_lines()
    assert {status for status, _, _ in answers} == {401} and missing[0] == 401  # not even whether a path exists
    assert answers[0][1] == {"error": "an Authorization: Bearer header with the admin token is needed"}
    assert answers[0][2]["WWW-Authenticate"] == 'Bearer realm="friendlyhello admin"'
    assert answers[0][2]["Server"] == "friendlyhello-admin"  # no Python version, as on the main port
    assert live == 200
    assert said.count("friendlyhello: admin: refused 127.0.0.1: no valid Authorization: Bearer token") == 6
    assert not any(TOKEN in line for line in said)


def test_each_change_takes_effect_at_once_and_is_logged_and_shown(fake_redis):
    with with_admin(redis_env(fake_redis)) as server:
        start = ask(server, "GET", "/faults")
        ready = ask(server, "POST", "/faults/ready?state=fail")
        readyz = server.get("/readyz")
        live = ask(server, "POST", "/faults/live", body="state=fail")  # a form body does too
        healthz = server.get("/healthz")
        errors = ask(server, "POST", "/faults/errors?rate=1&status=503")
        page = server.get("/")
        ask(server, "POST", "/faults/errors?rate=0")
        shown = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        scraped = server.get("/metrics").text
        cleared = ask(server, "POST", "/faults/clear")
        after = [server.get(path).status for path in ("/readyz", "/healthz", "/")]
        said = server.error_lines()
    assert start == (200, {"errors": {"rate": 0.0, "status": 500}, "latency": {"seconds": [0.0, 0.0]},
                           "ready": "ok", "live": "ok", "hang": "off"}, start[2])
    assert [a[0] for a in (ready, live, errors, cleared)] == [200] * 4
    assert ready[1]["ready"] == "fail" and (readyz.status, readyz.text) == (503, "not ready: the ready fault is on\n")
    assert live[1]["live"] == "fail" and (healthz.status, healthz.text) == (503, "not live: the live fault is on\n")
    assert errors[1]["errors"] == {"rate": 1.0, "status": 503} and page.status == 503
    assert page.headers["Friendlyhello-Fault"] == "errors"
    assert shown["faults"] == {"ready": "fail", "live": "fail"} and shown["visits"] == 1
    assert 'friendlyhello_fault{kind="live"} 1' in scraped and 'friendlyhello_fault{kind="ready"} 1' in scraped
    assert cleared[1] == {**start[1], "errors": {"rate": 0.0, "status": 503}} and after == [200, 200, 200]
    assert [line for line in said if "admin port" in line] == [
        "friendlyhello: faults: readiness fails (set on the admin port by 127.0.0.1)",
        "friendlyhello: faults: readiness fails, liveness fails (set on the admin port by 127.0.0.1)",
        "friendlyhello: faults: errors 100% (503), readiness fails, liveness fails "
        "(set on the admin port by 127.0.0.1)",
        "friendlyhello: faults: readiness fails, liveness fails (set on the admin port by 127.0.0.1)",
        "friendlyhello: faults: none on (set on the admin port by 127.0.0.1)"]
    assert fake_redis.visits == 2  # the failed page counted nothing


REFUSED = [  # method, path, body, status, the error's start
    ("POST", "/faults/ready?state=maybe", None, 400, "state must be fail or ok"),
    ("POST", "/faults/hang?state=fail", None, 400, "state must be on or off"),
    ("POST", "/faults/live", None, 400, "state must be fail or ok"),
    ("POST", "/faults/errors?rate=2", None, 400, "rate: a rate from 0 to 1, such as 0.1 for one page in ten"),
    ("POST", "/faults/errors", None, 400, "rate: a rate from 0 to 1"),
    ("POST", "/faults/errors?rate=0.1&status=", None, 400, "status must be a whole number from 400 to 599"),
    ("POST", "/faults/errors?rate=0.1&status=399", None, 400, "status must be a whole number from 400 to 599"),
    ("POST", "/faults/errors?rate=0.1&status=600", None, 400, "status must be a whole number from 400 to 599"),
    ("POST", "/faults/latency", None, 400, "seconds: seconds from 0 to 30"),
    ("POST", "/faults/errors?rate=0.1&status=200", None, 400, "status must be a whole number from 400 to 599"),
    ("POST", "/faults/errors?rate=0.1&status=%D9%A5%D9%A0%D9%A0", None, 400, "status must be a whole number"),
    ("POST", "/faults/latency?seconds=31", None, 400, "seconds: seconds from 0 to 30, or a range such as 0.1-0.5"),
    ("POST", "/faults/latency?seconds=0.5-0.1", None, 400, "seconds: seconds from 0 to 30"),
    ("POST", "/faults/crash?code=256", None, 400, "code must be a whole number from 0 to 255"),
    ("POST", "/faults/crash?code=-1", None, 400, "code must be a whole number from 0 to 255"),
    ("GET", "/faults/ready?state=fail", None, 405, "/faults/ready takes POST"),
    ("POST", "/faults", None, 405, "/faults takes GET"),
    ("POST", "/faults/everything", None, 404, "no such path; try GET /faults, or POST one of /faults/clear, "
     "/faults/errors, /faults/hang, /faults/latency, /faults/live, /faults/ready, /faults/crash"),
    ("POST", "/faults/ready", "state=" + "x" * 5000, 413, "a body of at most 4096 bytes"),
    ("OPTIONS", "/faults", None, 405, "/faults takes GET"),
    ("DELETE", "/faults/clear", None, 405, "/faults/clear takes POST"),
]


def test_a_request_it_cannot_take_gets_a_4xx_saying_what_is_allowed_and_changes_nothing():
    with with_admin(refused_env()) as server:
        answered = [ask(server, method, path, body=body) for method, path, body, _, _ in REFUSED]
        now = ask(server, "GET", "/faults")[1]
    for (method, path, _, status, error), (got, body, headers) in zip(REFUSED, answered, strict=True):
        assert got == status and body["error"].startswith(error), (method, path, got, body)
        assert headers.get("Allow") == (admin._PATHS[path.split("?")[0]] if status == 405 else None)
    assert now == {"errors": {"rate": 0.0, "status": 500}, "latency": {"seconds": [0.0, 0.0]}, "ready": "ok",
                   "live": "ok", "hang": "off"}
    assert server.crashes == []


def raw_bytes(port, data):
    """Bytes to the admin port; everything it answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def raw(port, data):
    """Bytes to the admin port; its answer's status line and JSON body."""
    head, _, body = raw_bytes(port, data).partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), json.loads(body)


def test_what_http_server_refuses_itself_and_bodies_it_cannot_take_are_answered_as_json():
    with with_admin(refused_env()) as server:
        bearer = f"Authorization: Bearer {TOKEN}\r\n".encode()
        chunked = raw(server.admin, b"POST /faults/clear HTTP/1.1\r\n" + bearer + b"Transfer-Encoding: chunked\r\n\r\n")
        length = raw(server.admin, b"POST /faults/clear HTTP/1.1\r\n" + bearer + b"Content-Length: ten\r\n\r\n")
        too_long = raw(server.admin, b"GET /" + b"x" * 70000 + b" HTTP/1.1\r\n\r\n")
        full = ask(server, "POST", "/faults/ready", body="state=fail&pad=" + "x" * (admin.MAX_BODY - 15))
        with socket.create_connection(("127.0.0.1", server.admin), timeout=5) as sock:
            sock.sendall(b"HEAD /faults HTTP/1.1\r\n" + bearer + b"\r\n")
            head = b""
            while chunk := sock.recv(65536):
                head += chunk
    assert chunked == ("HTTP/1.1 400 Bad Request",
                       {"error": "send parameters in the query, or a body with a Content-Length"})
    assert length == ("HTTP/1.1 400 Bad Request", {"error": "Content-Length must be a whole number"})
    assert too_long == ("HTTP/1.1 414 Request-URI Too Long", {"error": "Request-URI Too Long"})
    assert full[0] == 200 and full[1]["ready"] == "fail"  # a body of exactly MAX_BODY bytes is taken
    assert head.startswith(b"HTTP/1.1 405 ") and head.endswith(b"\r\n\r\n")  # a head, and no body after it


def test_every_answer_is_json_never_cached_and_closes_and_a_head_gets_no_body():
    with with_admin(refused_env()) as server:
        answers = [ask(server, "GET", "/faults"), ask(server, "POST", "/faults/hang?state=off"),
                   ask(server, "GET", "/faults", {})]
        conn = http.client.HTTPConnection("127.0.0.1", server.admin, timeout=5)
        conn.request("HEAD", "/faults", headers=BEARER)
        head = conn.getresponse()
        head_body = head.read()
        conn.close()
    assert [status for status, _, _ in answers] == [200, 200, 401]
    for _, body, headers in answers:
        assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
        assert headers["Connection"] == "close" and int(headers["Content-Length"]) == len(json.dumps(body)) + 1
    assert head.status == 405 and head.headers["Allow"] == "GET" and head_body == b""


def test_the_token_goes_in_a_bearer_header_of_any_case_with_any_spaces_and_bounds_are_taken():
    with with_admin(refused_env()) as server:
        taken = [ask(server, "POST", "/faults/errors?rate=0.5&status=400", {"Authorization": f"bearer {TOKEN}"}),
                 ask(server, "POST", "/faults/errors?rate=0.5&status=599", {"Authorization": f"BEARER   {TOKEN}"}),
                 ask(server, "POST", "/faults/crash?code=255"), ask(server, "POST", "/faults/crash?code=0"),
                 ask(server, "POST", "/faults/latency?seconds=0-0.001")]
    assert [status for status, _, _ in taken] == [200] * 5
    assert taken[4][1]["latency"] == {"seconds": [0.0, 0.001]}
    assert taken[0][1]["errors"] == {"rate": 0.5, "status": 400} and taken[1][1]["errors"]["status"] == 599
    assert server.crashes == [255, 0]


def test_a_change_is_a_warning_while_a_fault_is_on_and_news_when_none_is():
    with with_admin(refused_env(LOG_FORMAT="json")) as server:
        ask(server, "POST", "/faults/ready?state=fail")
        ask(server, "POST", "/faults/ready?state=fail")  # no change: no line
        ask(server, "POST", "/faults/ready?state=ok")
        lines = [json.loads(line) for line in server.error_lines()]
    changes = [(line["level"], line["message"]) for line in lines if line["where"] == "faults"]
    assert changes == [("warning", "readiness fails (set on the admin port by 127.0.0.1)"),
                       ("info", "none on (set on the admin port by 127.0.0.1)")]


@pytest.mark.slow  # waits out a timeout
def test_a_client_that_dribbles_its_request_is_cut_off_at_the_timeout_and_delays_nobody(monkeypatch):
    monkeypatch.setattr(admin, "ADMIN_TIMEOUT", 0.4)  # the whole request's time
    with with_admin(refused_env()) as server:
        slow = socket.create_connection(("127.0.0.1", server.admin), timeout=5)
        started = time.monotonic()
        answered = None
        for byte in b"GET /faults HTTP/1.1\r\n" * 4:
            try:
                slow.send(bytes([byte]))
            except OSError:
                break
            if answered is None:
                answered = (ask(server, "GET", "/faults")[0], time.monotonic() - started)
            if _readable(slow):  # closed by the server: an EOF is waiting
                break
            time.sleep(0.02)
        cut = time.monotonic() - started
        slow.close()
    assert answered[0] == 200 and answered[1] < 0.3  # while the slow one still sends
    assert 0.35 < cut < 1.0  # not before its time, and not long after


def _readable(sock):
    return bool(select.select([sock], [], [], 0)[0])


@pytest.mark.slow  # waits out a timeout
def test_clients_that_send_nothing_delay_no_request_and_are_closed_at_the_timeout_not_before(monkeypatch):
    monkeypatch.setattr(admin, "ADMIN_TIMEOUT", 0.5)
    with with_admin(refused_env()) as server:
        idle = [socket.create_connection(("127.0.0.1", server.admin), timeout=5) for _ in range(10)]
        started = time.monotonic()
        answered = ask(server, "GET", "/faults")
        took = time.monotonic() - started
        early = [_readable(sock) for sock in idle]  # an EOF would make it readable
        for sock in idle:
            sock.settimeout(2)
            assert sock.recv(1) == b""  # closed, unanswered
        closed = time.monotonic() - started
        for sock in idle:
            sock.close()
    assert answered[0] == 200 and took < 0.3 and not any(early)
    assert 0.4 < closed < 1.0


def test_a_flood_of_connections_closes_the_oldest_and_the_admin_port_still_answers():
    with with_admin(refused_env()) as server:
        flood = [socket.create_connection(("127.0.0.1", server.admin), timeout=5) for _ in range(3 * admin.MAX_OPEN)]
        started = time.monotonic()
        answered = ask(server, "GET", "/faults")
        took = time.monotonic() - started
        first = flood[0]
        first.settimeout(2)
        oldest_closed = first.recv(1) == b""
        for sock in flood:
            sock.close()
    assert answered[0] == 200 and took < 1 and oldest_closed


BEFORE_THE_TOKEN = [  # requests without the token that earlier said more than 401
    b"POST /faults/clear HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /faults/clear HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
    b"POST /faults/clear HTTP/1.1\r\nContent-Length: 999999\r\n\r\n",
    b"POST /faults/ready HTTP/1.1\r\nContent-Length: 100\r\n\r\nstate=fail",  # its body never comes whole
    b"OPTIONS /faults HTTP/1.1\r\n\r\n", b"BREW /faults HTTP/1.1\r\n\r\n", b"GET /nothing HTTP/1.0\r\n\r\n",
    b"POST /faults/crash HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode() + b"x\r\n\r\n",
]


@pytest.mark.parametrize("data", BEFORE_THE_TOKEN)
def test_without_the_token_nothing_of_the_request_is_read_or_answered_beyond_its_head(data):
    with with_admin(refused_env()) as server:
        started = time.monotonic()
        status, body = raw(server.admin, data)
        took = time.monotonic() - started
    assert (status, body) == ("HTTP/1.1 401 Unauthorized",
                              {"error": "an Authorization: Bearer header with the admin token is needed"})
    assert took < admin.ADMIN_TIMEOUT / 2 and server.crashes == []  # answered at once: no body waited for


@pytest.mark.parametrize("data, status", [
    (b"GET /" + b"x" * 5000 + b" HTTP/1.1\r\n\r\n", "HTTP/1.1 414 Request-URI Too Long"),
    (b"GET /faults\r\n\r\n", "HTTP/1.1 400 Bad Request"),         # HTTP/0.9: still a whole response
    (b"GET /\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    (b"\x16\x03\x01\x00\xa5garbage\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    (b"GET /faults HTTP/2.0\r\n\r\n", "HTTP/1.1 505 HTTP Version Not Supported"),
    (b"GET /faults  HTTP/1.1\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    (b"GET /faults HTTP/1.1\r\nBad Header\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    (b"GET /faults HTTP/1.1\r\n" + b"X: y\r\n" * 2000 + b"\r\n", "HTTP/1.1 431 Request Header Fields Too Large"),
])
def test_a_head_that_cannot_be_read_gets_a_whole_http_response_with_a_json_body(data, status):
    with with_admin(refused_env()) as server:
        answer = raw(server.admin, data)
    assert answer[0] == status and answer[1] == {"error": status.split(" ", 2)[2]}


def test_a_request_that_comes_in_pieces_is_read_whole_and_a_body_too_large_gets_a_whole_413():
    bearer = f"Authorization: Bearer {TOKEN}\r\n".encode()
    with with_admin(refused_env()) as server, socket.create_connection(("127.0.0.1", server.admin), timeout=5) as sock:
        sock.sendall(b"POST /faults/ready HTTP/1.1\r\n")
        time.sleep(0.05)  # the scenario: the head's rest, then the body, come later
        sock.sendall(bearer + b"Content-Length: 10\r\n\r\n")
        time.sleep(0.05)
        sock.sendall(b"state=fail")
        pieced = b""
        while chunk := sock.recv(65536):
            pieced += chunk
        big = raw_with_body(server.admin, b"POST /faults/clear HTTP/1.1\r\n" + bearer
                            + b"Content-Length: 900000\r\n\r\n", b"x" * 900000)
    assert pieced.startswith(b"HTTP/1.1 200 OK\r\n") and b'"ready": "fail"' in pieced
    assert big.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n") and big.endswith(b"}\n")


def raw_with_body(port, head, body):
    """Send a head and a body the server will not take, at once; whatever comes back before
    the connection ends (a reset would lose the answer: the server must drop the rest)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(head + body)
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def test_every_answer_s_head_says_who_when_what_and_that_it_closes():
    with with_admin(refused_env()) as server:
        answer = raw_bytes(server.admin, b"GET /faults HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode()
                           + b"\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK" and lines[1] == b"Server: friendlyhello-admin"
    assert re.fullmatch(rb"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", lines[2])
    assert lines[3:] == [b"Content-Type: application/json", b"Content-Length: %d" % len(body),
                         b"Cache-Control: no-store", b"Connection: close"]


def test_the_connection_past_max_open_closes_the_oldest_and_only_it():
    with with_admin(refused_env()) as server:
        held = []
        for _ in range(admin.MAX_OPEN):
            held.append(socket.create_connection(("127.0.0.1", server.admin), timeout=5))
        wait_until(lambda: len(server.admin_port.loop.clients) == admin.MAX_OPEN, what="all accepted")
        answered = ask(server, "GET", "/faults")  # one more: the oldest goes
        oldest_closed = _readable(held[0]) and held[0].recv(1) == b""
        second_open = not _readable(held[1])
        for sock in held:
            sock.close()
    assert answered[0] == 200 and oldest_closed and second_open


class FlakyListener:
    """A listening socket whose first accept() fails, as one does when file descriptors run out."""

    def __init__(self, sock):
        self.sock, self.failed = sock, False

    def accept(self):
        if not self.failed:
            self.failed = True
            raise OSError(24, "Too many open files")
        return self.sock.accept()

    def __getattr__(self, name):
        return getattr(self.sock, name)


class BrokenFaults:
    """Faults whose state cannot be read once: a bug of ours."""

    def __init__(self, faults):
        self.faults, self.broken = faults, True

    @property
    def state(self):
        if self.broken:
            self.broken = False
            raise RuntimeError("a bug")
        return self.faults.state


def test_a_failed_accept_or_a_bug_fails_one_request_and_the_admin_port_goes_on():
    config = settings.load_config(["--port", "0", "--bind", "127.0.0.1"], {})
    err = io.StringIO()
    with serving(refused_env()) as server:
        port = admin.AdminPort(FlakyListener(listening.listen(config)), TOKEN, BrokenFaults(server.server.faults),
                               logs.Log("off", out=io.StringIO(), err=err))
        port.start()
        server.admin = port.port
        failed = ask(server, "GET", "/faults")  # the bug: 500, a whole answer still
        answered = ask(server, "GET", "/faults")
        port.close()
    assert port.listener.failed and answered[0] == 200 and failed[:2] == (500, {"error": "internal error"})
    assert err.getvalue() == "friendlyhello: admin: internal error: RuntimeError('a bug')\n"


def test_closing_the_admin_port_ends_its_thread():
    config = settings.load_config(["--port", "0", "--bind", "127.0.0.1"], {})
    port = admin.AdminPort(listening.listen(config), TOKEN, None, logs.Log("off", out=io.StringIO(),
                                                                            err=io.StringIO()))
    port.start()
    port.close()
    assert not port._thread.is_alive()


@pytest.mark.slow  # waits out the latency
def test_latency_set_at_run_time_holds_the_pages(fake_redis):
    with with_admin(redis_env(fake_redis)) as server:
        assert ask(server, "POST", "/faults/latency?seconds=0.2")[1]["latency"] == {"seconds": [0.2, 0.2]}
        started = time.monotonic()
        page = server.get("/")
        took = time.monotonic() - started
        ask(server, "POST", "/faults/latency?seconds=0")
        started = time.monotonic()
        server.get("/")
        then = time.monotonic() - started
    assert page.status == 200 and 0.2 <= took < 0.5 and then < 0.1


def test_a_hang_answers_nothing_probes_included_until_it_ends_then_answers_what_was_asked(fake_redis):
    with with_admin({**redis_env(fake_redis), "IDLE_TIMEOUT": "0.1"}) as server:
        assert ask(server, "POST", "/faults/hang?state=on")[1]["hang"] == "on"
        waiting = []
        for path in ("/healthz", "/", "/readyz"):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)  # accepted, as ever
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            waiting.append(sock)
        flood = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        with contextlib.suppress(OSError):
            flood.sendall(b"x" * (server_module.INPUT_WHILE_HANGING + 1))  # more than a hung port holds for anyone
        time.sleep(0.35)  # past the idle timeout, and a sweep or more: still no 408, no close
        silent = [_silent(sock) for sock in waiting]
        flooded = b""  # a reset is as good as a close
        with contextlib.suppress(ConnectionResetError):
            flooded = flood.recv(100)
        flood.close()
        state = ask(server, "GET", "/faults")[1]  # the admin port answers all along
        ended = ask(server, "POST", "/faults/hang?state=off")
        answers = [sock.recv(4096) for sock in waiting]
        for sock in waiting:
            sock.close()
        after = server.get("/healthz").status
        said = server.error_lines()
    assert all(silent) and state["hang"] == "on" and ended[1]["hang"] == "off"
    assert flooded == b""  # closed, unanswered
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 3
    assert answers[1].endswith(b"</b> 1") and after == 200
    assert "friendlyhello: faults: hangs (set on the admin port by 127.0.0.1)" in said


@pytest.mark.parametrize("redis_answers", ["after the hang", "during the hang"])
def test_a_hang_while_a_page_waits_on_redis_keeps_its_connections_answers_in_order(fake_redis, redis_answers):
    fake_redis.script(Delay(0.2 if redis_answers == "after the hang" else 0.1, b":1\r\n"))
    with with_admin(redis_env(fake_redis)) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        fake_redis.wait_for_commands(1)  # the page waits on Redis...
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # ...this, read ahead
        ask(server, "POST", "/faults/hang?state=on")
        if redis_answers == "during the hang":
            wait_until(lambda: server.server.responder._held_by_hang, within=2,
                       what="the page's answer held by the hang")
        ask(server, "POST", "/faults/hang?state=off")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert answer.index(b"</b> 1") < answer.index(b"\r\n\r\nok\n")  # the page first, then what came after it


def test_a_crash_is_answered_then_asked_of_the_process_with_its_code():
    with with_admin(refused_env()) as server:
        answered = ask(server, "POST", "/faults/crash?code=3")
        default = ask(server, "POST", "/faults/crash")
        said = server.error_lines()
    assert answered[:2] == (200, {"crash": {"code": 3}}) and default[1] == {"crash": {"code": 1}}
    assert server.crashes == [3, 1]
    assert "friendlyhello: admin: crash asked for by 127.0.0.1: exiting with code 3" in said


@pytest.mark.slow  # processes
def test_a_process_crashes_with_the_code_asked_and_its_admin_port_is_in_its_start_line():
    proc = Process({**refused_env(), "PORT": "0", "BIND": "127.0.0.1", "ADMIN_PORT": "0", "ADMIN_TOKEN": TOKEN})
    try:
        line = proc.wait_listening()
        port = int(re.search(r"admin port (\d+)\)", line).group(1))
        answered = request(port, "/faults/crash?code=7", method="POST", headers=BEARER)
        code = proc.wait(5)
    finally:
        _, err = proc.finish()
    assert answered.status == 200 and code == 7
    assert "friendlyhello: admin: crash asked for by 127.0.0.1: exiting with code 7" in err
    assert TOKEN not in line + err


@pytest.mark.slow  # a process
def test_a_process_with_an_admin_port_still_stops_at_once_on_sigterm():
    proc = Process({**refused_env(), "PORT": "0", "BIND": "127.0.0.1", "ADMIN_PORT": "0", "ADMIN_TOKEN": TOKEN})
    try:
        proc.wait_listening()
        started = time.monotonic()
        proc.signal()
        code = proc.wait(5)
        took = time.monotonic() - started
    finally:
        proc.finish()
    assert code == 0 and took < 1  # the admin thread, waiting in accept(), holds nothing up


@pytest.mark.slow  # processes
def test_with_workers_the_supervisor_s_admin_port_reaches_every_worker_and_a_crash_ends_them_all(redis_server):
    proc = Process({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port), "PORT": "0",
                    "BIND": "127.0.0.1", "WORKERS": "2", "ACCESS_LOG": "off", "ADMIN_PORT": "0",
                    "ADMIN_TOKEN": TOKEN})
    try:
        line = proc.wait_listening()
        port = int(re.search(r"admin port (\d+)\)", line).group(1))
        request(port, "/faults/ready?state=fail", method="POST", headers=BEARER)
        wait_until(lambda: {request(proc.port, "/readyz").status for _ in range(8)} == {503}, within=2,
                   what="every worker taking the fault (within a sweep)")
        scraped = request(proc.port, "/metrics").text
        request(port, "/faults/ready?state=ok", method="POST", headers=BEARER)
        wait_until(lambda: {request(proc.port, "/readyz").status for _ in range(8)} == {200}, within=2,
                   what="every worker letting the fault go")
        request(port, "/faults/hang?state=on", method="POST", headers=BEARER)
        time.sleep(0.6)  # two sweeps of each worker
        waiting = [socket.create_connection(("127.0.0.1", proc.port), timeout=3) for _ in range(6)]
        for sock in waiting:  # new connections: the kernel spreads them over both workers
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        silent = [_silent(sock) for sock in waiting]
        request(port, "/faults/hang?state=off", method="POST", headers=BEARER)
        answers = [sock.recv(100).split(b"\r\n", 1)[0] for sock in waiting]
        for sock in waiting:
            sock.close()
        workers = children(proc.process.pid)
        answered = request(port, "/faults/crash?code=9", method="POST", headers=BEARER)
        code = proc.wait(5)
        # SIGKILL is sent, then the supervisor exits: the workers end a moment later.
        wait_until(lambda: not [pid for pid in workers if process_alive(pid)], within=2,
                   what="the workers' end after the crash")
    finally:
        _, err = proc.finish()
    assert 'friendlyhello_fault{kind="ready"} 1' in scraped
    assert all(silent) and answers == [b"HTTP/1.1 200 OK"] * 6
    assert answered.status == 200 and code == 9 and len(workers) == 2
    assert not [pid for pid in workers if process_alive(pid)], "a worker outlived the crash"
    assert "starting another" not in err  # nothing was replaced


def _silent(sock):
    """True when nothing came on the socket, neither bytes nor its end."""
    sock.setblocking(False)
    try:
        sock.recv(100)
        return False
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


@pytest.mark.slow  # waits for a heartbeat
def test_a_fault_set_at_run_time_flags_the_replica_in_the_view_with_its_next_heartbeat(redis_server):
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port), "REPLICA_ID": "turned"}
    with with_admin(env) as server:
        server.get("/")
        ask(server, "POST", "/faults/errors?rate=0.25&status=502")
        view = wait_until(lambda: flagged(server), within=5, what="the fault in the view", pace=0.1)
        ask(server, "POST", "/faults/clear")
        wait_until(lambda: not replica_view(server)["replicas"][0]["faults"], within=5,
                   what="the fault gone from the view", pace=0.1)
    assert view["replicas"][0]["faults"] == "errors 25% (502)"
