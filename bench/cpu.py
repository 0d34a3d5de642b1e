"""CPU per request, A/B: this tree against another commit, alternating rounds in one run.

    python3 bench/cpu.py --versus REV [--rounds 5] [--seconds 4] [--env NAME=VALUE ...]

Requests per second swing by 2x on a shared machine; the CPU time a process spent per request
served is far steadier. For each round and each tree (A, B, A, B ...) it starts an empty
redis-server and the server (ACCESS_LOG=off, all else default, plus --env), warms it up, and
runs wrk -t1 -c10 twice: keep-alive, and Connection: close. Before and after each run it reads
the user+sys time of the server and of redis-server from /proc/PID/stat, and the counter:

* server CPU per request = the server's CPU time / the requests wrk completed;
* Redis CPU per visit    = redis-server's CPU time / the counter's rise.

Then exec to first 200, the two trees' starts alternating. It prints each round, and the least
and the median of the rounds with their ratios A/B (noise only adds CPU time: the least is the
steadier figure). REV is checked out with `git worktree add` under bench/out/trees (which git
ignores) and removed after. Needs wrk and redis-server. Every process it starts is stopped by its
pid; every loop is bounded; all traffic stays on 127.0.0.1.
"""

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

from run import PROCESSES, answers, free_port, start, stop, wait_until  # bench/run.py: processes stopped by pid

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
TREES = os.path.join(BENCH, "out", "trees")
TICKS = os.sysconf("SC_CLK_TCK")
def cpu_seconds(pid):
    """User plus system time of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_per(pid, run, seconds):
    """A process's CPU time per unit of work done, in µs: ``run(seconds)`` does the work for
    that long and says how much it did; one second of it first, to warm up."""
    run(1)
    before = cpu_seconds(pid)
    done = run(seconds)
    return (cpu_seconds(pid) - before) / done * 1e6


def redis_call(port, *args):
    payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        return sock.recv(65536)


def pings(port):
    try:
        return redis_call(port, b"PING").startswith(b"+PONG")
    except OSError:
        return False


def counter(port):
    reply = redis_call(port, b"GET", b"counter")
    return 0 if reply.startswith(b"$-1") else int(reply.split(b"\r\n")[1])


def wrk(port, seconds, close):
    command = ["wrk", "-t1", "-c10", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]
    if close:
        command[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30).stdout
    return int(re.search(r"(\d+) requests in", out).group(1))


def server_command(tree):
    return [sys.executable, os.path.join(tree, "hello_server.py")]


def measure(tree, seconds, extra_env):
    """One round for one tree: (server µs/request keep-alive, the same with close, Redis µs/visit)."""
    redis_port, port = free_port(), free_port()
    redis = start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no"])
    server = None
    try:
        wait_until(lambda: pings(redis_port), 10, "redis start")
        server = start(server_command(tree), {"PORT": str(port), "BIND": "127.0.0.1", "REDIS_HOST": "127.0.0.1",
                                              "REDIS_PORT": str(redis_port), "ACCESS_LOG": "off", **extra_env})
        wait_until(lambda: answers(port, "/healthz"), 15, "server start")
        wrk(port, 1, close=False)  # warm up
        figures = []
        redis_cpu = visits = 0.0
        for close in (False, True):
            cpu0, redis0, count0 = cpu_seconds(server.pid), cpu_seconds(redis.pid), counter(redis_port)
            done = wrk(port, seconds, close)
            cpu1, redis1, count1 = cpu_seconds(server.pid), cpu_seconds(redis.pid), counter(redis_port)
            figures.append((cpu1 - cpu0) / done * 1e6)
            redis_cpu += redis1 - redis0
            visits += count1 - count0
        return figures[0], figures[1], redis_cpu / visits * 1e6
    finally:
        if server is not None:
            stop(server)
        stop(redis)


def first_200_ms(tree):
    redis_port, port = free_port(), free_port()
    started = time.monotonic()
    server = start(server_command(tree), {"PORT": str(port), "BIND": "127.0.0.1", "REDIS_HOST": "127.0.0.1",
                                          "REDIS_PORT": str(redis_port), "ACCESS_LOG": "off"})
    try:
        wait_until(lambda: answers(port, "/healthz"), 15, "server start")
        return (time.monotonic() - started) * 1000
    finally:
        stop(server)


def checkout(rev):
    path = os.path.join(TREES, re.sub(r"[^A-Za-z0-9._-]", "_", rev))
    if os.path.exists(path):
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", path], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(TREES, exist_ok=True)
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, rev], check=True, capture_output=True)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versus", required=True, metavar="REV", help="the commit (or branch) to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--starts", type=int, default=11, help="starts per tree for exec to first 200")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for both servers (repeatable)")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)
    other = checkout(args.versus)
    trees = {"this tree": ROOT, args.versus: other}
    rounds = {name: [] for name in trees}
    starts = {name: [] for name in trees}
    try:
        for number in range(args.rounds):
            for name, tree in trees.items():
                rounds[name].append(measure(tree, args.seconds, extra_env))
                keep, close, redis = rounds[name][-1]
                print(f"round {number + 1}: {name:>12}: server {keep:7.1f} µs/request keep-alive, "
                      f"{close:7.1f} with close; redis {redis:6.2f} µs/visit", flush=True)
        for _ in range(args.starts):
            for name, tree in trees.items():
                starts[name].append(first_200_ms(tree))
    finally:
        for process in list(PROCESSES):
            stop(process)
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", other], capture_output=True)
    a, b = trees
    print(f"\nmedians of {args.rounds} rounds (starts: {args.starts}); {' '.join(args.env) or 'default settings'}\n")
    # A neighbour's load only ever adds CPU time (cache misses, a slower clock): the least of the
    # rounds is the steadier estimate of what a request costs; the median is shown beside it.
    print(f"| figure | {a} | {b} | ratio of least | ratio of medians |\n| --- | ---: | ---: | ---: | ---: |")
    for index, title in enumerate(("server CPU per request, keep-alive (µs)", "server CPU per request, "
                                   "Connection: close (µs)", "Redis CPU per visit (µs)")):
        la, lb = (min(r[index] for r in rounds[name]) for name in (a, b))
        ma, mb = (statistics.median(r[index] for r in rounds[name]) for name in (a, b))
        print(f"| {title}, least | {la:.1f} | {lb:.1f} | {la / lb:.3f}x | {ma / mb:.3f}x |")
    la, lb = (min(starts[name]) for name in (a, b))
    ma, mb = (statistics.median(starts[name]) for name in (a, b))
    print(f"| exec to first 200 (ms), least | {la:.0f} | {lb:.0f} | {la / lb:.3f}x | {ma / mb:.3f}x |")


if __name__ == "__main__":
    main()
