"""Faults, load and abuse: nothing is lost or double-counted, and the server keeps serving.

Each scenario runs friendlyhello as a real process against a real redis-server (through a
fault-injecting proxy where faults are the point), with concurrent clients throughout, and
is bounded in requests and time. Figures are printed (run with -s to read them).
"""

import http.client
import json
import os
import resource
import socket
import subprocess
import threading
import time

import pytest

from fault_proxy import FaultProxy
from helpers import DISABLED, Process, free_port, raw_exchange, redis_counter, wait_until
from redis_server import RedisServer

pytestmark = pytest.mark.slow

THREADS = 4  # the server's own: one serves HTTP, one talks to Redis, one writes each log stream



@pytest.fixture(autouse=True)
def enough_file_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def redis():
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture
def start_server():
    processes = []

    def start(redis_port, **env):
        settings = {"PORT": "0", "BIND": "127.0.0.1", "REDIS_HOST": "127.0.0.1",
                    "REDIS_PORT": str(redis_port), "ACCESS_LOG": "off", **env}
        proc = Process({k: str(v) for k, v in settings.items()})
        processes.append(proc)
        proc.wait_listening()
        return proc

    yield start
    errors = []
    for proc in processes:  # every one ended before any assert: a failing one leaks none
        proc.signal()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            errors.append("a server did not stop within 10 s of SIGTERM")
        errors.append(proc.finish()[1])
    for err in errors:
        assert "internal error" not in err and "Traceback" not in err and "did not stop" not in err, err


def proc_status(proc):
    """Threads, resident memory (kB) and open descriptors of a server process."""
    fields = {}
    with open(f"/proc/{proc.process.pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.split()[0] if value.split() else ""
    fds = len(os.listdir(f"/proc/{proc.process.pid}/fd"))
    return int(fields["Threads"]), int(fields["VmRSS"]), fds


class Tally:
    """What many clients saw: statuses, numbers shown, disabled pages, latencies, errors."""

    def __init__(self):
        self.lock = threading.Condition()
        self.numbers, self.disabled, self.errors, self.bad_status = [], 0, [], []
        self.latencies = []
        self.unknown = 0  # JSON pages whose INCR was sent but got no reply: may have counted

    def page(self, status, body, seconds):
        with self.lock:
            self.latencies.append(seconds)
            if status != 200:
                self.bad_status.append(status)
            elif body is None:  # only the status and the time were of interest
                pass
            elif body.startswith("{"):
                data = json.loads(body)
                if data["visits"] is None:
                    self.disabled += 1
                    self.unknown += data["redis"].startswith("no reply")
                else:
                    self.numbers.append(data["visits"])
            elif DISABLED in body:
                self.disabled += 1
            else:
                self.numbers.append(int(body.rsplit(" ", 1)[1]))
            self.lock.notify_all()

    def wait_for_more_numbers(self, than, timeout):
        """Wait until a page shows a number beyond the first `than`; False on time-out."""
        with self.lock:
            return self.lock.wait_for(lambda: len(self.numbers) > than, timeout)

    def error(self, exc):
        with self.lock:
            self.errors.append(repr(exc))

    def assert_every_request_answered_200(self):
        assert self.errors == [], self.errors[:5]
        assert self.bad_status == [], self.bad_status[:5]

    @property
    def requests(self):
        return len(self.latencies)

    def worst(self):
        return max(self.latencies, default=0.0)

    def p99(self):
        ordered = sorted(self.latencies)
        return ordered[int(len(ordered) * 0.99)] if ordered else 0.0

    def report(self, name, counter_rise=None, threads=None):
        print(f"\n{name}: {self.requests} requests, {len(self.errors)} errors, "
              f"{len(self.bad_status)} non-200, {len(self.numbers)} pages with a number, "
              f"{self.disabled} disabled ({self.unknown} of them with no reply), counter rise {counter_rise}, "
              f"worst {self.worst() * 1000:.0f} ms, p99 {self.p99() * 1000:.1f} ms, peak threads {threads}")


def load(port, tally, clients, requests=None, until=None, keep_alive=True, path="/", json_pages=False):
    """Run clients that each send `requests` requests (or until the event is set)."""

    def client():
        conn = None
        sent = 0
        while (requests is None or sent < requests) and not (until is not None and until.is_set()):
            sent += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                started = time.monotonic()
                headers = {} if keep_alive else {"Connection": "close"}
                if json_pages:
                    headers["Accept"] = "application/json"
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read().decode()
                tally.page(response.status, body, time.monotonic() - started)
                if not keep_alive or response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                tally.error(exc)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def join(threads, timeout=120):
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
        assert not thread.is_alive(), "a client did not finish in time"


class Watch:
    """A normal client checking all along that GET / answers within a second."""

    def __init__(self, port):
        self.port, self.tally, self.stop = port, Tally(), threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.05):
            self.check()

    def check(self):
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            conn.close()
            self.tally.page(response.status, None, time.monotonic() - started)
        except (OSError, http.client.HTTPException) as exc:
            self.tally.error(exc)

    def finish(self):
        self.stop.set()
        self.thread.join(10)
        self.check()  # and once more, after whatever the test did
        self.tally.assert_every_request_answered_200()
        assert self.tally.worst() < 1.0, f"a normal request took {self.tally.worst():.2f}s"
        return self.tally


def peak_threads(proc, stop, peaks):
    while not stop.wait(0.05):
        try:
            peaks.append(proc_status(proc)[0])
        except (OSError, ValueError):
            return


# -- faults between the server and Redis ------------------------------------------------------

@pytest.mark.parametrize("how", ["stop", "kill"])
@pytest.mark.parametrize("workers", [1, 2])
def test_redis_going_away_and_back_mid_load_loses_and_doubles_nothing(redis, start_server, how, workers):
    replicas = [start_server(redis.port, REDIS_TIMEOUT=1, REPLICA_ID=name, WORKERS=workers) for name in ("a", "b")]
    before = redis_counter(redis.port)
    tally, stop = Tally(), threading.Event()
    clients = [c for proc in replicas for c in load(proc.port, tally, clients=10, until=stop, json_pages=True)]
    time.sleep(1.0)  # load runs for a while before the fault: timing is the scenario here
    if how == "kill":
        redis.kill()
    else:
        redis.stop()
    time.sleep(1.0)
    redis.start()
    back = time.monotonic()
    assert tally.wait_for_more_numbers(than=len(tally.numbers), timeout=3), "counting did not resume within 3 s"
    resumed_after = time.monotonic() - back
    time.sleep(1.0)
    stop.set()
    join(clients)
    rise = redis_counter(redis.port) - before
    served = [redis_counter(redis.port, "friendlyhello:replica:" + name, field="served") for name in ("a", "b")]
    tally.report(f"redis {how} and restart, {workers} workers each (counting resumed {resumed_after:.2f}s "
                 f"after restart); served by each replica: {served}", rise)
    tally.assert_every_request_answered_200()
    assert tally.disabled > 0
    assert resumed_after < 2.5
    assert tally.worst() < 1.0 + 0.5  # no page waits past the Redis timeout
    assert len(set(tally.numbers)) == len(tally.numbers)
    # Redis going away can run an INCR and never send its reply: that visit counts, and its
    # page says the counter is disabled with "no reply". Nothing else may differ.
    assert len(tally.numbers) <= rise <= len(tally.numbers) + tally.unknown
    # Each visit counts for its replica in the same script: the replicas' shares add up exactly.
    assert sum(served) == rise + before and all(served)


def test_silent_redis_pages_answer_within_the_timeout_and_threads_stay_bounded(redis, start_server):
    with FaultProxy(redis.port) as proxy:
        proc = start_server(proxy.port, REDIS_TIMEOUT=1)
        proxy.set("silent")
        tally, stop, peaks = Tally(), threading.Event(), []
        watcher = threading.Thread(target=peak_threads, args=(proc, stop, peaks))
        watcher.start()
        clients = load(proc.port, tally, clients=30, requests=40)
        join(clients)
        stop.set()
        watcher.join()
    tally.report("silent redis", threads=max(peaks))
    tally.assert_every_request_answered_200()
    assert tally.disabled == tally.requests
    assert tally.worst() < 1.0 + 0.5
    assert tally.p99() < 1.0 + 0.5
    assert sorted(tally.latencies)[int(tally.requests * 0.9)] < 0.05  # after the first failures
    assert max(peaks) <= THREADS


@pytest.mark.parametrize("mode", ["refuse", "cut", "reset", "drip", "delay"])
def test_refused_cut_or_dripped_redis_never_shows_a_wrong_number(redis, start_server, mode):
    with FaultProxy(redis.port) as proxy:
        proc = start_server(proxy.port, REDIS_TIMEOUT=1)
        before = redis_counter(redis.port)
        tally, stop = Tally(), threading.Event()
        clients = load(proc.port, tally, clients=10, until=stop, json_pages=True)
        for _ in range(3):  # switch the fault on and off under load
            proxy.set(mode, delay=0.05)
            time.sleep(0.5)
            proxy.set("pass")
            time.sleep(0.5)
        stop.set()
        join(clients)
    rise = redis_counter(redis.port) - before
    tally.report(f"replies {mode}", rise)
    tally.assert_every_request_answered_200()
    assert tally.worst() < 1.0 + 0.5
    assert len(set(tally.numbers)) == len(tally.numbers)
    assert set(tally.numbers) <= set(range(before + 1, before + rise + 1))
    if mode in ("drip", "delay"):
        assert rise == len(tally.numbers)  # slow but whole replies: every visit shown
    else:  # a cut connection can hide a counted visit, and its page says so
        assert len(tally.numbers) <= rise <= len(tally.numbers) + tally.unknown


@pytest.mark.parametrize("where", ["unknown host", "refused port"])
def test_unreachable_redis_pages_answer_at_once(start_server, where):
    if where == "unknown host":
        proc = start_server(6379, REDIS_HOST="no-such-host.invalid", REDIS_TIMEOUT=1)
    else:
        proc = start_server(free_port(), REDIS_TIMEOUT=1)
    tally = Tally()
    join(load(proc.port, tally, clients=10, requests=50))
    tally.report(where)
    tally.assert_every_request_answered_200()
    assert tally.disabled == 500
    assert tally.worst() < 1.0 + 0.5
    assert tally.p99() < 0.1


# -- load ----------------------------------------------------------------------------------

@pytest.mark.parametrize("keep_alive", [True, False], ids=["keep-alive", "new-connections"])
def test_twenty_thousand_requests_at_100_connections_count_exactly(redis, start_server, keep_alive):
    proc = start_server(redis.port)
    join(load(proc.port, Tally(), clients=100, requests=5))  # warm up: workers and pool exist
    threads_before, rss_before, fds_before = proc_status(proc)
    before = redis_counter(redis.port)
    tally, stop, peaks = Tally(), threading.Event(), []
    watcher = threading.Thread(target=peak_threads, args=(proc, stop, peaks))
    watcher.start()
    join(load(proc.port, tally, clients=100, requests=200, keep_alive=keep_alive), timeout=300)
    stop.set()
    watcher.join()
    rise = redis_counter(redis.port) - before
    threads_after, rss_after, fds_after = proc_status(proc)
    tally.report("load " + ("keep-alive" if keep_alive else "new connections"), rise, max(peaks))
    print(f"threads {threads_before} -> {threads_after}, RSS {rss_before} -> {rss_after} kB, "
          f"fds {fds_before} -> {fds_after}")
    assert tally.requests == 20000
    tally.assert_every_request_answered_200()
    assert tally.disabled == 0
    assert tally.worst() < 1.0  # busy keep-alive clients take turns: nobody starves
    assert rise == len(tally.numbers) == len(set(tally.numbers)) == 20000
    # Back to baseline: the same few threads throughout; memory stays put; client connections close.
    assert max(peaks) <= THREADS and threads_after <= THREADS
    assert rss_after <= rss_before + 4096
    wait_until(lambda: proc_status(proc)[2] <= fds_before, what="the client descriptors closed", pace=0.05)


# -- abuse from clients --------------------------------------------------------------------------

def test_a_thousand_idle_connections_do_not_stop_a_normal_client(redis, start_server):
    proc = start_server(redis.port, IDLE_TIMEOUT=3)
    watch = Watch(proc.port)
    idle = [socket.create_connection(("127.0.0.1", proc.port)) for _ in range(1000)]
    time.sleep(1.5)  # they sit there while the normal client keeps asking
    threads, _, fds = proc_status(proc)
    for sock in idle:
        sock.close()
    tally = watch.finish()
    print(f"\n1000 idle connections: normal client worst {tally.worst() * 1000:.0f} ms over "
          f"{tally.requests} requests, server threads {threads}, fds {fds}")
    assert threads <= THREADS


def test_slowloris_clients_time_out_while_a_normal_client_is_served(redis, start_server):
    proc = start_server(redis.port, IDLE_TIMEOUT=1)
    watch = Watch(proc.port)
    slow = [socket.create_connection(("127.0.0.1", proc.port)) for _ in range(50)]
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    answers = [b""] * len(slow)
    started = time.monotonic()
    for i in range(len(head)):
        for sock in slow:
            try:
                sock.send(head[i:i + 1])
            except OSError:
                pass
        if time.monotonic() - started > 2.5:
            break
        time.sleep(0.1)  # a byte per tenth of a second: the attack is the timing
    for n, sock in enumerate(slow):
        sock.settimeout(2)
        try:
            answers[n] = sock.recv(1000)
        except OSError:
            pass
        sock.close()
    tally = watch.finish()
    print(f"\nslowloris x50: normal client worst {tally.worst() * 1000:.0f} ms")
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers)


def test_a_client_that_never_reads_its_responses_is_dropped_while_others_are_served(redis, start_server):
    proc = start_server(redis.port, IDLE_TIMEOUT=1)
    watch = Watch(proc.port)
    sock = socket.create_connection(("127.0.0.1", proc.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(0.5)
    requests = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
    started, sent = time.monotonic(), 0
    try:
        for _ in range(1000):  # until the server stops taking requests: its answers pile up
            sock.sendall(requests)
            sent += 1000
    except (TimeoutError, OSError):
        pass
    assert time.monotonic() - started < 10, "the server kept reading from a client that does not read"
    received, dropped = bytearray(), False
    while time.monotonic() - started < 15:  # read what is left: the server must have closed
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            dropped = True
            break
        received += chunk
    sock.close()
    watch.finish()
    answered = received.count(b"HTTP/1.1 200 OK")
    print(f"\nnon-reading client: sent {sent}+ requests, {answered} answered before it was dropped")
    assert dropped and answered < sent, "the connection of a client that never read was not dropped"


CLOSE = b"Host: x\r\nConnection: close\r\n"


@pytest.mark.parametrize("raw, expected", [
    (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", b"414"),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n", b"431"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"400"),
    (b"GET\r\n\r\n", b"400"),
    (b"G@T / HTTP/1.1\r\n" + CLOSE + b"\r\n", b"400"),
    (b"BREW / HTTP/1.1\r\n" + CLOSE + b"\r\n", b"501"),
    (b"GET /\xff\xfe\x80 HTTP/1.1\r\n" + CLOSE + b"\r\n", b"404"),
    (b"GET /%00%ff%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\n" + CLOSE + b"\r\n", b"404"),
    (b"GET / HTTP/1.0\r\n\r\n", b"200"),
    (b"GET / HTTP/2.0\r\n\r\n", b"505"),
], ids=["100KB-line", "200-headers", "tls-hello", "no-path", "method-not-a-token", "unknown-method", "non-utf8-path",
        "percent-junk", "http-1.0", "http-2.0"])
def test_abusive_requests_get_a_correct_status_and_the_server_keeps_serving(redis, start_server, raw, expected):
    proc = start_server(redis.port, IDLE_TIMEOUT=1)
    watch = Watch(proc.port)
    answer = raw_exchange(proc.port, raw)
    watch.finish()
    assert answer.split(b" ", 2)[1] == expected, answer[:200]
    assert b"\xff" not in answer and b"passwd" not in answer


def test_pipelined_requests_and_clients_vanishing_mid_response_leak_nothing(redis, start_server):
    proc = start_server(redis.port)
    answer = raw_exchange(proc.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 50
                      + b"GET /healthz HTTP/1.1\r\n" + CLOSE + b"\r\n")
    assert answer.count(b"HTTP/1.1 200 OK") == 51
    _, _, fds_before = proc_status(proc)
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", proc.port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST while the server is answering
    watch = Watch(proc.port)
    time.sleep(0.5)
    watch.finish()
    wait_until(lambda: proc_status(proc)[2] <= fds_before, what="the connections closed", pace=0.05)


# -- security -----------------------------------------------------------------------------------

def test_redis_password_never_appears_in_logs_pages_or_probes():
    secret = "s3cr3t-pw"
    server = Process({"PORT": "0", "BIND": "127.0.0.1", "ACCESS_LOG": "all", "READY_NEEDS_REDIS": "on",
                      "REDIS_URL": f"redis://:{secret}@127.0.0.1:{free_port()}/0"})
    try:
        line = server.wait_listening()
        bodies = [raw_exchange(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                  for path in ("/", "/readyz", "/nope")]
    finally:
        server.signal()
        server.wait(10)
        out, err = server.finish()
    assert bodies[1].startswith(b"HTTP/1.1 503")
    assert all(secret.encode() not in body for body in bodies)
    assert secret not in line + out + err
