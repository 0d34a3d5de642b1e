
import html
import json
import re
import socket

import resp_client

from .redis_pipeline import short_reason
from .replicas import ReplicaView, placement, replica_commands
from .responses import HTML, JSON, TEXT, Response, Route

PAGE = "<h3>Hello {name}!</h3><b>Hostname:</b> {hostname}<br/><b>Visits:</b> {visits}"
COUNTER_DISABLED = "<i>cannot connect to Redis, counter disabled</i>"
_PING = resp_client.encode_command(("PING",))
_SHUTTING_DOWN = Response(503, TEXT, "shutting down\n")
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
