"""hello_server: the page, the probes, HTTP behaviour, configuration, start-up and shutdown."""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

import hello_server
from fake_redis import Delay, FakeRedis, Silence
from friendlyhello import settings
from helpers import (
    DISABLED,
    ROOT,
    Process,
    free_port,
    raw_exchange,
    readme,
    redis_counter,
    redis_env,
    refused_env,
    request,
    run_to_exit,
    serving,
    unavailable,
    wait_until,
    without_id,
)
from redis_server import RedisServer
from resp_client import BACKOFF_CAP

README = readme()

# -- the page -------------------------------------------------------------------------------

def test_page_is_the_tutorials_html_with_the_visit_count(fake_redis):
    with serving(redis_env(fake_redis), hostname="88f12064cd94") as server:
        first, second = server.get("/"), server.get("/")
    assert first.status == 200
    assert first.body == b"<h3>Hello world!</h3><b>Hostname:</b> 88f12064cd94<br/><b>Visits:</b> 1"
    assert second.body.endswith(b"<b>Visits:</b> 2")
    assert first.headers["Content-Type"] == "text/html; charset=utf-8"
    assert first.headers["Cache-Control"] == "no-store"


def test_page_shows_counter_disabled_when_redis_refuses():
    with serving({**refused_env(), "NAME": "World"}, hostname="88f12064cd94") as server:
        reply = server.get("/")
    assert reply.status == 200
    assert reply.text == f"<h3>Hello World!</h3><b>Hostname:</b> 88f12064cd94<br/><b>Visits:</b> {DISABLED}"


def test_name_and_hostname_are_html_escaped(fake_redis):
    with serving({**redis_env(fake_redis), "NAME": "<script>alert(1)</script>"}, hostname="a&b") as server:
        reply = server.get("/")
    assert reply.text.startswith("<h3>Hello &lt;script&gt;alert(1)&lt;/script&gt;!</h3>"
                                 "<b>Hostname:</b> a&amp;b<br/>")


def test_page_never_reflects_the_request(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        reply = server.get("/?q=<script>", headers={"X-Evil": "<script>"})
    assert b"<script>" not in reply.body


def test_client_asking_for_json_gets_the_same_visit_as_json(fake_redis):
    with serving(redis_env(fake_redis), hostname="h1") as server:
        reply = server.get("/", headers={"Accept": "application/json"})
    assert reply.headers["Content-Type"] == "application/json"
    assert json.loads(reply.body) == {"name": "world", "hostname": "h1", "version": "1", "visits": 1, "redis": "ok",
                                      "faults": {}}


def test_json_says_why_the_counter_is_disabled():
    with serving(refused_env()) as server:
        reply = server.get("/", headers={"Accept": "application/json"})
    data = json.loads(reply.body)
    assert data["visits"] is None and data["redis"] == "cannot connect"


def test_browsers_get_html_even_though_they_accept_anything(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        reply = server.get("/", headers={"Accept": "text/html,application/xhtml+xml,application/json;q=0.9,*/*;q=0.8"})
    assert reply.headers["Content-Type"].startswith("text/html")


# -- probes, other paths and methods --------------------------------------------------------

@pytest.mark.parametrize("path", ["/healthz", "/livez"])
def test_liveness_answers_without_touching_redis(fake_redis, path):
    with serving(redis_env(fake_redis)) as server:
        reply = server.get(path)
    assert (reply.status, reply.text) == (200, "ok\n")
    assert fake_redis.commands == []  # only the replica's own heartbeat reaches Redis


def test_readyz_is_200_without_redis_by_default_and_says_how_redis_is():
    with serving(refused_env()) as server:
        server.get("/")  # a visit finds Redis away, if the heartbeat has not already
        during = server.get("/readyz")
    assert during.status == 200 and during.text.startswith("ready\nredis: unavailable (cannot connect) for ")


def test_readyz_never_waits_on_a_silent_redis_by_default(fake_redis):
    fake_redis.script(Silence())
    with serving({**redis_env(fake_redis), "REDIS_TIMEOUT": "5"}) as server:
        reply = server.get("/readyz", timeout=1)
    assert reply.status == 200 and fake_redis.commands == []


def test_readyz_needing_redis_is_200_when_redis_answers_ping_and_counts_nothing(fake_redis):
    with serving({**redis_env(fake_redis), "READY_NEEDS_REDIS": "on"}) as server:
        reply = server.get("/readyz")
    assert (reply.status, reply.text) == (200, "ready\n")
    assert fake_redis.commands == [[b"PING"]]


def test_readyz_needing_redis_is_503_saying_only_down_when_redis_refuses():
    env = refused_env(READY_NEEDS_REDIS="on")
    with serving(env) as server:
        reply = server.get("/readyz")
        log = "\n".join(server.error_lines())
    assert (reply.status, reply.text) == (503, "not ready: redis is unavailable\n")  # anyone may ask: no address
    line = f"friendlyhello: redis: 127.0.0.1:{env['REDIS_PORT']} is unavailable (cannot connect): "
    assert log.startswith(line) and log.endswith(" - pages say the counter is disabled until it answers again")


@pytest.mark.parametrize("path", ["/favicon.ico", "/index.html", "/healthz/x", "/counter"])
def test_other_paths_are_404_and_count_no_visit(fake_redis, path):
    with serving(redis_env(fake_redis)) as server:
        reply = server.get(path)
    assert reply.status == 404
    assert fake_redis.commands == []


def test_head_answers_like_get_without_body_or_visit(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        reply = server.get("/", method="HEAD")
    assert reply.status == 200 and reply.body == b""
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert fake_redis.commands == []


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405_with_allow(fake_redis, method):
    with serving(redis_env(fake_redis)) as server:
        reply = server.get("/", method=method)
    assert reply.status == 405 and reply.headers["Allow"] == "GET, HEAD"
    assert fake_redis.commands == []


def test_unknown_method_is_501():
    with serving(refused_env()) as server:
        reply = server.get("/", method="BREW")
    assert reply.status == 501


@pytest.mark.parametrize("path", ["/healthz", "/"])
def test_a_bug_in_a_page_answers_500_logs_it_and_the_server_keeps_serving(fake_redis, path):
    def broken(*args, **kwargs):
        raise KeyError("a bug")

    with serving(redis_env(fake_redis)) as server:
        routes = server.server.routes  # "/" fails after Redis answered, "/healthz" at once
        routes[path] = routes[path]._replace(answer=broken)
        reply = server.get(path)
        assert server.get("/readyz").status == 200
        log = "\n".join(server.error_lines())
    assert reply.status == 500
    assert "internal error: KeyError('a bug')" in log


def test_responses_name_the_app_not_python_and_forbid_sniffing():
    with serving(refused_env()) as server:
        reply = server.get("/healthz")
    assert reply.headers["Server"].startswith("friendlyhello/")
    assert "Python" not in reply.headers["Server"]
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


# -- HTTP under real clients ------------------------------------------------------------------

def test_keep_alive_serves_many_requests_on_one_connection(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        bodies = []
        conn.connect()
        first_socket = conn.sock
        for _ in range(5):
            conn.request("GET", "/")
            bodies.append(conn.getresponse().read())
            assert conn.sock is first_socket
        conn.close()
    assert [b.rsplit(b" ", 1)[1] for b in bodies] == [b"1", b"2", b"3", b"4", b"5"]


def test_pipelined_requests_are_all_answered_in_order(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        answer = raw_exchange(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3
                              + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200 OK") == 4
    assert answer.index(b"Visits:</b> 1") < answer.index(b"Visits:</b> 2") < answer.index(b"Visits:</b> 3")


@pytest.mark.parametrize("more", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"], ids=["nothing", "a request"])
def test_what_a_client_sends_while_its_request_waits_on_redis_is_read_and_answered_after_it(fake_redis, more):
    fake_redis.script(Delay(0.15, b":1\r\n"))
    with serving(redis_env(fake_redis)) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        fake_redis.wait_for_commands(1)  # the page waits on Redis now
        sock.sendall(more)
        sock.shutdown(socket.SHUT_WR)  # and sends nothing more: a half-close still gets its answers
        (conn,) = server.server.connections._open
        wait_until(lambda: not conn.events, within=0.1, what="the loop leaving the ended connection unwatched")
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes: it saw the end only after answering
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 OK") == (2 if more else 1)
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"Visits:</b> 1" in answer.split(b"\r\n\r\n")[1]
    assert not more or answer.endswith(b"\r\n\r\nok\n")


@pytest.mark.parametrize("first", ["/", "/healthz"], ids=["waiting-on-redis", "pipelining"])
def test_a_client_flooding_while_its_requests_are_answered_is_read_no_further_than_the_read_ahead(fake_redis, first):
    from friendlyhello.connection import READ_AHEAD
    fake_redis.script(Delay(0.3, b":1\r\n"))
    with serving(redis_env(fake_redis)) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"GET {first} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if first == "/":
            fake_redis.wait_for_commands(1)
        sock.setblocking(False)
        flood = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 100_000  # 3.6 MB, far more than the kernel holds
        sent = 0
        deadline = time.monotonic() + 0.15
        while time.monotonic() < deadline:
            try:
                sent += sock.send(flood[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
        (conn,) = server.server.connections._open
        buffered = len(conn.buffer)
        sock.setblocking(True)
        answer = sock.recv(65536)
    assert buffered < READ_AHEAD + 65536 < sent  # the rest waits in the kernel, unread
    assert answer.startswith(b"HTTP/1.1 200 OK")


def test_http_1_0_request_is_answered_and_closed(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        answer = raw_exchange(server.port, b"GET / HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"Visits:</b> 1")


@pytest.mark.parametrize("raw, status", [
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n", b"414"),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n", b"431"),
    (b"GET / HTTP/1.1\r\nX: " + b"v" * 20000 + b"\r\n\r\n", b"431"),
    (b"NONSENSE\r\n\r\n", b"400"),
    (b"GET / HTTP/9.9\r\n\r\n", b"505"),
    (b"GET / HTTP/1.1\r\nBad header line\r\n\r\n", b"400"),
], ids=["long-request-line", "200-headers", "long-header", "nonsense", "http-9.9", "bad-header-line"])
def test_malformed_requests_get_a_4xx_and_the_server_keeps_serving(fake_redis, raw, status):
    with serving(redis_env(fake_redis)) as server:
        answer = raw_exchange(server.port, raw)
        assert answer.split(b" ", 2)[1] == status, answer[:200]
        assert server.get("/healthz").status == 200
    assert fake_redis.commands == []


def test_request_with_a_body_is_answered_then_the_connection_closes(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        answer = raw_exchange(server.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nGET /")
    assert answer.startswith(b"HTTP/1.1 405") and b"Connection: close" in answer


# -- access log -------------------------------------------------------------------------------

def test_access_log_has_one_line_per_request_and_leaves_probes_out(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        server.get("/")
        server.get("/healthz")
        server.get("/nope")
        lines = server.log_lines()
    assert len(lines) == 2
    assert lines[0].startswith('127.0.0.1 "GET /" 200 ') and without_id(lines[0]).endswith("ms")
    assert lines[1].startswith('127.0.0.1 "GET /nope" 404 ')


def test_access_log_escapes_control_characters_and_quotes(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        raw_exchange(server.port, b"GET /\x1b[31mred HTTP/1.1\r\nHost: x\r\n\r\n")
        raw_exchange(server.port, b'GET /a"b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
        refused, quoted = server.log_lines()[-2:]
    assert "\x1b" not in refused and "\\x1b" in refused and '" 400 ' in refused
    assert '"GET /a\\"b" 404 ' in quoted


@pytest.mark.parametrize("setting, logged", [("off", 0), ("all", 2)])
def test_access_log_can_be_turned_off_or_include_probes(fake_redis, setting, logged):
    with serving({**redis_env(fake_redis), "ACCESS_LOG": setting}) as server:
        server.get("/")
        server.get("/readyz")
        assert len(server.log_lines()) == logged


# -- Redis outages and recovery ----------------------------------------------------------------

def test_counter_comes_back_by_itself_after_redis_restarts():
    with RedisServer(appendonly=True) as redis, \
            serving({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port)}) as server:
        assert server.get("/").text.endswith("</b> 1")
        redis.stop()
        assert server.get("/").text.endswith(DISABLED)
        redis.start()
        started = time.monotonic()
        while DISABLED in server.get("/").text:
            assert time.monotonic() - started < BACKOFF_CAP + 2, "the counter did not come back"
        assert server.get("/").text.endswith("</b> 3")


@pytest.mark.slow
def test_fifty_clients_of_a_hundred_requests_count_every_page_exactly_once(redis_server):
    shown = []
    failures = []
    with serving({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port)}) as server:
        def client():
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            try:
                for _ in range(100):
                    conn.request("GET", "/")
                    response = conn.getresponse()
                    body = response.read().decode()
                    if response.status != 200 or DISABLED in body:
                        failures.append((response.status, body))
                    else:
                        shown.append(int(body.rsplit(" ", 1)[1]))
            finally:
                conn.close()

        threads = [threading.Thread(target=client) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert failures == []
    assert len(shown) == 5000 == len(set(shown)) == redis_counter(redis_server.port)


def test_redis_going_away_and_coming_back_is_logged_once_each_way():
    with RedisServer() as redis, serving({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port)}) as server:
        assert server.get("/").status == 200
        redis.stop()
        outage = [server.get("/").text for _ in range(30)]
        redis.start()
        started = time.monotonic()
        while DISABLED in server.get("/").text:
            assert time.monotonic() - started < BACKOFF_CAP + 2, "the counter did not come back"
        lines = server.error_lines()
    assert all(DISABLED in page for page in outage)
    assert len(lines) == 3, lines
    assert lines[0].endswith(f"127.0.0.1:{redis.port} is up: visits are counted")
    assert f"127.0.0.1:{redis.port} is unavailable (cannot connect): " in lines[1]
    assert f"127.0.0.1:{redis.port} is back after " in lines[2]


def test_a_wrong_password_is_the_reason_for_as_long_as_it_lasts():
    with FakeRedis(password="right") as fake, \
            serving({**redis_env(fake), "REDIS_PASSWORD": "wrong-pw"}) as server:
        reasons = [json.loads(server.get("/", headers={"Accept": "application/json"}).body)["redis"]
                   for _ in range(5)]
        lines = server.error_lines()
    assert reasons == ["authentication failed"] * 5
    assert len(lines) == 1 and "is unavailable (authentication failed)" in lines[0]
    assert "wrong-pw" not in "\n".join(lines)


# -- configuration, start-up and shutdown (as a real process) ----------------------------------

@pytest.mark.parametrize("env, args, named", [
    ({"PORT": "eighty"}, (), "PORT='eighty' is not valid: expected a whole number from 0 to 65535"),
    ({"PORT": "70000"}, (), "PORT='70000'"),
    ({}, ("--port", "-1"), "--port='-1'"),
    ({"REDIS_TIMEOUT": "0"}, (), "REDIS_TIMEOUT='0'"),
    ({"REDIS_TIMEOUT": "soon"}, (), "REDIS_TIMEOUT='soon'"),
    ({"REDIS_PORT": "0"}, (), "REDIS_PORT='0'"),
    ({"REDIS_DB": "x"}, (), "REDIS_DB='x'"),
    ({"ACCESS_LOG": "maybe"}, (), "ACCESS_LOG='maybe' is not valid: expected one of on, off, all"),
    ({"MAX_CONNECTIONS": "0"}, (), "MAX_CONNECTIONS='0'"),
    ({"IDLE_TIMEOUT": "-1"}, (), "IDLE_TIMEOUT='-1'"),
    ({"SHUTDOWN_DELAY": "-1"}, (), "SHUTDOWN_DELAY='-1' is not valid: expected a number of seconds from 0"),
    ({"DRAIN_TIMEOUT": "0"}, (), "DRAIN_TIMEOUT='0' is not valid: expected a number of seconds above 0"),
    ({"READY_NEEDS_REDIS": "yes"}, (), "READY_NEEDS_REDIS='yes' is not valid: expected one of off, on"),
    ({"BIND": ""}, (), "BIND=''"),
    ({"VERSION": ""}, (), "VERSION='' is not valid: expected 1 to 64 printable ASCII characters"),
    ({"VERSION": " 2"}, (), "VERSION=' 2'"),
    ({"VERSION": "v\u00e9"}, (), "VERSION='v\\xe9'"),
    ({"VERSION": "a\r\nSet-Cookie: x"}, (), "VERSION='a\\r\\nSet-Cookie: x'"),
    ({"VERSION": "9" * 65}, (), "VERSION="),
    ({"TRUSTED_PROXIES": "10.0.0.0/33"}, (), "TRUSTED_PROXIES='10.0.0.0/33' is not valid: expected addresses or CIDR"),
    ({"TRUSTED_PROXIES": "10.0.0.1, proxy.local"}, (), "TRUSTED_PROXIES='10.0.0.1, proxy.local' is not valid: "
                                                    "expected addresses or CIDR blocks separated by commas "
                                                    "('proxy.local' is neither)"),
    ({"TRUSTED_PROXIES": "x" * 70}, (), "(" + repr("x" * 60) + " is neither)"),
    ({"PROXY_PROTOCOL": "v3"}, (), "PROXY_PROTOCOL='v3' is not valid: expected one of off, v1, v2, any"),
    ({"PROXY_PROTOCOL": "v2"}, (), "PROXY_PROTOCOL needs TRUSTED_PROXIES: the addresses of the proxies that send it"),
    ({"FAULT_ERRORS": "1.5"}, (), "FAULT_ERRORS='1.5' is not valid: expected a rate from 0 to 1, such as 0.1"),
    ({"FAULT_ERRORS": "often"}, (), "FAULT_ERRORS='often'"),
    ({"FAULT_ERROR_STATUS": "200"}, (), "FAULT_ERROR_STATUS='200' is not valid: expected a whole number from 400"),
    ({"FAULT_LATENCY": "0.5-0.1"}, (), "FAULT_LATENCY='0.5-0.1' is not valid: expected seconds from 0 to 30, or a"),
    ({"FAULT_LATENCY": "31"}, (), "FAULT_LATENCY='31'"),
    ({"FAULT_LATENCY": "-1"}, (), "FAULT_LATENCY='-1'"),
    ({"FAULT_READY": "broken"}, (), "FAULT_READY='broken' is not valid: expected one of ok, fail"),
    ({"FAULT_LIVE": "no"}, (), "FAULT_LIVE='no' is not valid: expected one of ok, fail"),
    ({"ADMIN_PORT": "9090"}, (), "ADMIN_PORT needs ADMIN_TOKEN, and ADMIN_TOKEN needs ADMIN_PORT: set both"),
    ({"ADMIN_TOKEN": "secret-secret-secret"}, (), "ADMIN_PORT needs ADMIN_TOKEN"),
    ({"ADMIN_PORT": "9090", "ADMIN_TOKEN": "secret"}, (), "ADMIN_TOKEN is not valid: 16 to 256 letters, digits"),
    ({"ADMIN_PORT": "9090", "ADMIN_TOKEN": "secret secret secret"}, (), "ADMIN_TOKEN is not valid"),
    ({"ADMIN_PORT": "99999", "ADMIN_TOKEN": "secret-secret-secret"}, (), "ADMIN_PORT='99999' is not valid"),
    ({"ADMIN_PORT": "8080", "PORT": "8080", "ADMIN_TOKEN": "secret-secret-secret"}, (),
     "ADMIN_PORT=8080 is PORT too: the admin port must be another"),
    ({"REDIS_URL": "http://:secret@h"}, (), "REDIS_URL is not valid"),
    ({"REDIS_URL": "redis://h", "REDIS_HOST": "h"}, (), "not both"),
])
def test_bad_setting_exits_2_with_one_line_naming_it(capsys, env, args, named):
    code = hello_server.main(list(args), environ=env)
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and named in err, err
    assert "secret" not in err
    assert out == ""


def test_a_bad_setting_stops_the_real_process_before_it_binds():
    code, out, err = run_to_exit({"PORT": "eighty"})
    assert (code, out) == (2, "")
    assert err == ("friendlyhello: PORT='eighty' is not valid: expected a whole number from 0 to 65535, "
                   "or off (serve TLS_PORT alone)\n")


def test_flags_and_the_environment_give_the_same_settings_and_the_environment_alone_needs_no_flag_parser(
        monkeypatch):
    flags = settings.load_config(["--port", "81"], {})
    monkeypatch.setattr(settings, "argument_parser", lambda: pytest.fail("the flag parser was built"))
    assert settings.load_config([], {"PORT": "81"}) == flags
    assert not hasattr(settings, "argparse")  # a container's start (no flags) does without its import too


def test_help_lists_every_setting_with_its_default():
    code, out, _ = run_to_exit({}, ["--help"])
    assert code == 0
    for name in [s.env for s in settings.SETTINGS] + ["--healthcheck"]:
        assert name in out
    assert "(default: 80)" in " ".join(out.split())


def test_the_readme_s_settings_table_has_a_row_for_every_setting_and_none_other():
    with open(os.path.join(ROOT, "README.md")) as file:
        section = file.read().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split(" | ")[0])}
    flags = {flag for row in rows for flag in re.findall(r"`(--[a-z-]+)`", row.split(" | ")[1])}
    secrets = [s for s in settings.SETTINGS if s.secret]
    assert named == {s.env for s in settings.SETTINGS} | {s.file_env for s in secrets}
    assert flags <= {s.flag for s in settings.SETTINGS} | {s.file_flag for s in secrets}


def test_port_in_use_exits_1_with_the_fix_and_no_traceback():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, _, err = run_to_exit({"PORT": str(port), "BIND": "127.0.0.1"})
    assert code == 1
    assert "already in use" in err and "PORT=8080" in err and "Traceback" not in err


def test_port_80_refused_to_a_non_root_user_exits_1_with_the_fix():
    system_python = "/usr/bin/python3"  # one that another user may run
    if os.geteuid() != 0 or not os.access(system_python, os.X_OK):
        unavailable("needs root (to start the server as another user) and /usr/bin/python3")
    # Our code where user nobody may read it, run as nobody in a network namespace of its own,
    # where ports below 1024 are privileged whatever this host allows.
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        app = os.path.join(folder, "app")
        shutil.copytree(ROOT, app, ignore=shutil.ignore_patterns(".git", "tests", "bench", "__pycache__", "*.md"))
        result = subprocess.run(["unshare", "--net", "--", "setpriv", "--reuid=65534", "--regid=65534",
                                 "--clear-groups", system_python, os.path.join(app, "hello_server.py")],
                                env={"PORT": "80", "BIND": "0.0.0.0"}, capture_output=True, text=True, timeout=10)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "PORT=8080" in result.stderr and "ip_unprivileged_port_start=0" in result.stderr


PASSWORD = "pw1/pw2?pw3#pw4@pw5:pw6"


@pytest.mark.parametrize("url", [
    f"redis://:{PASSWORD}@127.0.0.1:6390/x",
    f"redis://:{PASSWORD}@127.0.0.1:99999/0",
    f"redis:/:{PASSWORD}@127.0.0.1",
    f"redis://{PASSWORD}@127.0.0.1",
    f"redis://127.0.0.1/0?password={PASSWORD}",
    f"redis://:{PASSWORD}@127.0.0.1/0?x=1",
])
def test_a_bad_redis_url_exits_2_without_any_part_of_its_password(capsys, url):
    code = hello_server.main([], environ={"REDIS_URL": url})
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("friendlyhello: REDIS_URL is not valid: ") and err.count("\n") == 1
    assert not [piece for piece in ("pw1", "pw2", "pw3", "pw4", "pw5", "pw6") if piece in out + err], err


TOKEN = "file-token-0123456789abcdef"


@pytest.mark.parametrize("name, content, field, value", [
    ("ADMIN_TOKEN_FILE", TOKEN + "\n", "admin_token", TOKEN),             # as `echo TOKEN > file` writes it
    ("REDIS_PASSWORD_FILE", PASSWORD + "\r\n", "redis_password", PASSWORD),
    ("REDIS_PASSWORD_FILE", " two  lines\n\n", "redis_password", " two  lines\n"),  # one line ending dropped
    ("REDIS_URL_FILE", f"redis://:{PASSWORD}@10.0.0.9:6390/3", "redis_url", f"redis://:{PASSWORD}@10.0.0.9:6390/3"),
])
def test_a_secret_is_read_from_the_file_its_file_setting_names(tmp_path, name, content, field, value):
    secret = tmp_path / "secret"
    secret.write_bytes(content.encode())
    extra = {"ADMIN_PORT": "0"} if name == "ADMIN_TOKEN_FILE" else {}
    by_env = settings.load_config([], {name: str(secret), **extra})
    flag = "--" + name.lower().replace("_", "-")
    by_flag = settings.load_config([flag, str(secret)], extra)
    assert getattr(by_env, field) == getattr(by_flag, field) == value


SECRET_FILES = {  # what a file named by a case below holds
    "short": b"pw-" + PASSWORD.encode(), "bad-url": f"redis://:{PASSWORD}@h:99999/0\n".encode(),
    "url": f"redis://:{PASSWORD}@h:6390/0\n".encode(), "latin-1": b"pw\xe9" + PASSWORD.encode(),
    "huge": PASSWORD.encode() * 3000,
}


@pytest.mark.parametrize("env, said", [
    ({"ADMIN_TOKEN": TOKEN, "ADMIN_TOKEN_FILE": "/x", "ADMIN_PORT": "0"},
     "set ADMIN_TOKEN or ADMIN_TOKEN_FILE, not both"),
    ({"REDIS_PASSWORD_FILE": "/no/such/file"},
     "REDIS_PASSWORD_FILE='/no/such/file': cannot read it: No such file or directory"),
    ({"REDIS_PASSWORD_FILE": "/"}, "REDIS_PASSWORD_FILE='/': cannot read it: Is a directory"),
    ({"REDIS_URL_FILE": "url", "REDIS_HOST": "redis"},
     "set REDIS_URL or REDIS_HOST/REDIS_PORT/REDIS_DB/REDIS_PASSWORD, not both"),
    ({"ADMIN_TOKEN_FILE": "short", "ADMIN_PORT": "0"}, "ADMIN_TOKEN_FILE is not valid: 16 to 256 letters"),
    ({"REDIS_URL_FILE": "bad-url"}, "REDIS_URL_FILE is not valid: "),
    ({"REDIS_PASSWORD_FILE": "latin-1"}, "is not valid: REDIS_PASSWORD must be UTF-8 text"),
    ({"REDIS_PASSWORD_FILE": "huge"}, "over 65536 bytes, too long for REDIS_PASSWORD"),
])
def test_a_secret_file_that_cannot_be_used_exits_2_naming_it_and_never_its_content(tmp_path, capsys, env, said):
    for name, value in env.items():
        if value in SECRET_FILES:
            (tmp_path / value).write_bytes(SECRET_FILES[value])
            env[name] = str(tmp_path / value)
    code = hello_server.main([], environ=env)
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("friendlyhello: ") and err.count("\n") == 1, err
    assert said in err, err
    assert not [piece for piece in ("pw1", "pw2", "pw3", "pw4", "pw5", "pw6") if piece in out + err], err


def test_help_says_a_secret_in_a_flag_is_seen_in_ps_and_names_its_file_setting():
    code, out, _ = run_to_exit({}, ["--help"])
    text = " ".join(out.split())
    assert code == 0
    for name in ("ADMIN_TOKEN", "REDIS_PASSWORD", "REDIS_URL"):
        flag = "--" + name.lower().replace("_", "-")
        assert f"{flag} {name} " in text and f"{flag}-file {name}_FILE" in text
        assert f"a flag is seen by every user of this machine in ps: prefer {name}, or {name}_FILE" in text


def test_a_secret_given_as_a_flag_is_warned_of_at_start_and_one_from_a_file_is_not(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("hunter2\n")
    base = ["--port", "0", "--bind", "127.0.0.1", "--redis-host", "127.0.0.1", "--redis-port", str(free_port())]
    said = []
    for args in (base + ["--redis-password", "hunter2"], base + ["--redis-password-file", str(secret)]):
        proc = Process({}, args)
        try:
            proc.wait_listening()
        finally:
            proc.signal()
            said.append(proc.finish()[1])
    assert "friendlyhello: settings: --redis-password is seen by every user of this machine in ps: set " \
           "REDIS_PASSWORD or REDIS_PASSWORD_FILE instead" in said[0]
    assert "is seen by every user" not in said[1] and "hunter2" not in "".join(said)


def test_starts_without_redis_prints_one_line_and_serves_at_once():
    proc = Process({"PORT": "0", "BIND": "127.0.0.1", "REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}"})
    try:
        line = proc.wait_listening()
        reply = request(proc.port, "/")
        readyz = request(proc.port, "/readyz")
    finally:
        proc.signal()
        out, err = proc.finish()
    assert line.startswith("friendlyhello listening on http://127.0.0.1:")
    assert "(redis 127.0.0.1:" in line and "db 0)" in line
    assert DISABLED in reply.text
    assert "hunter2" not in line + out + err + readyz.text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_an_idle_server_at_once_with_exit_0(signum):
    proc = Process({**refused_env(), "PORT": "0", "BIND": "127.0.0.1"})
    try:
        proc.wait_listening()
        started = time.monotonic()
        proc.signal(signum)
        code = proc.wait(5)
        took = time.monotonic() - started
    finally:
        proc.finish()
    assert code == 0
    assert took < 1.0


@pytest.mark.slow  # waits out real timeouts and delays
def test_sigterm_lets_the_in_flight_request_finish_and_stops_accepting(fake_redis):
    fake_redis.script(Delay(0.5, b":1\r\n"))
    proc = Process({**redis_env(fake_redis), "PORT": "0", "BIND": "127.0.0.1"})
    try:
        proc.wait_listening()
        replies = []
        in_flight = threading.Thread(target=lambda: replies.append(request(proc.port, "/")))
        in_flight.start()
        fake_redis.wait_for_commands(1)
        proc.signal()
        in_flight.join(5)
        code = proc.wait(5)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proc.port), timeout=1)
    finally:
        proc.finish()
    assert code == 0
    assert replies[0].status == 200 and replies[0].text.endswith("</b> 1")


def test_shutting_down_turns_readiness_503_and_leaves_liveness_200(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        server.server.lifecycle.shutting_down = True
        assert server.get("/readyz").status == 503
        assert server.get("/healthz").status == server.get("/livez").status == 200


def test_during_the_shutdown_delay_every_answer_says_connection_close_so_clients_move_on(fake_redis):
    with serving({**redis_env(fake_redis), "SHUTDOWN_DELAY": "0.2"}) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as kept:
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        before = kept.recv(65536)
        server.server.stop()
        kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection, kept alive until now
        during = b""
        while chunk := kept.recv(65536):  # then the server closes it
            during += chunk
        fresh = server.get("/")  # a new connection is still accepted and served in the delay
    assert before.startswith(b"HTTP/1.1 200") and b"Connection: close" not in before
    assert during.startswith(b"HTTP/1.1 200") and during.endswith(b"</b> 1")
    assert b"\r\nConnection: close\r\n" in during
    assert fresh.status == 200 and fresh.headers["Connection"] == "close"


@pytest.mark.slow  # waits out real timeouts and delays
def test_sigterm_keeps_serving_through_the_delay_then_drains_in_a_timer_of_its_own(fake_redis):
    fake_redis.script(Delay(0.8, b":1\r\n"))
    proc = Process({**redis_env(fake_redis), "PORT": "0", "BIND": "127.0.0.1",
                    "SHUTDOWN_DELAY": "1", "DRAIN_TIMEOUT": "0.6"})
    try:
        proc.wait_listening()
        started = time.monotonic()
        proc.signal()
        readiness = request(proc.port, "/readyz")  # at once
        during = request(proc.port, "/")  # still accepted, and still counted: Redis answers at 0.8 s
        in_delay = time.monotonic() - started
        code = proc.wait(5)
        took = time.monotonic() - started
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proc.port), timeout=1)
    finally:
        proc.finish()
    assert readiness.status == 503
    assert during.status == 200 and during.text.endswith("</b> 1") and during.headers["Connection"] == "close"
    assert in_delay < 1 and code == 0
    assert 1 <= took < 1 + 0.6 + 1


def test_a_second_signal_ends_the_delay_at_once():
    proc = Process({**refused_env(), "PORT": "0", "BIND": "127.0.0.1", "SHUTDOWN_DELAY": "30"})
    try:
        proc.wait_listening()
        proc.signal()
        assert request(proc.port, "/readyz").status == 503  # the first one is being handled
        started = time.monotonic()
        proc.signal()
        code = proc.wait(5)
    finally:
        proc.finish()
    assert code == 1 and time.monotonic() - started < 5


@pytest.mark.slow  # processes
def test_healthcheck_mode_exits_0_for_a_serving_server_and_1_otherwise():
    proc = Process({**refused_env(), "PORT": "0", "BIND": "127.0.0.1"})
    try:
        proc.wait_listening()
        healthy, _, _ = run_to_exit({"PORT": str(proc.port)}, ["--healthcheck"])
    finally:
        proc.signal()
        proc.finish()
    unhealthy, _, err = run_to_exit({"PORT": str(free_port())}, ["--healthcheck"])
    assert (healthy, unhealthy) == (0, 1)
    assert "unhealthy" in err


def test_the_readme_shows_both_pages_byte_for_byte_as_they_are_served():
    assert "<h3>Hello World!</h3><b>Hostname:</b> 88f12064cd94<br/><b>Visits:</b> 7\n" in README
    assert f"<h3>Hello World!</h3><b>Hostname:</b> 88f12064cd94<br/><b>Visits:</b> {DISABLED}\n" in README


def test_liveness_and_readiness_bodies_are_as_the_readme_says():
    with serving(refused_env()) as server:
        assert request(server.port, "/livez").text == "ok\n"
        assert request(server.port, "/readyz").text.startswith("ready\nredis: ")
    assert "`200 ok`" in README and "`200 ready`" in README


@pytest.mark.parametrize("env, said", [
    ({}, "redis:6379 db 0"),
    ({"REDIS_HOST": "::1", "REDIS_PORT": "7000", "REDIS_DB": "3"}, "[::1]:7000 db 3"),
    ({"REDIS_URL": "unix:///run/redis.sock?db=2"}, "unix:/run/redis.sock db 2"),
    ({"REDIS_URL": "redis://:secret@cache:6380/5"}, "cache:6380 db 5"),
])
def test_the_start_up_line_names_where_redis_is_and_never_its_password(env, said):
    from friendlyhello import redis_thread, settings

    assert redis_thread.describe_redis(settings.load_config([], env)) == said
