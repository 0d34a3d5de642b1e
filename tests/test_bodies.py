"""Request bodies at /echo (POST, PUT, PATCH): read as they come, by Content-Length or in chunks,
within MAX_BODY and BODY_TIMEOUT, with 100 Continue; summed up (length, SHA-256, the first KiB),
never held; the framing as strict as ever, so a body is never read as a request. Raw sockets,
curl in each framing, and nginx and HAProxy in front."""

import hashlib
import json
import os
import re
import socket
import subprocess
import time

import pytest

from helpers import metric_sample, raw_exchange, refused_env, request, serving
from test_proxies import end_proxy, free_port, run_proxy, unquoted_lines


@pytest.fixture(scope="module")
def shared():
    with serving(refused_env(MAX_BODY="100000", IDLE_TIMEOUT="0.5", BODY_TIMEOUT="1.5")) as server:
        yield server


def post(method="POST", body=b"", fields=b"", path="/echo"):
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n".encode() + fields
    return head + b"\r\n" + body


def answers(data):
    """The answers in ``data``, in order: [(status, fields, body)], each body by its length."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:])
        length = int(fields.get("Content-Length", 0))
        found.append((int(lines[0].split()[1]), fields, rest[:length]))
        data = rest[length:]
    return found


def seen_body(answer):
    return json.loads(answer[2])["body"]


def test_a_body_by_content_length_is_summed_up_and_the_connection_goes_on(shared):
    body = bytes(range(256)) * 10  # 2,560 bytes, every byte value
    data = raw_exchange(shared.port, post(body=body, fields=b"Content-Length: 2560\r\nContent-Type: x/y\r\n")
                        + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    (status, fields, _), healthz = answers(data)[0], answers(data)[1]
    seen = seen_body(answers(data)[0])
    assert status == 200 and healthz[0] == 200 and healthz[2] == b"ok\n"  # the next request, after the body
    assert seen["length"] == 2560 and seen["sha256"] == hashlib.sha256(body).hexdigest()
    assert seen["framing"] == "content-length" and seen["content_type"] == "x/y"
    # The first KiB: UTF-8 where it is (JSON escapes the controls), an escape for each byte where not.
    assert seen["start"].startswith("\x00\x01\x02") and "\\x80\\x81" in seen["start"]
    assert seen["start"].endswith("\\xff") and seen["start"].count("\\x") == 128 * 4
    assert "Connection" not in fields


def test_a_chunked_body_with_extensions_and_trailers_is_read_whole_and_the_trailers_dropped(shared):
    chunks = (b"5;name=value\r\nhello\r\n" b"1\r\n \r\n" b"A ; ext\r\n0123456789\r\n"
              b"0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n")
    data = raw_exchange(shared.port, post("PUT", chunks, b"Transfer-Encoding: chunked\r\n")
                        + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    first, second = answers(data)
    seen = seen_body(first)
    assert first[0] == 200 and second[2] == b"ok\n"
    assert (seen["length"], seen["start"], seen["framing"]) == (16, "hello 0123456789", "chunked")
    headers = json.loads(first[2])["headers"]
    assert ["Transfer-Encoding", "chunked"] in headers and not any(name == "X-Checksum" for name, _ in headers)


def test_a_body_sent_a_byte_at_a_time_is_read_whole(shared):
    chunked = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", shared.port), timeout=5) as sock:
        for byte in post("PATCH", chunked, b"Transfer-Encoding: chunked\r\nConnection: close\r\n"):
            sock.send(bytes([byte]))
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    seen = seen_body(answers(data)[0])
    assert (seen["length"], seen["start"]) == (5, "abcde")


def test_100_continue_comes_before_the_body_is_read_and_a_declared_length_over_max_body_is_413_at_once(shared):
    with socket.create_connection(("127.0.0.1", shared.port), timeout=5) as sock:
        sock.sendall(post(fields=b"Content-Length: 4\r\nExpect: 100-continue\r\n"))
        interim = sock.recv(65536)
        sock.sendall(b"body")
        final = sock.recv(65536)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200 OK\r\n") and seen_body(answers(final)[0])["start"] == "body"
    for expect in (b"", b"Expect: 100-continue\r\n"):
        with socket.create_connection(("127.0.0.1", shared.port), timeout=5) as sock:
            sock.sendall(post(fields=b"Content-Length: 100001\r\n" + expect))
            data = b"".join(iter(lambda: sock.recv(65536), b""))  # closed after it, no body awaited
        status, fields, words = answers(data)[0]
        assert status == 413 and fields["Connection"] == "close" and b"100000 bytes" in words


def test_a_chunked_body_past_max_body_is_413_and_nothing_more_is_read(shared):
    big = b"%x\r\n%s\r\n" % (60000, b"a" * 60000)
    data = raw_exchange(shared.port, post(body=big + big + b"0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                          fields=b"Transfer-Encoding: chunked\r\n"))
    found = answers(data)
    assert [f[0] for f in found] == [413] and found[0][1]["Connection"] == "close"


@pytest.mark.slow  # waits out the idle timeout
@pytest.mark.parametrize("name, data, status", [
    ("a short body, then silence", post(body=b"12345", fields=b"Content-Length: 10\r\n"), 408),
    ("a chunk that never ends", post(body=b"a\r\nabc", fields=b"Transfer-Encoding: chunked\r\n"), 408),
])
def test_a_body_that_stops_coming_is_408_after_the_idle_timeout(shared, name, data, status):
    started = time.monotonic()
    found = answers(raw_exchange(shared.port, data))
    took = time.monotonic() - started
    assert [f[0] for f in found] == [status], name
    assert 0.4 < took < 1.2, took


@pytest.mark.slow  # waits out the body's timeout
def test_a_body_dribbled_slower_than_its_total_deadline_is_408_at_body_timeout(shared):
    with socket.create_connection(("127.0.0.1", shared.port), timeout=5) as sock:
        sock.sendall(post(fields=b"Content-Length: 100\r\n"))
        started = time.monotonic()
        data = b""
        while not data and time.monotonic() - started < 4:
            sock.send(b"x")  # one byte each 0.2 s: each read within IDLE_TIMEOUT, the whole not
            time.sleep(0.2)
            sock.setblocking(False)
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                pass
            sock.setblocking(True)
        took = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 408 ") and 1.3 < took < 2.2, (data[:40], took)


def test_a_body_longer_than_its_length_says_is_read_as_the_next_request_and_refused(shared):
    data = raw_exchange(shared.port, post(body=b"12345EXTRA BYTES\r\n\r\n", fields=b"Content-Length: 5\r\n"))
    found = answers(data)
    assert [f[0] for f in found] == [200, 400] and seen_body(found[0])["start"] == "12345"


@pytest.mark.parametrize("name, fields, body", [
    ("CL.TE", b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG"),
    ("TE.CL", b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"8\r\nSMUGGLED\r\n0\r\n\r\n"),
    ("two lengths", b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd"),
    ("chunked not last", b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
    ("a size that overflows", b"Transfer-Encoding: chunked\r\n", b"10000000000000001\r\na\r\n0\r\n\r\n"),
    ("a size not hexadecimal", b"Transfer-Encoding: chunked\r\n", b"zz\r\nab\r\n0\r\n\r\n"),
    ("a negative size", b"Transfer-Encoding: chunked\r\n", b"-1\r\na\r\n0\r\n\r\n"),
    ("a chunk longer than its size", b"Transfer-Encoding: chunked\r\n", b"2\r\nabcd\r\n0\r\n\r\n"),
    ("a length with a sign", b"Content-Length: +4\r\n", b"abcd"),
    ("trailers without end", b"Transfer-Encoding: chunked\r\n", b"0\r\n" + b"X: " + b"y" * 17000 + b"\r\n"),
])
def test_a_body_whose_framing_is_in_doubt_is_400_and_the_connection_closes(shared, name, fields, body):
    data = raw_exchange(shared.port, post(body=body + b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", fields=fields))
    found = answers(data)
    assert [f[0] for f in found] == [400], (name, data[:200])
    assert found[0][1]["Connection"] == "close", name


def test_a_request_body_in_http_1_0_chunks_is_400(shared):
    data = raw_exchange(shared.port, b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ")


def test_other_routes_answer_the_body_methods_with_405_and_their_allow(shared):
    page = request(shared.port, "/", method="POST")
    echo = request(shared.port, "/echo", method="DELETE")
    assert (page.status, page.headers["Allow"]) == (405, "GET, HEAD")
    assert (echo.status, echo.headers["Allow"]) == (405, "GET, HEAD, POST, PUT, PATCH")


def test_bodies_read_are_counted_by_route_and_a_get_shows_none(shared):
    before = request(shared.port, "/metrics").text
    raw_exchange(shared.port, post(body=b"x" * 777, fields=b"Content-Length: 777\r\nConnection: close\r\n"))
    after = request(shared.port, "/metrics").text
    key = 'friendlyhello_request_body_bytes_total{route="/echo"}'
    counted = [float(m.group(1)) if (m := re.search(rf"^{re.escape(key)} (\S+)$", t, re.M)) else 0.0
               for t in (before, after)]
    assert counted[1] - counted[0] == 777
    assert json.loads(request(shared.port, "/echo", headers={"Accept": "application/json"}).body)["body"] is None
    assert metric_sample(after, "friendlyhello_open_connections") >= 1


def curl(*args):
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=30)


@pytest.mark.slow  # curl, several times
def test_curl_s_uploads_in_each_framing_are_summed_up_exactly(tmp_path):
    payload = os.urandom(300_000)
    (tmp_path / "payload").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    with serving(refused_env(MAX_BODY="1000000")) as server:
        url = f"http://127.0.0.1:{server.port}/echo"
        runs = {"length": curl("-H", "Accept: application/json", "--data-binary", f"@{tmp_path}/payload", url),
                "chunked": curl("-H", "Accept: application/json", "-H", "Transfer-Encoding: chunked",
                                "--data-binary", f"@{tmp_path}/payload", url),
                "put with 100-continue": curl("-H", "Accept: application/json", "-H", "Expect: 100-continue",
                                              "-T", f"{tmp_path}/payload", url)}
    for name, done in runs.items():
        seen = json.loads(done.stdout)["body"]
        assert done.returncode == 0 and (seen["length"], seen["sha256"]) == (300_000, digest), name
    assert json.loads(runs["chunked"].stdout)["body"]["framing"] == "chunked"


@pytest.mark.slow  # a quarter gigabyte uploaded
def test_a_large_body_is_read_with_the_server_s_memory_flat():
    from helpers import Process

    proc = Process(refused_env(PORT="0", BIND="127.0.0.1", MAX_BODY=str(1 << 30), ACCESS_LOG="off"))
    try:
        proc.wait_listening()
        size, piece = 256 << 20, os.urandom(1 << 20)
        rss = []
        with socket.create_connection(("127.0.0.1", proc.port), timeout=30) as sock:
            sock.sendall(post(fields=f"Content-Length: {size}\r\nConnection: close\r\n".encode()))
            for n in range(size // len(piece)):
                sock.sendall(piece)
                if n % 32 == 0:
                    with open(f"/proc/{proc.process.pid}/status") as status:
                        rss.append(int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1)))
            data = b"".join(iter(lambda: sock.recv(65536), b""))
    finally:
        proc.finish()
    seen = seen_body(answers(data)[0])
    assert seen["length"] == size and seen["sha256"] == hashlib.sha256(piece * 256).hexdigest()
    assert max(rss) - min(rss) < 4 * 1024, rss  # KiB


# -- behind nginx and HAProxy -------------------------------------------------------------------

@pytest.mark.slow  # real nginx and HAProxy, started for it
def test_through_nginx_and_haproxy_bodies_are_limited_buffered_or_streamed_as_configured(tmp_path):
    payload = os.urandom(200_000)
    (tmp_path / "payload").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    with serving(refused_env(MAX_BODY="150000", TRUSTED_PROXIES="127.0.0.1")) as server:
        ports = {"plain_port": server.port, "front_port": free_port()}
        nginx = run_proxy("nginx", "nginx-bodies.conf", tmp_path, (ports["front_port"],), **ports)
        front = f"http://127.0.0.1:{ports['front_port']}"
        try:
            small = curl("-H", "Accept: application/json", "--data-binary", "@" + str(tmp_path / "payload"),
                         "-w", "\n%{http_code}", f"{front}/limited/echo")
            streamed = curl("-H", "Accept: application/json", "-H", "Transfer-Encoding: chunked", "--data-binary",
                            "@" + str(tmp_path / "payload"), "-w", "\n%{http_code}", f"{front}/streamed/echo")
            buffered = curl("-H", "Accept: application/json", "-H", "Transfer-Encoding: chunked", "--data-binary",
                            f"@{tmp_path}/payload", "--max-filesize", "10000000", "-w", "\n%{http_code}",
                            f"{front}/buffered/echo")
        finally:
            end_proxy(nginx)
        ports["front_port"] = free_port()
        haproxy = run_proxy("haproxy", "haproxy-bodies.cfg", tmp_path, (ports["front_port"],), **ports)
        try:
            through_haproxy = curl("-H", "Accept: application/json", "-H", "Transfer-Encoding: chunked",
                                   "--data-binary", "@" + str(tmp_path / "payload"), "-w", "\n%{http_code}",
                                   f"http://127.0.0.1:{ports['front_port']}/echo")
        finally:
            end_proxy(haproxy)
    status = {name: done.stdout.rsplit(b"\n", 1)[1] for name, done in
              (("limited", small), ("streamed", streamed), ("buffered", buffered), ("haproxy", through_haproxy))}
    print(f"\nthrough the proxies, 200,000 bytes against MAX_BODY 150,000: {status}")
    assert status["limited"] == b"413" and b"nginx" in small.stdout  # nginx's own: client_max_body_size 100k
    # proxy_request_buffering off: the chunks passed on as they come, and friendlyhello's limit says 413
    assert status["streamed"] == b"413" and b"MAX_BODY (150000 bytes)" in streamed.stdout
    assert status["buffered"] == b"413"  # nginx buffered it whole, then sent it with its length: 413 at once
    assert status["haproxy"] == b"413"
    with serving(refused_env(TRUSTED_PROXIES="127.0.0.1")) as server:  # MAX_BODY 1 MiB: all are taken
        ports = {"plain_port": server.port, "front_port": free_port()}
        nginx = run_proxy("nginx", "nginx-bodies.conf", tmp_path, (ports["front_port"],), **ports)
        try:
            front = f"http://127.0.0.1:{ports['front_port']}"
            seen = {path: json.loads(curl("-H", "Accept: application/json", "-H", "Transfer-Encoding: chunked",
                                          "--data-binary", "@" + str(tmp_path / "payload"),
                                          f"{front}/{path}/echo").stdout)["body"]
                    for path in ("streamed", "buffered")}
        finally:
            end_proxy(nginx)
        ports["front_port"] = free_port()
        haproxy = run_proxy("haproxy", "haproxy-bodies.cfg", tmp_path, (ports["front_port"],), **ports)
        try:
            seen["haproxy"] = json.loads(curl("-H", "Accept: application/json", "-H", "Transfer-Encoding: chunked",
                                              "--data-binary", "@" + str(tmp_path / "payload"),
                                              f"http://127.0.0.1:{ports['front_port']}/echo").stdout)["body"]
        finally:
            end_proxy(haproxy)
    print(f"framing as it arrived: { {name: body['framing'] for name, body in seen.items()} }")
    assert all((body["length"], body["sha256"]) == (200_000, digest) for body in seen.values())
    assert seen["streamed"]["framing"] == "chunked"  # passed on in chunks
    assert seen["buffered"]["framing"] == "content-length"  # nginx buffered it whole and sent its length


def test_the_docs_quote_the_body_proxy_configurations():
    assert unquoted_lines("bodies.md", "nginx-bodies.conf", "haproxy-bodies.cfg") == []


@pytest.mark.slow  # curl over TLS, twice
def test_bodies_come_over_tls_alike(tmp_path):
    from certificates import certificates
    from test_tls import tls_env

    certs = certificates()
    payload = os.urandom(100_000)
    (tmp_path / "payload").write_bytes(payload)
    with serving(tls_env(certs)) as server:
        url = f"https://localhost:{server.tls_port}/echo"
        seen = [json.loads(curl("--cacert", certs.ca, "-H", "Accept: application/json", *framing, "--data-binary",
                                f"@{tmp_path}/payload", url).stdout)["body"]
                for framing in ((), ("-H", "Transfer-Encoding: chunked"))]
    assert [(b["length"], b["sha256"], b["framing"]) for b in seen] == [
        (100_000, hashlib.sha256(payload).hexdigest(), "content-length"),
        (100_000, hashlib.sha256(payload).hexdigest(), "chunked")]
