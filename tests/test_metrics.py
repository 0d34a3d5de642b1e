"""/metrics in the Prometheus text format: read by the official parser, checked by promtool,
and scraped by a real Prometheus; and the JSON logs."""

import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from friendlyhello import metrics as metrics_module
from friendlyhello.redis_state import OUTCOMES
from friendlyhello.shared_memory import SharedSlots
from helpers import (
    Process,
    free_port,
    metric_sample,
    raw_exchange,
    redis_env,
    refused_env,
    serving,
    unavailable,
    wait_until,
)

FAMILIES = {
    "http_requests": "counter", "http_request_duration_seconds": "histogram",
    "friendlyhello_visits": "counter", "friendlyhello_redis_replies": "counter", "friendlyhello_redis_up": "gauge",
    "friendlyhello_redis_pipeline_size": "histogram", "friendlyhello_open_connections": "gauge",
    "friendlyhello_build_info": "gauge", "process_cpu_seconds": "counter", "process_start_time_seconds": "gauge",
    "process_resident_memory_bytes": "gauge", "process_virtual_memory_bytes": "gauge", "process_open_fds": "gauge",
    "process_max_fds": "gauge", "friendlyhello_log_lines_dropped": "counter", "friendlyhello_proxy_refused": "counter",
    "friendlyhello_fault": "gauge", "friendlyhello_tls_handshakes": "counter",
    "friendlyhello_tls_connections_open": "gauge", "friendlyhello_websockets_open": "gauge",
    "friendlyhello_streams_open": "gauge", "friendlyhello_stream_bytes": "counter",
    "friendlyhello_request_body_bytes": "counter", "friendlyhello_network_tool_answers": "counter",
    "friendlyhello_redis_primary_changes": "counter",
    "friendlyhello_redis_replicas_acknowledged": "histogram",
    "friendlyhello_websocket_messages": "counter", "friendlyhello_websocket_closes": "counter",
}


def families(text):
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(found, name, **labels):
    (value,) = [s.value for f in found.values() for s in f.samples
                if s.name == name and labels.items() <= s.labels.items()]
    return value


def test_every_family_parses_with_the_official_parser_and_has_its_type(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        server.get("/")
        server.get("/", method="HEAD")
        text = server.get("/metrics")
    assert text.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    found = families(text.text)
    assert {name: f.type for name, f in found.items()} == FAMILIES
    assert sample(found, "http_requests_total", method="GET", route="/", code="200") == 1
    assert sample(found, "http_requests_total", method="HEAD", route="/", code="200") == 1
    assert sample(found, "friendlyhello_visits_total") == 1
    assert sample(found, "friendlyhello_redis_replies_total", outcome="ok") == 1
    assert sample(found, "friendlyhello_redis_pipeline_size_count") == 1
    assert sample(found, "friendlyhello_redis_up") == 1
    assert sample(found, "process_resident_memory_bytes") > 1_000_000
    assert sample(found, "friendlyhello_build_info", version="1", release="1.0") == 1


def test_promtool_finds_nothing_to_say(fake_redis):
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (apt-get install prometheus)")
    with serving(redis_env(fake_redis)) as server:
        for path in ("/", "/nope", "/healthz"):
            server.get(path)
        text = server.get("/metrics").text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_a_scanner_cannot_create_series_and_metrics_count_no_visit_and_log_no_line(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        for i in range(50):
            server.get(f"/wp-admin/{i}.php")
        raw_exchange(server.port, b"BREW /x HTTP/1.1\r\nHost: x\r\n\r\n")
        raw_exchange(server.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
        found = families(server.get("/metrics").text)
        log = server.log_lines()
    series = {tuple(sorted(s.labels.items())) for s in found["http_requests"].samples
              if s.name == "http_requests_total"}
    assert series == {(("code", "404"), ("method", "GET"), ("route", "other")),
                      (("code", "501"), ("method", "other"), ("route", "other")),
                      (("code", "414"), ("method", "other"), ("route", "other"))}
    assert fake_redis.visits == 0
    assert not [line for line in log if "/metrics" in line]


def test_redis_replies_are_counted_by_outcome_and_redis_up_follows_it():
    with serving(refused_env()) as server:
        server.get("/")
        found = families(server.get("/metrics").text)
    assert sample(found, "friendlyhello_redis_replies_total", outcome="cannot_connect") == 1
    assert sample(found, "friendlyhello_redis_up") == 0
    assert sample(found, "friendlyhello_visits_total") == 0


@pytest.fixture
def prometheus(tmp_path):
    """Debian's prometheus, scraping whatever target the test names, every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        unavailable("prometheus is not installed (apt-get install prometheus)")
    started = []

    def start(target):
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
                          f"  - job_name: friendlyhello\n    static_configs:\n      - targets: ['{target}']\n")
        process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                    f"--web.listen-address=127.0.0.1:{port}"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        return port

    yield start
    for process in started:
        process.terminate()
        process.wait(30)


def api(port, path, **query):
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)["data"]


def wait_for(check, within, what):
    """Until ``check()`` gives a value (0 is one): Prometheus's API, asked every 0.2 s."""
    return wait_until(check, within, what, pace=0.2, accept=lambda found: found is not None)


@pytest.mark.slow
def test_a_real_prometheus_scrapes_it_and_sees_every_page_sent(fake_redis, prometheus):
    with serving(redis_env(fake_redis)) as server:
        port = prometheus(f"127.0.0.1:{server.port}")
        query = 'http_requests_total{method="GET",route="/",code="200"}'

        def value(at_least=None):
            try:
                result = api(port, "query", query=f"{query} or vector(0)")
            except OSError:
                return None
            found = float(result["result"][0]["value"][1]) if result["result"] else None
            return found if at_least is None or (found is not None and found >= at_least) else None

        wait_for(lambda: target_up(port), 30, "the target up")
        before = wait_for(value, 30, "a first scrape")
        for _ in range(25):
            server.get("/")
        after = wait_for(lambda: value(before + 25), 30, "a scrape that saw the 25 pages")
    assert after - before == 25
    assert fake_redis.visits == 25


def target_up(port):
    try:
        targets = api(port, "targets")["activeTargets"]
    except OSError:
        return None
    return True if any(t["health"] == "up" for t in targets) else None


# -- JSON logs -----------------------------------------------------------------------------------

def test_json_logs_are_one_object_per_line_with_the_replica_and_escaped_control_characters(fake_redis):
    secret = "s3cr3t-pw"
    env = {**redis_env(fake_redis), "LOG_FORMAT": "json", "POD_NAME": "web-1", "NODE_NAME": "n1",
           "REDIS_PASSWORD": secret}
    proc = Process({**env, "PORT": "0", "BIND": "127.0.0.1"})
    try:
        first = proc.wait_listening()
        raw_exchange(proc.port, b'GET /a\x1b[31m"b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
        raw_exchange(proc.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    finally:
        proc.signal()
        proc.wait(10)
        out, err = proc.finish()
    lines = [first, *out.splitlines()]
    objects = [json.loads(line) for line in lines if line.strip()]
    started, odd, page = objects[0], objects[1], objects[2]
    assert started["level"] == "info" and "listening on http://127.0.0.1:" in started["message"]
    assert {"time", "level", "method", "path", "status", "duration_ms", "client", "hostname", "pod",
            "node"} <= set(page)
    assert (page["method"], page["path"], page["status"], page["pod"], page["node"]) == ("GET", "/", 200, "web-1", "n1")
    assert odd["status"] == 400 and "\x1b" not in lines[1] and "\\u001b" in lines[1]
    assert page["time"].endswith("Z") and secret not in out + err
    events = [json.loads(line) for line in err.splitlines()]
    # The fake Redis has no password: an outage, logged as a warning (degraded, not broken), once.
    assert [(e["where"], e["level"]) for e in events] == [("redis", "warning")]
    assert "is unavailable (authentication failed)" in events[0]["message"]


# -- in process: the numbers themselves, and the text they make --------------------------------

def test_the_exposition_of_a_known_snapshot_is_this_text_exactly():
    """HELP and TYPE of every family, zeros where nothing was counted, label values escaped as
    the format says (backslash, quote, newline), histogram buckets cumulative."""
    snapshot = {"series": {
        "http_requests_total": {('GET', 'a\\b"c\nd', "200"): 2},
        "http_request_duration_seconds": {("GET", "/"): [[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 9.5]},
    }, "process": {"process_cpu_seconds_total": 1.5, "process_start_time_seconds": 1700000000.25,
                   "process_resident_memory_bytes": 1024, "process_virtual_memory_bytes": 4096,
                   "process_open_fds": 7, "process_max_fds": 1024}}
    text = metrics_module.exposition(snapshot, redis_up=False)
    python = platform.python_version()
    assert text == (
        "# HELP http_requests_total HTTP requests answered, by method, route and status code.\n"
        "# TYPE http_requests_total counter\n"
        'http_requests_total{method="GET",route="a\\\\b\\"c\\nd",code="200"} 2\n'
        "# HELP http_request_duration_seconds Time from a request's complete head to its answer.\n"
        "# TYPE http_request_duration_seconds histogram\n"
        + "".join(f'http_request_duration_seconds_bucket{{method="GET",route="/",le="{le}"}} {n}\n'
                  for le, n in zip([*map(repr, map(float, metrics_module.DURATION_BUCKETS)), "+Inf"],
                                   [1] * 14 + [2], strict=True))
        + 'http_request_duration_seconds_sum{method="GET",route="/"} 9.5\n'
        'http_request_duration_seconds_count{method="GET",route="/"} 2\n'
        "# HELP friendlyhello_visits_total Visits counted: pages that showed a number.\n"
        "# TYPE friendlyhello_visits_total counter\n"
        "friendlyhello_visits_total 0\n"
        "# HELP friendlyhello_redis_replies_total Redis calls for requests, by how they ended.\n"
        "# TYPE friendlyhello_redis_replies_total counter\n"
        + "".join(f'friendlyhello_redis_replies_total{{outcome="{o}"}} 0\n' for o in sorted(OUTCOMES))
        + "# HELP friendlyhello_redis_pipeline_size Requests whose Redis commands went in one round trip.\n"
        "# TYPE friendlyhello_redis_pipeline_size histogram\n"
        "# HELP friendlyhello_open_connections Client connections open now.\n"
        "# TYPE friendlyhello_open_connections gauge\n"
        "friendlyhello_open_connections 0\n"
        "# HELP friendlyhello_log_lines_dropped_total Log lines dropped because the log's reader was slow or gone.\n"
        "# TYPE friendlyhello_log_lines_dropped_total counter\n"
        "friendlyhello_log_lines_dropped_total 0\n"
        "# HELP friendlyhello_proxy_refused_total Connections closed unanswered for their PROXY header: by reason.\n"
        "# TYPE friendlyhello_proxy_refused_total counter\n"
        + "".join(f'friendlyhello_proxy_refused_total{{reason="{r}"}} 0\n'
                  for r in ("malformed", "missing", "timeout", "untrusted_peer"))
        + "# HELP friendlyhello_tls_handshakes_total TLS handshakes on the TLS port, by outcome.\n"
        "# TYPE friendlyhello_tls_handshakes_total counter\n"
        + "".join(f'friendlyhello_tls_handshakes_total{{outcome="{o}"}} 0\n'
                  for o in ("client_certificate_refused", "ok", "plain_http", "protocol_error", "timeout"))
        + "# HELP friendlyhello_tls_connections_open Client connections open on the TLS port.\n"
        "# TYPE friendlyhello_tls_connections_open gauge\n"
        "friendlyhello_tls_connections_open 0\n"
        "# HELP friendlyhello_websockets_open WebSockets open now.\n"
        "# TYPE friendlyhello_websockets_open gauge\n"
        "friendlyhello_websockets_open 0\n"
        "# HELP friendlyhello_websocket_messages_total WebSocket messages, by direction (a greeting, an echo and a "
        "tick are each one sent).\n"
        "# TYPE friendlyhello_websocket_messages_total counter\n"
        'friendlyhello_websocket_messages_total{direction="received"} 0\n'
        'friendlyhello_websocket_messages_total{direction="sent"} 0\n'
        "# HELP friendlyhello_websocket_closes_total WebSockets closed, by the close code that ended them (cut: no "
        "Close came or went).\n"
        "# TYPE friendlyhello_websocket_closes_total counter\n"
        "# HELP friendlyhello_streams_open Answers being streamed now (/bytes/, /stream/, /drip, /sse).\n"
        "# TYPE friendlyhello_streams_open gauge\n"
        "friendlyhello_streams_open 0\n"
        "# HELP friendlyhello_stream_bytes_total Bytes of streamed answers' bodies sent, by route.\n"
        "# TYPE friendlyhello_stream_bytes_total counter\n"
        "# HELP friendlyhello_request_body_bytes_total Bytes of request bodies read, by route.\n"
        "# TYPE friendlyhello_request_body_bytes_total counter\n"
        "# HELP friendlyhello_network_tool_answers_total Answers of /dns and /dial (NETWORK_TOOLS=on), by tool and "
        "outcome (invalid, forbidden and busy: not asked).\n"
        "# TYPE friendlyhello_network_tool_answers_total counter\n"
        "# HELP friendlyhello_redis_primary_changes_total Times the primary the sentinels name changed under this "
        "process (failovers seen).\n"
        "# TYPE friendlyhello_redis_primary_changes_total counter\n"
        "friendlyhello_redis_primary_changes_total 0\n"
        "# HELP friendlyhello_redis_replicas_acknowledged Replicas that held a round trip's visits when WAIT "
        "answered (REDIS_WAIT_REPLICAS).\n"
        "# TYPE friendlyhello_redis_replicas_acknowledged histogram\n"
        "# HELP friendlyhello_redis_up 1 while Redis answers, else 0.\n"
        "# TYPE friendlyhello_redis_up gauge\n"
        "friendlyhello_redis_up 0\n"
        "# HELP friendlyhello_build_info The VERSION this replica was started with, friendlyhello's release and "
        "Python's version.\n"
        "# TYPE friendlyhello_build_info gauge\n"
        f'friendlyhello_build_info{{version="1",release="1.0",python="{python}"}} 1\n'
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
        "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n"
        "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
        "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1700000000.25\n"
        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
        "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 1024\n"
        "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
        "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes 4096\n"
        "# HELP process_open_fds Number of open file descriptors.\n"
        "# TYPE process_open_fds gauge\nprocess_open_fds 7\n"
        "# HELP process_max_fds Maximum number of open file descriptors.\n"
        "# TYPE process_max_fds gauge\nprocess_max_fds 1024\n")


def test_the_build_info_names_the_version_it_was_started_with():
    text = metrics_module.Metrics(version="v2.1").exposition(redis_up=True)
    assert 'friendlyhello_build_info{version="v2.1",release="1.0",' in text


def test_workers_snapshots_add_up_by_type_and_the_process_values_combine_as_each_says():
    one = {"series": {"http_requests_total": {("GET", "/", "200"): 2},
                      "http_request_duration_seconds": {("GET", "/"): [[1, 2], 0.5]}},
           "process": {"process_cpu_seconds_total": 1.5, "process_start_time_seconds": 100.0,
                       "process_max_fds": 1024, "process_open_fds": 7}}
    two = {"series": {"http_requests_total": {("GET", "/", "200"): 3, ("HEAD", "/", "200"): 1},
                      "http_request_duration_seconds": {("GET", "/"): [[4, 8], 0.25]}},
           "process": {"process_cpu_seconds_total": 2.0, "process_start_time_seconds": 90.0,
                       "process_max_fds": 4096, "process_open_fds": 5}}
    total = metrics_module.merged([one, None, two])
    assert total["series"]["http_requests_total"] == {("GET", "/", "200"): 5, ("HEAD", "/", "200"): 1}
    assert total["series"]["http_request_duration_seconds"] == {("GET", "/"): [[5, 10], 0.75]}
    assert total["process"] == {"process_cpu_seconds_total": 3.5, "process_start_time_seconds": 90.0,
                                "process_max_fds": 4096, "process_open_fds": 12}
    assert metrics_module.merged([None])["process"] == {}


class _DroppingLog:
    dropped = 3


def test_a_worker_shows_every_slot_and_a_replacement_takes_over_its_counters_but_not_its_gauges():
    shared = SharedSlots(2)
    first, second = metrics_module.Metrics(shared, 0), metrics_module.Metrics(shared, 1, _DroppingLog())
    first.request("GET", "/", 200, 0.001)
    second.request("GET", "/", 200, 0.001)
    second.visits, second.open_connections = 4, 2
    second.publish()
    found = families(first.exposition(redis_up=True))
    assert sample(found, "http_requests_total", method="GET", route="/", code="200") == 2
    assert sample(found, "friendlyhello_visits_total") == 4
    assert sample(found, "friendlyhello_open_connections") == 2
    assert sample(found, "friendlyhello_log_lines_dropped_total") == 3
    assert shared.read(0) is not None  # showing the sum published this worker's own slot too
    replacement = metrics_module.Metrics(shared, 1)
    replacement.request("GET", "/", 200, 0.001)
    replacement.publish()
    found = families(first.exposition(redis_up=True))
    assert sample(found, "http_requests_total", method="GET", route="/", code="200") == 3
    assert sample(found, "friendlyhello_visits_total") == 4  # counted by the worker it replaced
    assert sample(found, "friendlyhello_open_connections") == 0  # a gauge starts again


def test_the_process_values_are_this_process_s_own():
    """Read from /proc/self/stat: checked against what the kernel says by other ways, with a
    process name holding ')' (the name is the one field that can), and a lowered soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with open("/proc/self/comm") as comm:
        name = comm.read().strip()
    spent = os.times()
    while os.times().user - spent.user < 0.1:  # user time, and system time, that tell the two apart
        sum(range(10_000))
    with open("/dev/zero", "rb", buffering=0) as zero:
        while os.times().system - spent.system < 0.1:
            zero.read(1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1000), hard))
        with open("/proc/self/comm", "w") as comm:
            comm.write("py) 1 2 3 4 5")
        process = metrics_module.Metrics()._process()
        times = os.times()
        with open("/proc/self/statm") as statm:
            pages, resident = (int(n) * resource.getpagesize() for n in statm.read().split()[:2])
        max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        with open("/proc/self/comm", "w") as comm:
            comm.write(name)
    assert abs(process["process_cpu_seconds_total"] - (times.user + times.system)) < 0.05
    assert time.time() - 3600 < process["process_start_time_seconds"] < time.time() - 0.1
    assert abs(process["process_resident_memory_bytes"] - resident) < 4 * 1024 * 1024
    assert abs(process["process_virtual_memory_bytes"] - pages) < 16 * 1024 * 1024
    assert process["process_max_fds"] == max_fds == min(soft, 1000)
    assert 3 <= process["process_open_fds"] <= len(os.listdir("/proc/self/fd")) + 2


def test_an_observation_on_a_bucket_bound_counts_in_that_bucket_and_every_sum_adds_up():
    series = {}
    histogram = metrics_module.Histogram(metrics_module.DURATION_BUCKETS, series)
    for value in (0.005, 0.0051, 0.01, 10.0, 11.0):
        histogram.observe(("GET", "/"), value)
    snapshot = {"series": {"http_request_duration_seconds": series}, "process": {}}
    text = metrics_module.exposition(metrics_module.merged([snapshot, snapshot]), redis_up=True)
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
        wait_until(lambda: metric_sample(server.get("/metrics").text, "friendlyhello_open_connections") == 4)
        for sock in held:
            sock.close()
        wait_until(lambda: metric_sample(server.get("/metrics").text, "friendlyhello_open_connections") == 1)


def test_requests_and_visits_are_counted_once_each(fake_redis):
    with serving(redis_env(fake_redis)) as server:
        for _ in range(3):
            server.get("/")
        server.get("/nope")
        scraped = server.get("/metrics").text
    assert 'http_requests_total{method="GET",route="/",code="200"} 3' in scraped
    assert 'http_requests_total{method="GET",route="other",code="404"} 1' in scraped
    assert metric_sample(scraped, "friendlyhello_visits_total") == 3
    assert re.search(r'^friendlyhello_redis_replies_total\{outcome="ok"\} 3$', scraped, re.M)
