"""What `watch` counts and shows: each request's Result, the summary of a run (by version, by
replica, by second), the table a terminal redraws, and the Runner every kind of watch shares:
one schedule that connections take turns from, and the ledger of what is in flight.

watch.py is the command and its HTTP requests; watch_websocket.py its WebSocket messages.
"""

import collections
import itertools
import math
import threading
import time
import typing

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


def ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)


def group_summary(results, total, kinds=KINDS):
    """Requests, share of ``total``, failures by kind (of ``kinds``), latency and the longest
    gap between two good answers, of some of the results."""
    failures = dict.fromkeys(kinds, 0)
    for r in results:
        if r.kind:
            failures[r.kind] += 1
    latencies = sorted(r.done - r.sent for r in results if r.kind is None)
    good = sorted(r.done for r in results if r.kind is None)
    gaps = [b - a for a, b in zip(good, good[1:], strict=False)]
    done = [r.done for r in results]
    return {"requests": len(results), "share": round(len(results) / total, 4) if total else 0.0,
            "failed": sum(failures.values()), "failures": failures,
            "p50_ms": ms(percentile(latencies, 0.5)), "p99_ms": ms(percentile(latencies, 0.99)),
            "longest_gap_ms": ms(max(gaps, default=None)),
            "first_s": round(min(done), 2) if done else None,
            "last_s": round(max(done), 2) if done else None}


def summary(results, options, elapsed, kinds=KINDS):
    """Everything watch saw, as one JSON-ready object."""
    total = len(results)
    whole = group_summary(results, total, kinds)
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
        "by_version": {v: group_summary(rs, total, kinds) for v, rs in sorted(by_version.items())},
        "by_replica": {name: {"version": rs[-1].version, **group_summary(rs, total, kinds)}
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


class Runner:
    """The schedule and the ledger: ``connections`` threads, each running ``client()``, take
    turns from one schedule, ``rate`` a second in all; a thread that is late (the server is slow)
    sends at once, never in a burst to catch up. ``results`` grows as answers come; ``end()``
    counts what is still in flight."""

    def __init__(self, options):
        self.options = options
        self.results = []
        self.stop = threading.Event()
        self.started = self.finish_by = None
        self._lock = threading.Lock()
        self._next = 0
        self._in_flight = {}  # a request's number -> when it was sent
        self._numbers = itertools.count()

    def run(self):
        self.started = time.monotonic()
        threads = [threading.Thread(target=self.client, daemon=True)
                   for _ in range(self.options.connections)]
        for thread in threads:
            thread.start()
        return threads

    def client(self):
        raise NotImplementedError

    def halt(self):
        """No turn more: each thread ends once what it has in flight ends, by ``finish_by``."""
        if self.finish_by is None:
            self.finish_by = time.monotonic() + self.options.timeout
        self.stop.set()

    def summary(self, elapsed):
        return summary(self.snapshot(), self.options, elapsed)

    def failed(self, seen):
        """Whether the run failed (exit status 1): here, whether any request did."""
        return bool(seen["failed"])

    def turn(self):
        """Wait for this thread's next turn in the schedule; False once stopped."""
        return not self.stop.wait(max(self.next_turn() - time.monotonic(), 0))

    def next_turn(self):
        """When this thread's next turn is (a time.monotonic() value), taken from the schedule."""
        with self._lock:
            at = self.started + self._next / self.options.rate
            at = max(at, time.monotonic())
            # After a stall, the turns missed are skipped: no burst to catch up.
            self._next = max(self._next + 1, round((at - self.started) * self.options.rate))
        return at

    def begin(self, sent):
        with self._lock:
            number = next(self._numbers)
            self._in_flight[number] = sent
        return number

    def finish(self, number, result):
        """Count a request's result, unless end() counted it in flight already."""
        with self._lock:
            if self._in_flight.pop(number, None) is not None:
                self.results.append(result)

    def end(self):
        """Count every request still unanswered as in flight; answers after this are not counted."""
        now = self.now()
        with self._lock:
            for sent in self._in_flight.values():
                self.results.append(Result(sent, now, kind="in-flight"))
            self._in_flight.clear()

    def now(self):
        return time.monotonic() - self.started

    def snapshot(self):
        with self._lock:
            return list(self.results)


# -- what it shows ------------------------------------------------------------------------------

_LATENCY = (("p50 ms", "p50_ms"), ("p99 ms", "p99_ms"), ("longest gap ms", "longest_gap_ms"),
            ("first s", "first_s"), ("last s", "last_s"))
_HELD = (("opened", "opened"), ("closed", "closed"), ("cut", "cut"), ("reconnects", "reconnects"),
         ("reconnect p50 ms", "reconnect_p50_ms"))  # of WebSockets, what ended them


def _columns(seen):
    """(title, key) of each column: requests (or messages), the failure kinds but other, the
    latencies, and for WebSockets what became of the connections."""
    held = "websocket" in seen
    kinds = [(kind.replace("-", " ") if kind == "in-flight" else kind, kind)
             for kind in seen["failures"] if kind != "other"]
    return (("messages" if held else "requests", "requests"), ("share", "share"), *kinds,
            *_LATENCY, *(_HELD if held else ()))


def _cells(columns, name, group, version=None):
    held = group.get("connections") or {}
    values = {**group, **group["failures"], **held, "closed": sum(held.get("closed", {}).values()),
              "share": f"{group['share']:.0%}"}
    return [name, *([] if version is None else [version]),
            *("-" if values.get(key) is None else str(values[key]) for _, key in columns)]


def _grid(header, rows):
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0])]  # the name to the left, the numbers to the right
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    return lines


def _counts(counted, before=""):
    return ", ".join(f"{n} {before}{what}" for what, n in counted.items()) or "none"


def _heading(seen):
    failures = ", ".join(f"{n} {kind}" for kind, n in seen["failures"].items())
    if "websocket" in seen:
        held = seen["websocket"]
        return [f"watch {seen['url']}  {seen['seconds']:.1f} s at {seen['rate']:g}/s, "
                f"{seen['connections']} WebSockets held open, a message on one at each turn",
                f"{seen['requests']} messages, {seen['failed']} failed ({failures}), "
                f"{seen['retried']} sent again; echo p50 {seen['p50_ms']} ms, p99 "
                f"{seen['p99_ms']} ms, longest gap {seen['longest_gap_ms']} ms",
                f"{held['opened']} connections opened, {held['open_at_end']} open at the end; "
                f"closed by the server: {_counts(held['closed'], 'with ')}; "
                f"cut: {_counts(held['cuts'])}; reconnects: {held['reconnects']} (p50 "
                f"{held['reconnect_p50_ms']} ms, longest {held['reconnect_max_ms']} ms); "
                f"failed to open: {_counts(held['failed_to_open'])}", ""]
    if seen["keep_alive"]:
        mode = (f"{seen['connections']} connections kept alive: each stays with the replica it "
                "reached, so a round-robin balancer looks sticky (--new-connection: a new one per "
                "request)")
    else:
        mode = (f"{seen['connections']} clients, a new connection per request: each is balanced "
                "anew")
    return [f"watch {seen['url']}  {seen['seconds']:.1f} s at {seen['rate']:g}/s, {mode}",
            f"{seen['requests']} requests, {seen['failed']} failed ({failures}), "
            f"{seen['retried']} retried; p50 {seen['p50_ms']} ms, p99 {seen['p99_ms']} ms, "
            f"longest gap {seen['longest_gap_ms']} ms", ""]


def table(seen):
    """The summary as a terminal shows it: totals, then a row per version and per replica."""
    columns = _columns(seen)
    lines = _heading(seen)
    versions = seen["by_version"].values()
    unanswered = seen["requests"] - sum(v["requests"] for v in versions)
    rows = [_cells(columns, v, group) for v, group in seen["by_version"].items()]
    if unanswered:
        lost = {kind: n - sum(v["failures"][kind] for v in versions)
                for kind, n in seen["failures"].items()}
        row = {**dict.fromkeys(key for _, key in columns), "requests": unanswered,
               "failures": lost, "share": unanswered / max(seen["requests"], 1)}
        rows.append(_cells(columns, NO_ANSWER, row))
    lines += _grid(["version", *(title for title, _ in columns)], rows) + [""]
    rows = [_cells(columns, name, group, group["version"])
            for name, group in seen["by_replica"].items()]
    lines += _grid(["replica", "version", *(title for title, _ in columns)], rows)
    return "\n".join(lines) + "\n"
