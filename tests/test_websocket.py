"""WebSocket at /ws, with clients not written here (the `websockets` package, a strict client;
`wsproto`, frames crafted at will) and raw sockets for frames no client would send: the
greeting, the echo, ticks, fragments with control frames between them, the close handshake,
each broken frame's close code, pings, a client that does not read, TLS, and a stop."""

import collections
import html
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest
import websockets.sync.client
import wsproto
import wsproto.events

from certificates import certificates
from helpers import (
    Process,
    free_port,
    metric_sample,
    raw_exchange,
    refused_env,
    request,
    serving,
    unavailable,
    wait_until,
    without_id,
)
from test_browser import page_server
from test_proxies import end_proxy, run_proxy, unquoted_lines

__all__ = ["page_server"]  # a fixture, used by name
from test_tls import tls_env

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


@pytest.fixture(scope="module")
def shared():
    """One server for the tests that need nothing of their own (it starts in 50 ms, but there
    are many of them): REPLICA_ID web-1, VERSION 7."""
    with serving(refused_env(REPLICA_ID="web-1", VERSION="7")) as server:
        yield server


def client_frame(opcode, payload=b"", final=True, mask=True, rsv=0, length=None):
    """A frame as a client sends it (masked), or as it must not."""
    first = (0x80 if final else 0) | rsv | opcode
    length = len(payload) if length is None else length
    if length < 126:
        head = struct.pack("!BB", first, (0x80 if mask else 0) | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, length)
    else:
        head = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read_frame(sock):
    """One server frame: (opcode, payload); None when the connection closed."""
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    head = exactly(2)
    if head is None:
        return None
    assert not head[1] & 0x80, "a server's frame is never masked"
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", exactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", exactly(8))[0]
    return head[0] & 0x0F, exactly(length) if length else b""


def opened(port, path=b"/ws", buffers=None):
    """A raw socket past the upgrade and the greeting (its kernel buffers this small, if
    ``buffers``); the greeting's JSON."""
    sock = socket.socket()
    if buffers:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffers)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.sendall(UPGRADE.replace(b"/ws", path, 1))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), head
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head  # RFC 6455's example
    opcode, greeting = read_frame(sock)
    assert opcode == 1
    return sock, json.loads(greeting)


def closed_with(sock):
    """The close code of the server's Close, and whether the connection then ended."""
    while True:
        got = read_frame(sock)
        if got is None:
            return None, True
        opcode, payload = got
        if opcode == 8:
            code = struct.unpack("!H", payload[:2])[0] if payload else None
            return code, read_frame(sock) is None


def test_a_websocket_greets_with_who_answered_then_echoes_text_as_text_and_binary_as_binary(shared):
    server = shared
    with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}/ws",
                                        additional_headers={"X-Test": "yes"}) as ws:
        greeting = json.loads(ws.recv())
        ws.send("héllo, wörld")
        text = ws.recv()
        ws.send(b"\x00\xff" * 40000)
        binary = ws.recv()
        lines = server.log_lines()
    assert (greeting["replica"], greeting["version"]) == ("web-1", "7") and greeting["hostname"]
    assert ["X-Test", "yes"] in greeting["headers"] and ["Upgrade", "websocket"] in greeting["headers"]
    assert text == "héllo, wörld" and binary == b"\x00\xff" * 40000
    assert any('"GET /ws" 101' in line for line in lines)


def test_ticks_name_the_replica_every_interval(shared):
    with websockets.sync.client.connect(f"ws://127.0.0.1:{shared.port}/ws?ticks=0.1") as ws:
        ws.recv()
        started = time.monotonic()
        ticks = [json.loads(ws.recv()) for _ in range(3)]
        took = time.monotonic() - started
    assert [t["tick"] for t in ticks] == [1, 2, 3] and {t["replica"] for t in ticks} == {"web-1"}
    assert 0.25 < took < 0.6


@pytest.mark.parametrize("request_bytes, status, words", [
    (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", 426, b"send Upgrade: websocket"),
    (UPGRADE.replace(b"Connection: Upgrade\r\n", b""), 426, b"send Upgrade: websocket"),
    (UPGRADE.replace(b"Upgrade: websocket\r\n", b""), 426, b"send Upgrade: websocket"),
    (UPGRADE.replace(b"Version: 13", b"Version: 8"), 426, b"Sec-WebSocket-Version: 13\r\n"),
    (UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short"), 400, b"16 bytes in base64"),
    (UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"), 426, b"GET and HTTP/1.1"),
    (UPGRADE.replace(b"/ws", b"/ws?ticks=0"), 400, b"ticks: seconds from"),
    (UPGRADE.replace(b"GET", b"POST"), 405, b"Allow: GET, HEAD"),
])
def test_what_is_not_an_upgrade_it_takes_is_answered_in_http_saying_why(shared, request_bytes, status, words):
    server = shared
    closing = request_bytes.replace(b"Connection: Upgrade", b"Connection: Upgrade, close")
    if closing == request_bytes:
        closing = request_bytes.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    answer = raw_exchange(server.port, closing, timeout=3)
    assert answer.startswith(b"HTTP/1.1 %d " % status) and words in answer, answer[:300]
    if b"send Upgrade" in words or b"GET and HTTP/1.1" in words:  # RFC 9110 15.5.22: 426 names what to send
        assert b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" in answer


def test_fragments_with_a_ping_between_them_make_one_message_and_the_close_code_is_echoed(shared):
    connection = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server = shared
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(connection.send(wsproto.events.Request(host="x", target="/ws")))
    events = []

    def until(kind):
        while not any(isinstance(e, kind) for e in events):
            connection.receive_data(sock.recv(65536))
            events.extend(connection.events())
        return [e for e in events if isinstance(e, kind)]

    until(wsproto.events.TextMessage)  # the greeting
    events.clear()
    sock.sendall(connection.send(wsproto.events.TextMessage(data="hel", message_finished=False)))
    sock.sendall(connection.send(wsproto.events.Ping(payload=b"between")))
    sock.sendall(connection.send(wsproto.events.TextMessage(data="lo", message_finished=True)))
    (pong,) = until(wsproto.events.Pong)
    echoed = until(wsproto.events.TextMessage)
    sock.sendall(connection.send(wsproto.events.CloseConnection(code=4000, reason="bye")))
    (close,) = until(wsproto.events.CloseConnection)
    end = sock.recv(100)
    sock.close()
    assert pong.payload == b"between" and "".join(e.data for e in echoed) == "hello"
    assert close.code == 4000 and end == b""


BROKEN = [
    ("a reserved bit", client_frame(1, b"x", rsv=0x40), 1002, "a reserved bit is set (no extension)"),
    ("a reserved opcode", client_frame(3, b"x"), 1002, "opcode 3 is reserved"),
    ("an unmasked frame", client_frame(1, b"x", mask=False), 1002, "a client's frame must be masked"),
    ("a control frame of 126 bytes", client_frame(9, b"p" * 126), 1002, "a control frame is short and whole"),
    ("a fragmented ping", client_frame(9, b"p", final=False), 1002, "a control frame is short and whole"),
    ("a continuation first", client_frame(0, b"x"), 1002, "a continuation with no message begun"),
    ("a new message inside a fragmented one", client_frame(1, b"a", final=False) + client_frame(1, b"b"), 1002,
     "a new message inside a fragmented one"),
    ("a 64-bit length with its top bit set", struct.pack("!BBQ", 0x81, 0xFF, 1 << 63) + b"\0" * 4, 1002,
     "a 64-bit length with its top bit set"),
    ("text that is not UTF-8", client_frame(1, b"\xff\xfe"), 1007, "a text message that is not UTF-8"),
    ("a fragment's first bad byte, before the end", client_frame(1, b"ok\xc3\x28", final=False), 1007,
     "a text message that is not UTF-8"),
    ("a message over WS_MAX_MESSAGE", client_frame(2, length=2_000_000), 1009, "a message over 1048576 bytes"),
    ("fragments over WS_MAX_MESSAGE together", client_frame(2, b"x" * 600_000, final=False)
     + client_frame(0, b"x" * 600_000), 1009, "a message over 1048576 bytes"),
    ("a Close of one byte", client_frame(8, b"\x03"), 1002, "a Close frame of one byte"),
    ("a Close with code 1005", client_frame(8, struct.pack("!H", 1005)), 1002, "close code 1005 is not one to send"),
    ("a Close with code 2999", client_frame(8, struct.pack("!H", 2999)), 1002, "close code 2999 is not one to send"),
    ("a Close with code 5000", client_frame(8, struct.pack("!H", 5000)), 1002, "close code 5000 is not one to send"),
    ("a Close reason that is not UTF-8", client_frame(8, struct.pack("!H", 1000) + b"\xff"), 1007,
     "a close reason that is not UTF-8"),
]


def close_frame_of(sock):
    """The server's Close: (its code, its reason), and whether the connection then ended."""
    while (got := read_frame(sock)) is not None and got[0] != 8:
        pass
    if got is None:
        return None, None, True
    return struct.unpack("!H", got[1][:2])[0], got[1][2:].decode(), read_frame(sock) is None


@pytest.mark.parametrize("case, data, code, reason", BROKEN, ids=[case for case, _, _, _ in BROKEN])
def test_a_broken_frame_closes_with_its_code_and_reason_and_then_the_connection(shared, case, data, code, reason):
    server = shared
    sock, _ = opened(server.port)
    sock.sendall(data)
    got, said, ended = close_frame_of(sock)
    sock.close()
    still = server.get("/healthz").status
    assert (got, said, ended, still) == (code, reason, True, 200), case


@pytest.mark.parametrize("code", [1000, 1001, 1011, 1014, 3000, 4999])
def test_each_close_code_a_client_may_send_is_echoed(shared, code):
    sock, _ = opened(shared.port)
    sock.sendall(client_frame(8, struct.pack("!H", code) + b"bye"))
    got, _, ended = close_frame_of(sock)
    sock.close()
    assert (got, ended) == (code, True)


def test_a_close_without_a_code_is_answered_and_counted_as_1005(shared):
    before = request(shared.port, "/metrics").text
    sock, _ = opened(shared.port)
    sock.sendall(client_frame(8))
    opcode, payload = read_frame(sock)
    ended = read_frame(sock) is None
    sock.close()
    after = request(shared.port, "/metrics").text
    count = [float(m.group(1)) if (m := re.search(r'closes_total\{code="1005"\} (\S+)', t)) else 0.0
             for t in (before, after)]
    assert (opcode, payload, ended) == (8, b"", True) and count[1] - count[0] == 1


def test_the_largest_control_frame_and_a_message_of_exactly_ws_max_message_are_taken(shared):
    sock, _ = opened(shared.port)
    sock.sendall(client_frame(9, b"p" * 125) + client_frame(2, b"m" * (1024 * 1024)))
    pong, echo = read_frame(sock), read_frame(sock)
    sock.close()
    assert pong == (10, b"p" * 125) and echo == (2, b"m" * (1024 * 1024))


def test_a_frame_sent_a_byte_at_a_time_is_echoed(shared):
    server = shared
    sock, _ = opened(server.port)
    for byte in client_frame(1, b"a byte at a time"):
        sock.send(bytes([byte]))
    echoed = read_frame(sock)
    sock.close()
    assert echoed == (1, b"a byte at a time")


@pytest.mark.slow
def test_an_unanswered_ping_closes_with_1008_and_an_answering_client_stays():
    with serving(refused_env(WS_PING_INTERVAL="0.2")) as server:
        silent, _ = opened(server.port)
        with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}/ws") as answering:
            answering.recv()
            ping = read_frame(silent)
            started = time.monotonic()
            got, ended = closed_with(silent)
            took = time.monotonic() - started
            time.sleep(0.5)
            answering.send("still here")
            echoed = answering.recv()
        silent.close()
    assert ping == (9, b"friendlyhello") and (got, ended) == (1008, True) and 0.1 < took < 0.5
    assert echoed == "still here"


@pytest.mark.slow
def test_a_client_that_does_not_read_has_its_frames_left_unread_and_loses_none():
    """40 messages of 64 KiB sent, none read: the server stops reading when a backlog is
    waiting (and past what the kernel's buffers hold, the sender is stopped too); then every
    echo arrives, whole and in order."""
    with serving(refused_env()) as server:
        sock, _ = opened(server.port, buffers=65536)
        (conn,) = [c for c in server.server.connections._open if c.ws is not None]
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # no room to hide a backlog in
        sock.setblocking(False)
        sent, messages = 0, [bytes([n]) * 65536 for n in range(40)]
        data = b"".join(client_frame(2, m) for m in messages)
        deadline = time.monotonic() + 1
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += sock.send(data[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
        held = len(conn.outgoing) + len(conn.buffer)
        reading = conn.events & selectors.EVENT_READ
        sock.setblocking(True)
        echoes = []
        reader = threading.Thread(target=lambda: echoes.extend(read_frame(sock) for _ in messages))
        reader.start()  # reading now, the rest can be sent
        sock.sendall(data[sent:])
        reader.join(10)
        sock.close()
    assert sent < len(data) and not reading  # the server stopped taking them
    assert held < 512 * 1024  # bounded: a backlog and a read, not the 2.6 MB sent
    assert echoes == [(2, m) for m in messages]


def test_a_client_flooding_small_frames_delays_no_other(shared):
    server = shared
    flood, _ = opened(server.port)
    flood.sendall(b"".join(client_frame(9, b"f") for _ in range(20000)))  # pings, pongs unread
    with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}/ws") as other:
        other.recv()
        started = time.monotonic()
        for n in range(20):
            other.send(str(n))
            assert other.recv() == str(n)
        took = time.monotonic() - started
    flood.close()
    assert took < 1.0


def test_wss_is_the_same_websocket_over_tls():
    certs = certificates()
    context = ssl.create_default_context(cafile=certs.ca)
    with serving(tls_env(certs)) as server, websockets.sync.client.connect(
            f"wss://localhost:{server.tls_port}/ws", ssl=context) as ws:
        greeting = json.loads(ws.recv())
        ws.send("over TLS")
        echoed = ws.recv()
        lines = server.log_lines()
    assert greeting["replica"] and echoed == "over TLS"
    assert any('"GET /ws" 101' in line and without_id(line).endswith("TLSv1.3") for line in lines)


def test_websockets_count_under_max_connections_and_in_metrics():
    with serving(refused_env(MAX_CONNECTIONS="3")) as server:
        first = websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}/ws").__enter__()
        second = websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}/ws").__enter__()
        for ws in (first, second):
            ws.recv()
            ws.send("one")
            ws.recv()
        metrics = server.get("/metrics").text  # the third connection
        first.close(code=1000)
        second.close(code=4001)
        after = wait_until(lambda: server.get("/metrics").text, 2, "the closes counted",
                           accept=lambda text: metric_sample(text, "friendlyhello_websockets_open") == 0)
    assert metric_sample(metrics, "friendlyhello_websockets_open") == 2
    assert metric_sample(after, 'friendlyhello_websocket_messages_total{direction="received"}') == 2
    assert metric_sample(after, 'friendlyhello_websocket_messages_total{direction="sent"}') == 4  # greetings, echoes
    assert metric_sample(after, 'friendlyhello_websocket_closes_total{code="1000"}') == 1
    assert metric_sample(after, 'friendlyhello_websocket_closes_total{code="4001"}') == 1


@pytest.mark.slow
def test_a_stopping_replica_takes_upgrades_during_its_delay_then_closes_each_with_1001_and_exits_0():
    proc = Process({**refused_env(), "PORT": "0", "BIND": "127.0.0.1", "SHUTDOWN_DELAY": "0.6",
                    "DRAIN_TIMEOUT": "3"})
    try:
        proc.wait_listening()
        early, _ = opened(proc.port)
        proc.signal(signal.SIGTERM)
        wait_until(lambda: request(proc.port, "/readyz").status == 503, 2, "the stop begun", pace=0.01)
        late, _ = opened(proc.port)  # during the delay: balancers have not learned yet
        started = time.monotonic()
        codes = []
        for sock in (early, late):
            while (got := read_frame(sock)) is not None and got[0] != 8:
                pass
            codes.append(struct.unpack("!H", got[1][:2])[0])
            sock.sendall(client_frame(8, got[1][:2]))  # the close handshake, answered
        ends = [read_frame(sock) for sock in (early, late)]
        for sock in (early, late):
            sock.close()  # as a client does once the server's side has ended
        code = proc.wait(5)
        took = time.monotonic() - started
    finally:
        out, _ = proc.finish()
    assert codes == [1001, 1001] and ends == [None, None]
    assert code == 0 and took < 2
    assert out.count('"GET /ws" 101') == 2


@pytest.mark.slow  # real nginx and HAProxy, started for it
@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_through_nginx_and_haproxy_the_websocket_greets_echoes_and_closes_cleanly(kind, tmp_path):
    front = free_port()
    with serving(refused_env(REPLICA_ID="behind")) as server:
        process = run_proxy(kind, "nginx-ws.conf" if kind == "nginx" else "haproxy-ws.cfg", tmp_path, (front,),
                            front_port=front, plain_port=server.port)
        try:
            with websockets.sync.client.connect(f"ws://127.0.0.1:{front}/ws?ticks=0.1") as ws:
                greeting = json.loads(ws.recv())
                tick = json.loads(ws.recv())
                ws.send("through " + kind)
                while (echoed := ws.recv()).startswith("{"):
                    pass  # ticks meanwhile
            closed = ws.close_code
        finally:
            end_proxy(process)
    assert greeting["replica"] == "behind" and tick["replica"] == "behind"
    assert echoed == "through " + kind and closed == 1000


def test_the_websocket_docs_quote_the_proxy_configurations_the_tests_run():
    assert unquoted_lines("websocket.md", "nginx-ws.conf", "haproxy-ws.cfg") == []


CHROMIUM_PAGE = """<!doctype html><title>waiting</title><body><pre id="out"></pre><img src="/hold"><script>
const ws = new WebSocket(%r);
const seen = [];
ws.onmessage = (event) => {
  seen.push(event.data);
  if (seen.length === 1) ws.send("from chromium: " + JSON.parse(event.data).replica);
  else ws.close(4321, "done");
};
ws.onclose = (event) => {
  document.title = "closed " + event.code + " " + event.wasClean;
  document.getElementById("out").textContent = JSON.stringify(seen);
  fetch("/done");  // lets /hold answer: the page's load, and so the dump, waits for this
};
</script></body>"""


NODE_CLIENT = os.path.join(os.path.dirname(__file__), "clients", "node_ws.js")


def node_ws(url, *args):
    """What tests/clients/node_ws.js (Node's `ws` package) saw of ``url``, and its exit status."""
    node = shutil.which("node")
    env = {**os.environ, "NODE_PATH": "/usr/share/nodejs"}  # Debian's node-ws lives there
    if node is None or subprocess.run([node, "-e", "require('ws')"], env=env, capture_output=True).returncode:
        unavailable("Node's ws is not installed (apt-get install nodejs node-ws)")
    done = subprocess.run([node, NODE_CLIENT, url, *args], env=env, capture_output=True, text=True, timeout=20)
    return json.loads(done.stdout), done.returncode


@pytest.mark.slow  # node starts in a third of a second, twice
def test_node_s_ws_package_gets_the_greeting_the_echoes_a_tick_a_pong_and_its_close_code_back_over_ws_and_wss():
    certs = certificates()
    with serving(tls_env(certs, REPLICA_ID="node-1")) as server:
        plain, plain_status = node_ws(f"ws://127.0.0.1:{server.port}/ws?ticks=0.1")
        tls, tls_status = node_ws(f"wss://localhost:{server.tls_port}/ws?ticks=0.1", certs.ca)
    for seen, status in ((plain, plain_status), (tls, tls_status)):
        assert status == 0 and "error" not in seen, seen
        assert seen["greeting"]["replica"] == "node-1"
        assert ["Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"] in seen["greeting"][
            "headers"] and seen["extensions"] == ""  # offered by ws, declined: none in the 101
        assert seen["text"] == "héllo from node" and seen["binary"] is True and seen["ticks"] >= 1
        assert seen["pong"] == "node ping" and seen["close"]["code"] == 4001  # its code echoed


@pytest.mark.slow  # a real browser
def test_headless_chromium_s_websocket_gets_the_greeting_its_echo_and_a_clean_close(page_server, tmp_path):
    from test_browser import CHROMIUM_FLAGS, chromium_path
    browser = chromium_path()
    pages, page_url = page_server
    with serving(refused_env(REPLICA_ID="for-chromium")) as server:
        pages["html"] = CHROMIUM_PAGE % f"ws://127.0.0.1:{server.port}/ws"
        dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                              "--virtual-time-budget=5000", "--dump-dom", page_url],
                             capture_output=True, text=True, timeout=60).stdout
        metrics = server.get("/metrics").text
    seen = json.loads(html.unescape(re.search(r'<pre id="out">(.*?)</pre>', dom, re.S).group(1)))
    assert "<title>closed 4321 true</title>" in dom
    assert json.loads(seen[0])["replica"] == "for-chromium" and seen[1] == "from chromium: for-chromium"
    assert metric_sample(metrics, 'friendlyhello_websocket_closes_total{code="4321"}') == 1


def test_every_length_encoding_and_more_frames_than_a_turn_takes_come_back_whole(shared):
    """Payloads at the edges of the 7-, 16- and 64-bit lengths, both ways; then 200 frames in
    one write, more than one turn of the loop handles (64), all echoed in order."""
    sizes = [0, 125, 126, 65535, 65536, 70000]
    with websockets.sync.client.connect(f"ws://127.0.0.1:{shared.port}/ws", max_size=None) as ws:
        ws.recv()
        echoed = []
        for size in sizes:
            ws.send(b"z" * size)
            echoed.append(len(ws.recv()))
    sock, _ = opened(shared.port)
    sock.sendall(b"".join(client_frame(1, str(n).encode()) for n in range(200)))
    answers = [read_frame(sock) for _ in range(200)]
    sock.close()
    assert echoed == sizes
    assert answers == [(1, str(n).encode()) for n in range(200)]


def idle_websocket(port):
    """A raw WebSocket past its upgrade and greeting, read in as few calls as it came in."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(UPGRADE)
    data = b""
    while True:
        data += sock.recv(65536)
        head, _, greeting = data.partition(b"\r\n\r\n")
        if len(greeting) >= 4 and len(greeting) >= 4 + struct.unpack("!H", greeting[2:4])[0]:
            assert head.startswith(b"HTTP/1.1 101 ") and greeting[0] == 0x81, data[:200]
            return sock


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


@pytest.mark.slow  # 10,000 connections opened one after another, then a stop that closes each
def test_ten_thousand_idle_websockets_on_one_process_hold_under_8_kib_each_and_a_stop_closes_each_with_1001():
    count = 10_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= count + 200, f"this test needs {count + 200} file descriptors; the hard limit is {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 200), hard))
    proc = Process(refused_env(PORT="0", BIND="127.0.0.1", MAX_CONNECTIONS=str(count + 100), ACCESS_LOG="off",
                               DRAIN_TIMEOUT="20"))
    sockets = []
    try:
        proc.wait_listening()
        before = rss_kib(proc.process.pid)
        sockets = [idle_websocket(proc.port) for _ in range(count)]
        started = time.monotonic()
        metrics = request(proc.port, "/metrics").body.decode()  # the loop still answers, at once
        answered_in = time.monotonic() - started
        per_websocket = (rss_kib(proc.process.pid) - before) * 1024 / count
        for sock in sockets[::1000]:  # any of them still echoes
            sock.sendall(client_frame(1, b"still here"))
            assert read_frame(sock) == (1, b"still here")
        proc.signal(signal.SIGTERM)
        codes = collections.Counter()
        for sock in sockets:
            code, _ = closed_with_answering(sock)
            codes[code] += 1
        exit_code = proc.wait(20)
    finally:
        for sock in sockets:
            sock.close()
        _, err = proc.finish()
    print(f"\n{count} idle WebSockets: {per_websocket:.0f} B each; /metrics answered in {answered_in * 1000:.1f} ms")
    assert metric_sample(metrics, "friendlyhello_websockets_open") == count
    assert answered_in < 1 and per_websocket < 8 * 1024
    assert codes == {1001: count} and exit_code == 0, err  # no WebSocket cut without its Close


def closed_with_answering(sock):
    """Read to the server's Close, answer it as a client does, then see the connection end:
    (its code, whether it ended)."""
    while (got := read_frame(sock)) is not None and got[0] != 8:
        pass
    if got is None:
        return None, True
    sock.sendall(client_frame(8, got[1][:2]))
    return struct.unpack("!H", got[1][:2])[0], read_frame(sock) is None
