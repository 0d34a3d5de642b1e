"""Steady load from inside a Swarm network, for tests/test_swarm.py; runs in a container.

    python swarm_client.py HOST THREADS MAX_SECONDS

Each request opens a new connection, so HOST is resolved anew each time (DNS round robin
picks the replica). Runs until SIGTERM or MAX_SECONDS, then prints one JSON object: every
request's outcome, counted, and every visit number shown.
"""

import collections
import http.client
import json
import signal
import sys
import threading
import time

host, threads, max_seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
lock = threading.Lock()
seen = {"requests": 0, "failed": 0, "errors": [], "statuses": collections.Counter(),
        "hostnames": collections.Counter(), "numbers": [], "disabled": 0, "no_reply": 0}


def client():
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection(host, 80, timeout=10)
            conn.request("GET", "/", headers={"Accept": "application/json"})
            response = conn.getresponse()
            body = response.read()
            conn.close()
        except (OSError, http.client.HTTPException) as exc:
            with lock:
                seen["requests"] += 1
                seen["failed"] += 1
                if len(seen["errors"]) < 20:
                    seen["errors"].append(f"{time.monotonic() - started:.2f}s {exc!r}")
            time.sleep(0.01)
            continue
        with lock:
            seen["requests"] += 1
            seen["statuses"][response.status] += 1
            if response.status == 200:
                page = json.loads(body)
                seen["hostnames"][page["hostname"]] += 1
                if page["visits"] is not None:
                    seen["numbers"].append(page["visits"])
                elif page["redis"].startswith("no reply"):
                    seen["no_reply"] += 1
                else:
                    seen["disabled"] += 1


started = time.monotonic()
workers = [threading.Thread(target=client) for _ in range(threads)]
for worker in workers:
    worker.start()
stop.wait(max_seconds)
stop.set()
for worker in workers:
    worker.join(15)
print(json.dumps(seen), flush=True)
