"""watch: steady requests to a URL, and a table of who answered and what failed, redrawn each
second; run it through a rolling update to see whether the update dropped anything.

    python3 hello_server.py watch http://localhost:4000/ [--rate 20] [--duration 60] ...

Each answer is counted for the version and the replica that its Friendlyhello-Version and
Friendlyhello-Replica fields name ("unknown" when a server does not send them). A request
fails by kind: refused (nothing listens), reset (the connection broke, or closed before an
answer), timeout (no whole answer within --timeout, however the server dribbled it), non-2xx,
other (a name that does not resolve, a malformed answer), in-flight (still unanswered when
the run ended). On a connection kept alive, a request the server closed the connection under
before answering is sent again once on a new one, as browsers do, and counted as retried.

Every request started is counted, answered or not, and the run ends within its duration and
one timeout whatever the server does (a second Ctrl-C: at once). Bodies are read and dropped
(http_client.py). Exit status: 0 when no request failed, 1 when any did, 2 on bad usage.
Standard library only: it runs in the tiny image (``docker run friendlyhello watch http://web/``).
"""

import argparse
import collections
import itertools
import json
import math
import signal
import sys
import threading
import time
import typing
import urllib.parse

from . import http_client
from .responses import REPLICA_HEADER, VERSION_HEADER

DESCRIPTION = ("Steady requests to a URL, counted by the version and replica that answered (the "
               "Friendlyhello-Version and -Replica fields), failures by kind; exit status 1 if "
               "any failed.")
KINDS = ("refused", "reset", "timeout", "non-2xx", "other", "in-flight")
UNKNOWN = "unknown"
NO_ANSWER = "(no answer)"  # the row of the requests that failed before any answer came


def failure_kind(error):
    """The kind of a request that got no answer, from its exception."""
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, ConnectionError):  # resets, broken pipes, closes before or in an answer
        return "reset"
    if isinstance(error, TimeoutError):  # socket.timeout is TimeoutError
        return "timeout"
    return "other"


class Result(typing.NamedTuple):
    """One request. Times are seconds since the start; from a friendlyhello JSON answer, the
    visit number it showed and its words on Redis."""

    sent: float
    done: float                 # answered, or failed
    version: str | None = None  # who answered: None when nobody did
    replica: str | None = None
    kind: str | None = None     # its failure kind, one of KINDS; None: it did not fail
    status: int | None = None
    retried: bool = False       # sent again on a new connection
    visits: int | None = None
    redis: str | None = None


def percentile(ordered, fraction):
    """Nearest rank of a sorted list; None for an empty one."""
    if not ordered:
        return None
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)


def group_summary(results, total):
    """Requests, share of ``total``, failures by kind, latency and the longest gap between two
    good answers, of some of the results."""
    failures = dict.fromkeys(KINDS, 0)
    for r in results:
        if r.kind:
            failures[r.kind] += 1
    latencies = sorted(r.done - r.sent for r in results if r.kind is None)
    good = sorted(r.done for r in results if r.kind is None)
    gaps = [b - a for a, b in zip(good, good[1:], strict=False)]
    done = [r.done for r in results]
    return {"requests": len(results), "share": round(len(results) / total, 4) if total else 0.0,
            "failed": sum(failures.values()), "failures": failures,
            "p50_ms": _ms(percentile(latencies, 0.5)), "p99_ms": _ms(percentile(latencies, 0.99)),
            "longest_gap_ms": _ms(max(gaps, default=None)),
            "first_s": round(min(done), 2) if done else None,
            "last_s": round(max(done), 2) if done else None}


def summary(results, options, elapsed):
    """Everything watch saw, as one JSON-ready object."""
    total = len(results)
    whole = group_summary(results, total)
    by_version = {}
    by_replica = {}
    seconds = collections.defaultdict(collections.Counter)
    for r in results:
        if r.version is not None:
            by_version.setdefault(r.version, []).append(r)
            by_replica.setdefault(r.replica, []).append(r)
        seconds[int(r.done)][r.version if r.kind is None else "failed"] += 1
    statuses = collections.Counter(str(r.status) for r in results if r.status is not None)
    timeline = [{"second": s, "answers": {str(k): n for k, n in sorted(c.items(), key=str)}}
                for s, c in sorted(seconds.items())]
    return {
        "url": options.url, "seconds": round(elapsed, 2), "rate": options.rate,
        "connections": options.connections, "keep_alive": not options.new_connection,
        "requests": total, "ok": total - whole["failed"],
        "failed": whole["failed"], "failures": whole["failures"],
        "retried": sum(1 for r in results if r.retried),
        "statuses": dict(statuses),
        "p50_ms": whole["p50_ms"], "p99_ms": whole["p99_ms"],
        "longest_gap_ms": whole["longest_gap_ms"],
        "by_version": {v: group_summary(rs, total) for v, rs in sorted(by_version.items())},
        "by_replica": {name: {"version": rs[-1].version, **group_summary(rs, total)}
                       for name, rs in sorted(by_replica.items())},
        "visits": visit_summary(results),
        "timeline": timeline,
    }


def visit_summary(results):
    """The visit numbers friendlyhello's JSON answers showed, and the pages that showed none."""
    shown = [r.visits for r in results if r.visits is not None]
    no_reply = disabled = 0
    for r in results:
        if (r.redis or "").startswith("no reply"):
            no_reply += 1
        elif r.redis and r.visits is None:
            disabled += 1
    return {"shown": len(shown), "distinct": len(set(shown)), "lowest": min(shown, default=None),
            "highest": max(shown, default=None), "no_reply": no_reply, "disabled": disabled}


class Watch:
    """The requests: ``connections`` threads take turns from one schedule, ``rate`` a second
    in all; a thread that is late (the server is slow) sends at once, never in a burst to
    catch up. ``results`` grows as answers come; ``end()`` counts what is still in flight."""

    def __init__(self, options):
        self.options = options
        target = urllib.parse.urlsplit(options.url)
        self._https = target.scheme == "https"
        self._host = target.hostname
        self._port = target.port
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        close = "Connection: close\r\n" if options.new_connection else ""
        self._request = (f"GET {path} HTTP/1.1\r\nHost: {target.netloc}\r\n"
                         "Accept: application/json, */*;q=0.5\r\n"
                         "User-Agent: friendlyhello-watch\r\n"
                         f"{close}\r\n").encode("latin-1")
        self.results = []
        self.stop = threading.Event()
        self.started = None
        self._lock = threading.Lock()
        self._next = 0
        self._in_flight = {}  # a request's number -> when it was sent
        self._numbers = itertools.count()

    def run(self):
        self.started = time.monotonic()
        threads = [threading.Thread(target=self._client, daemon=True)
                   for _ in range(self.options.connections)]
        for thread in threads:
            thread.start()
        return threads

    def _turn(self):
        """Wait for this thread's next turn in the schedule; False once stopped."""
        with self._lock:
            at = self.started + self._next / self.options.rate
            at = max(at, time.monotonic())
            # After a stall, the turns missed are skipped: no burst to catch up.
            self._next = max(self._next + 1, round((at - self.started) * self.options.rate))
        return not self.stop.wait(max(at - time.monotonic(), 0))

    def _client(self):
        conn = http_client.Connection(self._host, self._port, self._https)
        while self._turn():
            sent = self._now()
            number = self._begin(sent)
            deadline = time.monotonic() + self.options.timeout
            reused, retried = conn.is_open, False
            try:
                try:
                    answer = conn.request(self._request, deadline)
                except http_client.ClosedBeforeAnswer:
                    if not reused:
                        raise
                    retried = True  # closed under us while idle: once more, anew
                    answer = conn.request(self._request, deadline)
            except (OSError, http_client.Malformed) as error:
                failed = Result(sent, self._now(), kind=failure_kind(error), retried=retried)
                self._end(number, failed)
                continue
            if self.options.new_connection:
                conn.close()
            self._end(number, self._result(sent, answer, retried))
        conn.close()

    def _result(self, sent, answer, retried):
        visits = redis = None
        headers = answer.headers
        if headers.get(VERSION_HEADER.lower()) is not None and answer.body:
            try:
                page = json.loads(answer.body)
                visits = page.get("visits") if isinstance(page.get("visits"), int) else None
                redis = page.get("redis") if isinstance(page.get("redis"), str) else None
            except (ValueError, AttributeError):
                pass
        version = headers.get(VERSION_HEADER.lower(), UNKNOWN)
        replica = headers.get(REPLICA_HEADER.lower(), UNKNOWN)
        kind = None if 200 <= answer.status < 300 else "non-2xx"
        return Result(sent, self._now(), version, replica, kind, answer.status, retried, visits,
                      redis)

    def _begin(self, sent):
        with self._lock:
            number = next(self._numbers)
            self._in_flight[number] = sent
        return number

    def _end(self, number, result):
        """Count a request's result, unless end() counted it in flight already."""
        with self._lock:
            if self._in_flight.pop(number, None) is not None:
                self.results.append(result)

    def end(self):
        """Count every request still unanswered as in flight; answers after this are not counted."""
        now = self._now()
        with self._lock:
            for sent in self._in_flight.values():
                self.results.append(Result(sent, now, kind="in-flight"))
            self._in_flight.clear()

    def _now(self):
        return time.monotonic() - self.started

    def snapshot(self):
        with self._lock:
            return list(self.results)


# -- what it shows ------------------------------------------------------------------------------

_COLUMNS = (("requests", "requests"), ("share", "share"), ("refused", "refused"),
            ("reset", "reset"), ("timeout", "timeout"), ("non-2xx", "non-2xx"),
            ("in flight", "in-flight"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"),
            ("longest gap ms", "longest_gap_ms"), ("first s", "first_s"), ("last s", "last_s"))


def _cells(name, group, version=None):
    values = {**group, **group["failures"], "share": f"{group['share']:.0%}"}
    return [name, *([] if version is None else [version]),
            *("-" if values[key] is None else str(values[key]) for _, key in _COLUMNS)]


def _grid(header, rows):
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0])]  # the name to the left, the numbers to the right
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    return lines


def table(seen):
    """The summary as a terminal shows it: totals, then a row per version and per replica."""
    failures = ", ".join(f"{n} {kind}" for kind, n in seen["failures"].items())
    if seen["keep_alive"]:
        mode = (f"{seen['connections']} connections kept alive: each stays with the replica it "
                "reached, so a round-robin balancer looks sticky (--new-connection: a new one per "
                "request)")
    else:
        mode = (f"{seen['connections']} clients, a new connection per request: each is balanced "
                "anew")
    lines = [f"watch {seen['url']}  {seen['seconds']:.1f} s at {seen['rate']:g}/s, {mode}",
             f"{seen['requests']} requests, {seen['failed']} failed ({failures}), "
             f"{seen['retried']} retried; p50 {seen['p50_ms']} ms, p99 {seen['p99_ms']} ms, "
             f"longest gap {seen['longest_gap_ms']} ms", ""]
    versions = seen["by_version"].values()
    unanswered = seen["requests"] - sum(v["requests"] for v in versions)
    rows = [_cells(v, group) for v, group in seen["by_version"].items()]
    if unanswered:
        lost = {kind: n - sum(v["failures"][kind] for v in versions)
                for kind, n in seen["failures"].items()}
        row = {**dict.fromkeys(key for _, key in _COLUMNS), "requests": unanswered,
               "failures": lost, "share": unanswered / max(seen["requests"], 1)}
        rows.append(_cells(NO_ANSWER, row))
    lines += _grid(["version", *(title for title, _ in _COLUMNS)], rows) + [""]
    rows = [_cells(name, group, group["version"]) for name, group in seen["by_replica"].items()]
    lines += _grid(["replica", "version", *(title for title, _ in _COLUMNS)], rows)
    return "\n".join(lines) + "\n"


# -- the command ---------------------------------------------------------------------------------

def _number(low, high, kind=float):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low < value <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a number above {low:g} and at most {high:g}")
        return value
    return parse


def parse_options(argv):
    parser = argparse.ArgumentParser(prog="hello_server.py watch", description=DESCRIPTION)
    parser.add_argument("url", help="what to ask, such as http://localhost:4000/")
    parser.add_argument("--duration", type=_number(0, 86400),
                        help="seconds to run (default: until Ctrl-C)")
    parser.add_argument("--rate", type=_number(0, 10000), default=20.0,
                        help="requests a second, in all (20)")
    parser.add_argument("--connections", type=_number(0, 1000, int), default=4,
                        help="requests at once at most: a connection each (4)")
    parser.add_argument("--new-connection", action="store_true",
                        help="a new TCP connection per request, as browsers behind a load "
                             "balancer see it")
    parser.add_argument("--timeout", type=_number(0, 600), default=5.0,
                        help="seconds to wait for a whole answer (5)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object, and nothing else")
    options = parser.parse_args(argv)
    try:
        target = urllib.parse.urlsplit(options.url)
        target.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        parser.error(f"url: {exc}")
    if target.scheme not in ("http", "https") or not target.hostname:
        parser.error("url: expected http:// or https:// and a host, such as http://localhost:4000/")
    return options


def main(argv):
    options = parse_options(argv)
    watch = Watch(options)
    hurry = threading.Event()  # a second Ctrl-C: no waiting for the requests in flight

    def on_signal(signum, frame):
        (hurry if watch.stop.is_set() else watch.stop).set()

    for signum in (signal.SIGINT, signal.SIGTERM):  # set, not inherited: `&` ignores SIGINT
        signal.signal(signum, on_signal)
    live = sys.stdout.isatty() and not options.json
    threads = watch.run()
    end = watch.started + options.duration if options.duration else float("inf")
    while not watch.stop.wait(min(1.0, max(end - time.monotonic(), 0))) and time.monotonic() < end:
        if live:
            seen = summary(watch.snapshot(), options, time.monotonic() - watch.started)
            sys.stdout.write("\x1b[H\x1b[2J" + table(seen))
            sys.stdout.flush()
    elapsed = time.monotonic() - watch.started
    watch.stop.set()
    finish_by = time.monotonic() + options.timeout  # in flight: each ends by its own deadline
    while any(t.is_alive() for t in threads) and not hurry.is_set():
        if time.monotonic() >= finish_by:
            break
        hurry.wait(0.02)
    watch.end()
    seen = summary(watch.snapshot(), options, elapsed)
    if options.json:
        sys.stdout.write(json.dumps(seen) + "\n")
    else:
        sys.stdout.write(("\x1b[H\x1b[2J" if live else "") + table(seen))
    sys.stdout.flush()
    return 1 if seen["failed"] else 0
