"""watch ws:// (and wss://): WebSockets held open through a rolling update, and what became of
each one.

    python3 hello_server.py watch ws://localhost:4000/ws [--rate 20] [--connections 4] ...

``--connections`` WebSockets are opened and held; at each turn of the schedule (``--rate`` a
second in all) one of them sends a text message and awaits its echo, by ``--timeout``. A
message is counted like a request: for the version and replica that the 101 named (the
Friendlyhello-Version and -Replica fields), its echo's latency, or its failure by kind:
refused, reset (the connection cut under it), timeout (no echo in time), non-101 (the upgrade
was answered with another status), other, in-flight.

Each connection's end is counted too: closed by the server with a code (1001: the replica is
going away, as a stopping friendlyhello says when its SHUTDOWN_DELAY ends), or cut (an EOF
with no Close, a reset, a timeout). Either way it is opened again at once, and the time to the
new connection's 101 is its reconnect. A message the server closed the connection under,
properly, before echoing is sent again once on the new one (counted as sent again); a message
whose connection was cut is lost. Pings are answered, and friendlyhello's greeting and ticks
are told from echoes. Exit status 1 when any message failed, any connection was cut or failed
to open, or the server closed one with another code than 1000 or 1001.
"""

import collections
import os
import time
import urllib.parse

from . import http_client, watch_tally, websocket_client
from .responses import REPLICA_HEADER, VERSION_HEADER
from .watch_tally import UNKNOWN, Result, failure_kind, percentile
from .websocket import TEXT

KINDS = ("refused", "reset", "timeout", "non-101", "other", "in-flight")
PROPER = {"1000", "1001"}  # the codes a connection may be closed with in a run that went well
AT_THE_END = "watch"       # a Held's end when watch closed it at the end of the run,
UNANSWERED = "unanswered"  # and when the server's Close did not come back in time
_SERVER_OWN = (b'{"tick": ', b'{"hostname": ')  # friendlyhello's ticks and greeting, no echoes


class Held:
    """One connection watch opened: who answered its upgrade, when (seconds since the start),
    how long after the one before it ended (its reconnect), and how it ended: a close code
    ("1001"), "cut: eof" (or reset, timeout, malformed), AT_THE_END or UNANSWERED, or None
    while open."""

    __slots__ = ("opened", "version", "replica", "reconnect", "ended", "end")

    def __init__(self, opened, version, replica, reconnect):
        self.opened, self.version, self.replica = opened, version, replica
        self.reconnect = reconnect
        self.ended = self.end = None


class Line:
    """One of the connections a thread holds, opened and opened again: its WebSocket, the Held
    of the one open now, and when the last one ended."""

    def __init__(self, ws):
        self.ws, self.held, self.ended_at = ws, None, None


def cut_kind(error):
    """How a connection was lost: an EOF with no Close, a reset, no echo in time, or dropped
    by watch for what the server sent (malformed)."""
    if isinstance(error, http_client.ClosedMidAnswer):
        return "eof"
    if isinstance(error, http_client.Malformed):
        return "malformed"
    return "timeout" if isinstance(error, TimeoutError) else "reset"


def message_kind(error):
    if isinstance(error, websocket_client.Refused):
        return "non-101"
    return "other" if isinstance(error, http_client.Malformed) else failure_kind(error)


class WebSocketWatch(watch_tally.Runner):
    """The WebSockets: a thread holds each (a Line), waiting for its turn on its socket, so a
    Close, a ping or a cut is seen as it comes, not at the next message."""

    def __init__(self, options):
        super().__init__(options)
        target = urllib.parse.urlsplit(options.url)
        self._host, self._port, self._host_field = target.hostname, target.port, target.netloc
        self._target = (target.path or "/") + (f"?{target.query}" if target.query else "")
        self.held = []
        self.failed_to_open = collections.Counter()  # reconnects that failed, by kind
        self._woken, self._wake = os.pipe()  # written at a halt: every waiting thread wakes

    def halt(self):
        super().halt()
        os.write(self._wake, b"!")  # never read: it stays readable for every thread

    def client(self):
        ws = websocket_client.WebSocket(self._host, self._port, self.options.context)
        line = Line(ws)
        while self._wait(line, self.next_turn()):
            self._message(line)
        if line.held is not None:  # the run is over: closed by us, the server's Close awaited
            closed = line.ws.close_handshake(min(self._deadline(), self.finish_by))
            self._ended(line, AT_THE_END if closed else UNANSWERED)

    def _deadline(self):
        return time.monotonic() + self.options.timeout

    def _wait(self, line, at):
        """Until ``at``, see to what the server sends; False once halted."""
        while not self.stop.is_set():
            left = at - time.monotonic()
            if left <= 0:
                return True
            if line.held is None:
                return not self.stop.wait(left)  # nothing to hold; the next turn opens one
            server, woken = line.ws.readable(self._woken, left)
            if woken:
                return False
            if server:
                self._unasked(line)
        return False

    def _unasked(self, line):
        """What the server sent between messages: a tick or a greeting, a ping (answered, and
        no message awaited after it), or its Close or a cut, and then the connection opened
        again at once."""
        try:
            line.ws.message(self._deadline(), wait=False)
            return
        except websocket_client.ServerClosed as closed:
            self._ended(line, str(closed.code))
        except (OSError, http_client.Malformed) as error:
            self._ended(line, f"cut: {cut_kind(error)}")
        try:
            self._open(line, self._deadline())
        except (OSError, http_client.Malformed, websocket_client.Refused) as error:
            with self._lock:
                self.failed_to_open[message_kind(error)] += 1

    def _message(self, line):
        sent = self.now()
        number = self.begin(sent)
        deadline = self._deadline()
        payload = f"watch {number}".encode()
        retried = False
        try:
            try:
                if line.held is None:
                    self._open(line, deadline)
                self._echo(line, payload, deadline)
            except websocket_client.ServerClosed as closed:
                self._ended(line, str(closed.code))
                retried = True  # closed properly under it: once more, on a new connection
                self._open(line, deadline)
                self._echo(line, payload, deadline)
        except websocket_client.ServerClosed as closed:
            self._ended(line, str(closed.code))
            self.finish(number, Result(sent, self.now(), kind="reset", retried=True))
        except (OSError, http_client.Malformed, websocket_client.Refused) as error:
            held = line.held
            if held is not None:
                self._ended(line, f"cut: {cut_kind(error)}")
            status = getattr(error, "status", None)
            self.finish(number, Result(sent, self.now(), held and held.version,
                                       held and held.replica, message_kind(error), status,
                                       retried))
        else:
            held = line.held
            self.finish(number, Result(sent, self.now(), held.version, held.replica, None, 101,
                                       retried))

    def _echo(self, line, payload, deadline):
        line.ws.send(TEXT, payload, deadline)
        while True:
            opcode, echoed = line.ws.message(deadline)
            if echoed == payload and opcode == TEXT:
                return
            if not echoed.startswith(_SERVER_OWN):
                raise http_client.Malformed("an echo that is not the message sent")

    def _open(self, line, deadline):
        headers = line.ws.open(self._target, self._host_field, deadline)
        now = self.now()
        held = Held(now, headers.get(VERSION_HEADER.lower(), UNKNOWN),
                    headers.get(REPLICA_HEADER.lower(), UNKNOWN),
                    None if line.ended_at is None else now - line.ended_at)
        with self._lock:
            self.held.append(held)
        line.held = held

    def _ended(self, line, end):
        line.ws.close()
        line.held.ended, line.held.end = self.now(), end
        line.held, line.ended_at = None, self.now()

    # -- what it saw ------------------------------------------------------------------------

    def summary(self, elapsed):
        seen = watch_tally.summary(self.snapshot(), self.options, elapsed, KINDS)
        del seen["visits"]  # no visit is counted at /ws
        with self._lock:
            held, failed_to_open = list(self.held), dict(self.failed_to_open)
        seen["websocket"] = {**connection_summary(held), "failed_to_open": failed_to_open}
        for version, group in seen["by_version"].items():
            group["connections"] = connection_summary([h for h in held if h.version == version])
        for replica, group in seen["by_replica"].items():
            group["connections"] = connection_summary([h for h in held if h.replica == replica])
        return seen

    def failed(self, seen):
        held = seen["websocket"]
        return bool(seen["failed"] or held["cut"] or sum(held["failed_to_open"].values())
                    or set(held["closed"]) - PROPER)


def connection_summary(held):
    """What became of some connections: opened, closed by the server (by code), cut (by kind),
    open at the end, and their reconnects."""
    closed = collections.Counter(h.end for h in held if h.end and h.end[0].isdigit())
    cuts = collections.Counter(h.end[5:] for h in held if h.end and h.end.startswith("cut: "))
    reconnects = sorted(h.reconnect for h in held if h.reconnect is not None)
    return {"opened": len(held), "open_at_end": sum(h.end in (None, AT_THE_END) for h in held),
            "close_unanswered": sum(h.end == UNANSWERED for h in held),
            "closed": dict(sorted(closed.items())), "cut": sum(cuts.values()), "cuts": dict(cuts),
            "reconnects": len(reconnects),
            "reconnect_p50_ms": watch_tally.ms(percentile(reconnects, 0.5)),
            "reconnect_max_ms": watch_tally.ms(max(reconnects, default=None))}
