"""`hello_server.py watch URL`: steady requests, counted per version and replica, failures by
kind, and an exit status that says whether any request failed. Run as a user runs it (a
process), against the real server and against small servers that misbehave on purpose."""

import contextlib
import http.server
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from friendlyhello import watch, watch_tally
from helpers import SERVER, Process, child_environment, free_port, redis_env, serving, wait_until


def start_watch(url, *options):
    return Process({}, ["watch", url, *options])


def finish_watch(proc, timeout=15):
    """Its exit status and its JSON summary (or its output as text, without --json)."""
    try:
        code = proc.wait(timeout)
    finally:
        out, err = proc.finish()
    assert err == "", err
    return code, (json.loads(out) if out.startswith("{") else out)


@contextlib.contextmanager
def misbehaving(behave):
    """A TCP server on loopback that hands each connection to ``behave(sock)``; it counts the
    connections it accepted."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted, threads = [], []

    def accept():
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            accepted.append(sock)
            thread = threading.Thread(target=behave, args=(sock,), daemon=True)
            thread.start()
            threads.append(thread)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        listener.close()
        for sock in accepted:
            sock.close()


def never_answers(sock):
    sock.recv(65536)


def resets(sock):
    sock.recv(65536)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a RST, not a FIN


class PlainHandler(http.server.BaseHTTPRequestHandler):
    """A server that is not friendlyhello: no Friendlyhello-* fields."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's name
        body = b"hello\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.slow  # it waits out the pace it measures
def test_every_request_is_answered_counted_once_and_shown_by_version_and_replica(fake_redis):
    with serving({**redis_env(fake_redis), "VERSION": "5", "REPLICA_ID": "web-1"}) as server:
        kept = start_watch(f"http://127.0.0.1:{server.port}/", "--duration", "0.3", "--rate", "60", "--json")
        fresh = start_watch(f"http://127.0.0.1:{server.port}/", "--duration", "0.3", "--rate", "60", "--json",
                            "--new-connection", "--connections", "2")
        (code, seen), (fresh_code, fresh_seen) = finish_watch(kept), finish_watch(fresh)
    assert (code, fresh_code) == (0, 0)
    for summary in seen, fresh_seen:
        assert 12 <= summary["requests"] <= 22 and summary["failed"] == 0 and summary["statuses"] == {
            "200": summary["requests"]}
        assert list(summary["by_version"]) == ["5"] and list(summary["by_replica"]) == ["web-1"]
        assert summary["by_replica"]["web-1"]["version"] == "5" and summary["by_version"]["5"]["share"] == 1.0
        assert summary["visits"]["shown"] == summary["visits"]["distinct"] == summary["requests"]
        assert summary["p50_ms"] <= summary["p99_ms"] and summary["longest_gap_ms"] < 500
        assert [t["second"] for t in summary["timeline"]] == [0]
    assert (seen["keep_alive"], fresh_seen["keep_alive"]) == (True, False)
    assert fake_redis.visits == seen["requests"] + fresh_seen["requests"]  # the counter's rise, exactly


@pytest.mark.slow  # five runs of watch, waiting out timeouts
def test_each_kind_of_failure_is_counted_as_such_and_the_exit_status_is_1(fake_redis):
    nowhere = free_port()
    with misbehaving(never_answers) as (silent, _), misbehaving(resets) as (resetting, _), \
            serving(redis_env(fake_redis)) as server:
        runs = {kind: start_watch(url, "--duration", "0.3", "--rate", "10", "--timeout", "0.2", "--json")
                for kind, url in (("refused", f"http://127.0.0.1:{nowhere}/"),
                                  ("timeout", f"http://127.0.0.1:{silent}/"),
                                  ("reset", f"http://127.0.0.1:{resetting}/"),
                                  ("non-2xx", f"http://127.0.0.1:{server.port}/nope"),
                                  ("other", "http://no-such-host.invalid/"))}
        seen = {kind: finish_watch(proc) for kind, proc in runs.items()}
    for kind, (code, summary) in seen.items():
        assert code == 1, kind
        assert summary["requests"] >= 3 and summary["failed"] == summary["requests"], kind
        assert summary["failures"] == {k: summary["requests"] if k == kind else 0 for k in watch_tally.KINDS}, kind
    assert seen["non-2xx"][1]["statuses"] == {"404": seen["non-2xx"][1]["requests"]}
    assert list(seen["non-2xx"][1]["by_version"]) == ["1"]  # an answer, though a failed one
    assert seen["refused"][1]["by_version"] == {} and seen["refused"][1]["p50_ms"] is None


def answers_then(rest):
    """A server that reads the request, then sends ``rest``: bytes, or a callable that sends."""
    def behave(sock):
        sock.recv(65536)
        try:
            rest(sock) if callable(rest) else sock.sendall(rest)
        except OSError:
            pass
    return behave


def forever(piece, pause=0.0, first=b""):
    """Send ``first``, then ``piece`` again and again (every ``pause`` s), until the client goes."""
    def send(sock):
        sock.sendall(first)
        for _ in range(1_000_000):
            sock.sendall(piece)
            time.sleep(pause)
    return send


HEAD_200 = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
HOSTILE = {
    "never answers": never_answers,
    "an endless head": answers_then(forever(b"X-More: yes\r\n", 0.005, b"HTTP/1.1 200 OK\r\n")),
    "endless 1xx": answers_then(forever(b"HTTP/1.1 100 Continue\r\n\r\n", 0.005)),
    "a slow body": answers_then(forever(b"x", 0.01, HEAD_200 + b"Content-Length: 100000\r\n\r\n")),
    "an endless body": answers_then(forever(b"x" * 65536, 0, HEAD_200 + b"\r\n")),  # no length: until closed
    "endless chunks": answers_then(forever(b"10000\r\n" + b"x" * 65536 + b"\r\n", 0,
                                           HEAD_200 + b"Transfer-Encoding: chunked\r\n\r\n")),
}


@pytest.mark.slow  # runs of watch that wait out their timeouts
@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_server_that_never_finishes_an_answer_fails_every_request_and_the_run_ends_within_one_timeout(name):
    with misbehaving(HOSTILE[name]) as (port, accepted):
        started = time.monotonic()
        proc = start_watch(f"http://127.0.0.1:{port}/", "--duration", "0.5", "--rate", "20", "--timeout", "1",
                           "--json")
        code, seen = finish_watch(proc)
        took = time.monotonic() - started
    assert code == 1 and seen["requests"] >= 4 and seen["ok"] == 0, seen
    assert seen["failures"]["timeout"] == seen["requests"] == len(accepted), seen["failures"]
    assert took < 0.5 + 1 + 1.5  # its duration, one timeout, and a process's start and end


def closes_mid_body(sock):
    sock.recv(65536)
    sock.sendall(HEAD_200 + b"Content-Length: 100\r\n\r\n{\"visits\": ")
    sock.close()


def chunked_with_trailers(sock):
    while sock.recv(65536):
        body = b'{"visits": 7, "redis": "ok"}'
        sock.sendall(b"HTTP/1.1 200 OK\r\nFriendlyhello-Version: 9\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + b"%x;ext=1\r\n" % 5 + body[:5] + b"\r\n"
                     + b"%x\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\nTrailer: x\r\n\r\n")


@pytest.mark.slow  # two runs of watch
def test_an_answer_cut_short_is_a_reset_and_a_chunked_one_with_trailers_is_read_whole():
    with misbehaving(closes_mid_body) as (cut, _), misbehaving(chunked_with_trailers) as (chunked, accepted):
        cut_code, cut_seen = finish_watch(start_watch(f"http://127.0.0.1:{cut}/", "--duration", "0.3", "--json"))
        code, seen = finish_watch(start_watch(f"http://127.0.0.1:{chunked}/", "--duration", "0.3", "--rate", "40",
                                              "--connections", "1", "--json"))
    assert cut_code == 1 and cut_seen["failures"]["reset"] == cut_seen["requests"] >= 3
    assert code == 0 and seen["requests"] >= 8 and list(seen["by_version"]) == ["9"]
    assert seen["visits"]["shown"] == seen["requests"] and len(accepted) == 1  # kept alive through the chunks


@pytest.mark.slow  # a run of watch
def test_a_second_signal_ends_it_at_once_and_the_requests_in_flight_are_counted_as_such():
    with misbehaving(never_answers) as (port, accepted):
        proc = start_watch(f"http://127.0.0.1:{port}/", "--timeout", "60", "--connections", "3", "--json")
        wait_until(lambda: len(accepted) == 3, within=10, what="watch's three requests", pace=0.02)
        started = time.monotonic()
        proc.signal(signal.SIGINT)  # stop sending: the three in flight have 60 s
        proc.signal(signal.SIGTERM)  # and now: no waiting
        code, seen = finish_watch(proc)
        took = time.monotonic() - started
    assert code == 1 and took < 3
    assert seen["requests"] == seen["failed"] == seen["failures"]["in-flight"] == 3


def test_a_body_is_read_in_pieces_and_dropped_never_held():
    import tracemalloc

    from friendlyhello import http_client
    size = 64 * 1024 * 1024
    with misbehaving(answers_then(lambda sock: [sock.sendall(HEAD_200 + b"Content-Length: %d\r\n\r\n" % size)]
                                  + [sock.sendall(b"x" * 65536) for _ in range(size // 65536)])) as (port, _):
        conn = http_client.Connection("127.0.0.1", port)
        tracemalloc.start()
        try:
            answer = conn.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", time.monotonic() + 30)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            conn.close()
    assert answer.status == 200 and len(answer.body) == http_client.KEEP_BODY  # a JSON body's first 64 KiB, kept
    assert peak < 2 * 1024 * 1024  # of a 64 MiB body


@pytest.mark.slow  # two runs of watch, one after the other
def test_a_server_that_is_not_friendlyhello_is_counted_as_unknown_and_connections_are_kept_or_not():
    plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PlainHandler)
    connections = []
    plain.get_request = lambda original=plain.get_request: connections.append(original()) or connections[-1]
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{plain.server_address[1]}/"
        code, seen = finish_watch(start_watch(url, "--duration", "0.5", "--rate", "20", "--connections", "2",
                                              "--json"))
        kept = len(connections)
        fresh_code, fresh = finish_watch(start_watch(url, "--duration", "0.5", "--rate", "20", "--json",
                                                     "--new-connection"))
    finally:
        plain.shutdown()
        plain.server_close()
    assert (code, fresh_code) == (0, 0)
    assert list(seen["by_version"]) == list(seen["by_replica"]) == ["unknown"]
    assert seen["visits"]["shown"] == 0 and seen["requests"] >= 8
    assert kept == 2  # a connection per client thread, kept alive
    assert len(connections) - kept == fresh["requests"]  # a new one for every request


@pytest.mark.slow  # waits for the server's idle timeout between requests
def test_a_connection_the_server_closed_while_idle_is_retried_once_on_a_new_one(fake_redis):
    with serving({**redis_env(fake_redis), "IDLE_TIMEOUT": "0.1"}) as server:
        code, seen = finish_watch(start_watch(f"http://127.0.0.1:{server.port}/", "--duration", "1.6", "--rate",
                                              "2", "--connections", "1", "--json"))
    assert code == 0 and seen["failed"] == 0
    assert seen["retried"] >= 2 and seen["retried"] <= seen["requests"]
    assert fake_redis.visits == seen["visits"]["shown"] == seen["requests"]  # retried, never counted twice


@pytest.mark.slow  # three runs of watch as processes
def test_ctrl_c_or_sigterm_ends_it_with_the_summary_even_if_it_started_ignoring_ctrl_c(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        ignoring = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited, as a shell's `&` does
        try:
            runs = {signum: start_watch(f"http://127.0.0.1:{server.port}/?{signum}", "--rate", "20")
                    for signum in (signal.SIGINT, signal.SIGTERM)}
        finally:
            signal.signal(signal.SIGINT, ignoring)
        # Each has sent a request, so its handlers are set.
        wait_until(lambda: all(any(f"/?{signum}" in line for line in server.log_lines()) for signum in runs),
                   within=10, what="a request from each run", pace=0.02)
        for signum, proc in runs.items():
            proc.signal(signum)
        ended = [finish_watch(proc) for proc in runs.values()]
    for code, text in ended:
        assert code == 0
        assert text.startswith(f"watch http://127.0.0.1:{server.port}/?")
        assert "connections kept alive" in text
        assert " 0 failed (0 refused, 0 reset, 0 timeout, 0 non-2xx, 0 other, 0 in-flight)" in text
        assert "\nversion  requests  share  refused" in text and "\n1   " in text


@pytest.mark.parametrize("args", [
    [], ["ftp://host/"], ["http:///path"], ["http://h:99999/"], ["http://h/", "--rate", "0"],
    ["http://h/", "--connections", "two"], ["http://h/", "--timeout", "-1"], ["http://h/", "--duration", "nan"],
])
def test_bad_usage_exits_2(args):
    with pytest.raises(SystemExit) as exited:
        watch.parse_options(args)
    assert exited.value.code == 2


def test_the_table_has_a_row_per_version_and_per_replica_and_one_for_requests_never_answered():
    results = [watch_tally.Result(0.0, 0.01, "1", "a", None, 200, False, 1, "ok"),
               watch_tally.Result(0.5, 0.52, "2", "b", None, 200, False, 2, "ok"),
               watch_tally.Result(0.6, 0.9, "2", "b", "non-2xx", 503, False, None, None),
               watch_tally.Result(0.7, 1.7, None, None, "timeout", None, False, None, None)]

    class Options:
        url, rate, connections, new_connection = "http://x/", 4.0, 1, True
    seen = watch_tally.summary(results, Options, 2.0)
    lines = watch_tally.table(seen).splitlines()
    assert lines[1] == ("4 requests, 2 failed (0 refused, 0 reset, 1 timeout, 1 non-2xx, 0 other, 0 in-flight), "
                        "0 retried; p50 10.0 ms, p99 20.0 ms, longest gap 510.0 ms")
    assert lines[3].split() == ["version", "requests", "share", "refused", "reset", "timeout", "non-2xx", "in",
                                "flight", "p50", "ms", "p99", "ms", "longest", "gap", "ms", "first", "s", "last", "s"]
    assert lines[4].split() == ["1", "1", "25%", "0", "0", "0", "0", "0", "10.0", "10.0", "-", "0.01", "0.01"]
    assert lines[5].split() == ["2", "2", "50%", "0", "0", "0", "1", "0", "20.0", "20.0", "-", "0.52", "0.9"]
    assert lines[6].split()[:9] == ["(no", "answer)", "1", "25%", "0", "0", "1", "0", "0"]
    assert lines[10].split()[:4] == ["b", "2", "2", "50%"] and lines[8].startswith("replica  version  requests")
    assert seen["timeline"] == [{"second": 0, "answers": {"1": 1, "2": 1, "failed": 1}},
                                {"second": 1, "answers": {"failed": 1}}]
    assert seen["visits"] == {"shown": 2, "distinct": 2, "lowest": 1, "highest": 2, "no_reply": 0, "disabled": 0}


@pytest.mark.slow  # runs for two seconds on a terminal
def test_on_a_terminal_the_table_is_redrawn_each_second_and_ends_with_the_summary(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        leader, follower = pty.openpty()
        proc = subprocess.Popen([sys.executable, SERVER, "watch", f"http://127.0.0.1:{server.port}/", "--duration",
                                 "2.5", "--rate", "10"], stdin=follower, stdout=follower, stderr=follower,
                                env=child_environment())
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is gone: watch has exited
                break
            if not chunk:
                break
            shown += chunk
        os.close(leader)
        code = proc.wait(5)
    screens = shown.split(b"\x1b[H\x1b[2J")[1:]
    assert code == 0 and len(screens) >= 3  # two redraws while it ran, and the summary
    assert all(b"\r\nversion  requests  share" in screen for screen in screens)
    assert b" 0 failed " in screens[-1] and re.search(rb"\r\n1 +2[0-9] +100%", screens[-1])
