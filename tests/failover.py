"""The promise, measured: friendlyhello behind a primary, two replicas and three sentinels (real
redis-servers on loopback, down-after 1 s), pages asked steadily by a few clients while the
primary fails, again and again, three ways: killed (kill -9), paused past down-after (SIGSTOP,
then SIGCONT), and failed over by hand (SENTINEL FAILOVER); each time the old primary comes back
as it was, a replica of the new one. Every number a page showed is collected: how many were
shown twice, and how many the final counter does not reach (shown, then lost).

    python3 tests/failover.py [--each 20] [--wait all]     # the full run, by hand

tests/test_sentinel.py runs it with two failovers of each kind. Every process it starts is
stopped by its pid; all traffic stays on 127.0.0.1.
"""

import argparse
import bisect
import collections
import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helpers import request, serving, wait_until  # noqa: E402
from sentinel import MASTER, Replicated, call  # noqa: E402

KINDS = ("kill", "pause", "failover")


class Load:
    """``clients`` threads asking for the page (JSON) until stopped: every number shown, and
    when the pages began counting again after each fault."""

    def __init__(self, port, clients=4):
        self.port, self.shown, self.disabled = port, [], collections.Counter()
        self.counted_at = []  # when each page that showed a number was asked (time.monotonic())
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._ask, daemon=True) for _ in range(clients)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _ask(self):
        while not self._stop.is_set():
            asked = time.monotonic()
            try:
                seen = json.loads(request(self.port, "/", headers={"Accept": "application/json"}, timeout=5).body)
            except OSError:
                continue
            with self._lock:
                if seen["visits"] is not None:
                    self.shown.append(seen["visits"])
                    self.counted_at.append(asked)
                else:
                    self.disabled[seen["redis"]] += 1
            time.sleep(0.002)

    def counted_after(self, moment, within=30):
        """Seconds from ``moment`` to the first page asked after it that showed a number."""
        wait_until(lambda: self.counted_at and self.counted_at[-1] > moment, within, "a page counted again",
                   pace=0.02)
        with self._lock:
            ordered = sorted(self.counted_at)
            return ordered[bisect.bisect_right(ordered, moment)] - moment


def fail(servers, kind):
    """Fail the primary this way; when the sentinels had named the new one, and which."""
    old = servers.primary()
    process = servers.servers[old].process
    started = time.monotonic()
    if kind == "kill":
        servers.servers[old].kill()
    elif kind == "pause":
        os.kill(process.pid, signal.SIGSTOP)
    else:
        wait_until(servers.failover_taken, 30, "the sentinels to take a failover", pace=0.2)
    new, _ = servers.wait_for_new_primary(old, within=30)
    if kind == "kill":
        servers.servers[old].start()
    elif kind == "pause":
        os.kill(process.pid, signal.SIGCONT)
    # Back as it was, a replica of the new primary: as the sentinels make it, in their own time
    # (for an old primary that still answered, at times only after many seconds).
    wait_until(lambda: _replica_of(old, new), 15, "the old primary a replica", pace=0.1)
    servers.wait_until_all_in_sync()
    return started, new


def _replica_of(old, new):
    try:
        call(old, "REPLICAOF", "127.0.0.1", str(new))
        return True
    except Exception:  # noqa: BLE001 - not answering yet
        return False


def run(each=2, wait="all", clients=4, log=print):
    """The failovers, ``each`` of every kind in turn, under load, with REDIS_WAIT_REPLICAS=``wait``:
    a summary of what the pages showed."""
    times = collections.defaultdict(list)
    with Replicated() as servers:
        env = {"REDIS_SENTINELS": ",".join(f"{h}:{p}" for h, p in servers.addresses), "REDIS_MASTER_NAME": MASTER,
               "REDIS_TIMEOUT": "0.5", "REDIS_WAIT_REPLICAS": str(wait), "ACCESS_LOG": "off"}
        with serving(env) as server, Load(server.port, clients) as load:
            load.counted_after(time.monotonic() - 60)
            for n in range(each):
                for kind in KINDS:
                    started, new = fail(servers, kind)
                    times[kind].append(load.counted_after(started))
                    counters = {port: call(port, "GET", "counter") for port in servers.servers}
                    log(f"{kind} {n + 1}: counted again on {new} after {times[kind][-1]:.2f} s; "
                        f"{len(load.shown)} numbers shown so far, the highest {max(load.shown)}; "
                        f"counters {counters}")
            time.sleep(0.5)
        final = int(call(servers.primary(), "GET", "counter"))
    shown = load.shown
    twice = len(shown) - len(set(shown))
    return {"wait": str(wait), "failovers": {kind: len(t) for kind, t in times.items()},
            "seconds_to_count_again": {kind: [round(min(t), 2), round(max(t), 2)] for kind, t in times.items()},
            "shown": len(shown), "shown_twice": twice, "final_counter": final,
            "shown_then_lost": sum(1 for v in set(shown) if v > final),
            "pages_disabled": dict(load.disabled)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--each", type=int, default=20)
    parser.add_argument("--wait", default="all")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    summary = run(args.each, args.wait, args.clients)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
