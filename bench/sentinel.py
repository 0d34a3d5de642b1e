"""Behind Sentinel: what WAIT costs, and how long a failover leaves the counter disabled.

    python3 bench/sentinel.py [--rounds 5] [--seconds 4] [--kills 5]

* WAIT's cost. A primary and two replicas (empty redis-servers on loopback), the server in
  front of the primary with REDIS_WAIT_REPLICAS=all and with 0, alternating round by round;
  wrk -t1 -c10 keep-alive each round. Server CPU per request, and the primary's CPU per visit
  (user+sys from /proc over the counter's rise). Target: WAIT at most 1.2x, either figure.
* The failover's time. A primary, two replicas and three sentinels (down-after 1 s, the tests'
  own: tests/sentinel.py), the server behind them under pages every 20 ms; the primary killed
  with kill -9, the time to the first page counted on the new primary; the old one back, a
  replica, before the next kill. Target: at most down-after plus 1.5 s.

Needs wrk and redis-server. Every process is stopped by its pid; all traffic stays on loopback.
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from cpu import counter, cpu_seconds, pings, wrk
from run import PROCESSES, answers, free_port, start, stop, wait_until

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from sentinel import DOWN_AFTER_MS, MASTER, Replicated, call  # noqa: E402  (the tests' own servers)

SCRATCH = tempfile.mkdtemp(prefix="friendlyhello-bench-sentinel-")  # what a replica's sync writes


def redis_server(port, *options):
    return start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--repl-diskless-sync-delay", "0", "--dir", SCRATCH, *options])


def server(env):
    port = free_port()
    process = start([sys.executable, os.path.join(ROOT, "hello_server.py")],
                    {"PORT": str(port), "BIND": "127.0.0.1", "ACCESS_LOG": "off", **env})
    wait_until(lambda: answers(port, "/healthz"), 15, "server start")
    return process, port


def wait_round(wait, seconds):
    """One round: (server µs/request, primary µs/visit) with REDIS_WAIT_REPLICAS=wait."""
    primary_port, ports = free_port(), [free_port(), free_port()]
    primary = redis_server(primary_port)
    replicas = [redis_server(p, "--replicaof", "127.0.0.1", str(primary_port)) for p in ports]
    web = None
    try:
        wait_until(lambda: all(pings(p) for p in (primary_port, *ports)), 10, "redis start")
        wait_until(lambda: b"connected_slaves:2" in call(primary_port, "INFO", "replication"), 10,
                   "the replicas")
        web, port = server({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(primary_port),
                            "REDIS_WAIT_REPLICAS": wait})
        wrk(port, 1, close=False)  # warm up
        cpu0, redis0, count0 = cpu_seconds(web.pid), cpu_seconds(primary.pid), counter(primary_port)
        done = wrk(port, seconds, close=False)
        cpu1, redis1, count1 = cpu_seconds(web.pid), cpu_seconds(primary.pid), counter(primary_port)
        return (cpu1 - cpu0) / done * 1e6, (redis1 - redis0) / (count1 - count0) * 1e6
    finally:
        for process in (web, *replicas, primary):
            if process is not None:
                stop(process)


def page(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Accept": "application/json"})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def failover_times(kills):
    """Seconds from each kill -9 of the primary to the first page counted on the new one."""
    times = []
    with Replicated() as servers:
        addresses = ",".join(f"{h}:{p}" for h, p in servers.addresses)
        web, port = server({"REDIS_SENTINELS": addresses, "REDIS_MASTER_NAME": MASTER,
                            "REDIS_TIMEOUT": "0.5", "REDIS_WAIT_REPLICAS": "all"})
        try:
            for _ in range(kills):
                servers.wait_until_all_in_sync()
                wait_until(lambda: page(port)["visits"] is not None, 15, "a page counted")
                old = servers.primary()
                servers.servers[old].kill()
                killed = time.monotonic()
                while page(port)["visits"] is None or servers.primary() == old:
                    assert time.monotonic() - killed < 30, "no page counted 30 s after the kill"
                    time.sleep(0.02)
                times.append(time.monotonic() - killed)
                new = servers.primary()
                servers.servers[old].start()  # back, and a replica of the new primary
                call(old, "REPLICAOF", "127.0.0.1", str(new))
                print(f"kill {len(times)}: counted again on {new} after {times[-1]:.2f} s", flush=True)
        finally:
            stop(web)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    rounds = {"all": [], "0": []}
    try:
        for number in range(args.rounds):
            for wait in rounds:
                rounds[wait].append(wait_round(wait, args.seconds))
                web, redis = rounds[wait][-1]
                print(f"round {number + 1}: REDIS_WAIT_REPLICAS={wait:>3}: server {web:6.1f} "
                      f"µs/request, primary {redis:5.2f} µs/visit", flush=True)
        times = failover_times(args.kills) if args.kills else []
    finally:
        for process in list(PROCESSES):
            stop(process)
        shutil.rmtree(SCRATCH, ignore_errors=True)
    print(f"\n| figure (least of {args.rounds} rounds) | WAIT all | WAIT 0 | ratio (median's) |")
    print("| --- | ---: | ---: | ---: |")
    for index, title in enumerate(("server CPU per request (µs)", "primary's CPU per visit (µs)")):
        least = [min(r[index] for r in rounds[w]) for w in rounds]
        middle = [statistics.median(r[index] for r in rounds[w]) for w in rounds]
        print(f"| {title} | {least[0]:.1f} | {least[1]:.1f} | {least[0] / least[1]:.3f}x "
              f"({middle[0] / middle[1]:.3f}x) |")
    target = DOWN_AFTER_MS / 1000 + 1.5
    if not times:
        return
    print(f"\nkill -9 to the first page counted on the new primary ({len(times)} kills, down-after "
          f"{DOWN_AFTER_MS} ms): median {statistics.median(times):.2f} s, longest {max(times):.2f} s"
          f" (target: at most {target:.1f} s)")


if __name__ == "__main__":
    main()
