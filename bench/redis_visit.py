"""What one visit costs Redis, by the way it is asked: Redis's CPU time per visit.

    python3 bench/redis_visit.py [--visits 200000] [--rounds 5]

A visit counts for the counter and for the replica that served it, together. The ways to ask
for that, each sent as friendlyhello sends it (pipelines of 16, the size batches reach under
load), against an empty redis-server, alternating ways round by round; the bare INCR of the
single-file server is the yardstick:

  incr      INCR counter (no per-replica count)
  eval      EVAL of the visit script (what the server sends)
  evalsha   EVALSHA of the same script
  multi     MULTI, INCR, HINCRBY served, EXPIRE NX, EXEC
  fcall     FCALL of the same logic as a Redis function

CPU time is redis-server's user+sys from /proc. Needs redis-server 7 or later.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import resp_client  # noqa: E402
from friendlyhello.replicas import COUNTER_KEY, REPLICA_TTL, VISIT_SCRIPT  # noqa: E402

RECORD = "friendlyhello:replica:bench"
BATCH = 16
FUNCTION = f"""#!lua name=friendlyhello_bench
redis.register_function('visit', function(keys, args)
{VISIT_SCRIPT.replace('KEYS', 'keys').replace('ARGV', 'args')}
end)
"""


def ways(sha):
    encode = resp_client.encode_command
    return {
        "incr": [encode(("INCR", COUNTER_KEY))],
        "eval": [encode(("EVAL", VISIT_SCRIPT, 2, COUNTER_KEY, RECORD, REPLICA_TTL))],
        "evalsha": [encode(("EVALSHA", sha, 2, COUNTER_KEY, RECORD, REPLICA_TTL))],
        "multi": [encode(c) for c in (("MULTI",), ("INCR", COUNTER_KEY), ("HINCRBY", RECORD, "served", 1),
                                      ("EXPIRE", RECORD, REPLICA_TTL, "NX"), ("EXEC",))],
        "fcall": [encode(("FCALL", "visit", 2, COUNTER_KEY, RECORD, REPLICA_TTL))],
    }


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visits", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        client = resp_client.RespClient("127.0.0.1", port, max_connections=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except resp_client.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        sha = client.execute("SCRIPT", "LOAD", VISIT_SCRIPT)
        client.execute("FUNCTION", "LOAD", "REPLACE", FUNCTION)
        commands = ways(sha)
        per_visit = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, visit in commands.items():
                batch = visit * BATCH
                before = cpu_seconds(redis.pid)
                for _ in range(args.visits // BATCH):
                    client.pipeline(batch)
                per_visit[name].append((cpu_seconds(redis.pid) - before) / args.visits * 1e6)
        client.close()
    finally:
        redis.terminate()
        redis.wait(10)
    base = min(per_visit["incr"])
    print(f"Redis CPU per visit, {args.visits:,} visits a round, least of {args.rounds} rounds (median)\n")
    print("| way | µs per visit | x INCR |\n| --- | ---: | ---: |")
    for name, values in per_visit.items():
        print(f"| {name} | {min(values):.2f} ({statistics.median(values):.2f}) | {min(values) / base:.2f}x |")


if __name__ == "__main__":
    main()
