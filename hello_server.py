"""friendlyhello: the "Hello World! + visit counter" page of Docker's Get Started tutorial.

Standard library only. Each visit to ``/`` runs ``INCR counter`` on Redis (through
``resp_client``) and shows the number; when Redis cannot be reached the page says the
counter is disabled, at once, instead of hanging. Also serves ``/healthz`` and ``/livez``
(liveness), ``/readyz`` (readiness: "send me traffic"), ``/metrics`` (Prometheus),
``/replicas`` (who served how many) and JSON for clients that ask for it.

It is built on ``http.server``'s request handler, which parses each request head, with
one change to how connections are served: one thread serves all connections,
non-blocking, with a selector, and one more thread talks to Redis, sending the commands
of all waiting requests in one pipeline. Idle keep-alive connections and slow clients
therefore cost no thread, no flood of connections creates threads, and threads do not
take turns at the interpreter lock on every request. It serves small pages to demo,
learning and probe traffic; it is not a general web server (no request bodies, no TLS,
no static files).

Read top to bottom: the page and its limits; settings; the site (one route table, and
what replicas keep in Redis); the request handler (http.server's hooks); the response
bytes; a connection and its state; the Redis side; the server loop; metrics; the logs;
listening; the health check; several workers under a supervisor; main.

Run ``python3 hello_server.py --help`` for the settings.
"""

import argparse
import bisect
import collections
import email.utils
import errno
import functools
import html
import http
import http.client
import http.server
import io
import json
import marshal
import mmap
import os
import platform
import re
import resource
import select
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse

import resp_client

# -- the page and the limits -------------------------------------------------------------------

PAGE = "<h3>Hello {name}!</h3><b>Hostname:</b> {hostname}<br/><b>Visits:</b> {visits}"
COUNTER_DISABLED = "<i>cannot connect to Redis, counter disabled</i>"
COUNTER_KEY = "counter"
VERSION = "1.0"
SERVER_NAME = f"friendlyhello/{VERSION}"

MAX_REQUEST_LINE = 8 * 1024  # longer gets 414
MAX_HEAD = 16 * 1024         # request line plus headers; more gets 431 (so do over 100 headers)
SWEEP_INTERVAL = 0.25        # how often idle and slow connections are checked for expiry
LINGER = 2.0                 # after closing our side, how long to read and drop what a client still sends
MAX_PIPELINE = 256           # Redis commands sent in one round trip at most
REQUESTS_PER_TURN = 8        # pipelined requests of one connection served per turn of the loop
HEALTHCHECK_TIMEOUT = 2.0    # the image's HEALTHCHECK gives it 3 s
HEARTBEAT_INTERVAL = 3.0     # how often a replica tells Redis it is alive
REPLICA_TTL = 10             # seconds after its last heartbeat that a replica drops out of the view


# -- settings: read once, validated, before anything binds -------------------------------------

class ConfigError(Exception):
    """A setting has a value the program cannot use; the message is one line."""


def _whole(low, high):
    def parse(text):
        if not re.fullmatch(r"[0-9]+", text) or not low <= int(text) <= high:
            raise ValueError(f"a whole number from {low} to {high}")
        return int(text)
    return parse


def _seconds(low, high, low_allowed=False):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (low < value <= high or low_allowed and value == low):
            bound = "from" if low_allowed else "above"
            raise ValueError(f"a number of seconds {bound} {low:g} and at most {high:g}")
        return value
    return parse


def _choice(*allowed):
    def parse(text):
        if text.lower() not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return text.lower()
    return parse


def _text(text):
    return text


def _host(text):
    if not text or any(c.isspace() for c in text):
        raise ValueError("a host name or IP address, such as 0.0.0.0, :: or redis")
    return text


def cpus_available():
    """The CPUs this process may use: its affinity, capped by a cgroup CPU quota (a container's
    --cpus, a pod's CPU limit), rounded up; at least 1."""
    cpus = len(os.sched_getaffinity(0))
    for path, parse in (("/sys/fs/cgroup/cpu.max", lambda t: t.split()),  # cgroup v2: "150000 100000"
                        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", lambda t: [t.strip(), _read(
                            "/sys/fs/cgroup/cpu/cpu.cfs_period_us")])):  # v1, -1 when unlimited
        try:
            quota, period = parse(_read(path))
            if quota not in ("max", "-1"):
                cpus = min(cpus, -(-int(quota) // int(period)))
            break
        except (OSError, ValueError):
            continue
    return max(cpus, 1)


def _read(path):
    with open(path) as file:
        return file.read()


def _workers(text):
    if text.lower() == "auto":
        return cpus_available()
    return _whole(1, 256)(text)


def _redis_url(text):
    try:
        resp_client.parse_url(text)
    except ValueError as exc:  # its message quotes no credentials
        raise ValueError(str(exc)) from None
    return text


class Setting(collections.namedtuple("Setting", "env default parse help secret aliases", defaults=(False, ()))):
    """One setting: its environment variable (and other spellings of it, tried in turn),
    default, parser (raises ValueError) and help."""

    __slots__ = ()

    @property
    def flag(self):
        return "--" + self.env.lower().replace("_", "-")

    @property
    def field(self):
        return self.env.lower()


SETTINGS = [
    Setting("NAME", "world", _text, "who the page greets"),
    Setting("PORT", 80, _whole(0, 65535), "TCP port to listen on (0 picks a free one)"),
    Setting("BIND", "0.0.0.0", _host, "address to listen on"),
    Setting("REDIS_URL", None, _redis_url, "redis://[[user]:password@]host[:port][/db], rediss:// or "
            "unix:///path; replaces the four REDIS_* settings below", secret=True),
    Setting("REDIS_HOST", "redis", _host, "Redis host name"),
    Setting("REDIS_PORT", 6379, _whole(1, 65535), "Redis port"),
    Setting("REDIS_DB", 0, _whole(0, 100000), "Redis database number"),
    Setting("REDIS_PASSWORD", None, _text, "Redis password", secret=True),
    Setting("REDIS_TIMEOUT", 2.0, _seconds(0, 60), "seconds to wait for Redis to connect or reply"),
    Setting("ACCESS_LOG", "on", _choice("on", "off", "all"),
            "on: a line per request on stdout, health probes and /metrics left out; all: them too; off: none"),
    Setting("LOG_FORMAT", "text", _choice("text", "json"),
            "text: one line of words per event; json: one JSON object per line, for log pipelines"),
    Setting("WORKERS", 1, _workers, "processes serving the port, or auto: one per CPU this process may "
            "use (its affinity and cgroup quota); more than 1 adds a supervisor process"),
    Setting("MAX_CONNECTIONS", 4096, _whole(1, 1000000),
            "open client connections at most; more wait in the listen backlog"),
    Setting("IDLE_TIMEOUT", 5.0, _seconds(0, 3600),
            "seconds a keep-alive connection may idle, a request head may take to arrive (then 408), "
            "and a client may take to read a response"),
    Setting("READY_NEEDS_REDIS", "off", _choice("off", "on"),
            "on: /readyz answers 503 while Redis does not answer PING; off: /readyz only says how Redis is"),
    Setting("SHUTDOWN_DELAY", 0.0, _seconds(0, 3600, low_allowed=True),
            "after SIGTERM, seconds to go on accepting and serving (with /readyz at 503) while load "
            "balancers and DNS learn that this replica is going"),
    Setting("DRAIN_TIMEOUT", 5.0, _seconds(0, 3600),
            "then, with the port closed, seconds that requests in flight may take to finish"),
    # Where a replica runs, as Kubernetes' Downward API tells it, in the usual spellings.
    Setting("POD_NAME", None, _text, "the pod's name, shown in the JSON answer and logs",
            aliases=("MY_POD_NAME", "KUBERNETES_POD_NAME")),
    Setting("POD_NAMESPACE", None, _text, "the pod's namespace, shown likewise",
            aliases=("MY_POD_NAMESPACE", "KUBERNETES_NAMESPACE", "KUBERNETES_POD_NAMESPACE")),
    Setting("NODE_NAME", None, _text, "the node's name, shown likewise",
            aliases=("MY_NODE_NAME", "KUBERNETES_NODE_NAME")),
    Setting("POD_IP", None, _text, "the pod's IP address, shown likewise",
            aliases=("MY_POD_IP", "KUBERNETES_POD_IP")),
    Setting("REPLICA_ID", None, _text, "this replica's name in /replicas (default: the pod's name, "
            "else the host name; replicas that share it count as one)"),
]
_REDIS_PARTS = ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD")

# Every setting, validated; made once by load_config() and never changed.
Config = collections.namedtuple("Config", [s.field for s in SETTINGS])


def argument_parser():
    parser = argparse.ArgumentParser(
        prog="hello_server.py",
        description="friendlyhello: Hello World! and a visit counter in Redis. Each setting is an "
                    "environment variable or the flag beside it (the flag wins).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    for s in SETTINGS:
        shown = "unset" if s.default is None else s.default
        also = f"; also read as {', '.join(s.aliases)}" if s.aliases else ""
        parser.add_argument(s.flag, dest=s.field, metavar=s.env, help=f"{s.help} (default: {shown}{also})")
    parser.add_argument("--healthcheck", action="store_true",
                        help="ask the server at PORT for /healthz and exit 0 if healthy, else 1 "
                             "(for HEALTHCHECK in an image without curl)")
    return parser


def load_config(argv=None, environ=None, args=None):
    """Read flags (or argument_parser()'s ``args``) and environment once; raise
    ConfigError naming the first bad value, and never showing a secret one."""
    environ = os.environ if environ is None else environ
    args = vars(args if args is not None else argument_parser().parse_args(argv))
    values, given = {}, set()
    for s in SETTINGS:
        source = s.flag if args[s.field] is not None else next(
            (name for name in (s.env, *s.aliases) if name in environ), None)
        if source is None:
            values[s.field] = s.default
            continue
        raw = args[s.field] if source == s.flag else environ[source]
        given.add(s.env)
        try:
            values[s.field] = s.parse(raw)
        except ValueError as exc:
            shown = " is not valid:" if s.secret else f"={raw!r} is not valid: expected"
            raise ConfigError(f"{source}{shown} {exc}") from None
    if "REDIS_URL" in given and given.intersection(_REDIS_PARTS):
        raise ConfigError("set REDIS_URL or REDIS_HOST/REDIS_PORT/REDIS_DB/REDIS_PASSWORD, not both")
    return Config(**values)


def redis_client(config):
    timeouts = dict(connect_timeout=config.redis_timeout, timeout=config.redis_timeout,
                    max_connections=1)  # one Redis thread, one connection
    if config.redis_url is not None:
        return resp_client.RespClient.from_url(config.redis_url, **timeouts)
    return resp_client.RespClient(config.redis_host, config.redis_port, db=config.redis_db,
                                  password=config.redis_password, **timeouts)


# -- the site: one route table -----------------------------------------------------------------

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
JSON = "application/json"


class Response(collections.namedtuple("Response", "status content_type body headers", defaults=((),))):
    """What to answer: a status, a body (text) and any headers beyond the common ones."""

    __slots__ = ()


class Route(collections.namedtuple("Route", "answer redis_command counts_visit probe")):
    """One path: ``answer(request, redis)`` makes its Response from a PageRequest.

    ``redis_command`` (``encode_command()``'s bytes, made once) is sent first when set, and
    ``redis`` is then a ``RedisReply``; it is None when nothing was sent (a HEAD of a route
    that counts visits sends nothing). A ``probe`` is left out of the access log by default.
    """

    __slots__ = ()


PageRequest = collections.namedtuple("PageRequest", "wants_json query")
RedisReply = collections.namedtuple("RedisReply", "value error")

_PING = resp_client.encode_command(("PING",))
_SHUTTING_DOWN = Response(503, TEXT, "shutting down\n")
_NOT_FOUND = Response(404, TEXT, "404 not found\n")
_NOT_ALLOWED = Response(405, TEXT, "405 method not allowed\n", (("Allow", "GET, HEAD"),))


def error_response(status):
    """The plain answer to a request that failed: status and reason, as text."""
    return Response(status, TEXT, f"{status} {http.HTTPStatus(status).phrase}\n")
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# -- what replicas keep in Redis: Lua scripts, so that each runs whole or not at all -----------
# KEYS and ARGV are fixed per process: each command is encoded once, at start-up.
REPLICA_INDEX = "friendlyhello:replicas"   # sorted set: replica id -> time of its last heartbeat
REPLICA_PREFIX = "friendlyhello:replica:"  # hash per replica: hostname, pod, node, started, seen, served
VISIT_SCRIPT = """
local visits = redis.call('INCR', KEYS[1])
if redis.call('HINCRBY', KEYS[2], 'served', 1) == 1 then
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
return visits
"""  # a visit counts for the counter and for the replica that served it, together; a record
# it makes anew expires too (heartbeats keep an existing one's expiry fresh)
HEARTBEAT_SCRIPT = """
local now = tonumber(redis.call('TIME')[1])
redis.call('HSET', KEYS[2], 'hostname', ARGV[2], 'pod', ARGV[3], 'node', ARGV[4], 'seen', now)
redis.call('HSETNX', KEYS[2], 'started', now)
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
return now
"""  # alive: the record refreshed, and the index trimmed, so Redis holds only live replicas
VIEW_SCRIPT = """
local now = tonumber(redis.call('TIME')[1])
local out = {now, redis.call('GET', KEYS[2]) or false}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')) do
  local record = redis.call('HGETALL', ARGV[2] .. id)
  if #record > 0 then
    out[#out + 1] = id
    out[#out + 1] = record
  end
end
return out
"""  # the live replicas' records, the counter, and Redis's clock, in one round trip


def replica_commands(replica_id, hostname, placement_):
    """This replica's three Redis commands, encoded: a visit, a heartbeat, the view."""
    key = REPLICA_PREFIX + replica_id
    return (
        resp_client.encode_command(("EVAL", VISIT_SCRIPT, 2, COUNTER_KEY, key, REPLICA_TTL)),
        resp_client.encode_command(("EVAL", HEARTBEAT_SCRIPT, 2, REPLICA_INDEX, key, REPLICA_TTL, hostname,
                                    placement_.get("pod", ""), placement_.get("node", ""), replica_id)),
        resp_client.encode_command(("EVAL", VIEW_SCRIPT, 2, REPLICA_INDEX, COUNTER_KEY, REPLICA_TTL,
                                    REPLICA_PREFIX)))


class Site:
    """The pages: statuses and content. Nothing of sockets; of Redis, its replies and its
    state as ``redis_status`` (a RedisStatus) keeps it."""

    def __init__(self, config, redis_status, metrics, hostname=None):
        self.name = config.name
        self.redis_status, self.metrics = redis_status, metrics
        self.hostname = socket.gethostname() if hostname is None else hostname
        self.placement = placement(config)
        self.replica_id = config.replica_id or self.placement.get("pod") or self.hostname
        visit, self.heartbeat, view = replica_commands(self.replica_id, self.hostname, self.placement)
        self.shutting_down = False
        # Everything on the page but the count is fixed: build it once.
        assert PAGE.endswith("{visits}")
        self.page_start = PAGE[:-len("{visits}")].format(
            name=html.escape(self.name), hostname=html.escape(self.hostname))
        self.routes = {
            "/": Route(self.page, visit, counts_visit=True, probe=False),
            "/healthz": Route(self.healthz, None, counts_visit=False, probe=True),
            "/livez": Route(self.healthz, None, counts_visit=False, probe=True),
            "/readyz": Route(self.readyz, _PING if config.ready_needs_redis == "on" else None,
                             counts_visit=False, probe=True),
            "/metrics": Route(self.metrics_page, None, counts_visit=False, probe=True),
            "/replicas": Route(self.replicas, view, counts_visit=False, probe=False),
        }

    def page(self, request, redis):
        visits, error = (None, None) if redis is None else redis
        if error is None and redis is not None and type(visits) is not int:
            error = resp_client.ProtocolError(f"INCR answered {visits!r:.64}, not an integer")
        if error is not None:
            visits = None
        elif redis is not None:
            self.metrics.visits += 1
        if request.wants_json:
            body = json.dumps({"name": self.name, "hostname": self.hostname, **self.placement,
                               "visits": visits, "redis": short_reason(error)})
            return Response(200, JSON, body + "\n", _VARY_ACCEPT)
        text = COUNTER_DISABLED if visits is None else str(visits)
        return Response(200, HTML, self.page_start + text, _VARY_ACCEPT)

    def healthz(self, request, redis):
        """Liveness: the process serves. Never Redis, and still 200 while it shuts down."""
        return Response(200, TEXT, "ok\n")

    def readyz(self, request, redis):
        """Readiness: send me traffic. Pages serve without Redis, so by default Redis's state
        is only reported: an outage must not pull every replica out of its load balancer."""
        if self.shutting_down:
            return _SHUTTING_DOWN
        if redis is None:
            return Response(200, TEXT, f"ready\nredis: {self.redis_status.describe()}\n")
        if redis.error is not None:
            return Response(503, TEXT, f"redis unavailable: {redis.error}\n")
        return Response(200, TEXT, "ready\n")

    def metrics_page(self, request, redis):
        return Response(200, METRICS_TYPE, self.metrics.exposition(self.redis_status.reason is None))

    def replicas(self, request, redis):
        """Who served how many: the live replicas, from Redis, as a table or JSON."""
        refresh = request.query.get("refresh", [""])[-1]
        if refresh and not re.fullmatch(r"[1-9][0-9]{0,3}", refresh):
            return Response(400, TEXT, "refresh must be a whole number of seconds from 1 to 9999\n")
        view = ReplicaView.read(redis)
        if request.wants_json:
            return Response(200, JSON, json.dumps(view.as_json(self.hostname)) + "\n", _VARY_ACCEPT)
        return Response(200, HTML, view.as_html(self.hostname, int(refresh or 0)), _VARY_ACCEPT)


_VARY_ACCEPT = (("Vary", "Accept"),)


class ReplicaView(collections.namedtuple("ReplicaView", "replicas total now reason")):
    """The live replicas (dicts of their records), the counter, Redis's clock, and why the
    view is empty when Redis could not be asked (else None)."""

    __slots__ = ()

    @classmethod
    def read(cls, redis):
        if redis.error is not None:
            return cls([], None, 0, outage_reason(redis.error))
        now, total, *pairs = redis.value
        replicas = []
        for replica_id, fields in zip(pairs[::2], pairs[1::2], strict=True):
            record = {k.decode(): v.decode("utf-8", "replace") for k, v in zip(fields[::2], fields[1::2], strict=True)}
            replicas.append({"id": replica_id.decode("utf-8", "replace"), "hostname": record.get("hostname", ""),
                             "pod": record.get("pod", ""), "node": record.get("node", ""),
                             "served": int(record.get("served", 0)),
                             "seconds_since_seen": max(now - int(record.get("seen", now)), 0)})
        replicas.sort(key=lambda r: (-r["served"], r["id"]))
        return cls(replicas, int(total or 0), now, None)

    def as_json(self, hostname):
        shares = [{**r, "share": round(r["served"] / self.total, 4) if self.total else 0.0} for r in self.replicas]
        return {"replicas": shares, "total": self.total, "served_by": hostname,
                "redis": "ok" if self.reason is None else self.reason}

    def as_html(self, hostname, refresh):
        head = REPLICAS_HEAD.format(refresh=f'<meta http-equiv="refresh" content="{refresh}">' if refresh else "")
        if self.reason is not None:
            return head + (f"<p>Redis is unavailable ({html.escape(self.reason)}): no replica view until it "
                           f"answers again.</p>{REPLICAS_FOOT.format(hostname=html.escape(hostname))}")
        rows = []
        for r in self.replicas:
            share = r["served"] / self.total if self.total else 0.0
            rows.append(REPLICA_ROW.format(**{k: html.escape(str(v)) for k, v in r.items()},
                                           share=f"{share:.0%}", bar=round(share * 200)))
        elsewhere = self.total - sum(r["served"] for r in self.replicas)
        return head + REPLICAS_TABLE.format(
            count=len(self.replicas), total=self.total, rows="".join(rows), elsewhere=elsewhere,
        ) + REPLICAS_FOOT.format(hostname=html.escape(hostname))


# The replica view's page: plain HTML, its style inline; nothing loaded from elsewhere.
REPLICAS_HEAD = """<!doctype html>
<html><head><meta charset="utf-8"><title>friendlyhello replicas</title>{refresh}
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}
th,td{{padding:.35em .9em;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}}td.n{{text-align:right}}
.bar{{display:inline-block;height:.8em;background:#3b7dd8;margin-right:.5em}}</style></head>
<body><h3>Replicas</h3>
"""
REPLICAS_TABLE = """<p>{count} live replicas; {total} visits counted in all.</p>
<table><tr><th>replica</th><th>pod</th><th>node</th><th>visits served</th><th>share</th><th>last seen</th></tr>
{rows}</table>
<p>Visits counted by replicas gone from this view (stopped, or not seen for a while): {elsewhere}.</p>
"""
REPLICA_ROW = ('<tr><td>{hostname}</td><td>{pod}</td><td>{node}</td><td class="n">{served}</td>'
               '<td><span class="bar" style="width:{bar}px"></span>{share}</td>'
               '<td>{seconds_since_seen} s ago</td></tr>\n')
REPLICAS_FOOT = "<p>This page was served by {hostname}.</p></body></html>\n"


def placement(config):
    """Where this replica runs, as far as the Downward API said: only what is known."""
    known = {"pod": config.pod_name, "namespace": config.pod_namespace, "node": config.node_name,
             "pod_ip": config.pod_ip}
    return {key: value for key, value in known.items() if value}


def outage_reason(error):
    """Why Redis cannot be used, in a few words; the error that opened an outage, if any."""
    error = error.cause or error
    if isinstance(error, resp_client.RedisTimeoutError):
        return "timeout"
    if isinstance(error, resp_client.AuthenticationError):
        return "authentication failed"
    if isinstance(error, resp_client.ResponseError):
        return f"error {error.code}"
    if isinstance(error, resp_client.ProtocolError):
        return "protocol error"
    return "cannot connect"


def short_reason(error):
    """What the JSON answer says of Redis for one visit."""
    if error is None:
        return "ok"
    if error.command_sent and not isinstance(error, resp_client.ResponseError):
        return "no reply (the visit may have counted)"
    return outage_reason(error)


def prefers_json(accept):
    """True when an Accept field ranks application/json above text/html (RFC 9110 12.5.1):
    the most specific media range that matches each type gives its q; ties go to HTML.
    Browsers send a handful of short values: those are parsed once and remembered."""
    return _ranks_json_first(accept) if len(accept) <= 256 else _ranks_json_first.__wrapped__(accept)


@functools.lru_cache(maxsize=256)  # at most 256 fields of 256 characters kept, whatever clients send
def _ranks_json_first(accept):
    ranks = {"text/html": (-1, 0.0), "application/json": (-1, 0.0)}  # (specificity, q)
    for item in accept.split(","):
        media, *parameters = item.split(";")
        media = media.strip().lower()
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                q = float(value) if re.fullmatch(r" *(0(\.[0-9]{0,3})?|1(\.0{0,3})?) *", value) else -1.0
        if q < 0:
            continue  # a malformed q: the range is ignored
        kind = media.split("/")[0]
        for ours, (specificity, _) in ranks.items():
            match = 2 if media == ours else 1 if media == kind + "/*" and ours.startswith(kind + "/") \
                else 0 if media == "*/*" else -1
            if match > specificity:
                ranks[ours] = (match, q)
    return ranks["application/json"][1] > ranks["text/html"][1]


_PREFETCH_FIELDS = ("Sec-Purpose", "Purpose", "X-Purpose", "X-Moz")


def is_prefetch(headers):
    """A browser fetching ahead of a navigation that may never happen (Sec-Purpose: prefetch,
    or prefetch;prerender; the older Purpose, X-Purpose and X-Moz fields)."""
    for field in _PREFETCH_FIELDS:
        value = headers.get(field)
        if value and re.split(r"[;, ]", value.strip().lower(), maxsplit=1)[0] in ("prefetch", "preview"):
            return True
    return False


# A prefetch of a page that counts is declined: browsers drop a prefetch answered 503,
# and the real navigation then fetches the page again and counts once.
_PREFETCH_DECLINED = Response(503, TEXT, "prefetch declined: this page counts visits\n",
                              (("Retry-After", "0"),))


# -- HTTP: http.server's handler, through its hooks -------------------------------------------

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/([0-9])\.[0-9]")
_HEADER_LINE = re.compile(_TOKEN + rb":[\t\x20-\x7e\x80-\xff]*")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]*)(:[0-9]*)?")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_ABSOLUTE_FORM = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://")


class RequestHandler(http.server.BaseHTTPRequestHandler):
    """Reads one request head from memory and decides what it asks for.

    As in http.server, constructing it handles the request: ``setup()``, ``handle()`` and
    ``finish()`` run at once. http.server parses the head; the hooks here hold it to RFC
    9112 (one rule for line endings, strict framing and Host, absolute-form targets) and
    leave the result in ``response`` (ready now) or ``route`` (its Redis command must be
    sent first, then ``answer()``). Nothing here touches a socket.
    """

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # errors found before the version still get a status line
    server_version = SERVER_NAME
    response = None          # the answer, when it needs nothing from Redis
    route = None             # the route waiting for its Redis reply
    probe = False            # a health probe: left out of the access log by default
    route_label = "other"    # the route table's path, for metrics: a bounded label
    page_request = None
    client_closes = False    # the client asked to close after this response
    command = path = headers = None
    requestline = ""
    request_version = default_request_version

    def __init__(self, head, address, site):
        super().__init__(head, address, site)  # handles the request, as http.server does

    @property
    def site(self):
        return self.server

    @property
    def head_only(self):
        return self.command == "HEAD"

    def setup(self):
        self.rfile = io.BytesIO(self.request)
        self.wfile = io.BytesIO()  # only http.server's own "100 Continue" lands here: never sent

    def handle(self):
        self.handle_one_request()

    def finish(self):
        pass

    def send_error(self, code, message=None, explain=None):
        self.response = error_response(code)
        self.close_connection = True

    def parse_request(self):
        self.requestline = self.raw_requestline[:200].decode("latin-1").rstrip("\r\n")
        status = _malformed_lines(self.request)
        if status:
            self.send_error(status)
            return False
        if not super().parse_request():
            return False
        status = self._framing_error() or self._host_error() or self._target_error()
        if status:
            self.send_error(status)
            return False
        options = {o.strip().lower() for v in self.headers.get_all("Connection", ()) for o in v.split(",")}
        self.client_closes = "close" in options or (
            self.request_version == "HTTP/1.0" and "keep-alive" not in options)
        self.close_connection = self.client_closes or self.close_connection
        path = self.path_only()
        if path in self.site.routes:
            self.route_label = path
        return True

    def _framing_error(self):
        """RFC 9112 6.3: bodies are not read, so a body whose length is in doubt is an error,
        and any body closes the connection after the answer: never parsed as a request."""
        if self.headers.defects:  # a header line http.server could not read
            return 400
        lengths = self.headers.get_all("Content-Length", ())
        codings = self.headers.get_all("Transfer-Encoding", ())
        if codings:
            names = [c.strip().lower() for v in codings for c in v.split(",")]
            if lengths or self.request_version == "HTTP/1.0" or names[-1] != "chunked":
                return 400  # two framings, or a length that cannot be known
            if names.count("chunked") > 1:
                return 400  # chunked applied twice
            if len(names) > 1:
                return 501  # a coding this server does not implement
            self.close_connection = True
        elif lengths:
            if len(lengths) != 1 or not _CONTENT_LENGTH.fullmatch(lengths[0].strip()):
                return 400
            if int(lengths[0]) > 0:
                self.close_connection = True
        return None

    def _host_error(self):
        hosts = self.headers.get_all("Host", ())
        if len(hosts) > 1 or (not hosts and self.request_version != "HTTP/1.0"):
            return 400
        if hosts and not _HOST.fullmatch(hosts[0].strip()):
            return 400
        return None

    def _target_error(self):
        """origin-form (/path), absolute-form (http://host/path, as through a proxy), or * for OPTIONS."""
        if self.path.startswith("/") or (self.path == "*" and self.command == "OPTIONS"):
            return None
        if _ABSOLUTE_FORM.match(self.path):
            authority, slash, rest = self.path.split("://", 1)[1].partition("/")
            if authority and "@" not in authority and _HOST.fullmatch(authority):
                self.path = "/" + rest if slash else "/"
                return None
        return 400

    def path_only(self):
        return self.path.split("?", 1)[0] if self.path else "-"

    def do_GET(self):
        route = self.site.routes.get(self.route_label)  # "other" is no route
        if route is None:
            self.response = _NOT_FOUND
        elif route.counts_visit and is_prefetch(self.headers):
            self.response = _PREFETCH_DECLINED
        else:
            self.probe = route.probe
            query = urllib.parse.parse_qs(self.path.partition("?")[2]) if "?" in self.path else {}
            self.page_request = PageRequest(prefers_json(self.headers.get("Accept", "")), query)
            if route.redis_command is None or (route.counts_visit and self.head_only):
                self.response = route.answer(self.page_request, None)
            else:
                self.route = route

    do_HEAD = do_GET  # the same headers, no body, and no visit counted

    def _not_allowed(self):
        self.response = _NOT_ALLOWED

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def answer(self, reply, error):
        """The route's Response once Redis has answered (or failed)."""
        return self.route.answer(self.page_request, RedisReply(reply, error))


def _malformed_lines(head):
    """400 unless every line is well formed (RFC 9112 2-5): a request line of method, target
    and HTTP/d.d with single spaces; header lines as name:value with no control characters
    (NUL and bare CR included) and no folding. A line ends in LF or CRLF, everywhere alike.
    505 for a major version other than 1."""
    lines = head.split(b"\n")
    first = _REQUEST_LINE.fullmatch(lines[0][:-1] if lines[0].endswith(b"\r") else lines[0])
    if first is None:
        return 400
    if first.group(3) != b"1":
        return 505
    for line in lines[1:]:
        if line.endswith(b"\r"):
            line = line[:-1]
        if line and not _HEADER_LINE.fullmatch(line):
            return 400
    return None


# -- the response bytes: every answer, errors included, leaves through here -------------------

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in http.HTTPStatus}
_COMMON_HEADERS = (f"Server: {SERVER_NAME}\r\nX-Content-Type-Options: nosniff\r\n"
                   f"Cache-Control: no-store\r\n")


class HttpDate:
    """The Date field's value, made at most once a second."""

    def __init__(self):
        self._second, self._text = None, ""

    def __call__(self):
        now = int(time.time())
        if now != self._second:
            self._second, self._text = now, email.utils.formatdate(now, usegmt=True)
        return self._text


def response_bytes(response, date, *, head_only=False, close=False, keep_alive=False):
    """The whole response, in one buffer: status, the common headers, the route's, the body."""
    body = response.body.encode()
    parts = [_STATUS_LINES[response.status], "Date: ", date, "\r\n", _COMMON_HEADERS,
             "Content-Type: ", response.content_type, "\r\n"]
    if not head_only:  # a HEAD of "/" counts nothing, so its length would not be the GET's
        parts += ["Content-Length: ", str(len(body)), "\r\n"]
    for name, value in response.headers:
        parts += [name, ": ", value, "\r\n"]
    if close:
        parts.append("Connection: close\r\n")
    elif keep_alive:
        parts.append("Connection: keep-alive\r\n")
    parts.append("\r\n")
    head = "".join(parts).encode("latin-1")
    return head if head_only else head + body


# -- a connection and where it stands ----------------------------------------------------------

class HeadRefused(Exception):
    """A request head past the limits: answered with ``status``, then the connection closes."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


_END_OF_HEAD = re.compile(rb"\n\r?\n")
_BLANK_LINES = re.compile(rb"(?:\r?\n)+")


class Connection:
    """One client connection: its bytes, its deadline and its state.

    READING   waiting for (the rest of) a request head; the head must arrive by the deadline
    READY     more requests are buffered than one turn of the loop serves: the rest wait for
              the next turn, so a client that pipelines thousands cannot hold up the others
    WAITING   a request waits for Redis; the socket is not watched
    SENDING   a response is going out; the client must take it by the deadline
    LINGERING our side is shut after a response: what the client still sends is read and
              dropped until it closes or the deadline, so it can read our answer (RFC 9112 9.6)
    CLOSED    done
    """

    READING, READY, WAITING, SENDING, LINGERING, CLOSED = (
        "reading", "ready", "waiting", "sending", "lingering", "closed")

    __slots__ = ("sock", "address", "selector", "state", "events", "deadline", "buffer", "outgoing",
                 "handler", "started", "close_after", "linger")

    def __init__(self, sock, address, selector):
        self.sock, self.address, self.selector = sock, address, selector
        self.state = None
        self.events = 0            # what the selector watches the socket for
        self.deadline = 0.0
        self.buffer = bytearray()  # received, not yet parsed
        self.outgoing = b""        # to send
        self.handler = None        # the request being answered
        self.started = 0.0         # when its head was complete
        self.close_after = False   # close once the response is sent...
        self.linger = False        # ...and linger, since the client may still be sending

    def enter(self, state, seconds):
        """Move to a state, with ``seconds`` until its deadline (None: no deadline of its own);
        the selector then watches the socket for what that state waits for."""
        events = _EVENTS[state]
        if events != self.events:
            if not self.events:
                self.selector.register(self.sock, events, self)
            elif not events:
                self.selector.unregister(self.sock)
            else:
                self.selector.modify(self.sock, events, self)
            self.events = events
        self.state = state
        self.deadline = float("inf") if seconds is None else time.monotonic() + seconds

    def send(self):
        """Send what is waiting to go: True when all of it went, None when the client is gone."""
        try:
            sent = self.sock.send(self.outgoing)
        except BlockingIOError:
            sent = 0
        except OSError:
            return None
        self.outgoing = self.outgoing[sent:]
        return not self.outgoing

    def shut_sending(self):
        """Send our end of the stream (FIN) but keep reading; False if the socket is gone."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        return True

    def close(self):
        self.enter(Connection.CLOSED, None)
        self.sock.close()
        self.handler = None

    def take_head(self):
        """Remove one complete request head from the buffer and return it; None if none yet.

        Empty lines before a request are skipped (RFC 9112 2.2). Raises HeadRefused when
        the head, complete or not, is past the limits.
        """
        blank = _BLANK_LINES.match(self.buffer)
        if blank:
            del self.buffer[:blank.end()]
        end = _END_OF_HEAD.search(self.buffer, 0, MAX_HEAD + 3)
        size = len(self.buffer) if end is None else end.end()
        line_end = self.buffer.find(b"\n", 0, size)
        if (size if line_end < 0 else line_end) > MAX_REQUEST_LINE:
            raise HeadRefused(414)
        if size > MAX_HEAD:
            raise HeadRefused(431)
        if end is None:
            return None
        head = bytes(self.buffer[:size])
        del self.buffer[:size]
        return head


_EVENTS = {Connection.READING: selectors.EVENT_READ, Connection.READY: 0, Connection.WAITING: 0,
           Connection.SENDING: selectors.EVENT_WRITE, Connection.LINGERING: selectors.EVENT_READ,
           Connection.CLOSED: 0}


# -- the Redis side ----------------------------------------------------------------------------

class RedisPipeline:
    """One thread sends the commands of all waiting requests to Redis in one pipeline (one
    round trip for many pages) and hands each reply back to the serving thread, which it
    wakes with ``wake()``. Redis's timeout bounds each trip. Every HEARTBEAT_INTERVAL it
    sends this replica's heartbeat too (with a batch, or alone). It notes Redis's state, and
    counts replies by outcome and batch sizes for /metrics."""

    def __init__(self, client, site, wake):
        self.client, self.status, self.metrics, self._wake = client, site.redis_status, site.metrics, wake
        self._heartbeat = site.heartbeat
        self._waiting = []                   # (connection, command) to send
        self._changed = threading.Condition()
        self._replies = collections.deque()  # (connection, reply, error) to hand back
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="redis", daemon=True)

    def start(self):
        self._thread.start()

    def submit(self, conn, command):
        with self._changed:
            self._waiting.append((conn, command))
            self._changed.notify()

    def replies(self):
        """The replies that came back since the last call, oldest first (serving thread)."""
        while self._replies:
            yield self._replies.popleft()

    def stop(self):
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._thread.join(self.client.timeout * 2 + 1)

    def _run(self):
        next_heartbeat = time.monotonic()
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting or self._stopping,
                                       max(next_heartbeat - time.monotonic(), 0))
                if self._stopping:
                    return
                batch, self._waiting = self._waiting[:MAX_PIPELINE], self._waiting[MAX_PIPELINE:]
            beat = time.monotonic() >= next_heartbeat
            if beat:
                next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL
            commands = [self._heartbeat] * beat + [command for _, command in batch]
            try:
                replies = self.client.pipeline(commands)[beat:]  # the heartbeat's own reply: not needed
                errors = [r if isinstance(r, resp_client.ResponseError) else None for r in replies]
                self.status.answered()
            except resp_client.RedisError as exc:
                replies, errors = [None] * len(batch), [exc] * len(batch)
                self.status.failed(exc)
            except Exception as exc:  # noqa: BLE001 - a bug of ours: each request answers 500, the thread lives on
                replies, errors = [None] * len(batch), [exc] * len(batch)
            if not batch:
                continue
            self.metrics.pipeline_sizes.observe((), len(batch))
            for error in errors:
                self.metrics.redis_replies[reply_outcome(error)] += 1
            self._replies.extend((conn, reply, error) for (conn, _), reply, error
                                 in zip(batch, replies, errors, strict=True))
            self._wake()


def reply_outcome(error):
    """How a Redis call ended, in the words of friendlyhello_redis_replies_total."""
    if error is None:
        return "ok"
    if isinstance(error, resp_client.ResponseError):
        return "error_reply"
    if error.command_sent:
        return "no_reply"
    return "timeout" if isinstance(error, resp_client.RedisTimeoutError) else "cannot_connect"


class RedisStatus:
    """Whether Redis answers, logged once at each change: up, down with the reason, back.

    An outage logs one line however many pages it touches; a new reason while it lasts
    (refused, then a wrong password) logs one more. Called from the Redis thread only.
    """

    def __init__(self, address, log):
        self.address, self._log = address, log
        self.reason = None       # why Redis is down; None while it answers (or before it is tried)
        self._down_since = None
        self._seen_up = False

    def describe(self):
        """How Redis is, in a few words (for /readyz; any thread)."""
        reason, since = self.reason, self._down_since
        if reason is not None:
            return f"unavailable ({reason}) for {time.monotonic() - since:.1f}s"
        return "up" if self._seen_up else "not asked yet"

    def answered(self):
        if self.reason is None and self._seen_up:
            return
        if self.reason is not None:
            self._log.error("redis", f"{self.address} is back after "
                                     f"{time.monotonic() - self._down_since:.1f}s")
        else:
            self._log.error("redis", f"{self.address} is up: visits are counted")
        self.reason, self._down_since, self._seen_up = None, None, True

    def failed(self, error):
        if isinstance(error, resp_client.ResponseError) and not isinstance(error, resp_client.AuthenticationError):
            self.answered()  # an error reply is still an answer
            return
        reason = outage_reason(error)
        if reason == self.reason:
            return
        if self._down_since is None:
            self._down_since = time.monotonic()
        self.reason = reason
        self._log.error("redis", f"{self.address} is unavailable ({reason}): {error.cause or error}"
                                 " - pages say the counter is disabled until it answers again")


# -- the server loop ---------------------------------------------------------------------------

_LISTENER, _WAKE = object(), object()  # selector keys that are not connections


class HelloServer:
    """Serves HTTP from one selector thread; Redis commands go through a RedisPipeline.

    Sockets are non-blocking, so no client, however slow or idle, holds a thread. The
    loop accepts, reads heads, hands each to a RequestHandler, sends the response (or
    submits the Redis command and sends when the reply comes back), and sweeps expired
    connections. ``stop()`` (safe from a signal handler) turns readiness to 503 at once,
    goes on serving for SHUTDOWN_DELAY, then closes the port and lets the requests in flight
    finish within DRAIN_TIMEOUT. (Over 200 lines, as one class: each step shares the selector
    and the connection table, and reads as one story.)
    """

    def __init__(self, config, site, client, listener, log, supervisor=None):
        self.config, self.site, self.log = config, site, log
        self.supervisor = supervisor  # the pid of the supervisor, in a worker
        self.listener = listener
        self.port = listener.getsockname()[1]
        self.stopping = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.redis = RedisPipeline(client, site, self._wake)
        self.metrics = site.metrics
        self._date = HttpDate()
        self._connections = set()
        self.metrics.open_connections = self._connections.__len__
        self._ready = []  # connections in state READY, served next turn
        self._accepting = False

    def serve(self):
        """Serve until stop(); then let in-flight requests finish (bounded) and return."""
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._accept(True)
        self.redis.start()
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        delay_until = drain_until = None
        try:
            while True:
                wait = SWEEP_INTERVAL
                if self.stopping:  # two timers, one after the other: the delay, then the drain
                    now = time.monotonic()
                    if delay_until is None:
                        delay_until = now + self.config.shutdown_delay
                    if drain_until is None and now >= delay_until:
                        drain_until = now + self.config.drain_timeout
                        self._stop_taking_requests()
                    if drain_until is not None and (not self._busy() or now > drain_until):
                        return
                    wait = min(wait, max(delay_until - now, 0.0)) if drain_until is None else wait
                for key, events in self._selector.select(0 if self._ready else wait):
                    if key.data is _LISTENER:
                        self._accept_waiting()
                    elif key.data is _WAKE:
                        self._take_replies()
                    elif events & selectors.EVENT_WRITE:
                        if self._flush(key.data):
                            self._serve_requests(key.data)
                    else:
                        self._read(key.data)
                self._serve_ready()
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + SWEEP_INTERVAL
        finally:
            self._shut_down()

    def _busy(self):
        return any(c.handler for c in self._connections)

    def stop(self):
        """Safe from a signal handler or another thread."""
        self.stopping = True
        self.site.shutting_down = True
        self._wake()

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except OSError:  # the wake-up pipe is full: a wake-up is already pending
            pass

    # -- connections coming and going ---------------------------------------------------------

    def _accept(self, on):
        if on != self._accepting:
            if on:
                self._selector.register(self.listener, selectors.EVENT_READ, _LISTENER)
            else:
                self._selector.unregister(self.listener)
            self._accepting = on

    def _accept_waiting(self):
        for _ in range(64):
            if len(self._connections) >= self.config.max_connections:
                self._accept(False)  # the rest wait in the backlog
                return
            try:
                sock, address = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of file descriptors, say: stop accepting for a moment
                self.log.error("-", f"accept failed: {exc}")
                self._accept(False)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, address[0], self._selector)
            self._connections.add(conn)
            conn.enter(Connection.READING, self.config.idle_timeout)

    def _close(self, conn):
        if conn.state is Connection.CLOSED:
            return
        conn.close()
        self._connections.discard(conn)
        if not self.stopping:
            self._accept(True)

    def _sweep(self, now):
        for conn in [c for c in self._connections if c.deadline < now]:
            if conn.state is Connection.READING and conn.buffer:
                self._refuse(conn, 408)  # a head that never finished arriving
            else:
                self._close(conn)  # idle, not reading what we send, or done lingering
        if not self.stopping and len(self._connections) < self.config.max_connections:
            self._accept(True)  # after a failed accept(), try again
        self.metrics.publish()
        if self.supervisor is not None and os.getppid() != self.supervisor and not self.stopping:
            self.log.error("worker", "the supervisor is gone: shutting down")
            self.stop()

    # -- requests and responses ---------------------------------------------------------------

    def _read(self, conn):
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
        elif conn.state is Connection.READING:
            conn.buffer += data
            self._serve_requests(conn)
        # LINGERING: what comes after our last answer is dropped

    def _serve_ready(self):
        ready, self._ready = self._ready, []
        for conn in ready:
            if conn.state is Connection.READY:
                conn.enter(Connection.READING, self.config.idle_timeout)
                self._serve_requests(conn)

    def _serve_requests(self, conn):
        """Answer the complete requests the connection has sent, until one has to wait or
        this turn's share is served."""
        for _ in range(REQUESTS_PER_TURN):
            if conn.state is not Connection.READING:
                return
            try:
                head = conn.take_head()
            except HeadRefused as refused:
                self._refuse(conn, refused.status)
                return
            if head is None:
                return
            conn.started = time.monotonic()
            try:
                handler = conn.handler = RequestHandler(head, conn.address, self.site)
            except Exception as exc:  # noqa: BLE001 - a bug of ours: this request fails, not the server
                self._internal_error(conn, exc)
                return
            if handler.route is not None:
                conn.enter(Connection.WAITING, None)  # Redis's own timeout bounds the wait
                self.redis.submit(conn, handler.route.redis_command)
                return
            if not self._respond(conn, handler.response):
                return
        if conn.state is Connection.READING and conn.buffer:
            conn.enter(Connection.READY, None)
            self._ready.append(conn)

    def _take_replies(self):
        try:
            self._wake_r.recv(4096)
        except BlockingIOError:
            pass
        for conn, reply, error in self.redis.replies():
            if conn.state is Connection.CLOSED:
                continue
            try:
                if error is not None and not isinstance(error, resp_client.RedisError):
                    raise error  # a bug of ours on the Redis thread, not an outage
                response = conn.handler.answer(reply, error)
            except Exception as exc:  # noqa: BLE001 - a bug of ours: this request fails, not the server
                self._internal_error(conn, exc)
                continue
            if self._respond(conn, response):
                self._serve_requests(conn)

    def _respond(self, conn, response):
        """Send the handler's response; True when the connection may go on to its next request."""
        handler = conn.handler
        seconds = time.monotonic() - conn.started
        self.metrics.request(handler.command, handler.route_label, response.status, seconds)
        self.log.request(conn.address, handler.command, handler.path or handler.requestline, response.status,
                         seconds, handler.probe)
        close = handler.close_connection or self.stopping
        data = response_bytes(response, self._date(), head_only=handler.head_only, close=close,
                              keep_alive=handler.request_version == "HTTP/1.0")
        # Lingering is for a client that may still be sending: one that asked to close is done.
        return self._send(conn, data, close, linger=not (handler.client_closes and not conn.buffer))

    def _refuse(self, conn, status):
        """Answer a request that never became one (too large, too slow), and close."""
        self.metrics.request(None, "other", status, 0.0)
        self.log.request(conn.address, None, None, status, 0.0, False)
        conn.handler = None
        self._send(conn, response_bytes(error_response(status), self._date(), close=True), True, linger=True)

    def _internal_error(self, conn, exc):
        self.log.error(conn.address, f"internal error: {exc!r}")
        self._refuse(conn, 500)

    def _send(self, conn, data, close, linger):
        conn.outgoing, conn.close_after, conn.linger = data, close, linger
        return self._flush(conn)

    def _flush(self, conn):
        """Send what the connection has to send; True when it may go on to its next request."""
        sent = conn.send()
        if sent is None:  # the client went away: nothing more to send it
            self._close(conn)
        elif not sent:  # the client reads slowly: wait until it can take more
            conn.enter(Connection.SENDING, self.config.idle_timeout)
        elif not conn.close_after:
            conn.handler = None
            conn.enter(Connection.READING, self.config.idle_timeout)
            return True
        elif conn.linger and conn.shut_sending():
            conn.handler = None
            conn.enter(Connection.LINGERING, LINGER)
        else:
            self._close(conn)
        return False

    # -- shutting down ------------------------------------------------------------------------

    def _stop_taking_requests(self):
        self._accept(False)
        self.listener.close()
        for conn in [c for c in self._connections if not c.handler]:
            self._close(conn)

    def _shut_down(self):
        for conn in list(self._connections):
            self._close(conn)
        self.redis.stop()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


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


class SharedSlots:
    """Memory the workers share, mapped before they fork: a slot each, where its owner writes a
    snapshot whole under a sequence number (odd while it writes), so a reader never takes a
    torn one. One writer per slot; any worker reads them all."""

    SIZE = 256 * 1024  # a snapshot is a few kilobytes: labels are bounded

    def __init__(self, count):
        self.count = count
        self._memory = mmap.mmap(-1, self.SIZE * count)

    def write(self, slot, data):
        payload = marshal.dumps(data)
        base = slot * self.SIZE
        if len(payload) > self.SIZE - 16:
            return
        sequence = struct.unpack_from("Q", self._memory, base)[0]
        struct.pack_into("Q", self._memory, base, sequence + 1)
        struct.pack_into("Q", self._memory, base + 8, len(payload))
        self._memory[base + 16:base + 16 + len(payload)] = payload
        struct.pack_into("Q", self._memory, base, sequence + 2)

    def read(self, slot):
        base = slot * self.SIZE
        for _ in range(1000):
            sequence, length = struct.unpack_from("QQ", self._memory, base)
            payload = self._memory[base + 16:base + 16 + length]
            if sequence % 2 == 0 and struct.unpack_from("Q", self._memory, base)[0] == sequence:
                return marshal.loads(payload) if length else None
        return None


# -- the logs ----------------------------------------------------------------------------------

_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7f]} | {ord('"'): '\\"', ord("\\"): "\\\\"}


def printable(text):
    """Anything from a request or a setting, made safe to quote in one log line."""
    return text.translate(_ESCAPES)


class Log:
    """The access log and the start-up line (stdout), the error log (stderr), each line written
    whole: words, or with LOG_FORMAT=json one JSON object per line (every control character
    escaped), carrying the replica's hostname and pod fields."""

    def __init__(self, access_log, log_format="text", identity=None, out=sys.stdout, err=sys.stderr):
        self.access, self.probes = access_log != "off", access_log == "all"
        self.json = log_format == "json"
        self.identity = identity or {}
        self.out, self.err = out, err
        self._lock = threading.Lock()

    def request(self, address, method, target, status, seconds, probe):
        if not self.access or (probe and not self.probes):
            return
        target = target if target is None or len(target) <= 1024 else target[:1024] + "..."  # lines stay
        # under PIPE_BUF, so one write() each: workers sharing stdout never interleave mid-line
        if self.json:
            self._write(self.out, self._object("info", method=method or "-", path=target or "-", status=status,
                                               duration_ms=round(seconds * 1000, 3), client=address))
        else:
            self._write(self.out, f'{address} "{printable(method or "-")} {printable(target or "-")}" '
                                  f'{status} {seconds * 1000:.1f}ms')

    def info(self, message):
        self._write(self.out, self._object("info", message=message) if self.json else message)

    def error(self, where, message):
        if self.json:
            self._write(self.err, self._object("error", where=where, message=message))
        else:
            self._write(self.err, f"friendlyhello: {where}: {printable(message)}")

    def _object(self, level, **fields):
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        return json.dumps({"time": stamp, "level": level, **fields, **self.identity})

    def _write(self, stream, line):
        with self._lock:
            stream.write(line + "\n")
            stream.flush()


# -- listening ---------------------------------------------------------------------------------

class ListenError(Exception):
    """The port cannot be listened on; the message says how to fix it, in one line."""


def listen(config, shared_port=False, only_bind=False):
    """Bind and listen, non-blocking, or raise ListenError.

    ``shared_port``: with SO_REUSEPORT, so that each worker listens on a socket of its own and
    the kernel spreads new connections over them (a socket inherited by all spread them badly
    here: whichever worker woke first took a whole burst). ``only_bind``: the supervisor's,
    which holds the port and checks it can be had, but takes no connections."""
    family = socket.AF_INET6 if ":" in config.bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((config.bind, config.port))
        if not only_bind:
            sock.listen(1024)  # bursts of new connections must not meet dropped SYNs
    except OSError as exc:
        sock.close()
        where = f"port {config.port} on {config.bind}"
        if isinstance(exc, PermissionError):
            raise ListenError(
                f"not allowed to listen on {where} as user {os.getuid()}: "
                f"set PORT=8080 (publish with -p 4000:8080), or give the container "
                f"--sysctl net.ipv4.ip_unprivileged_port_start=0") from None
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"{where} is already in use: stop the other "
                              f"program or choose another port, e.g. PORT=8080") from None
        raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _raise_file_limit(wanted):
    """Idle connections are cheap here but each is a file descriptor: allow enough."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# -- the health check --------------------------------------------------------------------------

def healthcheck(config):
    """The image's HEALTHCHECK: 0 if this container's server answers /healthz with 200."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.bind, config.bind)
    conn = http.client.HTTPConnection(host, config.port, timeout=HEALTHCHECK_TIMEOUT)
    try:
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        print(f"friendlyhello: unhealthy: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    return 0 if status == 200 else 1


# -- several workers: one supervisor -----------------------------------------------------------

class Supervisor:
    """Runs WORKERS processes on one port, each listening on a socket of its own (SO_REUSEPORT).

    A worker that dies is replaced (after a back-off that grows while they keep dying young),
    and the reason is logged. SIGTERM or SIGINT is passed on as SIGTERM to every worker, each of
    which shuts down as a single process does (readiness 503, the delay, the drain); it exits 0
    when all have. A second signal kills them at once. Workers watch for the supervisor's end.
    """

    def __init__(self, config, log, start_worker):
        self.config, self.log, self.start_worker = config, log, start_worker
        self._listening_r, self._listening_w = os.pipe()  # a byte from each worker that listens
        self.workers = {}       # pid -> slot
        self.started = {}       # slot -> when its worker started
        self.failures = collections.Counter()  # slot -> deaths in a row, each within a second
        self.stopping = False

    def run(self, started):
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for slot in range(self.config.workers):
            self._start(slot)
        self._wait_until_listening(self.config.workers, deadline=time.monotonic() + 10)
        self.log.info(started)  # now true: every worker listens, and a stop asked for is ours
        while self.workers:
            pid, status = os.waitpid(-1, 0)
            slot = self.workers.pop(pid, None)
            if slot is None or self.stopping:
                continue
            lived = time.monotonic() - self.started[slot]
            self.failures[slot] = self.failures[slot] + 1 if lived < 1 else 0
            delay = min(0.1 * 2 ** self.failures[slot], 10.0) if self.failures[slot] else 0.0
            self.log.error("supervisor", f"worker {slot} (pid {pid}) {_ended(status)} after {lived:.1f}s; "
                                         f"starting another in {delay:.1f}s")
            time.sleep(delay)
            if not self.stopping:
                self._start(slot)
        return 0

    def _wait_until_listening(self, count, deadline):
        heard = 0
        while heard < count and (wait := deadline - time.monotonic()) > 0:
            if select.select([self._listening_r], [], [], wait)[0]:
                heard += len(os.read(self._listening_r, count - heard))

    def listening(self):
        """Said by a worker (in its own process) once its socket listens."""
        os.write(self._listening_w, b"x")

    def _start(self, slot):
        # Signals wait until the worker has its own handlers (serve() lets them through): a
        # SIGTERM passed on at once must not run the supervisor's handler in the worker.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's code
            code = 1
            try:
                code = self.start_worker(slot)
            finally:
                os._exit(code)
        self.workers[pid] = slot
        self.started[slot] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    def _on_signal(self, signum, frame):
        if self.stopping:  # asked twice: end everything now
            for pid in self.workers:
                _kill(pid, signal.SIGKILL)
            os._exit(1)
        self.stopping = True
        for pid in self.workers:
            _kill(pid, signal.SIGTERM)


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _ended(status):
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def _kill(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def serve(config, site, listener, log, supervisor=None, started=None):
    """Serve until a signal ends it: one process (saying ``started`` once its signals are set),
    or one worker of a Supervisor."""
    client = redis_client(config)
    server = HelloServer(config, site, client, listener, log, supervisor)
    stops = []

    def on_signal(signum, frame):
        stops.append(signum)
        if len(stops) > 1:  # asked twice: stop waiting for the delay or in-flight requests
            os._exit(1)
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    # A worker leaves Ctrl-C to the supervisor, which passes it on once, as SIGTERM.
    signal.signal(signal.SIGINT, on_signal if supervisor is None else signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked in a worker until now
    if started:
        log.info(started)
    server.serve()
    client.close()
    return 0


# -- main --------------------------------------------------------------------------------------

def main(argv=None, environ=None):
    args = argument_parser().parse_args(argv)
    try:
        config = load_config(environ=environ, args=args)
    except ConfigError as exc:
        print(f"friendlyhello: {exc}", file=sys.stderr)
        return 2
    if args.healthcheck:
        return healthcheck(config)
    _raise_file_limit(config.max_connections + 64)
    try:
        listener = listen(config, shared_port=config.workers > 1, only_bind=config.workers > 1)
    except ListenError as exc:
        print(f"friendlyhello: {exc}", file=sys.stderr)
        return 1
    hostname = socket.gethostname()
    log = Log(config.access_log, config.log_format, {"hostname": hostname, **placement(config)})
    redis = redis_client(config)  # for its address; each worker makes its own, which connects
    shared = SharedSlots(config.workers) if config.workers > 1 else None
    # Everything that can be shared is built before any fork: the page's fixed part, the
    # encoded Redis commands, the settings. Each worker then gets its own numbers and Redis state.
    site = Site(config, RedisStatus(redis.address, log), Metrics(shared), hostname)
    host = f"[{config.bind}]" if ":" in config.bind else config.bind
    where = "".join(f", {key} {printable(value)}" for key, value in site.placement.items())
    port = listener.getsockname()[1]
    started = (f"friendlyhello listening on http://{host}:{port} "
               f"(redis {redis.address} db {redis.db}{where}{f', {config.workers} workers' if shared else ''})")
    if shared is None:
        return serve(config, site, listener, log, started=started)
    supervisor = os.getpid()

    def start_worker(slot):
        site.metrics, site.redis_status = Metrics(shared, slot), RedisStatus(redis.address, log)
        listener.close()  # the supervisor's: this worker listens on a socket of its own
        try:
            own = listen(config._replace(port=port), shared_port=True)
        except ListenError as exc:
            log.error("worker", str(exc))
            return 1
        workers.listening()
        return serve(config, site, own, log, supervisor)

    workers = Supervisor(config, log, start_worker)
    return workers.run(started)


if __name__ == "__main__":
    sys.exit(main())
