"""Streams: /bytes/N (exact sizes and ranges), /stream/N (JSON lines, a chunk each), /drip
(bytes spread over time) and /sse (server-sent events), read off raw sockets and by curl, over
TLS, behind nginx and HAProxy; a client that does not read pauses its stream, and a stop ends
the endless kind cleanly."""

import json
import re
import signal
import socket
import subprocess
import time

import pytest

from certificates import certificates
from helpers import Process, metric_sample, refused_env, request, serving, wait_until
from test_proxies import end_proxy, free_port, run_proxy, unquoted_lines
from test_tls import tls_env

PATTERN = bytes(range(256)) * 4096  # what /bytes sends: byte i is i % 256


@pytest.fixture(scope="module")
def shared():
    with serving(refused_env(REPLICA_ID="web-1", VERSION="3")) as server:
        yield server


class Raw:
    """One request on a raw socket: the head's lines and fields, then the body as it comes,
    each piece stamped with when it came."""

    def __init__(self, port, target, version="1.1", extra=b"", host="127.0.0.1", buffer=None):
        self.sock = socket.socket()
        if buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        self.sock.settimeout(10)
        self.sock.connect((host, port))
        self.started = time.monotonic()
        self.sock.sendall(f"GET {target} HTTP/{version}\r\nHost: x\r\n".encode() + extra + b"\r\n")
        self.data = b""
        while b"\r\n\r\n" not in self.data:
            self.data += self.sock.recv(65536)
        head, _, self.data = self.data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.fields = dict(line.split(": ", 1) for line in lines[1:])

    def until_closed(self):
        while chunk := self.sock.recv(65536):
            self.data += chunk
        self.sock.close()
        return self.data

    def chunks(self):
        """The chunked body's chunks, each with when it came: [(seconds, bytes)], once the last
        one (size 0) came."""
        found, pending = [], self.data
        while True:
            size_line = re.match(rb"([0-9a-f]+)\r\n", pending)
            if size_line and len(pending) >= size_line.end() + int(size_line.group(1), 16) + 2:
                size = int(size_line.group(1), 16)
                if size == 0:
                    return found
                found.append((time.monotonic() - self.started, pending[size_line.end():size_line.end() + size]))
                pending = pending[size_line.end() + size + 2:]
                continue
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before the last chunk: {pending[:200]!r}"
            pending += chunk


def test_bytes_sends_exactly_n_bytes_of_the_pattern_with_its_length(shared):
    for size in (0, 1, 255, 256, 70_000, 1_048_576):
        answer = request(shared.port, f"/bytes/{size}")
        assert answer.status == 200 and answer.headers["Content-Length"] == str(size)
        assert answer.headers["Content-Type"] == "application/octet-stream"
        assert answer.headers["Accept-Ranges"] == "bytes"
        assert answer.body == (PATTERN * (size // len(PATTERN) + 1))[:size], size
    head = request(shared.port, "/bytes/1073741824", method="HEAD")
    assert head.status == 200 and head.headers["Content-Length"] == "1073741824" and head.body == b""


@pytest.mark.parametrize("path", ["/bytes/1073741825", "/bytes/-1", "/bytes/1e3", "/bytes/", "/bytes/12345678901"])
def test_bytes_past_its_bound_or_not_a_number_is_400_saying_the_bound(shared, path):
    answer = request(shared.port, path)
    assert answer.status == 400 and "1073741824 (1 GiB)" in answer.text


@pytest.mark.parametrize("field, status, first, last", [
    ("bytes=10-19", 206, 10, 19), ("bytes=250-", 206, 250, 299), ("bytes=-5", 206, 295, 299),
    ("bytes=290-1000", 206, 290, 299), ("bytes=0-0", 206, 0, 0),
    ("bytes=300-", 416, None, None), ("bytes=-0", 416, None, None),
    ("bytes=0-1, 5-6", 200, 0, 299), ("bytes=5-2", 200, 0, 299), ("items=0-5", 200, 0, 299),
    ("bytes=", 200, 0, 299), ("bytes=-", 200, 0, 299),
])
def test_one_range_is_answered_with_206_an_unsatisfiable_one_with_416_any_other_with_the_whole(
        shared, field, status, first, last):
    answer = request(shared.port, "/bytes/300", headers={"Range": field})
    assert answer.status == status, field
    if status == 416:
        assert answer.headers["Content-Range"] == "bytes */300"
        return
    assert answer.body == PATTERN[first:last + 1] and answer.headers["Content-Length"] == str(last - first + 1)
    if status == 206:
        assert answer.headers["Content-Range"] == f"bytes {first}-{last}/300"
    else:
        assert "Content-Range" not in answer.headers


def test_stream_sends_n_json_lines_each_a_chunk_of_its_own_then_the_connection_goes_on(shared):
    raw = Raw(shared.port, "/stream/5")
    chunks = raw.chunks()
    assert raw.status == 200 and raw.fields["Transfer-Encoding"] == "chunked"
    assert raw.fields["Content-Type"] == "application/x-ndjson" and "Content-Length" not in raw.fields
    lines = [json.loads(piece) for _, piece in chunks]
    assert [line["id"] for line in lines] == [0, 1, 2, 3, 4]
    assert all(piece.endswith(b"\n") and piece.count(b"\n") == 1 for _, piece in chunks)
    assert {(line["replica"], line["version"], line["of"]) for line in lines} == {("web-1", "3", 5)}
    raw.sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection, kept alive
    assert raw.sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_stream_to_an_http_1_0_client_is_not_chunked_and_ends_with_the_connection(shared):
    raw = Raw(shared.port, "/stream/3", version="1.0")
    body = raw.until_closed()
    assert "Transfer-Encoding" not in raw.fields and raw.fields["Connection"] == "close"
    assert [json.loads(line)["id"] for line in body.splitlines()] == [0, 1, 2]


def test_server_sent_events_come_the_first_at_once_then_one_each_interval(shared):
    raw = Raw(shared.port, "/sse?count=4&interval=0.1")
    chunks = raw.chunks()
    assert raw.fields["Content-Type"] == "text/event-stream" and raw.fields["X-Accel-Buffering"] == "no"
    times = [at for at, _ in chunks]
    events = [dict(line.split(": ", 1) for line in piece.decode().strip().splitlines()) for _, piece in chunks]
    assert [e["id"] for e in events] == ["1", "2", "3", "4"] and {e["event"] for e in events} == {"tick"}
    assert events[0]["retry"] == "1000" and "retry" not in events[1]
    assert [json.loads(e["data"])["sequence"] for e in events] == [1, 2, 3, 4]
    assert json.loads(events[0]["data"])["replica"] == "web-1"
    assert times[0] < 0.1  # the first at once
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(0.07 < gap < 0.2 for gap in gaps), gaps


@pytest.mark.slow  # waits out the delay and the duration
def test_drip_waits_its_delay_then_spreads_its_bytes_over_its_duration(shared):
    raw = Raw(shared.port, "/drip?bytes=5&duration=0.25&delay=0.15")
    assert raw.fields["Content-Length"] == "5" and raw.status == 200
    arrivals = []
    while len(raw.data) < 5:
        raw.data += raw.sock.recv(65536)
        arrivals.append((time.monotonic() - raw.started, len(raw.data)))
    assert raw.data == b"*****"
    assert 0.14 < arrivals[0][0] < 0.25  # the first byte (and the head) after the delay
    assert 0.3 < arrivals[-1][0] < 0.5 and len(arrivals) >= 4  # the last by the duration's end, in pieces


@pytest.mark.parametrize("path, words", [
    ("/drip?bytes=0", "bytes: from 1 to 10485760"), ("/drip?duration=61", "duration: from 0 to 60"),
    ("/drip?delay=x", "delay: from 0 to 60"), ("/sse?count=0", "count: from 1 to 100000"),
    ("/sse?interval=0.001", "interval: from 0.01 to 3600"), ("/stream/0", "N from 1 to 100000"),
    ("/stream/100001", "N from 1 to 100000"), ("/stream/x", "N from 1 to 100000"),
])
def test_a_stream_s_parameters_out_of_bounds_are_400_naming_them(shared, path, words):
    answer = request(shared.port, path)
    assert answer.status == 400 and words in answer.text, answer.text


def test_a_client_that_stops_reading_pauses_its_stream_and_one_that_leaves_ends_it(shared):
    readers = [Raw(shared.port, "/bytes/1073741824", buffer=4096) for _ in range(20)]
    open_now = metric_sample(request(shared.port, "/metrics").text, "friendlyhello_streams_open")
    started = time.monotonic()
    assert request(shared.port, "/healthz").status == 200  # the loop goes on
    answered_in = time.monotonic() - started
    sent = metric_sample_labelled(request(shared.port, "/metrics").text, "friendlyhello_stream_bytes_total",
                                  'route="/bytes/"')
    for reader in readers:
        reader.sock.close()
    wait_until(lambda: metric_sample(request(shared.port, "/metrics").text, "friendlyhello_streams_open") == 0,
               5, "the streams ended")
    assert open_now == 20 and answered_in < 0.5
    assert sent < 20 * 8 * 1024 * 1024  # paused: a few of its pieces each went, far from 20 GiB


def metric_sample_labelled(text, name, labels):
    return float(re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} (\S+)$", text, re.M).group(1))


@pytest.mark.slow  # a gigabyte to a reader that takes it slowly
def test_a_gigabyte_to_a_slow_reader_keeps_the_server_s_memory_flat():
    proc = Process(refused_env(PORT="0", BIND="127.0.0.1", ACCESS_LOG="off"))
    try:
        proc.wait_listening()
        raw = Raw(proc.port, "/bytes/1073741824", buffer=65536)
        rss = []
        got = len(raw.data)
        while got < 1 << 30:
            got += len(raw.sock.recv(1 << 20))
            if got // (1 << 26) > len(rss):  # every 64 MiB
                with open(f"/proc/{proc.process.pid}/status") as status:
                    rss.append(int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1)))
        raw.sock.close()
    finally:
        proc.finish()
    assert got == 1 << 30 and len(rss) >= 15
    assert max(rss) - min(rss) < 4 * 1024, rss  # KiB: flat, never the body in memory


@pytest.mark.slow
def test_a_stop_ends_an_endless_event_stream_cleanly_when_its_delay_ends_and_exits_0():
    proc = Process(refused_env(PORT="0", BIND="127.0.0.1", SHUTDOWN_DELAY="0.5", DRAIN_TIMEOUT="3"))
    try:
        proc.wait_listening()
        raw = Raw(proc.port, "/sse?count=100000&interval=0.1")
        raw.sock.recv(1)  # the first event has come
        proc.signal(signal.SIGTERM)
        started = time.monotonic()
        body = raw.until_closed()
        took = time.monotonic() - started
        code = proc.wait(5)
    finally:
        proc.finish()
    assert body.endswith(b"\r\n0\r\n\r\n")  # the last chunk: a clean end, not a cut
    assert 0.4 < took < 1.5 and code == 0
    assert body.count(b"event: tick") >= 4  # served on through the delay


@pytest.mark.slow  # curl, twice, over TLS
def test_streams_go_over_tls_alike():
    certs = certificates()
    with serving(tls_env(certs)) as server:
        done = subprocess.run(["curl", "-sS", "--cacert", certs.ca, f"https://localhost:{server.tls_port}/bytes/3000000",
                               "-o", "-"], capture_output=True, timeout=30)
        events = subprocess.run(["curl", "-sSN", "--cacert", certs.ca,
                                 f"https://localhost:{server.tls_port}/sse?count=2&interval=0.05"],
                                capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == (PATTERN * 3)[:3_000_000]
    assert events.returncode == 0 and events.stdout.count("event: tick") == 2


# -- behind nginx and HAProxy -------------------------------------------------------------------

def first_and_last(port, target):
    """When the first and the last byte of the body came (seconds from the request), the body,
    and the status."""
    raw = Raw(port, target, extra=b"Connection: close\r\n")
    first = time.monotonic() - raw.started if raw.data else None
    while chunk := raw.sock.recv(65536):
        first = first if first is not None else time.monotonic() - raw.started
        raw.data += chunk
    return first, time.monotonic() - raw.started, raw.data, raw.status


@pytest.mark.slow  # real nginx and HAProxy, started for it, and slow streams through each
def test_through_nginx_and_haproxy_a_stream_passes_as_made_or_buffered_as_configured_and_a_slow_one_is_cut(tmp_path):
    with serving(refused_env()) as server:
        ports = {"plain_port": server.port, "front_port": free_port()}
        nginx = run_proxy("nginx", "nginx-streams.conf", tmp_path, (ports["front_port"],), **ports)
        try:
            front = ports["front_port"]
            seen = {"nginx buffered drip": first_and_last(front, "/buffered/drip?bytes=4&duration=0.6"),
                    "nginx unbuffered drip": first_and_last(front, "/unbuffered/drip?bytes=4&duration=0.6"),
                    "nginx buffered sse": first_and_last(front, "/buffered/sse?count=3&interval=0.3"),
                    "nginx late head": first_and_last(front, "/buffered/drip?bytes=1&delay=1.5"),
                    "nginx gap": first_and_last(front, "/unbuffered/drip?bytes=2&duration=3")}
        finally:
            end_proxy(nginx)
        ports.update(front_port=free_port(), no_delay_port=free_port())
        haproxy = run_proxy("haproxy", "haproxy-streams.cfg", tmp_path, (ports["front_port"], ports["no_delay_port"]),
                            **ports)
        try:
            seen.update({"haproxy sse": first_and_last(ports["front_port"], "/sse?count=3&interval=0.3"),
                         "haproxy no-delay sse": first_and_last(ports["no_delay_port"], "/sse?count=3&interval=0.3"),
                         "haproxy late head": first_and_last(ports["front_port"], "/drip?bytes=1&delay=1.5"),
                         "haproxy gap": first_and_last(ports["front_port"], "/drip?bytes=2&duration=3")})
        finally:
            end_proxy(haproxy)
    print("\n" + "\n".join(f"{name}: {status}, first byte {first and round(first, 2)} s, last {last:.2f} s, "
                            f"{len(body)} bytes" for name, (first, last, body, status) in seen.items()))
    first, last, body, status = seen["nginx buffered drip"]
    assert body == b"****" and first > 0.4  # held until the last byte came
    first, last, body, status = seen["nginx unbuffered drip"]
    assert body == b"****" and first < 0.1 and last > 0.4  # passed on as made
    for name in ("nginx buffered sse", "haproxy no-delay sse"):  # nginx heeds X-Accel-Buffering: no
        first, last, body, status = seen[name]
        assert first < 0.1 and last > 0.5 and body.count(b"event: tick") == 3, name
    first, _, body, _ = seen["haproxy sse"]  # without http-no-delay: the first event waits
    assert body.count(b"event: tick") == 3
    for name in ("nginx late head", "haproxy late head"):
        assert seen[name][3] == 504, name  # no head within the proxy's timeout: its own 504
    for name in ("nginx gap", "haproxy gap"):
        first, last, body, status = seen[name]
        assert status == 200 and body == b"*" and last < 2, name  # cut after the first byte: 1 of 2


def test_the_docs_quote_the_stream_proxy_configurations():
    assert unquoted_lines("streams.md", "nginx-streams.conf", "haproxy-streams.cfg") == []


@pytest.mark.slow  # a thousand connections
def test_a_thousand_paused_streams_hold_memory_for_what_they_have_not_sent_and_no_more():
    count = 1000  # a paused stream is closed once IDLE_TIMEOUT passes without the client taking a byte
    proc = Process(refused_env(PORT="0", BIND="127.0.0.1", ACCESS_LOG="off", IDLE_TIMEOUT="120"))
    readers = []
    try:
        proc.wait_listening()
        with open(f"/proc/{proc.process.pid}/status") as status:
            before = int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1))
        readers = [Raw(proc.port, "/bytes/1073741824", buffer=4096) for _ in range(count)]
        wait_until(lambda: metric_sample(request(proc.port, "/metrics").text, "friendlyhello_streams_open") == count,
                   10, "every stream open")
        started = time.monotonic()
        page = request(proc.port, "/healthz")
        answered_in = time.monotonic() - started
        with open(f"/proc/{proc.process.pid}/status") as status:
            after = int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1))
    finally:
        for reader in readers:
            reader.sock.close()
        proc.finish()
    per_stream = (after - before) * 1024 / count
    print(f"\n{count} paused streams: {per_stream:.0f} bytes of the server's memory each; /healthz in "
          f"{answered_in * 1000:.1f} ms")
    assert page.status == 200 and answered_in < 0.5
    assert per_stream < 8 * 1024  # a connection's own state: no piece copied, no body held
