"""`hello_server.py watch ws://HOST/ws`: WebSockets held open, a message echoed at each turn,
and what became of each connection (closed with a code, cut, reconnected). Run as a user runs
it, against the real server (alone, over TLS, and two of them rolled from one version to the
next behind HAProxy) and against servers written with wsproto's server side that misbehave on
purpose."""

import contextlib
import json
import re
import signal
import socket
import threading
import time

import pytest
import wsproto
import wsproto.connection
import wsproto.events as events
import wsproto.utilities

from certificates import certificates
from friendlyhello import watch, watch_tally, websocket
from helpers import Process, free_port, metric_sample, refused_env, request, serving, wait_until
from test_proxies import end_proxy, run_proxy, unquoted_lines
from test_tls import tls_env
from test_watch import finish_watch, misbehaving, start_watch

HTTP_KEYS = {"url", "seconds", "rate", "connections", "keep_alive", "requests", "ok", "failed", "failures",
             "retried", "statuses", "p50_ms", "p99_ms", "longest_gap_ms", "by_version", "by_replica", "timeline"}


def wrong_accept(sock):
    """A server whose 101 does not answer the client's key: no WebSocket."""
    receive(sock)
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + websocket.accept_value("x" * 24).encode() + b"\r\n\r\n")


def ws_server(after=None, at=3, ping=False, reject=None, ping_every=None):
    """A WebSocket server written with wsproto: it echoes each text message, but on each
    connection's ``at``-th it does ``after`` instead: "cut" (a FIN, no Close), "reset" (a RST),
    "silent" (no echo, ever), "wrong" (another message), or closes with that code (an int).
    ``ping``: it pings first and keeps the pongs (``ping_every``: and every that many seconds,
    between the messages); ``reject``: every upgrade gets that status."""
    pongs = []

    def pinging(sock, ws, lock):
        while True:
            time.sleep(ping_every)
            try:
                with lock:
                    sock.sendall(ws.send(events.Ping(b"are you there")))
            except (OSError, wsproto.utilities.LocalProtocolError):
                return

    def behave(sock):
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        messages, lock = 0, threading.Lock()
        if ping_every:
            threading.Thread(target=pinging, args=(sock, ws, lock), daemon=True).start()
        while data := receive(sock):
            with lock:
                ws.receive_data(data)
                answered = list(ws.events())
            for event in answered:
                if isinstance(event, events.Request):
                    if reject:
                        sock.sendall(ws.send(events.RejectConnection(status_code=reject)))
                        return sock.close()
                    sock.sendall(ws.send(events.AcceptConnection(extra_headers=[
                        (b"Friendlyhello-Version", b"9"), (b"Friendlyhello-Replica", b"wsproto")])))
                    if ping:
                        sock.sendall(ws.send(events.Ping(b"are you there")))
                elif isinstance(event, events.TextMessage):
                    messages += 1
                    if messages != at or after is None:
                        sock.sendall(ws.send(events.Message(data=event.data)))
                    elif after == "cut":
                        return sock.close()
                    elif after == "reset":
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                        return sock.close()
                    elif after == "wrong":
                        sock.sendall(ws.send(events.Message(data="not what you sent")))
                    elif isinstance(after, int):
                        sock.sendall(ws.send(events.CloseConnection(code=after)))
                elif isinstance(event, events.Ping):
                    sock.sendall(ws.send(event.response()))
                elif isinstance(event, events.Pong):
                    pongs.append(event.payload)
                elif isinstance(event, events.CloseConnection):
                    if ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                        sock.sendall(ws.send(event.response()))
                    return sock.close()

    return behave, pongs


def receive(sock):
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def run_watch(url, *options, within=15):
    return finish_watch(start_watch(url, "--json", *options), timeout=within)


@pytest.mark.slow  # it waits out the pace it measures
def test_messages_are_echoed_and_counted_by_version_and_replica_with_ticks_and_pings_told_apart():
    env = refused_env(VERSION="4", REPLICA_ID="web-1", WS_PING_INTERVAL="0.1")
    with serving(env) as server:
        code, seen = run_watch(f"ws://127.0.0.1:{server.port}/ws?ticks=0.05", "--duration", "0.3", "--rate", "60")
        metrics = request(server.port, "/metrics").body.decode()
    assert code == 0, seen
    assert set(seen) >= HTTP_KEYS and "visits" not in seen  # no visit is counted at /ws
    assert 14 <= seen["requests"] == seen["ok"] <= 20 and seen["statuses"] == {"101": seen["requests"]}
    assert list(seen["by_version"]) == ["4"] and list(seen["by_replica"]) == ["web-1"]
    assert seen["p50_ms"] <= seen["p99_ms"] < 500
    held = seen["websocket"]
    # Every ping answered (one unanswered by the next closes with 1008), every tick told from an echo.
    assert held == {"opened": 4, "open_at_end": 4, "close_unanswered": 0, "closed": {}, "cut": 0, "cuts": {},
                    "reconnects": 0, "reconnect_p50_ms": None, "reconnect_max_ms": None, "failed_to_open": {}}
    assert seen["by_version"]["4"]["connections"]["opened"] == 4
    # watch closed each at the end, and the server saw a Close 1000 from each.
    assert 'friendlyhello_websocket_closes_total{code="1000"} 4' in metrics
    assert metric_sample(metrics, "friendlyhello_websockets_open") == 0


@pytest.mark.slow  # a run of watch through three closes
def test_a_server_s_pings_are_answered_and_a_proper_close_under_a_message_sends_it_again_anew():
    behave, pongs = ws_server(after=1001, at=3, ping=True)
    with misbehaving(behave) as (port, accepted):
        code, seen = run_watch(f"ws://127.0.0.1:{port}/ws", "--duration", "0.4", "--rate", "20",
                               "--connections", "1")
    assert code == 0, seen
    assert seen["failed"] == 0 and seen["retried"] >= 2
    assert seen["websocket"]["closed"] == {"1001": seen["retried"]}
    assert seen["websocket"]["reconnects"] == seen["retried"] == len(accepted) - 1
    assert seen["websocket"]["reconnect_max_ms"] < 100
    assert pongs and set(pongs) == {b"are you there"}
    assert list(seen["by_replica"]) == ["wsproto"] and list(seen["by_version"]) == ["9"]
    # And as a terminal shows it: what became of the connections, in all and per version.
    lines = watch_tally.table(seen).splitlines()
    assert lines[0].startswith(f"watch ws://127.0.0.1:{port}/ws  ") and "1 WebSockets held open" in lines[0]
    assert re.match(r"\d+ messages, 0 failed \(0 refused, 0 reset, 0 timeout, 0 non-101, 0 other, 0 in-flight\), "
                    r"[1-9]\d* sent again; echo p50 ", lines[1])
    assert re.match(r"\d+ connections opened, 1 open at the end; closed by the server: \d+ with 1001; cut: none; "
                    r"reconnects: \d+ \(p50 [\d.]+ ms, longest [\d.]+ ms\); failed to open: none$", lines[2])
    assert lines[4].startswith("version  messages  share")
    assert lines[4].split()[-7:] == ["opened", "closed", "cut", "reconnects", "reconnect", "p50", "ms"]
    opened = seen["websocket"]["opened"]
    assert lines[5].split()[-5:-1] == [str(opened), str(opened - 1), "0", str(opened - 1)]  # version 9's row


@pytest.mark.slow  # it waits out the pace it measures
def test_a_ping_between_messages_is_answered_and_no_message_awaited_after_it():
    behave, pongs = ws_server(ping_every=0.05)
    with misbehaving(behave) as (port, _):
        code, seen = run_watch(f"ws://127.0.0.1:{port}/ws", "--duration", "0.6", "--rate", "5",
                               "--connections", "1", "--timeout", "0.3")
    assert code == 0, seen
    assert seen["websocket"]["cut"] == 0 and seen["websocket"]["opened"] == 1 and seen["failed"] == 0
    assert len(pongs) >= 5  # pings that came while it waited for its next turn, each answered


@pytest.mark.slow  # eight runs of watch, some waiting out a timeout
def test_each_way_a_websocket_can_end_badly_is_counted_as_such_and_the_exit_status_is_1():
    cases = {"eof": ws_server("cut"), "reset": ws_server("reset"), "timeout": ws_server("silent"),
             "malformed": ws_server("wrong"), "1011": ws_server(1011), "503": ws_server(reject=503),
             "accept": (wrong_accept, None)}
    with contextlib.ExitStack() as stack:
        ports = {name: stack.enter_context(misbehaving(behave))[0] for name, (behave, _) in cases.items()}
        runs = {name: start_watch(f"ws://127.0.0.1:{port}/ws", "--json", "--duration", "0.7", "--rate", "10",
                                  "--connections", "1", "--timeout", "0.3") for name, port in ports.items()}
        runs["refused"] = start_watch(f"ws://127.0.0.1:{free_port()}/ws", "--json", "--duration", "0.3")
        seen = {name: finish_watch(proc) for name, proc in runs.items()}
    assert {name: code for name, (code, _) in seen.items()} == dict.fromkeys(seen, 1)
    lost = {"eof": "reset", "reset": "reset", "timeout": "timeout", "malformed": "other"}
    for cut, kind in lost.items():
        summary = seen[cut][1]
        assert summary["failures"][kind] == summary["failed"] >= 1, cut
        held = summary["websocket"]
        assert held["cuts"] == {cut: summary["failed"]} and held["reconnects"] >= 1, cut
        assert summary["ok"] >= 2 * summary["failed"], cut  # the two messages before each cut came back
    closed = seen["1011"][1]
    assert closed["failed"] == 0 and closed["websocket"]["closed"] == {"1011": closed["retried"]} != {}
    rejected = seen["503"][1]
    assert rejected["failures"]["non-101"] == rejected["requests"] and rejected["statuses"] == {
        "503": rejected["requests"]}
    assert rejected["websocket"]["opened"] == 0
    refused = seen["refused"][1]
    assert refused["failures"]["refused"] == refused["requests"] >= 1
    accept = seen["accept"][1]  # a 101 whose Sec-WebSocket-Accept does not answer the key
    assert accept["failures"]["other"] == accept["requests"] >= 1 and accept["websocket"]["opened"] == 0


@pytest.mark.slow  # two runs of watch, over TLS
def test_wss_is_watched_through_the_servers_tls_with_the_ca_given():
    certs = certificates()
    with serving(tls_env(certs, VERSION="6")) as server:
        url = f"wss://localhost:{server.tls_port}/ws"
        trusted = start_watch(url, "--json", "--duration", "0.3", "--cacert", certs.ca)
        untrusting = start_watch(url, "--json", "--duration", "0.3", "--timeout", "1")
        (code, seen), (untrusted, refused) = finish_watch(trusted), finish_watch(untrusting)
    assert code == 0 and seen["ok"] >= 5 and list(seen["by_version"]) == ["6"], seen
    assert untrusted == 1 and refused["failures"]["other"] == refused["requests"]  # not the system's CA


@pytest.mark.parametrize("args", [["ws://h/ws", "--new-connection"], ["wss://h/ws", "--cacert", "/no/such.pem"]])
def test_bad_usage_of_a_websocket_watch_exits_2(args):
    with pytest.raises(SystemExit) as exited:
        watch.parse_options(args)
    assert exited.value.code == 2


# -- a rolling update behind HAProxy ------------------------------------------------------------

def replica(port, version):
    proc = Process(refused_env(PORT=str(port), VERSION=version, REPLICA_ID=f"{port}-v{version}",
                               SHUTDOWN_DELAY="0.5"))
    proc.wait_listening()
    return proc


def websockets_open(port):
    return metric_sample(request(port, "/metrics").body.decode(), "friendlyhello_websockets_open")


def answered_through(front, name):
    """Whether HAProxy sends requests to the replica ``name`` now (round robin: one of a few)."""
    return any(request(front, "/").headers.get("Friendlyhello-Replica") == name for _ in range(4))


def replace(front, old, port, version):
    """Stop ``old`` as an orchestrator does (SIGTERM; it says 503 at /readyz for its
    SHUTDOWN_DELAY, then closes its WebSockets with 1001 and exits), then start its successor
    on the same port, until HAProxy sends requests to it."""
    old.signal(signal.SIGTERM)
    assert old.wait(10) == 0
    old.finish()
    new = replica(port, version)
    wait_until(lambda: answered_through(front, f"{port}-v{version}"), 10, "HAProxy to send to the new replica",
               pace=0.05)
    return new


@pytest.mark.slow  # four replicas started and stopped in turn, HAProxy health checks between
def test_a_rolling_update_behind_haproxy_closes_every_old_websocket_with_1001_and_reconnects_it_to_the_new(
        tmp_path):
    ports = {"web1_port": free_port(), "web2_port": free_port(), "front_port": free_port()}
    front = ports["front_port"]
    web1, web2 = replica(ports["web1_port"], "1"), replica(ports["web2_port"], "1")
    proxy = run_proxy("haproxy", "haproxy-rollout.cfg", tmp_path, (front,), **ports)
    try:
        client = start_watch(f"ws://127.0.0.1:{front}/ws", "--json", "--rate", "40", "--timeout", "2")
        wait_until(lambda: websockets_open(ports["web1_port"]) + websockets_open(ports["web2_port"]) == 4, 10,
                   "four WebSockets open", pace=0.05)
        web1 = replace(front, web1, ports["web1_port"], "2")
        web2 = replace(front, web2, ports["web2_port"], "2")
        wait_until(lambda: websockets_open(ports["web1_port"]) + websockets_open(ports["web2_port"]) == 4, 10,
                   "four WebSockets open on the new version", pace=0.05)
        time.sleep(0.3)  # the new version alone, last
        client.signal(signal.SIGTERM)
        code, seen = finish_watch(client)
    finally:
        end_proxy(proxy)
        web1.finish()
        web2.finish()
    old, new = seen["by_version"]["1"]["connections"], seen["by_version"]["2"]["connections"]
    print(f"\nrolled 1 -> 2 behind HAProxy: {json.dumps(seen['websocket'])}\n" + watch_tally.table(seen))
    assert code == 0, seen
    assert seen["failed"] == 0 and seen["websocket"]["cut"] == 0 and seen["websocket"]["failed_to_open"] == {}
    assert old["closed"] == {"1001": old["opened"]} and old["open_at_end"] == 0  # each old one closed properly
    assert new["open_at_end"] == 4 and new["closed"] == {} and new["cut"] == 0
    assert seen["websocket"]["reconnects"] == old["opened"] >= 4  # each closed one opened again at once
    first, last = seen["by_version"]["1"], seen["by_version"]["2"]
    assert first["first_s"] < last["first_s"] and first["last_s"] < last["last_s"] - 0.2  # the new alone, last


def test_the_docs_quote_the_rollout_s_haproxy_configuration():
    assert unquoted_lines("watch.md", "haproxy-rollout.cfg") == []
