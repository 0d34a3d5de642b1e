"""The site: what each route answers, as a status and content. Nothing of sockets or threads.

The page is the tutorial's, byte for byte. A route that needs Redis gets its reply (or why
there is none) as a ``Reply``; the probes say what the process knows of itself.
"""

import html
import http
import json
import re

import resp_client

from .redis_state import visit_words
from .replica_view import ReplicaView
from .responses import HTML, JSON, TEXT, Response, error_response

PAGE = "<h3>Hello {name}!</h3><b>Hostname:</b> {hostname}<br/><b>Visits:</b> {visits}"
COUNTER_DISABLED = "<i>cannot connect to Redis, counter disabled</i>"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

MAX_DELAY = 30  # seconds /delay/ holds an answer at most
_PHRASES = {s.value for s in http.HTTPStatus}
_VARY_ACCEPT = (("Vary", "Accept"),)
_SHUTTING_DOWN = Response(503, TEXT, "shutting down\n")
_LIVE = Response(200, TEXT, "ok\n")
_LIVE_FAULT = Response(503, TEXT, "not live: the live fault is on\n",
                       (("Friendlyhello-Fault", "live"),))
_READY_FAULT = Response(503, TEXT, "not ready: the ready fault is on\n",
                        (("Friendlyhello-Fault", "ready"),))
_BAD_STATUS = Response(400, TEXT, "the status must be a whole number from 200 to 599: "
                                  "/status/503\n")
_BAD_DELAY = Response(400, TEXT, f"the delay must be a number of seconds from 0 to {MAX_DELAY}: "
                                 "/delay/1.5\n")


class Site:
    """The answers: ``page``, the probes, ``metrics_page`` and ``replicas``. Each takes a
    PageRequest and, for a route that sent a Redis command, its Reply (else None)."""

    def __init__(self, config, me, redis_status, metrics, lifecycle, faults):
        self.name = config.name
        self.me = me
        self.faults = faults
        self.redis_status = redis_status
        self.metrics = metrics
        self.lifecycle = lifecycle
        # Everything on the page but the count is fixed: build it once.
        assert PAGE.endswith("{visits}")
        self.page_start = PAGE[:-len("{visits}")].format(
            name=html.escape(self.name), hostname=html.escape(me.hostname))

    def page(self, request, reply):
        visits, error = None, None
        if reply is not None:
            error = reply.error
            if error is None:
                try:
                    visits = resp_client.expect_integer(reply.value, "the visit")
                except resp_client.ProtocolError as exc:
                    error = exc
            if visits is not None:
                self.metrics.visits += 1
        delay = self.faults.page_delay()
        if request.wants_json:
            body = json.dumps({"name": self.name, "hostname": self.me.hostname, **self.me.placement,
                               "version": self.me.version, "visits": visits,
                               "redis": visit_words(error), "faults": self.faults.state.on()})
            return Response(200, JSON, body + "\n", _VARY_ACCEPT, delay)
        text = COUNTER_DISABLED if visits is None else str(visits)
        return Response(200, HTML, self.page_start + text, _VARY_ACCEPT, delay)

    def page_gate(self, request):
        """FAULT_ERRORS: this page's error instead of its visit, or None."""
        status = self.faults.page_error()
        if status is None:
            return None
        return error_response(status)._replace(headers=(("Friendlyhello-Fault", "errors"),))

    def livez(self, request, reply):
        """Liveness: the process serves, and the threads it needs run. Never Redis, and still
        200 while it shuts down: a restart would not help either."""
        dead = self.lifecycle.dead_threads()
        if dead:
            return Response(503, TEXT, f"not live: the {', '.join(dead)} thread stopped\n")
        if self.faults.state.live_fails:
            return _LIVE_FAULT
        return _LIVE

    def readyz(self, request, reply):
        """Readiness: send me traffic. Pages serve without Redis, so by default Redis's state
        is only reported: Redis unavailable must not pull every replica out of its load balancer.
        It says up or unavailable, never an error's text: anyone may ask; behind sentinels, the
        primary in use and since when (which server takes the writes is what a failover
        changes)."""
        if self.lifecycle.shutting_down:
            return _SHUTTING_DOWN
        if self.faults.state.ready_fails:
            return _READY_FAULT
        if reply is None:
            primary = self.redis_status.primary_words()  # with sentinels: where, since when
            named = f"primary: {primary}\n" if primary else ""
            return Response(200, TEXT, f"ready\nredis: {self.redis_status.describe()}\n{named}")
        if reply.error is not None:
            return Response(503, TEXT, "not ready: redis is unavailable\n")
        return Response(200, TEXT, "ready\n")

    def metrics_page(self, request, reply):
        text = self.metrics.exposition(self.redis_status.up, self.faults.state.gauges())
        return Response(200, METRICS_TYPE, text)

    def replicas(self, request, reply):
        """Who served how many: the live replicas, from Redis, as a table or JSON."""
        refresh = request.query.get("refresh", [""])[-1]
        if refresh and not re.fullmatch(r"[1-9][0-9]{0,3}", refresh):
            return Response(400, TEXT, "refresh must be a whole number of seconds from 1 to 9999\n")
        view = ReplicaView.read(reply)
        if request.wants_json:
            body = json.dumps(view.as_json(self.me.hostname)) + "\n"
            return Response(200, JSON, body, _VARY_ACCEPT)
        return Response(200, HTML, view.as_html(self.me.hostname, int(refresh or 0)), _VARY_ACCEPT)

    def status(self, request, reply):
        """/status/CODE: that status (200 to 599), to test what a client or a proxy makes of it."""
        code = request.path[len("/status/"):]
        if not re.fullmatch(r"[2-5][0-9][0-9]", code):
            return _BAD_STATUS
        phrase = http.HTTPStatus(int(code)).phrase if int(code) in _PHRASES else ""
        return Response(int(code), TEXT, f"{code} {phrase}".rstrip() + "\n")

    def delay(self, request, reply):
        """/delay/SECONDS: 200 after that long (at most MAX_DELAY), the answer held by the loop."""
        text = request.path[len("/delay/"):]
        seconds = float(text) if re.fullmatch(r"[0-9]{1,2}(\.[0-9]{1,3})?", text) else -1.0
        if not 0 <= seconds <= MAX_DELAY:
            return _BAD_DELAY
        return Response(200, TEXT, f"waited {seconds:g} s\n", delay=seconds)
