"""WORKERS: several processes on one port under one supervisor, read as one service."""

import http.client
import math
import os
import re
import signal
import subprocess
import sys
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from friendlyhello import settings
from helpers import SERVER, Process, children, process_alive, redis_counter, request, wait_until

pytestmark = pytest.mark.slow


def start(redis, **env):
    proc = Process({"PORT": "0", "BIND": "127.0.0.1", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis.port),
                    "ACCESS_LOG": "off", "WORKERS": "2", **{k: str(v) for k, v in env.items()}})
    proc.wait_listening()
    return proc


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def requests_total(port):
    text = request(port, "/metrics").text
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "http_requests"]
    return sum(s.value for s in family.samples if s.labels.get("route") == "/")


def pages(port, count, clients=4):
    """count GET / over new connections from several threads; the numbers shown."""
    shown, failures = [], []

    def client(n):
        for _ in range(n):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read().decode()
                shown.append(int(body.rsplit(" ", 1)[1])) if response.status == 200 else failures.append(body)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                failures.append(repr(exc))
            finally:
                conn.close()

    threads = [threading.Thread(target=client, args=(count // clients,)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    return shown


def test_workers_auto_is_the_cpus_this_process_may_use():
    code = ("import os; from friendlyhello import settings; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "print(settings.load_config([], {'WORKERS': 'auto'}).workers)")
    one_cpu = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                             cwd=os.path.dirname(SERVER), check=True).stdout.strip()
    assert one_cpu == "1"
    # What this machine allows, read here on its own: the affinity, under a cgroup v2 quota if any.
    expected = len(os.sched_getaffinity(0))
    if os.path.exists("/sys/fs/cgroup/cpu.max"):
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()  # noqa: SIM115
        if quota != "max":
            expected = min(expected, math.ceil(int(quota) / int(period)))
    assert settings.load_config([], {"WORKERS": "auto"}).workers == expected


def test_two_workers_share_the_port_and_one_count(redis_server):
    proc = start(redis_server)
    try:
        workers = wait_until(lambda: len(children(proc.process.pid)) == 2 and children(proc.process.pid), 10,
                             "two workers")
        busy_before = [cpu_ticks(pid) for pid in workers]
        shown = pages(proc.port, 400)
        busy_after = [cpu_ticks(pid) for pid in workers]
        wait_until(lambda: requests_total(proc.port) >= 400, 5, "both workers' numbers in one scrape")
        metrics_total = requests_total(proc.port)
    finally:
        proc.signal()
        code = proc.wait(10)
        proc.finish()
    assert code == 0
    assert len(shown) == len(set(shown)) == 400 == redis_counter(redis_server.port)
    assert all(after > before for before, after in zip(busy_before, busy_after, strict=True)), "one worker idled"
    assert metrics_total == 400


def test_a_dead_worker_is_replaced_and_no_counter_goes_backwards(redis_server):
    proc = start(redis_server)
    try:
        victim = wait_until(lambda: len(children(proc.process.pid)) == 2 and children(proc.process.pid)[0], 10,
                            "two workers")
        pages(proc.port, 100)
        # each worker writes its numbers at every sweep: wait until a scrape sees them all
        before = wait_until(lambda: (total := requests_total(proc.port)) >= 100 and total, 5, "every worker's numbers")
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(children(proc.process.pid)) == 2 and victim not in children(proc.process.pid), 10,
                   "a new worker")
        after_restart = requests_total(proc.port)
        pages(proc.port, 20)
        # Every worker, the new one included, publishes at its next sweep: the sum must reach
        # all 120 pages, which it never would if the new worker had started its slot from zero.
        after = wait_until(lambda: (total := requests_total(proc.port)) >= 120 and total, 5,
                           "the new worker's numbers on top of the dead one's")
    finally:
        proc.signal()
        code = proc.wait(10)
        _, err = proc.finish()
    assert code == 0
    assert after_restart >= before == 100 and after == 120
    assert re.search(rf"worker \d \(pid {victim}\) was killed by signal 9 after [\d.]+s; starting another", err)


def test_sigterm_shuts_every_worker_down_gracefully_and_exits_0(redis_server):
    proc = start(redis_server, SHUTDOWN_DELAY=3)
    try:
        workers = wait_until(lambda: len(children(proc.process.pid)) == 2 and children(proc.process.pid), 10,
                             "two workers")
        proc.signal()
        # Passed on by the supervisor, the signal reaches each worker a moment later; within the
        # delay every answer to /readyz, from either worker, turns 503. (The margin is wide: a CI
        # machine once took more than 0.9 s of a 1 s delay to get there.)
        answers = []

        def all_503():
            answers[:] = [request(proc.port, "/readyz").status for _ in range(4)]
            return all(status == 503 for status in answers)

        try:
            wait_until(all_503, 2.5, "readiness 503 in every worker")
        except AssertionError as exc:  # why: the answers, and each worker's signals (pending, blocked)
            raise AssertionError(f"{exc}: {answers}; " + "; ".join(_signals(pid) for pid in workers)) from None
        code = proc.wait(10)
    finally:
        proc.finish()
    assert code == 0
    assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")], "a worker outlived the supervisor"


def _signals(pid):
    """A process's pending and blocked signal masks, from /proc, to tell why a stop was not heard."""
    try:
        with open(f"/proc/{pid}/status") as status:
            masks = [line.split()[:2] for line in status if line.startswith(("SigPnd", "ShdPnd", "SigBlk"))]
    except FileNotFoundError:
        return f"{pid} gone"
    return f"{pid} " + " ".join(f"{name}{mask}" for name, mask in masks)


def test_workers_end_when_their_supervisor_is_killed(redis_server):
    proc = start(redis_server)
    try:
        workers = wait_until(lambda: len(children(proc.process.pid)) == 2 and children(proc.process.pid), 10,
                             "two workers")
        proc.process.kill()
        proc.wait(5)
        wait_until(lambda: not [p for p in workers if process_alive(p)], 5, "the workers' exit")
    finally:
        proc.finish()


def test_each_worker_makes_request_ids_of_its_own_so_none_repeats_across_them(redis_server):
    proc = start(redis_server)
    try:
        wait_until(lambda: len(children(proc.process.pid)) == 2, 10, "two workers")
        made, asked = set(), 0
        while len({i.rsplit("-", 1)[0] for i in made}) < 2 and asked < 400:  # until both answered
            conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)  # a new one each:
            conn.request("GET", "/healthz")  # whichever worker accepts it first answers
            made.add(conn.getresponse().getheader("X-Request-Id"))
            conn.close()
            asked += 1
    finally:
        proc.signal()
        proc.finish()
    prefixes = {made_id.rsplit("-", 1)[0] for made_id in made}
    assert len(made) == asked and len(prefixes) == 2, (asked, prefixes)
