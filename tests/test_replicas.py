"""/replicas: who served how many, from a real Redis that every replica reports to."""

import json
import re
import socket
import subprocess
import threading
import time

import pytest

from friendlyhello import replica_view, replicas
from helpers import DISABLED, free_port, redis_counter, serving, wait_until
from test_browser import CHROMIUM_FLAGS, chromium_path, png_picture

INDEX = b"friendlyhello:replicas"


def redis_command(port, *args):
    """One command to the real Redis, in RESP; the raw reply."""
    payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(65536)


def written(record):
    """A record's HGETALL reply once the heartbeat has written its version; else None."""
    return record if b"version" in record else None


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
    assert [r["id"] for r in seen["replicas"]] == ["a", "b"]  # the busiest first
    assert (seen["live"], seen["more"]) == (2, 0)
    assert (rows["a"]["served"], rows["b"]["served"], seen["total"], counter) == (30, 20, 50, 50)
    assert 0 <= rows["a"]["seconds_since_seen"] <= 3 and rows["a"]["problem"] == ""
    assert "<p>2 live replicas; 50 visits counted in all.</p>" in html
    assert 'style="width:120px"></span>60%' in html  # a share of 200 px
    assert "not seen for a while): 0.</p>" in html and "</tr>\n<tr>" in html  # a row each
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
    assert "<title>friendlyhello replicas</title>\n<style>" in plain.text
    assert (bad.status, bad.text) == (400, "refresh must be a whole number of seconds from 1 to 9999\n")


def test_with_redis_down_the_view_says_so_at_once():
    with serving({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(free_port()), "REDIS_TIMEOUT": "2"}) as server:
        server.get("/")
        started = time.monotonic()
        page = server.get("/replicas")
        data = view(server)
        took = time.monotonic() - started
    assert page.status == 200 and "Redis is unavailable (cannot connect)" in page.text
    assert data["redis"] == "cannot connect" and data["replicas"] == [] and data["total"] is None
    assert (data["live"], data["more"]) == (0, 0)
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


# -- records another writer changed: Redis is shared, and people poke at it with redis-cli ------

def test_a_visit_whose_record_is_not_a_hash_still_counts_and_the_view_flags_the_record(redis_server):
    with serving(replica_env(redis_server, "a")) as server:
        server.get("/")
        redis_command(redis_server.port, b"SET", b"friendlyhello:replica:a", b"not a hash")
        page = server.get("/", headers={"Accept": "application/json"})
        html = server.get("/")
        seen = view(server)
    assert redis_counter(redis_server.port) == 3  # the counter is the page's: it counts on
    assert (json.loads(page.body)["visits"], json.loads(page.body)["redis"]) == (2, "ok")
    assert html.text.endswith("<b>Visits:</b> 3")
    assert seen["total"] == 3 and seen["replicas"][0]["problem"] == "its record is not a hash"


def test_a_redis_out_of_memory_refuses_the_visit_whole_and_the_page_names_why(redis_server):
    with serving(replica_env(redis_server, "a")) as server:
        server.get("/")
        redis_command(redis_server.port, b"CONFIG", b"SET", b"maxmemory", b"1")
        refused = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        redis_command(redis_server.port, b"CONFIG", b"SET", b"maxmemory", b"0")
        counted = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        seen = view(server)
    assert (refused["visits"], refused["redis"]) == (None, "error OOM")  # not EXECABORT: what made it
    assert counted["visits"] == 2 and (seen["replicas"][0]["served"], seen["total"]) == (2, 2)


def test_a_record_that_is_not_a_hash_is_made_anew_by_the_next_heartbeat(redis_server):
    key = replicas.REPLICA_PREFIX.encode() + b"a"
    redis_command(redis_server.port, b"SET", key, b"not a hash")
    with serving(replica_env(redis_server, "a")) as server:
        wait_until(lambda: b"hostname" in redis_command(redis_server.port, b"HGETALL", key), what="the heartbeat")
        server.get("/")
        seen = view(server)
    (row,) = seen["replicas"]
    assert (row["id"], row["served"], row["problem"], seen["total"]) == ("a", 1, "", 1)


@pytest.fixture
def quick_heartbeats(monkeypatch):
    from friendlyhello import redis_thread
    monkeypatch.setattr(redis_thread, "HEARTBEAT_INTERVAL", 0.1)


@pytest.mark.parametrize("key, spoil", [
    (INDEX, (b"SET", INDEX, b"not a sorted set")),
    (INDEX, (b"RPUSH", INDEX, b"a", b"b")),
    (replicas.REPLICA_PREFIX.encode() + b"a", (b"SADD", replicas.REPLICA_PREFIX.encode() + b"a", b"x")),
], ids=["index a string", "index a list", "record a set"])
def test_a_key_of_ours_replaced_while_serving_is_made_anew_by_the_next_heartbeat_and_logged(
        redis_server, quick_heartbeats, key, spoil):
    with serving(replica_env(redis_server, "a")) as server:
        wait_until(lambda: view(server)["live"] == 1, what="the first heartbeat")
        redis_command(redis_server.port, b"DEL", key)
        redis_command(redis_server.port, *spoil)
        wait_until(lambda: any(b"made anew" in line.encode() for line in server.error_lines()), what="the repair")
        wait_until(lambda: view(server)["live"] == 1, what="the view")
        page = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        seen = view(server)
        log = server.error_lines()
    kind = spoil[0].decode()
    assert (seen["redis"], [r["id"] for r in seen["replicas"]]) == ("ok", ["a"]) and page["redis"] == "ok"
    said = [line for line in log if "made anew" in line]
    assert said and key.decode() in said[0] and {"SET": "a string", "RPUSH": "a list", "SADD": "a set"}[kind] in said[0]


@pytest.mark.parametrize("spoil, words", [
    ((b"SET", b"counter", b"seven"), "a string that is not a whole number"),
    ((b"RPUSH", b"counter", b"7"), "a list"),
], ids=["a word", "a list"])
def test_a_counter_that_is_no_count_is_said_in_readyz_and_the_log_and_never_replaced(
        redis_server, quick_heartbeats, spoil, words):
    with serving(replica_env(redis_server, "a")) as server:
        server.get("/")
        redis_command(redis_server.port, b"DEL", b"counter")
        redis_command(redis_server.port, *spoil)
        wait_until(lambda: "but the counter" in server.get("/readyz").text, what="the heartbeat's word")
        ready = server.get("/readyz").text
        page = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        kept = redis_command(redis_server.port, b"TYPE", b"counter")
        redis_command(redis_server.port, b"DEL", b"counter")
        redis_command(redis_server.port, b"SET", b"counter", b"41")
        wait_until(lambda: server.get("/readyz").text == "ready\nredis: up\n", what="the counter mended")
        after = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        log = server.error_lines()
    assert ready == f"ready\nredis: up, but the counter holds {words}: no visit counts\n"
    assert page["visits"] is None and kept == (b"+string\r\n" if spoil[0] == b"SET" else b"+list\r\n")
    assert after["visits"] == 42
    assert sum(f"the counter holds {words}" in line for line in log) == 1  # said once, however many heartbeats
    assert sum("the counter is a whole number again" in line for line in log) == 1


@pytest.mark.slow  # waits out a timeout
def test_a_heartbeat_that_fails_is_said_once_and_its_recovery_once(redis_server, quick_heartbeats):
    with serving(replica_env(redis_server, "a")) as server:
        wait_until(lambda: view(server)["live"] == 1, what="the first heartbeat")
        redis_command(redis_server.port, b"CONFIG", b"SET", b"maxmemory", b"1")  # every write refused: OOM
        try:
            wait_until(lambda: any("the heartbeat failed" in line for line in server.error_lines()), what="a refusal")
            time.sleep(0.2)  # two heartbeats more, refused alike
        finally:
            redis_command(redis_server.port, b"CONFIG", b"SET", b"maxmemory", b"0")
        wait_until(lambda: any("the heartbeat works again" in line for line in server.error_lines()), what="it")
        log = server.error_lines()
    failed = [line for line in log if "the heartbeat failed" in line]
    assert len(failed) == 1 and "OOM" in failed[0] and "drop out of /replicas" in failed[0]


def test_a_counter_that_is_not_a_number_counts_no_visit_for_the_replica_either(redis_server):
    with serving(replica_env(redis_server, "a")) as server:
        server.get("/")
        redis_command(redis_server.port, b"SET", b"counter", b"abc")
        page = server.get("/", headers={"Accept": "application/json"})
        redis_command(redis_server.port, b"SET", b"counter", b"1")
        server.get("/")
        seen = view(server)
    assert json.loads(page.body)["visits"] is None
    assert (seen["replicas"][0]["served"], seen["total"]) == (2, 2)  # the failed visit taken back


def test_malformed_records_are_shown_flagged_and_the_rest_as_they_are(redis_server):
    port = redis_server.port
    with serving(replica_env(redis_server, "good")) as server:
        server.get("/")
        now = int(redis_command(port, b"TIME").split(b"\r\n")[2])
        for replica_id, fields in [(b"abc", [b"served", b"abc"]), (b"negative", [b"served", b"-500"]),
                                   (b"bytes", [b"host\xffname", b"\xfe", b"served", b"3"]),
                                   (b"huge", [b"served", b"9" * 19]), (b"bare", [b"hostname", b"h"]),
                                   (b"old", [b"seen", b"%d" % (now - 100)]), (b"when", [b"seen", b"soon"]),
                                   (b"greedy", [b"served", b"999999"])]:
            redis_command(port, b"HSET", b"friendlyhello:replica:" + replica_id, *fields)
            redis_command(port, b"ZADD", INDEX, b"%d" % now, replica_id)
        redis_command(port, b"SET", b"friendlyhello:replica:string", b"x")
        redis_command(port, b"ZADD", INDEX, b"%d" % now, b"string")
        html = server.get("/replicas")
        seen = view(server)
    rows = {r["id"]: r for r in seen["replicas"]}
    assert html.status == 200 and "width:-" not in html.text
    assert rows["good"]["served"] == 1 and rows["good"]["problem"] == ""
    assert rows["bytes"]["served"] == 3 and rows["bytes"]["problem"] == ""
    assert rows["abc"]["problem"] == rows["negative"]["problem"] == "its visit count is not a whole number"
    assert rows["string"] == {"id": "string", "hostname": "", "pod": "", "node": "", "version": "", "faults": "",
                              "served": 0, "last_minute": 0,
                              "seconds_since_seen": 0, "problem": "its record is not a hash", "share": 0.0}
    assert rows["huge"]["problem"] == "its visit count is not a whole number"  # past 18 digits: not believed
    assert (rows["bare"]["hostname"], rows["bare"]["served"], rows["bare"]["problem"]) == ("h", 0, "")
    assert (rows["abc"]["hostname"], rows["abc"]["pod"], rows["abc"]["node"]) == ("", "", "")
    assert 100 <= rows["old"]["seconds_since_seen"] <= 103 and rows["old"]["problem"] == ""
    assert rows["when"]["problem"] == "its last-seen time is not a whole number"
    assert "(skipped: its record is not a hash)" in html.text and "<td>good</td>" in html.text
    assert re.findall(r"width:(\d+)px", html.text) and max(map(int, re.findall(r"width:(\d+)px", html.text))) <= 200


def test_a_counter_that_is_not_a_number_leaves_the_view_standing(redis_server):
    with serving(replica_env(redis_server, "a")) as server:
        server.get("/")
        redis_command(redis_server.port, b"SET", b"counter", b"abc")
        html, seen = server.get("/replicas"), view(server)
    assert html.status == 200 and "? visits counted in all" in html.text
    assert "(stopped, or not seen for a while): ?.</p>" in html.text
    assert seen["total"] is None and seen["replicas"][0]["served"] == 1


@pytest.mark.slow  # 100,000 replicas made in Redis
def test_the_view_reads_a_bounded_number_of_replicas_and_says_how_many_more(redis_server):
    port = redis_server.port
    # 100,000 live replicas in the index (no records: reading them is what costs), made in Redis itself.
    script = b"for i = 1, 100000 do redis.call('ZADD', KEYS[1], ARGV[1], 'r' .. i) end return 1"
    with serving(replica_env(redis_server, "a", REDIS_TIMEOUT="1")) as server:
        server.get("/")
        now = int(redis_command(port, b"TIME").split(b"\r\n")[2])
        redis_command(port, b"EVAL", script, b"1", INDEX, b"%d" % (now + 60))
        started = time.monotonic()
        seen = view(server)
        took = time.monotonic() - started
        html = server.get("/replicas").text
        pages = [server.get("/") for _ in range(5)]
    assert seen["live"] == 100_001 and len(seen["replicas"]) <= 1000 and seen["more"] >= 99_001
    assert took < 1  # within Redis's timeout: the pages' traffic is not stalled by the view
    assert f"and {seen['more']} more" in html and "not seen for a while): ?.</p>" in html
    assert [p.text.rsplit("</b> ", 1)[1] for p in pages] == ["2", "3", "4", "5", "6"]


def test_the_view_shows_each_replicas_id(redis_server):
    with serving(replica_env(redis_server, "web-1-worker-a"), hostname="same-host") as a, \
            serving(replica_env(redis_server, "web-1-worker-b"), hostname="same-host") as b:
        a.get("/")
        b.get("/")
        html = a.get("/replicas").text
    assert "<td>web-1-worker-a</td>" in html and "<td>web-1-worker-b</td>" in html


@pytest.mark.slow
def test_the_replica_view_renders_in_a_real_browser_and_counts_nothing(redis_server, tmp_path):
    with serving(replica_env(redis_server, "a", POD_NAME="web-a"), hostname="host-a") as a, \
            serving(replica_env(redis_server, "b", POD_NAME="web-b"), hostname="host-b") as b:
        for _ in range(7):
            a.get("/")
        for _ in range(3):
            b.get("/")
        shot = tmp_path / "replicas.png"
        result = subprocess.run([chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                                 f"--screenshot={shot}", "--window-size=900,420",
                                 f"http://127.0.0.1:{a.port}/replicas"], capture_output=True, text=True, timeout=60)
        dom = subprocess.run([chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                              "--dump-dom", f"http://127.0.0.1:{a.port}/replicas"],
                             capture_output=True, text=True, timeout=60).stdout
        counter = redis_counter(redis_server.port)
    assert result.returncode == 0, result.stderr[-2000:]
    width, height, shades = png_picture(shot.read_bytes())
    assert (width, height) == (900, 420) and shades > 20  # drawn: text, bars and lines, not a blank page
    assert "<td>host-a</td>" in dom and "70%" in dom and "30%" in dom  # what the browser laid out
    assert counter == 10


def test_before_any_visit_the_view_counts_zero_and_shares_nothing(redis_server):
    with serving(replica_env(redis_server, "a")) as server:
        seen = view(server)
        html = server.get("/replicas").text
    assert seen["total"] == 0 and [(r["id"], r["served"], r["share"]) for r in seen["replicas"]] == [("a", 0, 0.0)]
    assert "0 visits counted in all" in html


def test_shares_are_given_to_four_places(redis_server):
    with serving(replica_env(redis_server, "a")) as a, serving(replica_env(redis_server, "b")) as b:
        a.get("/")
        b.get("/")
        b.get("/")
        seen = view(a)
    assert {r["id"]: r["share"] for r in seen["replicas"]} == {"a": 0.3333, "b": 0.6667}


def test_a_counter_of_the_wrong_type_leaves_the_view_standing(redis_server):
    with serving(replica_env(redis_server, "a")) as server:
        server.get("/")
        redis_command(redis_server.port, b"DEL", b"counter")
        redis_command(redis_server.port, b"LPUSH", b"counter", b"x")
        seen, html = view(server), server.get("/replicas")
    assert seen["total"] is None and html.status == 200 and "? visits counted in all" in html.text



# -- versions: who runs what, and where the last minute's visits went ---------------------------

def test_replicas_of_two_versions_are_summed_by_version_and_every_answer_names_its_replica(redis_server):
    with serving(replica_env(redis_server, "a", VERSION="1")) as a, \
            serving(replica_env(redis_server, "b", VERSION="v2.0-rc1")) as b, \
            serving(replica_env(redis_server, "c", VERSION="v2.0-rc1")) as c:
        for server, visits in ((a, 30), (b, 20), (c, 10)):
            for _ in range(visits):
                server.get("/")
        seen = view(a)
        html = b.get("/replicas").text
        page = json.loads(c.get("/", headers={"Accept": "application/json"}).body)
        answers = [b.get("/"), b.get("/nope"), b.get("/healthz", method="HEAD"), b.get("/metrics")]
    assert {r["id"]: r["version"] for r in seen["replicas"]} == {"a": "1", "b": "v2.0-rc1", "c": "v2.0-rc1"}
    assert seen["by_version"] == {
        "1": {"replicas": 1, "visits": 30, "last_minute": 30, "share_last_minute": 0.5},
        "v2.0-rc1": {"replicas": 2, "visits": 30, "last_minute": 30, "share_last_minute": 0.5}}
    assert list(seen["by_version"]) == ["1", "v2.0-rc1"]
    assert ('<tr><td>1</td><td class="n">1</td><td class="n">30</td>'
            '<td><span class="bar" style="width:100px"></span>50%</td></tr>\n'
            '<tr><td>v2.0-rc1</td><td class="n">2</td><td class="n">30</td>'
            '<td><span class="bar" style="width:100px"></span>50%</td></tr>\n</table>') in html
    assert "<td>b</td><td>v2.0-rc1</td>" in html
    assert page["version"] == "v2.0-rc1" and page["visits"] == 61
    for answer in answers:
        assert (answer.headers["Friendlyhello-Replica"], answer.headers["Friendlyhello-Version"]) == \
            ("b", "v2.0-rc1"), answer.status


def test_the_last_minute_is_the_visits_since_the_oldest_slot_mark_of_the_last_minute():
    now = 100_004  # 4 s into slot 10,000 of 10 s
    marks = [b"at:9994", b"5", b"at:9995", b"12", b"at:9999", b"20"]
    row = replica_view.read_record(b"a", [b"served", b"30", b"seen", b"%d" % now, *marks], now)
    assert (row["served"], row["last_minute"]) == (30, 18)  # 30 - 12: slot 9994 began over a minute ago
    assert row["seconds_since_seen"] == 0  # seen this very second
    young = replica_view.read_record(b"a", [b"served", b"7", b"seen", b"%d" % now], now)
    assert young["last_minute"] == 7  # no mark yet: a record younger than its first heartbeat
    stale = replica_view.read_record(b"a", [b"served", b"7", b"at:9000", b"3", b"at:x", b"1", b"at:x9999", b"1"], now)
    assert stale["last_minute"] == 0  # marks, but none in the last minute: nothing recent
    odd = replica_view.read_record(b"a", [b"served", b"7", b"at:9999", b"-3", b"at:10000", b"5"], now)
    assert odd["last_minute"] == 2  # a mark that is not a count is passed over
    ahead = replica_view.read_record(b"a", [b"served", b"7", b"at:9999", b"9"], now)
    assert ahead["last_minute"] == 0  # a count that went back (someone reset it): never below 0


def test_a_heartbeat_marks_its_slot_and_forgets_the_old_ones_and_writes_its_version(redis_server):
    now = int(redis_command(redis_server.port, b"TIME").split(b"\r\n")[2])
    slot = now // replicas.SLOT_SECONDS
    key = replicas.REPLICA_PREFIX.encode() + b"hb"
    redis_command(redis_server.port, b"HSET", key, b"served", b"4", b"at:%d" % (slot - 7), b"1",
                  b"at:%d" % (slot - 12), b"1", b"at:%d" % (slot - 6), b"2")
    with serving(replica_env(redis_server, "hb", VERSION="7")):
        record = wait_until(lambda: written(redis_command(redis_server.port, b"HGETALL", key)),
                            what="the heartbeat's record", pace=0.05)
    fields = record.split(b"\r\n")[2::2]
    stored = dict(zip(fields[::2], fields[1::2], strict=True))
    marks = {k for k in stored if k.startswith(b"at:")}
    assert stored[b"version"] == b"7"
    assert {b"at:%d" % (slot - 6)} <= marks <= {b"at:%d" % (slot - 6), b"at:%d" % slot, b"at:%d" % (slot + 1)}
    assert stored[b"at:%d" % slot] == b"4" if b"at:%d" % slot in stored else stored[b"at:%d" % (slot + 1)] == b"4"


def test_pages_counted_together_in_one_round_trip_each_get_a_number_of_their_own_and_all_count(redis_server):
    pages = []
    with serving(replica_env(redis_server, "busy")) as server:
        def visit(n):
            for _ in range(n):
                pages.append(server.get("/").text)
        threads = [threading.Thread(target=visit, args=(15,)) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        seen = view(server)
        sizes = server.get("/metrics").text
    numbers = sorted(int(page.rsplit(" ", 1)[1]) for page in pages)
    assert numbers == list(range(1, 181)) and redis_counter(redis_server.port) == 180
    assert {r["id"]: r["served"] for r in seen["replicas"]} == {"busy": 180}
    merged = re.search(r"^friendlyhello_redis_pipeline_size_count (\S+)$", sizes, re.M).group(1)
    assert float(merged) < 180  # some went together (12 clients at once)


def test_pages_counted_together_when_the_counter_is_not_a_number_all_say_so_and_none_counts(redis_server):
    redis_command(redis_server.port, b"SET", b"counter", b"many")
    pages = []
    with serving(replica_env(redis_server, "w")) as server:
        threads = [threading.Thread(target=lambda: pages.append(server.get("/").text)) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert len(pages) == 12 and all(page.endswith(DISABLED) for page in pages)
    assert redis_command(redis_server.port, b"HGET", replicas.REPLICA_PREFIX.encode() + b"w", b"served") in (
        b"$-1\r\n", b"$1\r\n0\r\n")


def test_versions_are_listed_in_their_names_order_numbers_by_value_with_shares_to_four_places():
    rows = [{"id": v, "version": v, "served": 1, "last_minute": 1} for v in ("v10", "v2", "v9")]
    view = replica_view.ReplicaView(rows, 3, 3, None)
    assert list(view.by_version()) == ["v2", "v9", "v10"]
    assert [v["share_last_minute"] for v in view.by_version().values()] == [0.3333] * 3
    quiet = replica_view.ReplicaView([{"id": "a", "version": "1", "served": 4, "last_minute": 0}], 4, 1, None)
    assert quiet.by_version() == {"1": {"replicas": 1, "visits": 4, "last_minute": 0, "share_last_minute": 0.0}}
