"""friendlyhello with WORKERS=2 against the Python servers that use every core, side by side.

    python3 bench/workers.py [--rounds 3] [--seconds 5] [--only NAME ...]

Needs wrk and redis-server, and bench/.venv (bench/run.py makes it; this uses it the same way).
The apps, each with the tutorial's page on the same fresh redis-server, all on 127.0.0.1:

  friendlyhello (WORKERS=1, and WORKERS=2); uvicorn + Starlette + redis.asyncio with 2 workers
  (uvloop, httptools); gunicorn + Flask + redis-py with 2 sync workers; aiohttp + redis.asyncio
  (one process).

Figures, A, B, C ... alternating in each round, medians: keep-alive throughput at 10 and 100
connections, Connection: close at 10, p99 at 100, the whole process tree's memory (PSS: pages
shared between a supervisor and its workers count once), and CPU seconds per 10,000 requests
(the tree's user + system time over the keep-alive runs). Every process is stopped by its pid.
"""

import argparse
import os
import re
import signal
import statistics
import sys

import run
from run import BENCH, ROOT, VENV_PYTHON, Redis, free_port, start, stop, wait_until, wrk

VENV_BIN = os.path.dirname(VENV_PYTHON)


def friendlyhello(workers):
    return lambda port, redis: ([sys.executable, os.path.join(ROOT, "hello_server.py")], {
        "PORT": str(port), "BIND": "127.0.0.1", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis),
        "ACCESS_LOG": "off", "WORKERS": str(workers)})


def peer(command):
    return lambda port, redis: ([arg.format(port=port, bin=VENV_BIN) for arg in command], {
        "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis), "PORT": str(port),
        "PYTHONPATH": os.path.join(BENCH, "peers") + os.pathsep + BENCH})


APPS = {
    "friendlyhello WORKERS=2": friendlyhello(2),
    "friendlyhello WORKERS=1": friendlyhello(1),
    "uvicorn+starlette x2": peer(["{bin}/uvicorn", "starlette_app:app", "--host", "127.0.0.1", "--port", "{port}",
                                  "--workers", "2", "--no-access-log", "--log-level", "warning"]),
    "gunicorn+flask sync x2": peer(["{bin}/gunicorn", "peer_app:app", "--bind", "127.0.0.1:{port}",
                                    "--workers", "2", "--worker-class", "sync", "--log-level", "warning"]),
    "aiohttp": peer(["{bin}/python", os.path.join(BENCH, "peers", "aiohttp_app.py")]),
}


def tree(pid):
    """The process and all its descendants."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as listing:
                pending += [int(p) for p in listing.read().split()]
        except OSError:
            pass
    return found


def pss_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            total += int(re.search(r"^Pss:\s+(\d+)", rollup.read(), re.M).group(1))
    return total


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def figures(app, seconds):
    with Redis() as redis:
        port = free_port()
        command, env = APPS[app](port, redis.port)
        process = start(command, env)
        try:
            wait_until(lambda: run.answers(port), 30, f"{app} start")
            wait_until(lambda: len(tree(process.pid)) >= (3 if "x2" in app or "=2" in app else 1), 30,
                       f"{app}'s workers")
            cpu_before = cpu_seconds(tree(process.pid))
            keep_10, _, e1 = wrk(port, 10, seconds)
            keep_100, p99, e2 = wrk(port, 100, seconds)
            cpu = cpu_seconds(tree(process.pid)) - cpu_before
            close, _, e3 = wrk(port, 10, seconds, close=True)
            memory = pss_kb(tree(process.pid))
        finally:
            for pid in reversed(tree(process.pid)[1:]):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            stop(process)
    requests = (keep_10 + keep_100) * seconds
    return {"keep_alive_10": keep_10, "keep_alive_100": keep_100, "close_10": close, "p99_ms_100": p99,
            "pss_kb": memory, "cpu_s_per_10k": cpu / requests * 10000, "non_2xx": e1 + e2 + e3}


ROWS = [("keep-alive, 10 connections (req/s)", "keep_alive_10", "{:,.0f}"),
        ("keep-alive, 100 connections (req/s)", "keep_alive_100", "{:,.0f}"),
        ("Connection: close, 10 connections (req/s)", "close_10", "{:,.0f}"),
        ("p99 at 100 connections (ms)", "p99_ms_100", "{:.1f}"),
        ("memory, whole process tree (PSS, kB)", "pss_kb", "{:,.0f}"),
        ("CPU seconds per 10,000 requests", "cpu_s_per_10k", "{:.2f}"),
        ("non-2xx answers", "non_2xx", "{:.0f}")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="run only these apps (names as in the table)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    run.ensure_venv()
    apps = [a for a in APPS if not args.only or a in args.only]
    runs = {app: [] for app in apps}
    try:
        for round_number in range(args.rounds):
            for app in apps:
                print(f"round {round_number + 1}/{args.rounds}: {app}", flush=True)
                runs[app].append(figures(app, args.seconds))
    finally:
        for process in list(run.PROCESSES):
            stop(process)
    where = run.machine()
    print(f"\nmachine: {where['cpu']}, {where['cores']} cores, Python {where['python']}, {where['date']}; "
          f"medians of {args.rounds} rounds, wrk and Redis on the same cores\n")
    print("| figure | " + " | ".join(apps) + " |\n| --- |" + " ---: |" * len(apps))
    for title, key, form in ROWS:
        cells = [form.format(statistics.median(r[key] for r in runs[app])) for app in apps]
        print(f"| {title} | " + " | ".join(cells) + " |")
    ours = "friendlyhello WORKERS=2"
    if ours in runs and "uvicorn+starlette x2" in runs:
        a, b = ({k: statistics.median(r[k] for r in runs[x]) for k in runs[x][0]}
                for x in (ours, "uvicorn+starlette x2"))
        print(f"\nfriendlyhello WORKERS=2 / uvicorn x2: keep-alive 10 {a['keep_alive_10'] / b['keep_alive_10']:.2f}x, "
              f"100 {a['keep_alive_100'] / b['keep_alive_100']:.2f}x, close {a['close_10'] / b['close_10']:.2f}x, "
              f"p99 {a['p99_ms_100'] / b['p99_ms_100']:.2f}x, memory {a['pss_kb'] / b['pss_kb']:.2f}x, "
              f"CPU per request {a['cpu_s_per_10k'] / b['cpu_s_per_10k']:.2f}x")


if __name__ == "__main__":
    main()
