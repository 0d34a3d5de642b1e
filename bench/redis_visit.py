"""What one visit costs Redis, by the way it is asked: Redis's CPU time per visit.

    python3 bench/redis_visit.py [--visits 200000] [--rounds 5]

A visit counts for the counter and for the replica that served it, together. The ways to ask
for that, each sent as friendlyhello sends visits: a round trip of its own for the pages
waiting together (4 of them, as under `wrk -c10`), so that Redis wakes for each trip as it does
in service, against an empty redis-server, alternating ways round by round; the bare INCRs of
the single-file server are the yardstick:

  incr         INCR counter, one per page (no per-replica count)
  transaction  MULTI, HINCRBY served 4, INCRBY counter 4, EXPIRE, EXEC (what the server sends)
  eval         EVAL of the same as a Lua script (what the server sent before the transaction)
  evalsha      EVALSHA of that script
  fcall        FCALL of that script as a Redis function

Every way's replies are checked (a way that fails costs Redis less and would look cheap), and
so is the counter's rise. CPU time is redis-server's user+sys from /proc. Needs redis-server 7
or later (for functions).
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
from friendlyhello.replicas import COUNTER_KEY, REPLICA_TTL, VisitCommands  # noqa: E402

RECORD = "friendlyhello:replica:bench"
BATCH = 4  # visits a round trip
# The visit as a script: the replica's count and the counter by ARGV[2], the record's expiry.
SCRIPT = """
redis.call('HINCRBY', KEYS[2], 'served', ARGV[2])
local visits = redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return visits
"""
FUNCTION = f"""#!lua name=friendlyhello_bench
redis.register_function('visit', function(KEYS, ARGV)
{SCRIPT}
end)
"""


def ways(sha):
    """The commands of one round trip of BATCH visits, each way."""
    encode = resp_client.encode_command
    arguments = (2, COUNTER_KEY, RECORD, REPLICA_TTL, BATCH)
    return {
        "incr": [encode(("INCR", COUNTER_KEY))] * BATCH,
        "transaction": [VisitCommands(RECORD).of(BATCH)],
        "eval": [encode(("EVAL", SCRIPT, *arguments))],
        "evalsha": [encode(("EVALSHA", sha, *arguments))],
        "fcall": [encode(("FCALL", "visit", *arguments))],
    }


def counter_after(reply):
    """The counter's value a way's reply gives, or the reason it failed."""
    if isinstance(reply, list):
        reply = reply[1]  # EXEC's: HINCRBY's, INCRBY's, EXPIRE's
    if type(reply) is not int:
        raise SystemExit(f"a visit failed: {reply!r}")
    return reply


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
        sha = client.execute("SCRIPT", "LOAD", SCRIPT)
        client.execute("FUNCTION", "LOAD", "REPLACE", FUNCTION)
        commands = ways(sha)
        per_visit = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, batch in commands.items():
                start = counter_after(client.execute("INCRBY", COUNTER_KEY, 0))
                before = cpu_seconds(redis.pid)
                for _ in range(args.visits // BATCH):
                    replies = client.pipeline(batch)
                per_visit[name].append((cpu_seconds(redis.pid) - before) / args.visits * 1e6)
                if counter_after(replies[-1]) != start + args.visits // BATCH * BATCH:
                    raise SystemExit(f"{name}: the counter did not rise by the visits sent")
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
