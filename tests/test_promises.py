"""The README's promises that a mutation audit found unguarded, each held by a quick,
deterministic test: the page's words, Redis's error replies, a lost reply, the fail-fast
back-off, shutdown's two timers, the connection limit, batching, and the metrics' numbers."""

import io
import json
import os
import re
import socket
import threading
import time

import pytest

import hello_server
from fake_redis import Delay, Hangup, Silence
from friendlyhello import listening, logs, metrics, settings
from helpers import DISABLED, ROOT, Process, raw_exchange, redis_env, refused_env, request, serving, wait_until

README = open(os.path.join(ROOT, "README.md")).read()  # noqa: SIM115 - read once, at import


def sample(text, name):
    """One unlabelled sample of a metrics page."""
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


# -- the page's words, as the README writes them -----------------------------------------------

def test_the_readme_shows_both_pages_byte_for_byte_as_they_are_served():
    assert "<h3>Hello World!</h3><b>Hostname:</b> 88f12064cd94<br/><b>Visits:</b> 7\n" in README
    assert f"<h3>Hello World!</h3><b>Hostname:</b> 88f12064cd94<br/><b>Visits:</b> {DISABLED}\n" in README


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
    assert sample(scraped, "friendlyhello_visits_total") == 1


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


# -- shutdown: the delay, then the drain, each a timer ------------------------------------------

@pytest.mark.slow  # waits out real timeouts and delays
def test_during_the_drain_the_port_is_closed_while_a_request_in_flight_finishes(fake_redis):
    fake_redis.script(Delay(0.5, b":1\r\n"))
    with serving({**redis_env(fake_redis), "DRAIN_TIMEOUT": "5"}) as server:
        replies = []
        in_flight = threading.Thread(target=lambda: replies.append(server.get("/")))
        in_flight.start()
        fake_redis.wait_for_commands(1)
        server.server.stop()

        def refused():
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
                return False
            except ConnectionRefusedError:
                return True
            except ConnectionResetError:  # queued as the port closed: try again
                return False

        wait_until(refused, within=0.3)
        still_in_flight = in_flight.is_alive()
        in_flight.join(5)
    assert still_in_flight  # the port closed before the request in flight was answered
    assert replies[0].status == 200 and replies[0].text.endswith("</b> 1")


@pytest.mark.slow  # a process, waiting out its drain
def test_the_drain_timeout_ends_a_request_that_never_finishes_and_the_process_exits_at_once(fake_redis):
    fake_redis.script(Silence())
    proc = Process({**redis_env(fake_redis), "PORT": "0", "BIND": "127.0.0.1", "REDIS_TIMEOUT": "5",
                    "DRAIN_TIMEOUT": "0.5"})
    proc.wait_listening()
    client = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
    client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    fake_redis.wait_for_commands(1)
    started = time.monotonic()
    proc.signal()
    code = proc.wait(5)
    took = time.monotonic() - started
    answer = client.recv(100)
    client.close()
    proc.finish()
    assert code == 0 and answer == b""  # closed unanswered: its wait outlasted the drain
    assert 0.5 <= took < 0.5 + 1.0  # the drain timer, not Redis's 5 s timeout


@pytest.mark.parametrize("head, expected", [(b"GET / HTTP/1.1\r\nHost: slow", b"HTTP/1.1 408"), (b"", b"")],
                         ids=["a slow head: 408", "idle: closed"])
def test_the_idle_timeout_is_waited_out_in_full_before_a_connection_is_let_go(head, expected):
    with serving({**refused_env(), "IDLE_TIMEOUT": "0.25"}) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(head)
        answer = sock.recv(100)
        took = time.monotonic() - started
    assert answer.startswith(expected) and (answer == b"") == (expected == b"")
    assert 0.25 <= took < 0.25 + 1.0


# -- limits and batching ----------------------------------------------------------------------

def test_connections_past_max_connections_wait_in_the_backlog_until_one_closes():
    with serving({**refused_env(), "MAX_CONNECTIONS": "2"}) as server:
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(2)]
        for sock in held:  # both accepted and served
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(1000).startswith(b"HTTP/1.1 200")
        third = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        third.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        third.settimeout(0.25)
        with pytest.raises(TimeoutError):
            third.recv(1000)  # in the backlog: not accepted while two are open
        held[0].close()
        third.settimeout(5)
        answer = third.recv(1000)
        third.close()
        held[1].close()
    assert answer.startswith(b"HTTP/1.1 200")


def test_pages_asked_for_in_one_turn_of_the_loop_go_to_redis_together(fake_redis):
    config = settings.load_config(["--port", "0", "--bind", "127.0.0.1"], redis_env(fake_redis))
    log = logs.Log(config.access_log, config.log_format, {}, io.StringIO(), io.StringIO())
    server = hello_server.wire(config, listening.listen(config), log, "h")
    handed_over, submit = [], server.redis_thread.submit
    server.redis_thread.submit = lambda requests: (handed_over.append(len(requests)), submit(requests))
    clients = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(5)]
    for client in clients:  # all five asked before the loop's first turn
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    loop = threading.Thread(target=server.serve)
    loop.start()
    try:
        pages = sorted(int(client.recv(65536).rsplit(b" ", 1)[1]) for client in clients)
    finally:
        server.stop()
        loop.join(5)
        for client in clients:
            client.close()
    assert pages == [1, 2, 3, 4, 5]
    assert handed_over == [5]  # one wake-up of the Redis thread for the turn's five
    assert fake_redis.visit_counts == [5]  # and one command, in one round trip


def test_pages_waiting_while_redis_answers_go_in_one_round_trip(fake_redis):
    fake_redis.script(Delay(0.25, b":1\r\n"))
    fake_redis.store[b"counter"] = b"1"  # as the scripted first visit left it
    pages = []
    with serving(redis_env(fake_redis)) as server:
        first = threading.Thread(target=lambda: pages.append(server.get("/").text))
        first.start()
        fake_redis.wait_for_commands(1)
        others = [threading.Thread(target=lambda: pages.append(server.get("/").text)) for _ in range(5)]
        for thread in others:  # in turns of the loop of their own: each added to what waits
            thread.start()
            time.sleep(0.02)
        for thread in [first, *others]:
            thread.join(5)
        scraped = server.get("/metrics").text
    assert sample(scraped, "friendlyhello_redis_pipeline_size_count") == 2  # one trip, then one for five
    assert sample(scraped, "friendlyhello_redis_pipeline_size_sum") == 6
    assert sample(scraped, "friendlyhello_visits_total") == 6
    assert fake_redis.visit_counts == [1, 5]  # the five visits in one command, counting five
    assert sorted(int(page.rsplit(" ", 1)[1]) for page in pages) == [1, 2, 3, 4, 5, 6]  # each a number of its own


def test_a_client_pipelining_many_requests_cannot_keep_another_waiting_until_it_is_done():
    """Each turn of the loop serves a few of one connection's pipelined requests, then the
    others': the one request sent just after 400 pipelined ones is not answered last."""
    with serving(refused_env(ACCESS_LOG="all")) as server, \
            socket.create_connection(("127.0.0.1", server.port)) as greedy, \
            socket.create_connection(("127.0.0.1", server.port)) as other:
        greedy.sendall(b"".join(b"GET /healthz?greedy=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in range(400)))
        other.sendall(b"GET /healthz?other HTTP/1.1\r\nHost: x\r\n\r\n")
        assert other.recv(65536).startswith(b"HTTP/1.1 200")
        got = 0
        while got < 400 * 100:  # every greedy answer, read (at least 100 bytes each)
            got += len(greedy.recv(1 << 20))
        wait_until(lambda: len(server.log_lines()) >= 401)
    order = [line for line in server.log_lines() if "/healthz?" in line]
    place = next(n for n, line in enumerate(order) if "?other" in line)
    assert len(order) == 401 and place < 200, place


# -- the metrics' numbers ---------------------------------------------------------------------

def test_an_observation_on_a_bucket_bound_counts_in_that_bucket_and_every_sum_adds_up():
    series = {}
    histogram = metrics.Histogram(metrics.DURATION_BUCKETS, series)
    for value in (0.005, 0.0051, 0.01, 10.0, 11.0):
        histogram.observe(("GET", "/"), value)
    snapshot = {"series": {"http_request_duration_seconds": series}, "process": {}}
    text = metrics.exposition(metrics.merged([snapshot, snapshot]), redis_up=True)
    buckets = dict(re.findall(r'^http_request_duration_seconds_bucket\{method="GET",route="/",le="([^"]+)"\} (\d+)$',
                              text, re.M))
    assert (buckets["0.005"], buckets["0.01"], buckets["0.025"], buckets["10.0"], buckets["+Inf"]) == \
        ("2", "6", "6", "8", "10")
    total = re.search(r'^http_request_duration_seconds_sum\{method="GET",route="/"\} (\S+)$', text, re.M).group(1)
    assert float(total) == pytest.approx(2 * (0.005 + 0.0051 + 0.01 + 10.0 + 11.0))
    assert 'http_request_duration_seconds_count{method="GET",route="/"} 10' in text


def test_the_open_connections_gauge_follows_connections_coming_and_going():
    with serving(refused_env()) as server:
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(3)]
        wait_until(lambda: sample(server.get("/metrics").text, "friendlyhello_open_connections") == 4)
        for sock in held:
            sock.close()
        wait_until(lambda: sample(server.get("/metrics").text, "friendlyhello_open_connections") == 1)


def test_requests_and_visits_are_counted_once_each(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        for _ in range(3):
            server.get("/")
        server.get("/nope")
        scraped = server.get("/metrics").text
    assert 'http_requests_total{method="GET",route="/",code="200"} 3' in scraped
    assert 'http_requests_total{method="GET",route="other",code="404"} 1' in scraped
    assert sample(scraped, "friendlyhello_visits_total") == 3
    assert re.search(r'^friendlyhello_redis_replies_total\{outcome="ok"\} 3$', scraped, re.M)


def test_liveness_and_readiness_bodies_are_as_the_readme_says():
    with serving(refused_env()) as server:
        assert request(server.port, "/livez").text == "ok\n"
        assert request(server.port, "/readyz").text.startswith("ready\nredis: ")
    assert "`200 ok`" in README and "`200 ready`" in README


# -- how Redis failed, in the words each place uses ---------------------------------------------

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
    assert sample(scraped, "friendlyhello_redis_up") == 0
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
    assert ready == "ready\nredis: up\n" and sample(scraped, "friendlyhello_redis_up") == 1


@pytest.mark.parametrize("env, said", [
    ({}, "redis:6379 db 0"),
    ({"REDIS_HOST": "::1", "REDIS_PORT": "7000", "REDIS_DB": "3"}, "[::1]:7000 db 3"),
    ({"REDIS_URL": "unix:///run/redis.sock?db=2"}, "unix:/run/redis.sock db 2"),
    ({"REDIS_URL": "redis://:secret@cache:6380/5"}, "cache:6380 db 5"),
])
def test_the_start_up_line_names_where_redis_is_and_never_its_password(env, said):
    from friendlyhello import redis_thread, settings

    assert redis_thread.describe_redis(settings.load_config([], env)) == said


def test_pages_and_the_replica_view_vary_by_accept_and_answer_200(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        answers = [server.get(path, headers=headers) for path in ("/", "/replicas")
                   for headers in ({}, {"Accept": "application/json"})]
        scraped = server.get("/metrics")
    assert [(a.status, a.headers["Vary"]) for a in answers] == [(200, "Accept")] * 4
    assert scraped.status == 200


def test_a_head_past_the_limits_is_logged_counted_and_closed():
    with serving(refused_env()) as server:
        answer = raw_exchange(server.port, b"GET / HTTP/1.1\r\nX: " + b"v" * 20000 + b"\r\n\r\n")
        log = server.log_lines()
        scraped = server.get("/metrics").text
    assert answer.startswith(b"HTTP/1.1 431 ") and b"\r\nConnection: close\r\n" in answer
    assert log == ['127.0.0.1 "- -" 431 0.0ms']
    assert 'http_requests_total{method="other",route="other",code="431"} 1' in scraped
    assert 'http_request_duration_seconds_bucket{method="other",route="other",le="0.005"} 1' in scraped


def test_a_redis_setup_that_fails_makes_redis_unavailable_not_an_answer(redis_server):
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port), "REDIS_DB": "99"}  # it has 16
    with serving(env) as server:
        page = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        ready = server.get("/readyz").text
        errors = "\n".join(server.error_lines())
    assert page["visits"] is None and page["redis"] == "error ERR"
    assert ready.startswith("ready\nredis: unavailable (error ERR) for ")
    assert "is unavailable (error ERR): " in errors
