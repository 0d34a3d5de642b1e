"""No pipe, setting or thread of ours can hang, kill or mislead the server: every request that
waits on Redis has a deadline, the Redis thread outlives its own errors, a dead one makes
liveness fail, log writes never block or end serving, and settings that are not text stop
the start with one line."""

import errno
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import hello_server
from helpers import (
    DISABLED,
    SERVER,
    child_environment,
    free_port,
    raw_exchange,
    redis_env,
    refused_env,
    request,
    serving,
    wait_until,
)

# -- a request waiting on Redis has a deadline; the Redis thread lives on -----------------------


@pytest.mark.slow  # waits out real timeouts and delays
def test_a_page_whose_redis_trip_never_ends_is_answered_at_its_own_deadline(fake_redis):
    stuck = threading.Event()
    with serving({**redis_env(fake_redis), "REDIS_TIMEOUT": "0.1"}) as server:
        server.server.redis_thread.client.pipeline = lambda commands: stuck.wait(30)  # a Redis thread that hangs
        started = time.monotonic()
        page = server.get("/", headers={"Accept": "application/json"}, timeout=10)
        waited = time.monotonic() - started
        stuck.set()
    assert page.status == 200 and json.loads(page.body)["redis"] == "no reply (the visit may have counted)"
    assert 0.1 * 2 + 0.5 <= waited < 0.1 * 2 + 0.5 + 1.0  # its deadline: both Redis timeouts and the margin


def test_the_redis_thread_outlives_a_failing_log_write_and_serves_the_next_page(fake_redis):
    with serving({**redis_env(fake_redis), "REDIS_TIMEOUT": "0.3"}) as server:
        redis_thread = server.server.redis_thread
        server.get("/healthz")
        wait_until(lambda: redis_thread.status.describe() == "up")  # the start-up heartbeat is home
        real_answered = redis_thread.status.answered

        def answered_with_a_broken_log():
            redis_thread.status.answered = real_answered  # once
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        redis_thread.status.answered = answered_with_a_broken_log
        first = server.get("/")
        second = server.get("/")
        live = server.get("/livez")
        errors = "\n".join(server.error_lines())
    assert first.status == 500  # our own bug, not a Redis outage: never "counter disabled"
    assert second.status == 200 and second.text.endswith("<b>Visits:</b> 2")  # the first visit did count
    assert live.status == 200 and redis_thread.is_alive() is False  # stopped with the server, not before
    assert "internal error in the Redis thread: BrokenPipeError" in errors


def test_liveness_fails_when_the_redis_thread_is_gone_and_says_which(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        assert server.get("/livez").status == 200
        server.server.redis_thread.stop()  # as if it had died
        livez, healthz = server.get("/livez"), server.get("/healthz")
    assert (livez.status, livez.text) == (503, "not live: the redis thread stopped\n")
    assert healthz.status == 503


# -- log writes never block serving or end it ----------------------------------------------------

def start_with_piped_stdout(env):
    process = subprocess.Popen([sys.executable, SERVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**child_environment(), **env, "PORT": "0", "BIND": "127.0.0.1"})
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    assert selector.select(10), "no start-up line"
    line = process.stdout.readline().decode()
    port = int(line.split("listening on http://127.0.0.1:")[1].split(" ")[0])
    return process, port


def stop(process, within=5):
    """SIGTERM; the exit code, or a kill and a failure if it does not stop in time."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"SIGTERM did not stop the server within {within}s") from None


@pytest.mark.parametrize("workers", ["1", pytest.param("2", marks=pytest.mark.slow)])  # two processes more
def test_a_gone_stdout_reader_ends_the_access_log_not_the_serving(workers):
    process, port = start_with_piped_stdout({**refused_env(), "WORKERS": workers})
    try:
        process.stdout.close()  # | head -n 1
        pages = [request(port, "/") for _ in range(12)]
        assert process.poll() is None
        code = stop(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert [p.status for p in pages] == [200] * 12 and all(p.text.endswith(DISABLED) for p in pages)
    assert code == 0


@pytest.mark.slow  # 2,500 requests through a full pipe
def test_a_stalled_stdout_drops_and_counts_lines_while_serving_and_sigterm_still_stops_at_once():
    process, port = start_with_piped_stdout(refused_env())
    long_path = "/" + "x" * 1000  # 404s with long log lines: the pipe fills after some 60 of them
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            batch = f"GET {long_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 100
            for _ in range(25):  # 2,500 requests: past the pipe and the log's buffer
                sock.sendall(batch)
                received = b""
                while received.count(b"HTTP/1.1 404") < 100:
                    received += sock.recv(65536)
        metrics = request(port, "/metrics").text
        healthz = request(port, "/healthz")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out = process.stdout.read().decode()  # reading again: the buffered lines and the count go out
        code = process.wait(5)
        stopped = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    dropped = int(metrics.split("\nfriendlyhello_log_lines_dropped_total ")[1].split("\n")[0])
    assert dropped > 0 and healthz.status == 200
    assert code == 0 and stopped < 3
    assert f"{dropped} lines dropped: the reader of stdout did not keep up" in out


# -- settings that are not text stop the start ------------------------------------------------

def start_with(environ, capsys):
    """main() with these environment variables, as os.environ holds them; (exit code, stderr)."""
    code = hello_server.main([], environ={"PORT": str(free_port()), "BIND": "127.0.0.1", **environ})
    return code, capsys.readouterr().err


NOT_UTF8 = os.fsdecode(b"Zo\xeb")  # what os.environ makes of a byte that is not UTF-8


def test_a_setting_holding_bytes_that_are_not_utf8_stops_the_process_before_it_binds():
    env = {k.encode(): v.encode() for k, v in child_environment().items()}
    result = subprocess.run([sys.executable, SERVER], capture_output=True, timeout=10,
                            env={**env, b"NAME": b"Zo\xeb", b"PORT": str(free_port()).encode()})
    assert result.returncode == 2
    assert result.stderr == b"friendlyhello: NAME='Zo\\udceb' is not valid: expected printable UTF-8 text " \
                            b"of at most 256 characters, without control or bidirectional formatting characters\n"


@pytest.mark.parametrize("name", ["NAME", "POD_NAME", "NODE_NAME", "POD_NAMESPACE", "REPLICA_ID", "MY_POD_NAME",
                                  "REDIS_PASSWORD", "REDIS_URL"])
def test_a_setting_holding_bytes_that_are_not_utf8_stops_the_start_with_one_line(capsys, name):
    value = f"redis://:{NOT_UTF8}@h" if name == "REDIS_URL" else NOT_UTF8
    code, err = start_with({name: value}, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"friendlyhello: {name}")
    if name.startswith("REDIS_"):  # secrets: not shown, not even in part
        assert "Zo" not in err


@pytest.mark.parametrize("value", ["Zo\u009b", "left\u202eright", "a\x1b[31mb", "x" * 257])
def test_a_name_with_controls_or_too_long_stops_the_start(capsys, value):
    code, err = start_with({"NAME": value}, capsys)
    assert code == 2 and err.startswith("friendlyhello: NAME=") and err.count("\n") == 1
    assert "\x1b" not in err and "\u009b" not in err and "\u202e" not in err


@pytest.mark.parametrize("env", [{"REDIS_HOST": "redis..default.svc"}, {"REDIS_HOST": "a" * 64 + ".svc"},
                                 {"REDIS_HOST": "-bad"}, {"REDIS_URL": "redis://h:0"},
                                 {"REDIS_URL": "redis://h..x:6379"}, {"BIND": "not a host"}])
def test_a_name_that_is_not_a_host_name_stops_the_start(capsys, env):
    code, err = start_with(env, capsys)
    assert code == 2 and err.count("\n") == 1, err


def test_names_in_any_script_are_shown_as_given(fake_redis):
    with serving({**redis_env(fake_redis), "NAME": "Zoë", "POD_NAME": "web-ü"}) as server:
        reply = server.get("/", headers={"Accept": "application/json"})
    assert json.loads(reply.body)["name"] == "Zoë" and json.loads(reply.body)["pod"] == "web-ü"


@pytest.mark.parametrize("url", ["redis://default:PASS", "redis://:PASS", "redis://h/PASS", "redis://h?protocol=PASS",
                                 "redis://h?PASS=1", "PASS://h", "redis://h:PASS/0"])
def test_no_part_of_a_malformed_redis_url_is_in_its_message(capsys, url):
    code, err = start_with({"REDIS_URL": url}, capsys)
    assert code == 2 and err.startswith("friendlyhello: REDIS_URL is not valid: ") and "PASS" not in err


# -- the logs show what came, safely -----------------------------------------------------------

def test_text_logs_show_utf8_paths_as_sent_and_escape_controls_a_terminal_acts_on(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        raw_exchange(server.port, "GET /café HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw_exchange(server.port, "GET /a\u009bb\u202ec HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        log = server.log_lines()
    assert '"GET /café"' in log[0]
    assert '"GET /a\\x9bb\\u202ec"' in log[1]
