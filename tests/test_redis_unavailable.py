"""When Redis fails a visit or cannot be used: what the page, its JSON, /readyz, /metrics and the
log say (one name for each way it fails), that nothing counts twice, and that the pages after
the first answer at once while it stays unavailable."""

import json
import re
import socket
import threading
import time

import pytest

from fake_redis import Hangup, Silence
from helpers import (
    DISABLED,
    metric_sample,
    readme,
    redis_env,
    refused_env,
    serving,
    shut_down,
    wait_until,
)

README = readme()


@pytest.mark.parametrize("reply", [
    b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
    b"-OOM command not allowed when used memory > 'maxmemory'.\r\n",
    b"-READONLY You can't write against a read only replica.\r\n",
    b"+OK\r\n", b"$3\r\nabc\r\n", b"*0\r\n", b"$-1\r\n",
], ids=["WRONGTYPE", "OOM", "READONLY", "status", "text", "array", "nil"])
def test_redis_refusing_the_visit_or_answering_no_number_shows_the_counter_disabled_and_counts_nothing(
        fake_redis, reply):
    fake_redis.script(reply)
    with serving(redis_env(fake_redis), hostname="h") as server:
        refused = server.get("/")
        fake_redis.script(reply)
        as_json = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        after = server.get("/")  # the connection to Redis is still in step
        scraped = server.get("/metrics").text
    assert refused.text == f"<h3>Hello world!</h3><b>Hostname:</b> h<br/><b>Visits:</b> {DISABLED}"
    assert as_json["visits"] is None and as_json["redis"] != "ok"
    if reply.startswith(b"-"):
        assert as_json["redis"] == "error " + reply[1:].split(b" ")[0].decode()
    assert after.text.endswith("<b>Visits:</b> 1")
    assert metric_sample(scraped, "friendlyhello_visits_total") == 1


def test_a_counter_refusing_the_visit_takes_the_replicas_count_back_and_says_so_when_that_fails(fake_redis):
    exec_reply = b"*3\r\n:1\r\n-ERR value is not an integer or out of range\r\n:1\r\n"
    fake_redis.script(exec_reply, b":0\r\n", exec_reply, Hangup())  # the second take-back is lost
    with serving(redis_env(fake_redis)) as server:
        taken_back = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        stuck = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
    assert taken_back["visits"] is None and taken_back["redis"] == stuck["redis"] == "error ERR"
    assert [c[0] for c in fake_redis.commands] == [b"MULTI", b"HINCRBY", b"MULTI", b"HINCRBY"]
    assert fake_redis.commands[1][-1] == b"-1"  # the replica's count, taken back by the visit that failed
    assert server.error_log.getvalue().count("too high") == 1
    assert "friendlyhello: redis: this replica's count stays 1 too high: the counter refused its visits" in \
        server.error_log.getvalue()


def test_a_reply_lost_after_the_visit_left_says_it_may_have_counted(fake_redis):
    fake_redis.script(Hangup())
    with serving(redis_env(fake_redis)) as server:
        lost = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
    assert lost == {**lost, "visits": None, "redis": "no reply (the visit may have counted)"}


def test_after_a_silent_redis_times_out_once_the_next_pages_answer_at_once(fake_redis):
    fake_redis.script(*[Silence()] * 5)
    with serving({**redis_env(fake_redis), "REDIS_TIMEOUT": "0.3"}) as server:
        started = time.monotonic()
        first = server.get("/")
        first_took = time.monotonic() - started
        started = time.monotonic()
        rest = [server.get("/") for _ in range(3)]
        rest_took = time.monotonic() - started
    assert first.text.endswith(DISABLED) and all(r.text.endswith(DISABLED) for r in rest)
    assert 0.3 <= first_took < 0.3 + 1.0
    assert rest_took < 0.3  # three pages in less than one timeout: the back-off answered them


@pytest.mark.slow  # it waits out whole timeouts
@pytest.mark.parametrize("behind", ["redis", "sentinel"])
def test_while_redis_is_unavailable_no_page_waits_behind_a_probe_stuck_on_a_silent_server(behind):
    """The probe that tries Redis again may wait its whole timeout (a server that takes the
    connection and never answers: Redis itself, or the sentinel that should name it); the pages
    that come meanwhile are answered at once, the counter disabled, not held behind it."""
    accepted = []
    with socket.create_server(("127.0.0.1", 0), backlog=16) as silent:  # takes them; never answers
        threading.Thread(target=lambda: [accepted.append(silent.accept()[0]) for _ in range(8)],
                         daemon=True).start()
        port = silent.getsockname()[1]
        where = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(port)} if behind == "redis" else {
            "REDIS_SENTINELS": f"127.0.0.1:{port}"}
        with serving({**where, "REDIS_TIMEOUT": "2"}) as server:
            server.get("/")  # waits on the silent server, and the outage begins

            def until_the_probe():  # pages refused at once while backing off, then the probe's
                deadline = time.monotonic() + 10
                while len(accepted) < 2 and time.monotonic() < deadline:
                    server.get("/")

            probe = threading.Thread(target=until_the_probe)
            probe.start()
            wait_until(lambda: len(accepted) >= 2, 10, "the probe's connection")  # stuck for 2 s now
            started = time.monotonic()
            during = [json.loads(server.get("/", headers={"Accept": "application/json"}).body) for _ in range(5)]
            took = time.monotonic() - started
            probe.join()
            scraped = server.get("/metrics").text
        shut_down(accepted)
    reason = "timeout" if behind == "redis" else "cannot connect"
    assert [page["redis"] for page in during] == [reason] * 5 and took < 1.0, (during, took)
    assert metric_sample(scraped, f'friendlyhello_redis_replies_total{{outcome="{reason.replace(" ", "_")}"}}') >= 5


@pytest.mark.parametrize("answer, outcome, words", [
    (Silence(), "no_reply", "no reply (the visit may have counted)"),
    (b"-WRONGTYPE wrong kind of value\r\n", "error_reply", "error WRONGTYPE"),
    (b"%1\r\n", "no_reply", "no reply (the visit may have counted)"),
], ids=["silent", "error reply", "broken reply"])
def test_each_way_a_visit_fails_has_its_outcome_in_metrics_and_its_words_in_json(fake_redis, answer, outcome, words):
    fake_redis.script(answer)
    with serving({**redis_env(fake_redis), "REDIS_TIMEOUT": "0.2"}) as server:
        page = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        scraped = server.get("/metrics").text
    assert page["redis"] == words
    assert re.search(rf'^friendlyhello_redis_replies_total{{outcome="{outcome}"}} 1$', scraped, re.M)


def test_unavailable_redis_is_named_by_what_made_it_so_timeout_or_cannot_connect(fake_redis):
    fake_redis.script(Silence(), Silence())
    with serving({**redis_env(fake_redis), "REDIS_TIMEOUT": "0.2"}) as server:
        server.get("/")  # times out: its reply is lost, and the outage begins
        during = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        ready = server.get("/readyz").text
        scraped = server.get("/metrics").text
    assert during["redis"] == "timeout"  # refused at once, for the reason that opened the outage
    assert re.fullmatch(r"ready\nredis: unavailable \(timeout\) for 0\.[0-9]s\n", ready)
    assert re.search(r'^friendlyhello_redis_replies_total{outcome="timeout"} 1$', scraped, re.M)
    assert re.search(r'^friendlyhello_redis_replies_total{outcome="no_reply"} 1$', scraped, re.M)
    assert metric_sample(scraped, "friendlyhello_redis_up") == 0
    with serving(refused_env()) as server:
        assert json.loads(server.get("/", headers={"Accept": "application/json"}).body)["redis"] == "cannot connect"


def test_a_garbled_reply_is_a_protocol_error_for_as_long_as_redis_is_unavailable(fake_redis):
    fake_redis.script(b"?what\r\n")
    with serving(redis_env(fake_redis)) as server:
        server.get("/")
        during = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
    assert during["redis"] == "protocol error"


@pytest.mark.parametrize("script, extra, words", [
    ((Silence(), Silence()), {"REDIS_TIMEOUT": "0.2"}, "timeout"),
    ((b"?what\r\n",), {}, "protocol error"),
    ((b"-WRONGPASS invalid username-password pair\r\n",) * 2, {"REDIS_PASSWORD": "not-it"}, "authentication failed"),
    ((), None, "cannot connect"),
], ids=["silent", "garbled", "refused password", "refused connection"])
def test_unavailable_redis_has_one_name_in_the_page_the_probe_and_the_metric(fake_redis, script, extra, words):
    fake_redis.script(*script)
    env = refused_env() if extra is None else {**redis_env(fake_redis), **extra}
    with serving(env) as server:
        server.get("/")
        during = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        ready = server.get("/readyz").text
        scraped = server.get("/metrics").text
    label = words.replace(" ", "_")
    assert during["redis"] == words and f"redis: unavailable ({words}) for " in ready
    assert re.search(rf"^friendlyhello_redis_replies_total{{outcome=\"{label}\"}} [1-9]", scraped, re.M), scraped


def test_readiness_says_redis_was_not_asked_yet_before_its_first_answer():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes connections, never answers
        env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(silent.getsockname()[1]), "REDIS_TIMEOUT": "0.5"}
        with serving(env) as server:
            assert server.get("/readyz").text == "ready\nredis: not asked yet\n"


def test_an_error_reply_is_an_answer_redis_stays_up(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        server.get("/")
        fake_redis.script(b"-WRONGTYPE wrong kind of value\r\n")
        server.get("/")
        ready = server.get("/readyz").text
        scraped = server.get("/metrics").text
    assert ready == "ready\nredis: up\n" and metric_sample(scraped, "friendlyhello_redis_up") == 1


def test_a_redis_setup_that_fails_makes_redis_unavailable_not_an_answer(redis_server):
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port), "REDIS_DB": "99"}  # it has 16
    with serving(env) as server:
        page = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        ready = server.get("/readyz").text
        scraped = server.get("/metrics").text
        errors = "\n".join(server.error_lines())
    assert page["visits"] is None and page["redis"] == "error ERR"
    # In the page's words: an error reply (to the setup), though it makes Redis unavailable.
    assert re.search(r'^friendlyhello_redis_replies_total\{outcome="error_reply"\} [1-9]', scraped, re.M)
    assert ready.startswith("ready\nredis: unavailable (error ERR) for ")
    assert "is unavailable (error ERR): " in errors
