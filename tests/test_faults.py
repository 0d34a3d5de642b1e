"""Break it on purpose, from the settings: pages failing at a rate (counting no visit), added
latency, readiness or liveness failing; each fault that is on is visible in the JSON answer,
/metrics, /replicas and a log line."""

import json
import re
import time

import pytest

from friendlyhello.faults import Faults
from helpers import Process, flagged, redis_env, refused_env, run_to_exit, serving, wait_until


def test_pages_fail_at_the_rate_asked_each_failed_page_counting_nothing(fake_redis):
    with serving({**redis_env(fake_redis), "FAULT_ERRORS": "0.5", "FAULT_ERROR_STATUS": "503"}) as server:
        pages = [server.get("/") for _ in range(100)]
        probes = [server.get("/healthz").status, server.get("/readyz").status]
        scraped = server.get("/metrics").text
        said = server.error_lines()
    failed = [p for p in pages if p.status == 503]
    assert 20 < len(failed) < 80  # half of 100, give or take what chance gives (6 standard deviations)
    assert all(p.headers["Friendlyhello-Fault"] == "errors" and p.text == "503 Service Unavailable\n" for p in failed)
    assert fake_redis.visits == 100 - len(failed)  # exactly the pages that said 200
    assert sorted(int(p.text.rsplit(" ", 1)[1]) for p in pages if p.status == 200) == list(
        range(1, fake_redis.visits + 1))
    assert probes == [200, 200]
    assert 'friendlyhello_fault{kind="errors"} 0.5' in scraped
    assert "friendlyhello: faults: on from the start: errors 50% (503)" in said


def test_every_page_fails_at_rate_1_and_none_at_rate_0(fake_redis):
    with serving({**redis_env(fake_redis), "FAULT_ERRORS": "1"}) as server:
        assert {server.get("/").status for _ in range(20)} == {500}
        head = server.get("/", method="HEAD")
    with serving({**redis_env(fake_redis), "FAULT_ERRORS": "0"}) as server:
        assert {server.get("/").status for _ in range(20)} == {200}
    assert head.status == 500 and fake_redis.visits == 20


@pytest.mark.slow  # waits out the latency
def test_latency_holds_each_page_for_its_delay_but_not_the_probes(fake_redis):
    with serving({**redis_env(fake_redis), "FAULT_LATENCY": "0.05-0.15"}) as server:
        took = []
        for _ in range(3):
            started = time.monotonic()
            assert server.get("/").status == 200
            took.append(time.monotonic() - started)
        started = time.monotonic()
        server.get("/healthz")
        probe = time.monotonic() - started
        page = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        scraped = server.get("/metrics").text
    assert all(0.05 <= t < 0.15 + 0.2 for t in took), took
    assert probe < 0.05
    assert page["faults"] == {"latency": {"seconds": [0.05, 0.15]}} and page["visits"] == 4
    assert 'friendlyhello_fault{kind="latency"} 0.15' in scraped


def test_readiness_fails_while_pages_and_liveness_answer():
    with serving(refused_env(FAULT_READY="fail")) as server:
        ready, page, live = server.get("/readyz"), server.get("/"), server.get("/healthz")
        json_page = json.loads(server.get("/", headers={"Accept": "application/json"}).body)
        scraped = server.get("/metrics").text
    assert (ready.status, ready.text) == (503, "not ready: the ready fault is on\n")
    assert ready.headers["Friendlyhello-Fault"] == "ready"
    assert page.status == 200 and live.status == 200 and json_page["faults"] == {"ready": "fail"}
    assert re.search(r'^friendlyhello_fault\{kind="ready"\} 1$', scraped, re.M)
    assert re.search(r'^friendlyhello_fault\{kind="live"\} 0$', scraped, re.M)


@pytest.mark.slow  # a process and its health check
def test_liveness_fails_and_so_the_image_s_health_check_while_pages_answer():
    proc = Process({**refused_env(), "PORT": "0", "BIND": "127.0.0.1", "FAULT_LIVE": "fail"})
    try:
        proc.wait_listening()
        checked, _, err = run_to_exit({"PORT": str(proc.port)}, ["--healthcheck"])
    finally:
        proc.signal()
        proc.finish()
    with serving(refused_env(FAULT_LIVE="fail")) as server:
        live, livez, page = server.get("/healthz"), server.get("/livez"), server.get("/")
    assert checked == 1 and err == "friendlyhello: unhealthy: /healthz answered 503\n"
    assert (live.status, live.text) == (503, "not live: the live fault is on\n") and livez.status == 503
    assert page.status == 200


def test_a_replica_with_faults_on_is_flagged_in_the_replica_view(redis_server):
    env = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port), "REPLICA_ID": "broken",
           "FAULT_READY": "fail", "FAULT_LATENCY": "0.01"}
    with serving(env) as server:
        server.get("/")
        view = wait_until(lambda: flagged(server), within=5, what="the faults in the view", pace=0.05)
        html = server.get("/replicas").text
    assert view["replicas"][0]["faults"] == "latency 0.01 s, readiness fails"
    assert '<span class="bad">(faults on: latency 0.01 s, readiness fails)</span>' in html


class Settings:
    """The five settings Faults reads, as load_config makes them."""

    def __init__(self, errors=0.0, status=500, latency=(0.0, 0.0), ready="ok", live="ok"):
        self.fault_errors, self.fault_error_status, self.fault_latency = errors, status, latency
        self.fault_ready, self.fault_live = ready, live


def test_what_each_fault_decides_and_how_it_is_shown():
    faults = Faults(Settings(0.25, 503, (0.1, 0.5), "fail", "fail"), chance=lambda: 0.25)
    assert faults.page_error() is None  # a draw of exactly the rate is not below it
    assert Faults(Settings(0.25, 503), chance=lambda: 0.2499).page_error() == 503
    assert faults.page_delay() == pytest.approx(0.2)  # a quarter of the way from 0.1 to 0.5
    assert Faults(Settings(latency=(0.3, 0.3)), chance=lambda: 0.9).page_delay() == 0.3
    assert Faults(Settings(), chance=lambda: 0.0).page_delay() == 0.0 and Faults(Settings()).page_error() is None
    state = faults.state
    assert state.on() == {"errors": {"rate": 0.25, "status": 503}, "latency": {"seconds": [0.1, 0.5]},
                          "ready": "fail", "live": "fail"}
    assert state.words() == "errors 25% (503), latency 0.1-0.5 s, readiness fails, liveness fails"
    assert state.gauges() == {"errors": 0.25, "latency": 0.5, "ready": 1, "live": 1, "hang": 0}
    assert state.as_json() == {"errors": {"rate": 0.25, "status": 503}, "latency": {"seconds": [0.1, 0.5]},
                               "ready": "fail", "live": "fail", "hang": "off"}
    hanging = state._replace(hangs=True)
    assert hanging.on()["hang"] == "on" and hanging.words().endswith(", hangs") and hanging.gauges()["hang"] == 1
    assert hanging.as_json()["hang"] == "on"
    cleared = hanging.cleared()
    assert cleared.on() == {} and cleared.words() == "" and cleared.error_status == 503  # kept for the next rate
    assert cleared.gauges() == dict.fromkeys(("errors", "latency", "ready", "live", "hang"), 0)
    assert cleared.as_json() == {"errors": {"rate": 0.0, "status": 503}, "latency": {"seconds": [0.0, 0.0]},
                                 "ready": "ok", "live": "ok", "hang": "off"}
    assert Faults(Settings()).state.on() == {} and Faults(Settings()).state.words() == ""


class Board:
    """SharedSlots' one slot, as the supervisor's and a worker's Faults use it."""

    def __init__(self):
        self.written = None

    def write(self, slot, data):
        assert slot == 0
        self.written = data

    def read(self, slot):
        assert slot == 0
        return self.written


def test_a_worker_takes_the_faults_its_supervisor_writes_whole():
    board = Board()
    supervisor, worker = Faults(Settings(), shared=board), Faults(Settings(), shared=board)
    assert worker.refresh() is False  # nothing written yet
    supervisor.set(supervisor.state._replace(hangs=True, latency=(0.1, 0.2)))
    assert worker.refresh() is True and worker.state == supervisor.state
    assert worker.refresh() is False  # the same again: no change
    assert Faults(Settings()).refresh() is False  # a single process: nothing shared
    assert Faults(Settings(), shared=board).state.hangs  # a worker started now (a replacement) hangs at once
