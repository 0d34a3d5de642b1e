"""/replicas: who served how many, from a real Redis that every replica reports to."""

import json
import socket
import subprocess
import time

import pytest

from helpers import free_port, redis_counter, serving
from test_browser import CHROMIUM_FLAGS, chromium_path

INDEX = b"friendlyhello:replicas"


def redis_command(port, *args):
    """One command to the real Redis, in RESP; the raw reply."""
    payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(65536)


def replica_env(redis, replica_id, **extra):
    return {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port), "REPLICA_ID": replica_id, **extra}


def view(server, path="/replicas"):
    return json.loads(server.get(path, headers={"Accept": "application/json"}).body)


def test_two_replicas_show_who_served_how_many_and_add_up_to_the_count(redis_server):
    with serving(replica_env(redis_server, "a", POD_NAME="web-a", NODE_NAME="n1"), hostname="host-a") as a, \
            serving(replica_env(redis_server, "b"), hostname="host-b") as b:
        for _ in range(30):
            a.get("/")
        for _ in range(20):
            b.get("/")
        seen = view(a)
        html = b.get("/replicas").text
        counter = redis_counter(redis_server.port)
    rows = {r["id"]: r for r in seen["replicas"]}
    assert (rows["a"]["served"], rows["b"]["served"], seen["total"], counter) == (30, 20, 50, 50)
    assert (rows["a"]["hostname"], rows["a"]["pod"], rows["a"]["node"]) == ("host-a", "web-a", "n1")
    assert (rows["a"]["share"], rows["b"]["share"]) == (0.6, 0.4)
    assert seen["served_by"] == "host-a" and seen["redis"] == "ok"
    assert "<td>host-a</td>" in html and "60%" in html and "This page was served by host-b" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html  # nothing from elsewhere


def test_the_replica_view_counts_no_visit_and_refreshes_when_asked(redis_server):
    with serving(replica_env(redis_server, "a")) as server:
        server.get("/")
        before = redis_counter(redis_server.port)
        refreshing = server.get("/replicas?refresh=5")
        bad = server.get("/replicas?refresh=soon")
        plain = server.get("/replicas")
    assert redis_counter(redis_server.port) == before == 1
    assert '<meta http-equiv="refresh" content="5">' in refreshing.text
    assert 'http-equiv="refresh"' not in plain.text
    assert bad.status == 400


def test_with_redis_down_the_view_says_so_at_once():
    with serving({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(free_port()), "REDIS_TIMEOUT": "2"}) as server:
        server.get("/")
        started = time.monotonic()
        page = server.get("/replicas")
        data = view(server)
        took = time.monotonic() - started
    assert page.status == 200 and "Redis is unavailable (cannot connect)" in page.text
    assert data["redis"] == "cannot connect" and data["replicas"] == [] and data["total"] is None
    assert took < 1  # no wait for the Redis timeout: the outage is already known


def test_replicas_that_come_and_go_by_the_thousand_leave_redis_bounded(redis_server):
    now = int(redis_command(redis_server.port, b"TIME").split(b"\r\n")[2])
    for n in range(1000):  # a thousand replicas, each last seen a minute ago
        redis_command(redis_server.port, b"ZADD", INDEX, b"%d" % (now - 60), b"gone-%d" % n)
    with serving(replica_env(redis_server, "alive")) as server:
        server.get("/")
        seen = view(server)
    ttl = int(redis_command(redis_server.port, b"TTL", b"friendlyhello:replica:alive")[1:-2])
    members = int(redis_command(redis_server.port, b"ZCARD", INDEX)[1:-2])
    assert [r["id"] for r in seen["replicas"]] == ["alive"]
    assert members == 1  # the heartbeat trimmed the index to the live replicas
    assert 0 < ttl <= 10  # and a replica's record expires by itself once it stops


@pytest.mark.slow
def test_the_replica_view_renders_in_a_real_browser_and_counts_nothing(redis_server, tmp_path):
    with serving(replica_env(redis_server, "a", POD_NAME="web-a"), hostname="host-a") as a, \
            serving(replica_env(redis_server, "b", POD_NAME="web-b"), hostname="host-b") as b:
        for _ in range(7):
            a.get("/")
        for _ in range(3):
            b.get("/")
        shot = tmp_path / "replicas.png"
        subprocess.run([chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                        f"--screenshot={shot}", "--window-size=900,420", f"http://127.0.0.1:{a.port}/replicas"],
                       capture_output=True, timeout=60)
        counter = redis_counter(redis_server.port)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
    assert counter == 10
