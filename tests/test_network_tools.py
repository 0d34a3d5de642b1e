"""/dns and /dial, asked from inside a replica: off unless NETWORK_TOOLS=on; every address the
resolver gives; one TCP connection of 2 s at most, said connected, refused, timed out or
unreachable; DIAL_ALLOW bounding where (a name's every address checked, nothing dialled
otherwise); answered off the loop, a few at a time, no visit counted. Targets are on loopback,
and never elsewhere: names that are not in /etc/hosts and the errors no loopback address gives
are the resolver's and the socket's, faked in this process (a question or a connection to anywhere
else would leave the machine)."""

import concurrent.futures
import errno
import json
import select
import socket
import threading
import time
import types

import pytest

from fake_redis import FakeRedis
from friendlyhello import network_tools, settings
from helpers import free_port, metric_sample, redis_env, refused_env, request, serving, wait_until

TOOLS = {"NETWORK_TOOLS": "on", "DIAL_ALLOW": "127.0.0.1/32,::1"}


@pytest.fixture
def faked(monkeypatch):
    """The system resolver and TCP, faked for what loopback cannot give: unknown.test is unknown,
    broken.test a temporary failure, stuck.test answers only once the test ends; a connection
    to a port of ``faked.unreachable`` (unused loopback ports) finds no route, one of
    ``faked.invalid`` an invalid argument. Everything else is the real resolver and socket."""
    resolve, ended = socket.getaddrinfo, threading.Event()
    faults = types.SimpleNamespace(unreachable={free_port()}, invalid={free_port()})

    def resolver(host, *args, **kwargs):
        if host == "stuck.test":
            ended.wait(10)
        if host in ("unknown.test", "stuck.test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if host == "broken.test":
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return resolve(host, *args, **kwargs)

    class Socket(socket.socket):
        def connect(self, address):
            if address[1] in faults.unreachable:
                raise OSError(errno.ENETUNREACH, "Network is unreachable")
            if address[1] in faults.invalid:
                raise OSError(errno.EINVAL, "Invalid argument")
            return super().connect(address)

    monkeypatch.setattr(network_tools.socket, "getaddrinfo", resolver)
    monkeypatch.setattr(network_tools.socket, "socket", Socket)
    yield faults
    ended.set()


def asked(server, path, json_too=True):
    """The text answer and, asked again with Accept: application/json, the JSON one."""
    text = server.get(path)
    data = server.get(path, headers={"Accept": "application/json"}) if json_too else None
    return text, (json.loads(data.body) if data is not None else None)


def listener(host="127.0.0.1", backlog=16):
    sock = socket.create_server((host, 0), backlog=backlog,
                                family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setblocking(False)
    return sock


def accepted_nothing(sock):
    return select.select([sock], [], [], 0.05)[0] == []


def test_without_network_tools_on_both_tools_are_404_and_dial_allow_alone_is_refused_at_start():
    with serving(refused_env()) as server:
        assert [server.get(p).status for p in ("/dns?name=localhost", "/dial?host=127.0.0.1&port=1")] == [404, 404]
    with pytest.raises(settings.ConfigError, match="^DIAL_ALLOW needs NETWORK_TOOLS=on"):
        settings.load_config([], refused_env(DIAL_ALLOW="127.0.0.1"))
    with pytest.raises(settings.ConfigError, match="DIAL_ALLOW.*'10.0.0.0/33' is neither"):
        settings.load_config([], refused_env(NETWORK_TOOLS="on", DIAL_ALLOW="127.0.0.1,10.0.0.0/33"))


def test_dns_lists_every_address_the_resolver_gives_in_its_order_with_the_time_taken():
    expected = list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo("localhost", None,
                                                                              type=socket.SOCK_STREAM)))
    with serving(refused_env(REPLICA_ID="web-3", **TOOLS), hostname="replica-7") as server:
        text, seen = asked(server, "/dns?name=localhost")
        data = server.get("/dns?name=localhost", headers={"Accept": "application/json"})
    assert text.headers["Content-Type"].startswith("text/plain") and text.headers["Vary"] == "Accept"
    assert data.headers["Content-Type"] == "application/json" and data.headers["Vary"] == "Accept"
    assert text.status == 200 and text.text.splitlines()[1:] == expected  # no error line
    assert text.text.startswith("dns localhost: resolved in ") and text.text.splitlines()[0].endswith(" ms")
    assert seen["addresses"] == expected and seen["outcome"] == "resolved" and seen["error"] is None
    assert seen["name"] == "localhost" and 0 <= seen["seconds"] < 2
    assert seen["hostname"] == "replica-7" and seen["replica"] == "web-3"


def test_dns_says_an_unknown_name_is_unknown_and_refuses_what_is_no_name(faked):
    with serving(refused_env(**TOOLS)) as server:
        text, seen = asked(server, "/dns?name=unknown.test")
        refused = [server.get(p) for p in ("/dns", "/dns?name=", "/dns?name=a%20b", "/dns?name=a&name=b",
                                           "/dns?name=" + "a" * 254, "/dns?name=%3Cscript%3E")]
    assert text.status == 200 and seen["outcome"] == "unknown" and seen["addresses"] == [] and seen["error"]
    assert text.text.startswith("dns unknown.test: unknown in ")
    assert text.text.splitlines()[1] == f"error: {seen['error']}"
    assert {r.status for r in refused} == {400} and all("give one name" in r.text for r in refused)
    assert refused[0].headers["Content-Type"].startswith("text/plain") and refused[0].headers["Vary"] == "Accept"


def test_dial_says_connected_refused_and_unreachable_with_the_address_it_dialled(faked):
    open_port = listener()
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        with serving(refused_env(**TOOLS)) as server:
            port = open_port.getsockname()[1]
            connected, seen = asked(server, f"/dial?host=127.0.0.1&port={port}")
            refused, refused_seen = asked(server, f"/dial?host=127.0.0.1&port={closed_port}")
            unreachable, unreachable_seen = asked(server, f"/dial?host=127.0.0.1&port={min(faked.unreachable)}")
            named, named_seen = asked(server, f"/dial?host=localhost&port={port}")
            failed, failed_seen = asked(server, f"/dial?host=127.0.0.1&port={min(faked.invalid)}")
            six = listener("::1")
            v6, v6_seen = asked(server, f"/dial?host=::1&port={six.getsockname()[1]}")
            six.close()
    finally:
        open_port.close()
    assert connected.status == 200 and connected.text.startswith(f"dial 127.0.0.1:{port}: connected in ")
    assert len(connected.text.splitlines()) == 1  # no error line
    assert seen["outcome"] == "connected" and seen["address"] == "127.0.0.1" and seen["port"] == port
    assert refused.status == 200 and refused_seen["outcome"] == "refused" and "refused" in refused.text
    assert unreachable_seen["outcome"] == "unreachable" and "unreachable" in unreachable.text
    assert unreachable.text.splitlines()[1] == f"error: {unreachable_seen['error']}"
    assert named.text.startswith(f"dial localhost:{port} ({named_seen['address']}): ")  # the address dialled
    assert named_seen["address"] in named_seen["addresses"]
    assert failed_seen["outcome"] == "failed" and failed_seen["error"] == "Invalid argument", failed_seen
    assert v6_seen["outcome"] == "connected" and v6.text.startswith("dial ::1:")


def test_dial_reaches_only_dial_allow_a_name_s_every_address_checked_and_nothing_dialled_else():
    target = listener("127.0.0.2")
    port = target.getsockname()[1]
    try:
        with serving(refused_env(NETWORK_TOOLS="on", DIAL_ALLOW="127.0.0.1")) as server:
            literal, literal_seen = asked(server, f"/dial?host=127.0.0.2&port={port}")
            mapped = server.get(f"/dial?host=::ffff:127.0.0.2&port={port}")
            allowed_mapped = server.get(f"/dial?host=::ffff:127.0.0.1&port={port}")
        with serving(refused_env(NETWORK_TOOLS="on", DIAL_ALLOW="::1")) as server:
            named, named_seen = asked(server, f"/dial?host=localhost&port={port}")
        with serving(refused_env(NETWORK_TOOLS="on")) as server:
            unset = server.get(f"/dial?host=127.0.0.2&port={port}")
        quiet = accepted_nothing(target)
    finally:
        target.close()
    assert literal.status == 403 and "127.0.0.2 is not within DIAL_ALLOW" in literal.text
    assert literal_seen == {"tool": "dial", "error": "127.0.0.2 is not within DIAL_ALLOW"}
    assert mapped.status == 403 and allowed_mapped.status == 200  # an IPv4-mapped address is the IPv4 one
    assert named.status == 403 and named_seen["outcome"] == "forbidden" and named_seen["address"] is None
    assert named_seen["error"] == "127.0.0.1: not within DIAL_ALLOW; nothing dialled"
    assert named.text.splitlines()[1] == f"error: {named_seen['error']}"
    assert unset.status == 403 and unset.text == "403 DIAL_ALLOW is not set: /dial dials nowhere\n"
    assert quiet, "a target outside DIAL_ALLOW was connected to"


def test_dial_refuses_a_port_that_is_no_port():
    with serving(refused_env(**TOOLS)) as server:
        answers = [server.get(f"/dial?host=127.0.0.1{q}") for q in ("", "&port=0", "&port=65536", "&port=80x",
                                                                    "&port=1&port=2")]
        no_host = server.get("/dial?port=80")
        highest = server.get("/dial?host=127.0.0.1&port=65535", headers={"Accept": "application/json"})
    assert [a.status for a in answers] == [400] * 5 and "give one port" in answers[0].text
    assert no_host.status == 400 and "give one host" in no_host.text
    assert highest.status == 200 and json.loads(highest.body)["port"] == 65535


def test_the_tools_count_no_visit_answer_head_and_show_their_outcomes_in_metrics(faked):
    with FakeRedis() as fake, serving({**redis_env(fake), **TOOLS}) as server:
        server.get("/dns?name=localhost")
        server.get("/dns?name=unknown.test")
        server.get(f"/dial?host=127.0.0.1&port={free_port()}")  # nothing listens there
        server.get("/dial?host=127.0.0.2&port=1")  # outside DIAL_ALLOW: never dialled
        server.get("/dns?name=")
        head = server.get("/dns?name=localhost", method="HEAD")
        metrics = server.get("/metrics").text
        incr = [c for c in fake.commands if c and c[0].upper() == b"INCR"]
    assert incr == [] and head.status == 200 and head.body == b""
    family = "friendlyhello_network_tool_answers_total"
    for labels, count in ((("dns", "resolved"), 2), (("dns", "unknown"), 1), (("dial", "refused"), 1),
                          (("dial", "forbidden"), 1), (("dns", "invalid"), 1)):
        assert metric_sample(metrics, f'{family}{{tool="{labels[0]}",outcome="{labels[1]}"}}') == count
    assert metric_sample(metrics, 'http_requests_total{method="GET",route="/dns",code="200"}') == 2


def test_a_lookup_that_never_ends_is_answered_timed_out_and_the_loop_serves_on(faked, monkeypatch):
    monkeypatch.setattr(network_tools, "TOOL_WAIT", 0.2)
    with serving(refused_env(**TOOLS)) as server, concurrent.futures.ThreadPoolExecutor(3) as pool:
        asking = [pool.submit(server.get, path, headers=headers) for path, headers in (
            ("/dns?name=stuck.test", {"Accept": "application/json"}), ("/dns?name=stuck.test", {}),
            ("/dial?host=stuck.test&port=80", {"Accept": "application/json"}))]
        wait_until(lambda: server.server.waits.tools._pending == 3, what="the three questions under way")
        started = time.monotonic()
        probe = server.get("/healthz")
        probed = time.monotonic() - started
        (late, late_text, late_dial) = (a.result(timeout=5) for a in asking)
        broken, broken_seen = asked(server, "/dns?name=broken.test")
    seen, dialled = json.loads(late.body), json.loads(late_dial.body)
    assert probe.status == 200 and probed < 0.15  # the loop did not wait on the resolver
    assert late.status == 200 and seen["outcome"] == "timed out" and seen["name"] == "stuck.test"
    assert late_text.text.startswith("dns stuck.test: timed out in 200.0 ms\nerror: no answer within 0.2 s")
    assert dialled == {**dialled, "tool": "dial", "host": "stuck.test", "port": 80, "address": None,
                       "outcome": "timed out"}
    assert broken_seen["outcome"] == "failed" and broken_seen["error"] == "Temporary failure in name resolution"
    assert broken.text.startswith("dns broken.test: failed in ")


def _full_backlog():
    """A listener whose queue is full: a SYN to it is dropped, so a connection times out."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    fillers = []
    for _ in range(4):  # the kernel takes backlog + 1 before it drops
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(sock.getsockname())
        fillers.append(filler)
    assert select.select([], fillers, [], 5)[1], "no connection came into the queue"  # it is full
    return sock, fillers


@pytest.mark.slow  # dials that wait out their 2 s
def test_a_dial_that_gets_no_answer_times_out_in_2_s_and_past_16_under_way_the_next_is_503():
    sock, fillers = _full_backlog()
    port = sock.getsockname()[1]
    try:
        with serving(refused_env(**TOOLS)) as server, \
                concurrent.futures.ThreadPoolExecutor(network_tools.MAX_PENDING) as pool:
            started = time.monotonic()
            waiting = [pool.submit(request, server.port, f"/dial?host=127.0.0.1&port={port}",
                                   headers={"Accept": "application/json"}) for _ in range(network_tools.MAX_PENDING)]
            wait_until(lambda: server.server.waits.tools._pending == network_tools.MAX_PENDING,
                       what="every dial under way")
            busy = server.get(f"/dial?host=127.0.0.1&port={port}")
            page = server.get("/healthz")
            answers = [json.loads(w.result(timeout=15).body) for w in waiting]
            took = time.monotonic() - started
    finally:
        sock.close()
        for filler in fillers:
            filler.close()
    assert busy.status == 503 and "under way already" in busy.text and page.status == 200
    assert {a["outcome"] for a in answers} == {"timed out"}
    dialled = [a for a in answers if a["error"] == "no answer within 2 s"]  # the rest waited for a thread
    assert len(dialled) >= network_tools.THREADS and all(2 <= a["seconds"] < 2.5 for a in dialled)
    assert took < 10  # each answered by its dial's end or by TOOL_WAIT
