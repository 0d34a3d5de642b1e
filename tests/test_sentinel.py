"""The Redis client behind Sentinel: it asks the sentinels which server is the primary, checks
its ROLE, and follows a failover, whether asked for (SENTINEL FAILOVER) or forced by the
primary's death; with real redis-servers and sentinels on loopback."""

import json
import os
import re
import signal
import threading
import time

import pytest

import resp_client
from fake_redis import FakeRedis, Silence
from helpers import free_port, metric_sample, request, run_to_exit, serving, wait_until
from sentinel import MASTER, Replicated, SwitchNews, call


@pytest.fixture(scope="module")
def replicated():
    with Replicated() as servers:
        yield servers


def client_of(servers, sentinels=None, **options):
    return resp_client.RespClient(sentinels=sentinels or servers.addresses, master_name=MASTER,
                                  connect_timeout=0.5, timeout=0.5, max_connections=2, **options)


@pytest.mark.slow  # real servers and sentinels, and failovers
def test_the_client_finds_the_primary_through_the_first_sentinel_that_answers(replicated):
    dead = ("127.0.0.1", free_port())  # nothing listens: skipped, asked last next time
    with client_of(replicated, [dead, *replicated.addresses]) as client:
        value = client.incr("sentinel-test")
        host, port, since = client.primary
        order = list(client._connector.sentinels)
    assert value >= 1 and (host, port) == ("127.0.0.1", replicated.primary())
    assert time.time() - since < 60 and order[0] != dead
    assert "the primary of mymaster" in repr(client)


@pytest.mark.slow  # real servers and sentinels, and failovers
def test_a_master_name_no_sentinel_knows_is_a_connection_error_naming_it(replicated):
    with resp_client.RespClient(sentinels=replicated.addresses, master_name="nosuch", connect_timeout=0.5,
                                timeout=0.5) as client, pytest.raises(resp_client.RedisConnectionError) as refused:
        client.incr("x")
    assert "no sentinel named the primary of nosuch" in str(refused.value)
    assert "knows no primary named nosuch" in str(refused.value)


@pytest.mark.slow  # real servers and sentinels
def test_given_one_sentinel_the_client_learns_the_others_and_asks_them_when_it_does_not_answer(replicated):
    given, *others = replicated.sentinels
    with client_of(replicated, [("127.0.0.1", given.port)]) as client:
        client.incr("learned")
        learned = client.sentinel.sentinel_list()
        client.close()  # the next call asks the sentinels again
        os.kill(given.process.pid, signal.SIGSTOP)  # it takes the connection, and never answers
        try:
            value = client.incr("learned")
            answered_first = client.sentinel.sentinel_list()[0]
        finally:
            os.kill(given.process.pid, signal.SIGCONT)
    assert sorted(learned) == sorted(replicated.addresses) and learned[0] == ("127.0.0.1", given.port)
    assert value >= 2 and answered_first in [("127.0.0.1", s.port) for s in others]


@pytest.mark.slow  # real servers and sentinels, and failovers
def test_after_a_failover_the_client_writes_to_the_new_primary_never_the_demoted_one(replicated):
    with client_of(replicated) as client:
        before = client.incr("followed")
        old = client.primary[1]
        new = replicated.failover()
        deadline, errors, value = time.monotonic() + 15, [], None
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                value = client.incr("followed")
                if client.primary[1] == new:
                    break
            except resp_client.RedisError as exc:
                errors.append(type(exc).__name__)
            assert time.monotonic() - started < 1.2  # never past the timeouts
            time.sleep(0.05)
        primary = client.primary
    assert new != old and primary[1] == new and value > before
    assert int(call(new, "GET", "followed")) == value  # written to the new primary, not the old one



# -- the server behind sentinels -------------------------------------------------------------------

def sentinel_env(servers, **extra):
    return {"REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in servers.addresses), "REDIS_MASTER_NAME": MASTER,
            "REDIS_TIMEOUT": "0.5", **extra}


def page(server):
    answer = request(server.port, "/", headers={"Accept": "application/json"})
    return answer.status, json.loads(answer.body)


@pytest.mark.slow  # real servers and sentinels, and failovers
def test_pages_follow_the_primary_through_its_death_and_readyz_and_the_log_say_which_it_is(replicated):
    with serving(sentinel_env(replicated)) as server:
        first = page(server)[1]
        old = replicated.primary()
        ready_before = request(server.port, "/readyz").text
        news = SwitchNews([s.port for s in replicated.sentinels])
        replicated.servers[old].kill()  # kill -9: no goodbye to the replicas or the sentinels
        killed = time.monotonic()
        slowest, shown, counted_at = 0.0, [], None
        while time.monotonic() - killed < 20:
            started = time.monotonic()
            status, seen = page(server)
            slowest = max(slowest, time.monotonic() - started)
            if seen["visits"] is not None:
                shown.append(seen["visits"])
                if counted_at is None and replicated.primary() != old:
                    counted_at = time.monotonic() - killed
                if counted_at is not None and len(shown) > 3:
                    break
            time.sleep(0.05)
        ready_after = request(server.port, "/readyz").text
        metrics = request(server.port, "/metrics").text
        errors = server.error_lines()
        hints = [t for t in threading.enumerate() if t.name == "sentinel-watch"]
    news.close()
    switched_at = news.at - killed
    new = replicated.primary()
    replicated.servers[old].start()  # back as it was, and a replica of the new one at once (as the
    call(old, "REPLICAOF", "127.0.0.1", str(new))  # sentinels would make it, in their own time)
    replicated.wait_until_all_in_sync()
    print(f"\nprimary {old} killed: the sentinels' failover to {new} done (+switch-master) after "
          f"{switched_at:.2f} s, pages counted on it after {counted_at:.2f} s; the slowest page {slowest:.2f} s")
    assert first["visits"] is not None and new != old and counted_at is not None
    # Their +switch-master news dropped the pool and the back-off (up to 2 s) at once.
    assert counted_at - switched_at < 0.3
    assert len(hints) == 1 and not any(t.is_alive() for t in hints)  # it ended with the server
    assert slowest < 1.2  # no page waits past its deadline (REDIS_TIMEOUT 0.5 s, connect and reply)
    assert f"primary: 127.0.0.1:{old} since " in ready_before and f"primary: 127.0.0.1:{new} since " in ready_after
    assert sum(f"the primary is now 127.0.0.1:{new} (it was 127.0.0.1:{old})" in line for line in errors) == 1
    assert metric_sample(metrics, "friendlyhello_redis_primary_changes_total") == 1


@pytest.mark.slow  # real servers and sentinels, and failovers
def test_with_wait_all_a_visit_no_replica_acknowledged_shows_the_counter_disabled_as_not_replicated(replicated):
    replicated.wait_until_all_in_sync()
    primary = replicated.primary()
    paused = next(port for port in replicated.servers if port != primary)
    with serving(sentinel_env(replicated, REDIS_WAIT_REPLICAS="all")) as server:
        counted = page(server)[1]
        os.kill(replicated.servers[paused].process.pid, signal.SIGSTOP)
        try:
            refused = page(server)[1]
        finally:
            os.kill(replicated.servers[paused].process.pid, signal.SIGCONT)
        wait_until(lambda: page(server)[1]["visits"] is not None, 10, "visits replicated again", pace=0.1)
        metrics = request(server.port, "/metrics").text
    assert counted["visits"] is not None and counted["redis"] == "ok"
    assert refused["visits"] is None and refused["redis"] == "not replicated"
    assert 'friendlyhello_redis_replies_total{outcome="not_replicated"}' in metrics


@pytest.mark.slow  # it takes pages through two of the checks, 3 s apart
def test_sentinels_that_stop_answering_hold_no_page_while_the_primary_answers(redis_server):
    """The sentinels are asked again every 3 s, by a thread of the client's own: one that stops
    answering (stuck, say, as a sentinel in TILT) costs the pages nothing while the primary does."""
    with FakeRedis() as sentinel:
        named = b"127.0.0.1"
        sentinel.script(b"*2\r\n$%d\r\n%s\r\n$%d\r\n%d\r\n" % (len(named), named, len(str(redis_server.port)),
                                                                 redis_server.port), b"*0\r\n",
                        *[Silence()] * 200)
        with serving({"REDIS_SENTINELS": f"127.0.0.1:{sentinel.port}", "REDIS_TIMEOUT": "1"}) as server:
            slowest, counted, started, until = 0.0, 0, time.monotonic(), None
            while until is None or time.monotonic() < until:
                sent = time.monotonic()
                counted += page(server)[1]["visits"] is not None
                slowest = max(slowest, time.monotonic() - sent)
                if until is None and asked(sentinel) >= 3:  # the first question, then two checks:
                    until = time.monotonic() + 1.5  # pages on through the last one's whole timeout
                assert time.monotonic() - started < 15, "the sentinel was not asked again"
                time.sleep(0.02)  # a steady pace of pages
            checks = asked(sentinel) - 1
    assert checks >= 2 and slowest < 0.5 and counted > 50, (checks, slowest, counted)


def asked(sentinel):
    """How many times this (fake) sentinel was asked which server is the primary."""
    return sum(c[:2] == [b"SENTINEL", b"get-master-addr-by-name"] for c in sentinel.commands)


@pytest.mark.parametrize("reply", [b"*2\r\n$4\r\nhost\r\n$7\r\nnotport\r\n", b"*1\r\n$4\r\nhost\r\n",
                                   b"*2\r\n$3\r\na b\r\n$4\r\n6379\r\n", b"*-1\r\n"])
def test_a_sentinel_that_names_no_usable_address_is_passed_over_with_a_typed_error(reply):
    with FakeRedis() as sentinel, resp_client.RespClient(
            sentinels=[("127.0.0.1", sentinel.port)], connect_timeout=0.5, timeout=0.5) as client:
        sentinel.script(reply)
        with pytest.raises(resp_client.RedisConnectionError) as refused:
            client.incr("x")
    words = "knows no primary named mymaster" if reply == b"*-1\r\n" else "answered no host and port"
    assert f"127.0.0.1:{sentinel.port} ({words})" in str(refused.value)


@pytest.mark.slow  # it waits out whole timeouts
def test_sentinels_that_never_answer_are_all_asked_within_one_connect_timeout_not_one_each():
    with FakeRedis() as first, FakeRedis() as second, FakeRedis() as third:
        first.script(Silence())
        second.script(Silence())
        third.script(b"*-1\r\n")  # it answers: no primary of that name
        sentinels = [("127.0.0.1", s.port) for s in (first, second, third)]
        with resp_client.RespClient(sentinels=sentinels, connect_timeout=0.9, timeout=0.9) as client:
            started = time.monotonic()
            with pytest.raises(resp_client.RedisConnectionError) as refused:
                client.incr("x")
            took = time.monotonic() - started
    assert 0.5 < took < 0.9 + 0.3  # a share each (0.3 s, then 0.3 s), and the third's answer
    assert f"127.0.0.1:{third.port} (knows no primary named mymaster)" in str(refused.value)
    assert len(re.findall(r"no reply from Redis within 0\.[23][0-9]*s", str(refused.value))) == 2


@pytest.mark.parametrize("env, words", [
    ({"REDIS_SENTINELS": "sentinel-1"}, "REDIS_SENTINELS='sentinel-1' is not valid: expected host:port pairs"),
    ({"REDIS_SENTINELS": "a:1", "REDIS_HOST": "redis"}, "set REDIS_SENTINELS or REDIS_URL/REDIS_HOST/REDIS_PORT"),
    ({"REDIS_SENTINELS": "a:1", "REDIS_SENTINEL_USERNAME": "u"}, "REDIS_SENTINEL_USERNAME needs"),
    ({"REDIS_WAIT_REPLICAS": "most"}, "REDIS_WAIT_REPLICAS='most' is not valid"),
])
def test_a_wrong_sentinel_setting_stops_the_server_before_it_binds_with_one_line(env, words):
    code, out, err = run_to_exit({**env, "PORT": "0"})
    assert code == 2 and out == "" and err.count("\n") == 1 and words in err, err


@pytest.mark.slow  # six failovers under load, each waited out
def test_with_wait_all_no_number_is_shown_twice_nor_lost_through_kills_pauses_and_failovers():
    import failover

    seen = failover.run(each=2, wait="all", log=lambda line: print(line))
    print(json.dumps(seen))
    assert seen["failovers"] == {"kill": 2, "pause": 2, "failover": 2}
    assert seen["shown"] > 100 and seen["shown_twice"] == 0 and seen["shown_then_lost"] == 0
    assert seen["final_counter"] >= seen["shown"]  # every number shown is held by the counter
    slowest = max(t for _, t in seen["seconds_to_count_again"].values())
    assert slowest < 10, seen["seconds_to_count_again"]  # never stuck: counted again after each
