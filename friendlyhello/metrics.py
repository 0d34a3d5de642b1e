
import bisect
import collections
import os
import platform
import re
import resource

from . import VERSION

# -- metrics: the Prometheus text exposition format, version 0.0.4 -----------------------------

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
PIPELINE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
_REPLY_OUTCOMES = ("ok", "timeout", "cannot_connect", "no_reply", "error_reply")


class Histogram:
    """Observations per label set: a count per bucket (kept apart, summed when shown), sum, count."""

    def __init__(self, buckets):
        self.buckets = buckets
        self.series = {}

    def observe(self, labels, value):
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [[0] * (len(self.buckets) + 1), 0.0]
        series[0][bisect.bisect_left(self.buckets, value)] += 1
        series[1] += value

    def samples(self, name, label_names):
        for labels, (counts, total) in sorted(self.series.items()):
            pairs = list(zip(label_names, labels, strict=True))
            cumulative = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                cumulative += count
                le = "+Inf" if bound == float("inf") else repr(float(bound))
                yield f"{name}_bucket{_labels([*pairs, ('le', le)])} {cumulative}"
            yield f"{name}_sum{_labels(pairs)} {total!r}"
            yield f"{name}_count{_labels(pairs)} {cumulative}"


def _labels(pairs):
    pairs = list(pairs)
    if not pairs:
        return ""
    escaped = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, escaped, strict=True)) + "}"


class Metrics:
    """What the service counts, written by the serving thread (requests, visits) and the Redis
    thread (replies, batch sizes), each to its own numbers; read for /metrics. Labels are
    bounded: methods and routes outside the known ones are "other".

    With several workers each writes a snapshot of its numbers to its slot in ``shared`` (a
    SharedSlots) every sweep, and /metrics shows the sum over all slots. A worker that replaces
    a dead one takes over its slot's numbers, so no counter goes backwards."""

    def __init__(self, shared=None, slot=0):
        self.requests = collections.Counter()  # (method, route, code) -> count
        self.durations = Histogram(DURATION_BUCKETS)
        self.visits = 0
        self.redis_replies = collections.Counter()
        self.pipeline_sizes = Histogram(PIPELINE_BUCKETS)
        self.open_connections = lambda: 0  # set by the server
        self.shared, self.slot = shared, slot
        self._cpu_before = 0.0  # CPU seconds of the workers this slot had before this one
        self._ticks, self._page = os.sysconf("SC_CLK_TCK"), resource.getpagesize()
        previous = shared.read(slot) if shared is not None else None
        if previous:
            self.requests.update(previous["requests"])
            self.durations.series = previous["durations"]
            self.visits = previous["visits"]
            self.redis_replies.update(previous["replies"])
            self.pipeline_sizes.series = previous["pipeline"]
            self._cpu_before = previous["process"].get("cpu", 0.0)

    def request(self, method, route, status, seconds):
        method = method if method in _METHODS else "other"
        self.requests[method, route, str(status)] += 1
        self.durations.observe((method, route), seconds)

    def snapshot(self):
        """This process's numbers as plain data."""
        return {"requests": dict(self.requests), "durations": self.durations.series, "visits": self.visits,
                "replies": dict(self.redis_replies), "pipeline": self.pipeline_sizes.series,
                "connections": self.open_connections(), "process": self._process()}

    def publish(self):
        if self.shared is not None:
            self.shared.write(self.slot, self.snapshot())

    def exposition(self, redis_up):
        mine = self.snapshot()
        if self.shared is not None:
            self.shared.write(self.slot, mine)
            mine = _merged([mine, *(self.shared.read(n) for n in range(self.shared.count) if n != self.slot)])
        return "".join(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n" + "".join(s + "\n" for s in samples)
                       for name, kind, help_text, samples in _families(mine, redis_up))

    def _process(self):
        """The process's own, as the official clients name them; none where /proc is not mounted."""
        try:
            with open("/proc/self/stat") as stat, open("/proc/stat") as system:
                fields = stat.read().rpartition(")")[2].split()
                boot_time = int(re.search(r"^btime (\d+)", system.read(), re.M).group(1))
            fds = len(os.listdir("/proc/self/fd"))
        except OSError:
            return {}
        return {"cpu": self._cpu_before + (int(fields[11]) + int(fields[12])) / self._ticks,
                "start": boot_time + int(fields[19]) / self._ticks, "rss": int(fields[21]) * self._page,
                "vms": int(fields[20]), "fds": fds, "max_fds": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


def _merged(snapshots):
    """The sum of several workers' snapshots (a missing one counts nothing)."""
    total = {"requests": collections.Counter(), "durations": {}, "visits": 0, "replies": collections.Counter(),
             "pipeline": {}, "connections": 0, "process": {}}
    for snap in filter(None, snapshots):
        total["requests"].update(snap["requests"])
        total["replies"].update(snap["replies"])
        total["visits"] += snap["visits"]
        total["connections"] += snap["connections"]
        for key in ("durations", "pipeline"):
            for labels, (counts, seconds) in snap[key].items():
                mine = total[key].setdefault(labels, [[0] * len(counts), 0.0])
                mine[0] = [a + b for a, b in zip(mine[0], counts, strict=True)]
                mine[1] += seconds
        for key, value in snap["process"].items():
            combine = {"start": min, "max_fds": max}.get(key, lambda a, b: a + b)
            total["process"][key] = combine(total["process"][key], value) if key in total["process"] else value
    return total


def _families(snap, redis_up):
    durations, pipeline = Histogram(DURATION_BUCKETS), Histogram(PIPELINE_BUCKETS)
    durations.series, pipeline.series = snap["durations"], snap["pipeline"]
    process = snap["process"]
    families = [
        ("http_requests_total", "counter", "HTTP requests answered, by method, route and status code.",
         [f"http_requests_total{_labels(zip(('method', 'route', 'code'), key, strict=True))} {count}"
          for key, count in sorted(snap["requests"].items())]),
        ("http_request_duration_seconds", "histogram", "Time from a request's complete head to its answer.",
         list(durations.samples("http_request_duration_seconds", ("method", "route")))),
        ("friendlyhello_visits_total", "counter", "Visits counted: pages that showed a number.",
         [f"friendlyhello_visits_total {snap['visits']}"]),
        ("friendlyhello_redis_replies_total", "counter", "Redis calls for requests, by how they ended.",
         [f'friendlyhello_redis_replies_total{{outcome="{o}"}} {snap["replies"].get(o, 0)}' for o in _REPLY_OUTCOMES]),
        ("friendlyhello_redis_up", "gauge", "1 while Redis answers, else 0.",
         [f"friendlyhello_redis_up {int(redis_up)}"]),
        ("friendlyhello_redis_pipeline_size", "histogram", "Requests whose Redis commands went in one round trip.",
         list(pipeline.samples("friendlyhello_redis_pipeline_size", ()))),
        ("friendlyhello_open_connections", "gauge", "Client connections open now.",
         [f"friendlyhello_open_connections {snap['connections']}"]),
        ("friendlyhello_build_info", "gauge", "The version of friendlyhello and of Python that runs it.",
         [f'friendlyhello_build_info{{version="{VERSION}",python="{platform.python_version()}"}} 1']),
    ]
    if process:  # the workers' together, where there are several
        families += [
            ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
             [f"process_cpu_seconds_total {process['cpu']!r}"]),
            ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
             [f"process_start_time_seconds {process['start']!r}"]),
            ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
             [f"process_resident_memory_bytes {process['rss']}"]),
            ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.",
             [f"process_virtual_memory_bytes {process['vms']}"]),
            ("process_open_fds", "gauge", "Number of open file descriptors.", [f"process_open_fds {process['fds']}"]),
            ("process_max_fds", "gauge", "Maximum number of open file descriptors.",
             [f"process_max_fds {process['max_fds']}"]),
        ]
    return families
