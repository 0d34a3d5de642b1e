"""A real browser (Debian's headless chromium) against friendlyhello: what a person sees and
what it counts. Skips locally without chromium; fails in CI, which installs it."""

import http.server
import shutil
import struct
import subprocess
import threading
import zlib

import pytest

from helpers import redis_counter, serving, unavailable

pytestmark = pytest.mark.slow

# As the probe of this workplace runs it: no sandbox as root, and nothing reaching outside.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path():
    path = shutil.which("chromium")
    if path is None:
        unavailable("chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture
def chromium(tmp_path):
    path = chromium_path()

    def run(*args, timeout=60):
        result = subprocess.run([path, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    return run


@pytest.fixture
def page_server():
    """Serves one HTML page, set by the test, from another origin on loopback. ``/hold`` (say,
    an image of the page, which holds its load event and so the browser's --dump-dom) answers
    once the page has asked for ``/done``, or after 20 s."""
    pages = {}
    done = threading.Event()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/done":
                done.set()
            elif self.path == "/hold":
                done.wait(20)
            body = pages["html"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield pages, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_page_prefetched_then_visited_counts_one_visit(chromium, page_server, redis_server):
    pages, page_url = page_server
    with serving({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port)}) as server:
        ours = f"http://127.0.0.1:{server.port}/"
        pages["html"] = f'<link rel="prefetch" href="{ours}"><p>a page that prefetches friendlyhello</p>'
        chromium("--virtual-time-budget=3000", "--dump-dom", page_url)  # prefetches, never shows it
        counted_by_prefetch = redis_counter(redis_server.port)
        dom = chromium("--dump-dom", ours)  # then the person goes there (same profile, same cache)
        log = server.log_lines()
    assert counted_by_prefetch == 0
    assert "<b>Visits:</b> 1" in dom
    assert [line.split('" ')[1].split(" ")[0] for line in log if '"GET /"' in line] == ["503", "200"], log
    assert redis_counter(redis_server.port) == 1


def png_picture(data):
    """(width, height, distinct bytes among its pixels) of a PNG: enough to tell a page drawn
    from a blank or broken screenshot, with the standard library alone."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            chunks.append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    return width, height, len(set(zlib.decompress(b"".join(chunks))))

