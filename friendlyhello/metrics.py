"""Metrics: what the service counts, and /metrics in the Prometheus text format, version 0.0.4.

Every family is one row of FAMILIES: its name, type, help, label names, the values of a label
shown even at 0, its buckets, and whether this process counts it or it is read when /metrics
is asked (Redis's state, the build, the faults, the process's own). A process keeps what it
counts as series (label values -> a number, or a histogram's bucket counts and sum), so that a
snapshot is plain data, several workers' snapshots add up by type, and the text is written
from the table alone. Labels are bounded: methods and routes outside the known ones are
"other", Redis outcomes are redis_state.OUTCOMES.
"""

import bisect
import collections
import os
import re
import resource
import sys
import typing

from . import VERSION
from .redis_state import OUTCOMES
from .tls import HANDSHAKE_OUTCOMES

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
ROUND_TRIP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REPLICA_BUCKETS = (0, 1, 2, 3, 4, 5)
PROXY_REFUSALS = ("untrusted_peer", "missing", "malformed", "timeout")
_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}


class Family(typing.NamedTuple):
    """One metric family, as /metrics shows it."""

    name: str
    kind: str                     # counter, gauge or histogram
    help: str
    labels: tuple = ()            # label names
    every: tuple = ()             # the one label's values, each shown, 0 included
    buckets: tuple | None = None  # a histogram's upper bounds
    read: bool = False            # read when /metrics is asked (else counted by the process)
    combine: typing.Callable = sum  # how the workers' values of a read process family add up


FAMILIES = (
    Family("http_requests_total", "counter",
           "HTTP requests answered, by method, route and status code.",
           ("method", "route", "code")),
    Family("http_request_duration_seconds", "histogram",
           "Time from a request's complete head to its answer.",
           ("method", "route"), buckets=DURATION_BUCKETS),
    Family("friendlyhello_visits_total", "counter", "Visits counted: pages that showed a number."),
    Family("friendlyhello_redis_replies_total", "counter",
           "Redis calls for requests, by how they ended.", ("outcome",), every=OUTCOMES),
    Family("friendlyhello_redis_pipeline_size", "histogram",
           "Requests whose Redis commands went in one round trip.", buckets=ROUND_TRIP_BUCKETS),
    Family("friendlyhello_open_connections", "gauge", "Client connections open now."),
    Family("friendlyhello_log_lines_dropped_total", "counter",
           "Log lines dropped because the log's reader was slow or gone."),
    Family("friendlyhello_proxy_refused_total", "counter",
           "Connections closed unanswered for their PROXY header: by reason.", ("reason",),
           every=PROXY_REFUSALS),
    Family("friendlyhello_tls_handshakes_total", "counter",
           "TLS handshakes on the TLS port, by outcome.", ("outcome",), every=HANDSHAKE_OUTCOMES),
    Family("friendlyhello_tls_connections_open", "gauge",
           "Client connections open on the TLS port."),
    Family("friendlyhello_tls_certificate_not_after_seconds", "gauge",
           "When the certificate served lapses (its notAfter), in seconds since the epoch.",
           read=True, combine=min),
    Family("friendlyhello_websockets_open", "gauge", "WebSockets open now."),
    Family("friendlyhello_websocket_messages_total", "counter",
           "WebSocket messages, by direction (a greeting, an echo and a tick are each one sent).",
           ("direction",), every=("received", "sent")),
    Family("friendlyhello_websocket_closes_total", "counter",
           "WebSockets closed, by the close code that ended them (cut: no Close came or went).",
           ("code",)),
    Family("friendlyhello_streams_open", "gauge",
           "Answers being streamed now (/bytes/, /stream/, /drip, /sse)."),
    Family("friendlyhello_stream_bytes_total", "counter",
           "Bytes of streamed answers' bodies sent, by route.", ("route",)),
    Family("friendlyhello_request_body_bytes_total", "counter",
           "Bytes of request bodies read, by route.", ("route",)),
    Family("friendlyhello_network_tool_answers_total", "counter",
           "Answers of /dns and /dial (NETWORK_TOOLS=on), by tool and outcome (invalid, forbidden "
           "and busy: not asked).", ("tool", "outcome")),
    Family("friendlyhello_redis_primary_changes_total", "counter",
           "Times the primary the sentinels name changed under this process (failovers seen)."),
    Family("friendlyhello_redis_replicas_acknowledged", "histogram",
           "Replicas that held a round trip's visits when WAIT answered (REDIS_WAIT_REPLICAS).",
           buckets=REPLICA_BUCKETS),
    Family("friendlyhello_redis_up", "gauge", "1 while Redis answers, else 0.", read=True),
    Family("friendlyhello_build_info", "gauge",
           "The VERSION this replica was started with, friendlyhello's release and Python's "
           "version.", ("version", "release", "python"), read=True),
    Family("friendlyhello_fault", "gauge",
           "Faults on: errors (a rate), latency (seconds, at most), ready and live (1: failing).",
           ("kind",), read=True),
    # The process's own, as the official clients name them.
    Family("process_cpu_seconds_total", "counter",
           "Total user and system CPU time spent in seconds.", read=True),
    Family("process_start_time_seconds", "gauge",
           "Start time of the process since unix epoch in seconds.", read=True, combine=min),
    Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", read=True),
    Family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", read=True),
    Family("process_open_fds", "gauge", "Number of open file descriptors.", read=True),
    Family("process_max_fds", "gauge", "Maximum number of open file descriptors.", read=True,
           combine=max),
)
COUNTED = tuple(f for f in FAMILIES if not f.read)
_BY_NAME = {f.name: f for f in FAMILIES}


class Histogram:
    """Observations of one family: per label values, a count per bucket (kept apart, summed
    when shown) and the sum."""

    def __init__(self, buckets, series):
        self.buckets, self.series = buckets, series

    def observe(self, labels, value):
        counts_and_sum = self.series.get(labels)
        if counts_and_sum is None:
            counts_and_sum = self.series[labels] = [[0] * (len(self.buckets) + 1), 0.0]
        counts_and_sum[0][bisect.bisect_left(self.buckets, value)] += 1
        counts_and_sum[1] += value


class Metrics:
    """This process's numbers, written by the serving thread (requests, visits, connections)
    and the Redis thread (replies, round trip sizes), each to its own series; read for /metrics.

    With several workers each writes a snapshot to its slot in ``shared`` (a SharedSlots)
    every sweep, and /metrics shows the sum over all slots. A worker that replaces a dead one
    takes over its slot's numbers, so no counter goes backwards. ``log`` is asked for the
    lines it dropped; ``version`` (the VERSION setting) is shown in the build info."""

    def __init__(self, shared=None, slot=0, log=None, version="1"):
        self.series = {f.name: {} for f in COUNTED}
        self.shared = shared
        self.slot = slot
        self._log = log
        self.version = version
        self._cpu_before = 0.0  # CPU seconds of the workers this slot had before this one
        previous = shared.read(slot) if shared is not None else None
        if previous:
            for name, series in previous["series"].items():
                if name in _BY_NAME and _BY_NAME[name].kind != "gauge":
                    self.series[name] = series
            self._cpu_before = previous["process"].get("process_cpu_seconds_total", 0.0)
        self._requests = collections.Counter(self.series["http_requests_total"])
        self.series["http_requests_total"] = self._requests
        self.durations = Histogram(DURATION_BUCKETS, self.series["http_request_duration_seconds"])
        self.redis_replies = collections.Counter(self.series["friendlyhello_redis_replies_total"])
        self.series["friendlyhello_redis_replies_total"] = self.redis_replies
        self.proxy_refusals = collections.Counter(self.series["friendlyhello_proxy_refused_total"])
        self.series["friendlyhello_proxy_refused_total"] = self.proxy_refusals
        self.handshakes = collections.Counter(self.series["friendlyhello_tls_handshakes_total"])
        self.series["friendlyhello_tls_handshakes_total"] = self.handshakes
        self.tls_connections = 0
        self.websockets_open = 0
        messages = "friendlyhello_websocket_messages_total"
        closes = "friendlyhello_websocket_closes_total"
        self.ws_messages = self.series[messages] = collections.Counter(self.series[messages])
        self.ws_closes = self.series[closes] = collections.Counter(self.series[closes])
        self.streams_open = 0
        streamed = "friendlyhello_stream_bytes_total"
        self.stream_bytes = self.series[streamed] = collections.Counter(self.series[streamed])
        tools = "friendlyhello_network_tool_answers_total"
        self.tool_answers = self.series[tools] = collections.Counter(self.series[tools])
        bodies = "friendlyhello_request_body_bytes_total"
        self.body_bytes = self.series[bodies] = collections.Counter(self.series[bodies])
        self.tls_files = None  # a tls.TLSFiles, for the certificate's notAfter
        sizes = self.series["friendlyhello_redis_pipeline_size"]
        self.round_trip_sizes = Histogram(ROUND_TRIP_BUCKETS, sizes)
        acknowledged = self.series["friendlyhello_redis_replicas_acknowledged"]
        self.replicas_acknowledged = Histogram(REPLICA_BUCKETS, acknowledged)
        self.primary_changes = self.series["friendlyhello_redis_primary_changes_total"].get((), 0)
        self.visits = self.series["friendlyhello_visits_total"].get((), 0)
        self.open_connections = 0
        self._ticks, self._page_size = os.sysconf("SC_CLK_TCK"), resource.getpagesize()

    def request(self, method, route, status, seconds):
        method = method if method in _METHODS else "other"
        self._requests[method, route, str(status)] += 1
        self.durations.observe((method, route), seconds)

    def redis_reply(self, outcome):
        self.redis_replies[(outcome,)] += 1

    def proxy_refused(self, reason):
        self.proxy_refusals[(reason,)] += 1

    def tls_handshake(self, outcome):
        self.handshakes[(outcome,)] += 1

    def websocket_message(self, direction):
        self.ws_messages[(direction,)] += 1

    def network_tool(self, tool, outcome):
        self.tool_answers[(tool, outcome)] += 1  # two tools, a dozen outcomes: bounded

    def websocket_close(self, code):
        self.ws_closes[(str(code),)] += 1  # RFC 6455's codes and "cut": bounded

    def snapshot(self):
        """This process's numbers as plain data: {"series": {family: {labels: value}},
        "process": {family: value}}."""
        self.series["friendlyhello_visits_total"] = {(): self.visits}
        self.series["friendlyhello_redis_primary_changes_total"] = {(): self.primary_changes}
        self.series["friendlyhello_open_connections"] = {(): self.open_connections}
        self.series["friendlyhello_tls_connections_open"] = {(): self.tls_connections}
        self.series["friendlyhello_websockets_open"] = {(): self.websockets_open}
        self.series["friendlyhello_streams_open"] = {(): self.streams_open}
        dropped = self._log.dropped if self._log else 0
        self.series["friendlyhello_log_lines_dropped_total"] = {(): dropped}
        series = {name: dict(values) for name, values in self.series.items()}
        process = self._process()
        if self.tls_files is not None:
            process["friendlyhello_tls_certificate_not_after_seconds"] = self.tls_files.not_after
        return {"series": series, "process": process}

    def publish(self):
        if self.shared is not None:
            self.shared.write(self.slot, self.snapshot())

    def exposition(self, redis_up, faults=None):
        mine = self.snapshot()
        if self.shared is not None:
            self.shared.write(self.slot, mine)
            others = [self.shared.read(n) for n in range(self.shared.count) if n != self.slot]
            mine = merged([mine, *others])
        return exposition(mine, redis_up, self.version, faults)

    def _process(self):
        """The process's own; none where /proc is not mounted."""
        try:
            with open("/proc/self/stat") as stat, open("/proc/stat") as system:
                fields = stat.read().rpartition(")")[2].split()
                boot_time = int(re.search(r"^btime (\d+)", system.read(), re.M).group(1))
            fds = len(os.listdir("/proc/self/fd"))
        except OSError:
            return {}
        cpu = (int(fields[11]) + int(fields[12])) / self._ticks  # user and system
        return {"process_cpu_seconds_total": self._cpu_before + cpu,
                "process_start_time_seconds": boot_time + int(fields[19]) / self._ticks,
                "process_resident_memory_bytes": int(fields[21]) * self._page_size,
                "process_virtual_memory_bytes": int(fields[20]),
                "process_open_fds": fds,
                "process_max_fds": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


def merged(snapshots):
    """The sum of several workers' snapshots (a missing one counts nothing): counters and
    gauges add, histograms add bucket by bucket; the process's values combine as each says."""
    total = {"series": {f.name: {} for f in COUNTED}, "process": {}}
    for snapshot in filter(None, snapshots):
        for name, series in snapshot["series"].items():
            into = total["series"].setdefault(name, {})
            for labels, value in series.items():
                if isinstance(value, list):  # a histogram's [counts, sum]
                    into[labels] = _added_histograms(into.get(labels), value)
                else:
                    into[labels] = into.get(labels, 0) + value
        for name, value in snapshot["process"].items():
            before = total["process"].get(name)
            combine = _BY_NAME[name].combine if name in _BY_NAME else sum
            total["process"][name] = value if before is None else combine((before, value))
    return total


def _added_histograms(into, value):
    if into is None:
        return [list(value[0]), value[1]]
    counts = [a + b for a, b in zip(into[0], value[0], strict=True)]
    return [counts, into[1] + value[1]]


def exposition(snapshot, redis_up, version="1", faults=None):
    """The text format: every family of FAMILIES, counted ones from ``snapshot``, read ones
    from Redis's state, the build, the ``faults`` (kind -> value; None: not shown) and the
    snapshot's process values."""
    read = {"friendlyhello_redis_up": {(): int(redis_up)},
            "friendlyhello_build_info": {(version, VERSION, sys.version.split()[0]): 1}}
    if faults is not None:
        read["friendlyhello_fault"] = {(kind,): value for kind, value in faults.items()}
    for name, value in snapshot["process"].items():
        read[name] = {(): value}
    out = []
    for family in FAMILIES:
        if family.read:
            series = read.get(family.name)
            if series is None:
                continue  # not known here: not shown at all
        else:
            series = snapshot["series"].get(family.name, {})
        out.append(f"# HELP {family.name} {family.help}\n# TYPE {family.name} {family.kind}\n")
        if family.every:  # every outcome and reason, 0 included
            series = {(label,): series.get((label,), 0) for label in family.every}
        if not family.labels and not series and family.kind != "histogram":
            series = {(): 0}
        for labels, value in _in_order(family, series):
            pairs = list(zip(family.labels, labels, strict=True))
            if family.kind == "histogram":
                out.extend(_histogram_lines(family, pairs, *value))
            else:
                out.append(f"{family.name}{_labels(pairs)} {value!r}\n")
    return "".join(out)


def _in_order(family, series):
    """Counted series sorted by their labels; a read family's as it gave them."""
    return series.items() if family.read else sorted(series.items())


def _histogram_lines(family, pairs, counts, total):
    cumulative = 0
    for bound, count in zip((*family.buckets, float("inf")), counts, strict=True):
        cumulative += count
        le = "+Inf" if bound == float("inf") else repr(float(bound))
        yield f"{family.name}_bucket{_labels([*pairs, ('le', le)])} {cumulative}\n"
    yield f"{family.name}_sum{_labels(pairs)} {total!r}\n"
    yield f"{family.name}_count{_labels(pairs)} {cumulative}\n"


def _labels(pairs):
    if not pairs:
        return ""
    shown = []
    for name, value in pairs:
        value = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        shown.append(f'{name}="{value}"')
    return "{" + ",".join(shown) + "}"
