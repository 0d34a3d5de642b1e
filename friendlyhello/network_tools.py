"""/dns and /dial, on only with NETWORK_TOOLS=on: what a name resolves to, and whether a port
answers, asked from inside the replica (kuard's /dns, agnhost's /dial). They let a caller look
into the network the replica is on, so they are never on by default, and /dial reaches only the
addresses DIAL_ALLOW lists: a name is resolved first and every address it has checked, and any
other target is 403 without a connection tried.

The loop never waits on either: the question is checked at once (400, 403, 503 when too many
are under way), then asked by one of a few threads of the tools' own, whose answer wakes the
loop as Redis's replies do. A request waits TOOL_WAIT at most (a lookup cannot be cut short;
its thread goes on, counted against the bound, until it ends).
"""

import collections
import errno
import ipaddress
import json
import queue
import re
import socket
import threading
import time

from .responses import JSON, TEXT, Response

THREADS = 4        # questions asked at once
MAX_PENDING = 16   # asked or waiting for a thread: beyond it, 503 at once
DIAL_TIMEOUT = 2.0
TOOL_WAIT = 5.0    # what a request waits for its answer, its lookup and its dial included
# A name as DNS and /etc/hosts have them (letters, digits, hyphens, underscores, dots), or an
# IPv6 address; an IPv4 address is a name of digits and dots.
_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?\.?|[0-9A-Fa-f:.]{2,45}")
_VARY_ACCEPT = (("Vary", "Accept"),)
_UNKNOWN = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}
_REFUSALS = {400: "invalid", 403: "forbidden", 503: "busy"}  # the outcomes of questions not asked


class ToolRefusal(Exception):
    """A question the tools will not ask: its status and why."""

    def __init__(self, status, why):
        super().__init__(why)
        self.status = status


class NetworkTools:
    """The two routes' gates, work and answers, and the threads that do the work.

    ``submit(key, work, request)`` queues ``work(request)`` for a thread (a gate refused it
    first when MAX_PENDING were under way); ``results()`` hands the loop ``(key, value,
    error)`` for each that ended, after ``wake()`` was called."""

    def __init__(self, me, allow, wake, metrics):
        self.me, self.allow, self.metrics = me, allow, metrics
        self.wait = TOOL_WAIT  # what a request waits, at most
        self._wake = wake
        self._questions = queue.SimpleQueue()
        self._done = collections.deque()
        self._pending = 0
        self._lock = threading.Lock()
        for n in range(THREADS):
            threading.Thread(target=self._run, name=f"network-tool-{n}", daemon=True).start()

    def submit(self, key, work, request):
        """Queue the work; the gates have refused it (503) when MAX_PENDING are under way."""
        with self._lock:
            self._pending += 1
        self._questions.put((key, work, request))

    def results(self):
        while self._done:
            yield self._done.popleft()

    def _run(self):
        while True:
            key, work, request = self._questions.get()
            try:
                value, error = work(request), None
            except Exception as exc:  # noqa: BLE001 - a bug of ours: that request's 500
                value, error = None, exc
            with self._lock:
                self._pending -= 1
            self._done.append((key, value, error))
            self._wake()

    # -- /dns?name=N ---------------------------------------------------------------------

    def dns_gate(self, request):
        try:
            self._not_busy()
            _name(request.query, "name")
        except ToolRefusal as refused:
            return self._refusal(request, "dns", refused)
        return None

    def dns_work(self, request):
        name = _name(request.query, "name")
        return {"tool": "dns", "name": name, **lookup(name)}

    def dns_answer(self, request, reply):
        seen = reply.value if reply.error is None else _late("dns", request, name=True)
        lines = [f"dns {seen['name']}: {seen['outcome']} in {seen['seconds'] * 1000:.1f} ms"]
        lines += seen["addresses"] + ([f"error: {seen['error']}"] if seen["error"] else [])
        return self._answer(request, 200, seen, lines)

    # -- /dial?host=H&port=P -------------------------------------------------------------

    def dial_gate(self, request):
        try:
            self._not_busy()
            host, _ = _name(request.query, "host"), _port(request.query)
            if not self.allow:
                raise ToolRefusal(403, "DIAL_ALLOW is not set: /dial dials nowhere")
            if _literal(host) and not self.allow.holds(host):
                raise ToolRefusal(403, f"{host} is not within DIAL_ALLOW")
        except ToolRefusal as refused:
            return self._refusal(request, "dial", refused)
        return None

    def dial_work(self, request):
        host, port = _name(request.query, "host"), _port(request.query)
        found = lookup(host)
        seen = {"tool": "dial", "host": host, "port": port, "address": None, **found}
        outside = [a for a in found["addresses"] if not self.allow.holds(a)]
        if found["outcome"] != "resolved" or outside:
            if outside:
                seen.update(outcome="forbidden", error=f"{', '.join(outside)}: not within "
                            "DIAL_ALLOW; nothing dialled")
            return seen
        seen["address"] = found["addresses"][0]
        seen.update(connect(seen["address"], port))
        return seen

    def dial_answer(self, request, reply):
        seen = reply.value if reply.error is None else _late("dial", request)
        shown = f"{seen['host']}:{seen['port']}"
        if seen["address"] and seen["address"] != seen["host"]:
            shown += f" ({seen['address']})"
        lines = [f"dial {shown}: {seen['outcome']} in {seen['seconds'] * 1000:.1f} ms"]
        lines += [f"error: {seen['error']}"] if seen["error"] else []
        return self._answer(request, 403 if seen["outcome"] == "forbidden" else 200, seen, lines)

    # -- shared --------------------------------------------------------------------------

    def _not_busy(self):
        if self._pending >= MAX_PENDING:
            raise ToolRefusal(503, f"{MAX_PENDING} questions are under way already; ask again "
                                   "later")

    def _answer(self, request, status, seen, lines):
        self.metrics.network_tool(seen["tool"], seen["outcome"])
        seen = {**seen, "replica": self.me.replica_id, "hostname": self.me.hostname}
        if request.wants_json:
            return Response(status, JSON, json.dumps(seen) + "\n", _VARY_ACCEPT)
        return Response(status, TEXT, "\n".join(lines) + "\n", _VARY_ACCEPT)

    def _refusal(self, request, tool, refused):
        self.metrics.network_tool(tool, _REFUSALS[refused.status])
        if request.wants_json:
            seen = {"tool": tool, "error": str(refused)}
            return Response(refused.status, JSON, json.dumps(seen) + "\n", _VARY_ACCEPT)
        return Response(refused.status, TEXT, f"{refused.status} {refused}\n", _VARY_ACCEPT)

def lookup(name):
    """Every address the system resolver gives for the name, in its order, once each."""
    started = time.monotonic()
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        outcome = "unknown" if exc.errno in _UNKNOWN else "failed"
        return {"outcome": outcome, "addresses": [], "error": exc.strerror or str(exc),
                "seconds": round(time.monotonic() - started, 6)}
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    return {"outcome": "resolved", "addresses": addresses, "error": None,
            "seconds": round(time.monotonic() - started, 6)}


def connect(address, port):
    """One TCP connection to the address, DIAL_TIMEOUT at most, closed at once."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    started = time.monotonic()
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(DIAL_TIMEOUT)
        try:
            sock.connect((address, port))
            outcome, error = "connected", None
        except TimeoutError:
            outcome, error = "timed out", f"no answer within {DIAL_TIMEOUT:g} s"
        except ConnectionRefusedError as exc:
            outcome, error = "refused", exc.strerror
        except OSError as exc:
            outcome = "unreachable" if exc.errno in _UNREACHABLE else "failed"
            error = exc.strerror or str(exc)
    return {"outcome": outcome, "error": error, "seconds": round(time.monotonic() - started, 6)}


def _name(query, key):
    values = query.get(key, [])
    if len(values) != 1 or not _NAME.fullmatch(values[0]):
        raise ToolRefusal(400, f"give one {key}: a host name or an address, at most 253 "
                               "characters")
    return values[0]


def _port(query):
    values = query.get("port", [])
    if len(values) != 1 or not re.fullmatch(r"[0-9]{1,5}", values[0]) \
            or not 1 <= int(values[0]) <= 65535:
        raise ToolRefusal(400, "give one port: a whole number from 1 to 65535")
    return int(values[0])


def _literal(host):
    """Is the host an address (checked at once), not a name (resolved first)?"""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _late(tool, request, name=False):
    """What an answer says when its thread did not end within TOOL_WAIT."""
    seen = {"tool": tool, "outcome": "timed out", "addresses": [], "seconds": TOOL_WAIT,
            "error": f"no answer within {TOOL_WAIT:g} s (a slow resolver, or every thread busy)"}
    if name:
        return {**seen, "name": _name(request.query, "name")}
    return {**seen, "host": _name(request.query, "host"), "port": _port(request.query),
            "address": None}
