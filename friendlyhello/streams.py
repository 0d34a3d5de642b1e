"""Streams: answers sent over time, or too large to hold, made a piece at a time as the client
takes them. Each tests what a proxy buffers, times out or cuts:

    /bytes/N       exactly N bytes (at most MAX_BYTES), byte i being i % 256, every piece a view
                   of one constant buffer; one Range answered with 206 (416 when it cannot be)
    /stream/N      N JSON lines (at most MAX_LINES), chunked, each line a chunk sent as made
    /drip          ?bytes=N&duration=S&delay=D: after D seconds (the head too), N bytes spread
                   over S seconds
    /sse           ?count=N&interval=S: server-sent events, the first at once, then one each S

A stream makes its next piece only once the last has gone (the kernel took it): a client that
does not read pauses its stream, which then holds one piece at most (PIECE); a stream waiting
for its next time costs a timer. No thread, no body in memory. A stop ends each /sse stream
cleanly when the shutdown delay ends; the others are in flight, and have the drain.
"""

import heapq
import itertools
import json
import math
import re
import selectors
import time

from .connection import ClientGone, Connection
from .responses import TEXT, Response

PIECE = 64 * 1024                   # at most this much of a stream waits to go
PATTERN = bytes(range(256)) * 257   # any piece of /bytes is a view of it, from its offset % 256
MAX_BYTES = 1 << 30                 # /bytes/N: 1 GiB at most
MAX_LINES = 100_000
MAX_DRIP_BYTES, MAX_DRIP_SECONDS = 10 * 1024 * 1024, 60.0
MAX_EVENTS, MIN_INTERVAL, MAX_INTERVAL = 100_000, 0.01, 3600.0
DRIP_TICK = 0.01                    # a drip sends what came due at most this often
OCTETS = "application/octet-stream"
_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")


class Bytes:
    """``length`` bytes of the pattern from offset ``start``."""

    length_known, chunked = True, False

    def __init__(self, start, length):
        self.position, self.end, self.length, self.due = start, start + length, length, None

    def take(self, now):
        left = self.end - self.position
        if left <= 0:
            return None
        at, size = self.position % 256, min(PIECE, left)
        self.position += size
        return memoryview(PATTERN)[at:at + size]


class Lines:
    """``count`` JSON lines naming the replica, each a chunk of its own."""

    length_known, chunked, length, due = False, True, None, None  # unchunked for HTTP/1.0

    def __init__(self, me, count):
        self.me, self.count, self.sent = me, count, 0

    def take(self, now):
        if self.sent == self.count:
            return None
        self.sent += 1
        return (json.dumps({"id": self.sent - 1, "of": self.count, "replica": self.me.replica_id,
                            "version": self.me.version}) + "\n").encode()


class Drip:
    """``length`` bytes of "*" after ``delay`` seconds, spread evenly over ``duration``."""

    length_known, chunked = True, False

    def __init__(self, length, duration, delay, now):
        self.length, self.duration, self.start = length, duration, now + delay
        self.sent, self.due = 0, None

    def take(self, now):
        if self.sent == self.length:
            return None
        if self.duration:
            came_due = math.floor((now - self.start) * self.length / self.duration) + 1
        else:
            came_due = self.length if now >= self.start else 0
        size = min(max(came_due, 0), self.length, self.sent + PIECE) - self.sent
        if size <= 0:
            due = self.start + self.sent * self.duration / self.length
            self.due = max(due, now + DRIP_TICK) if now >= self.start else self.start
            return b""
        self.sent += size
        return b"*" * size


class Events:
    """``count`` server-sent events, ``interval`` seconds apart, the first at once."""

    length_known, chunked, length = False, True, None

    def __init__(self, me, count, interval, now):
        self.me, self.count, self.interval = me, count, interval
        self.sent, self.due = 0, now

    def take(self, now):
        if self.sent == self.count:
            return None
        if now < self.due:
            return b""
        self.sent += 1
        self.due += self.interval
        retry = "retry: 1000\n" if self.sent == 1 else ""  # reconnect after 1 s, if cut
        data = json.dumps({"sequence": self.sent, "of": self.count,
                           "replica": self.me.replica_id, "version": self.me.version})
        return f"{retry}id: {self.sent}\nevent: tick\ndata: {data}\n\n".encode()

    def end(self):
        """The replica stops: no event more (the stream's end goes out cleanly)."""
        self.count = self.sent


# -- the routes --------------------------------------------------------------------------------

def _refused(words):
    return Response(400, TEXT, f"400 Bad Request: {words}\n")


def _number(query, name, default, low, high, kind=float):
    """A query parameter within [low, high], else ValueError naming it."""
    text = query.get(name, [None])[-1]
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ValueError(f"{name}: from {low:{'d' if kind is int else 'g'}} to "
                         f"{high:{'d' if kind is int else 'g'}}")
    return value


def byte_range(field, size):
    """What one ``Range`` field asks of ``size`` bytes: (start, length) for one satisfiable
    range; "unsatisfiable"; or None for the whole (no field, several ranges, or one not
    understood: RFC 9110 14.2 lets a server ignore it)."""
    match = _RANGE.fullmatch((field or "").strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        length = min(int(last), size)
        return (size - length, length) if length else "unsatisfiable"
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if last != "" and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        return "unsatisfiable"
    return start, end - start + 1


class StreamRoutes:
    """The routes of streams for a replica (``me``)."""

    def __init__(self, me):
        self.me = me

    def bytes(self, request, reply):
        text = request.path[len("/bytes/"):]
        if not re.fullmatch(r"[0-9]{1,10}", text) or int(text) > MAX_BYTES:
            return _refused(f"/bytes/N: N from 0 to {MAX_BYTES} (1 GiB)")
        size = int(text)
        asked = byte_range(request.headers.get("Range"), size)
        if asked == "unsatisfiable":
            return Response(416, TEXT, f"416 Range Not Satisfiable: {size} bytes\n",
                            (("Content-Range", f"bytes */{size}"),))
        ranges = (("Accept-Ranges", "bytes"),)
        if asked is None:
            return Response(200, OCTETS, "", ranges, stream=Bytes(0, size))
        start, length = asked
        content_range = ("Content-Range", f"bytes {start}-{start + length - 1}/{size}")
        return Response(206, OCTETS, "", (*ranges, content_range), stream=Bytes(start, length))

    def lines(self, request, reply):
        text = request.path[len("/stream/"):]
        if not re.fullmatch(r"[0-9]{1,6}", text) or not 1 <= int(text) <= MAX_LINES:
            return _refused(f"/stream/N: N from 1 to {MAX_LINES}")
        return Response(200, "application/x-ndjson", "", stream=Lines(self.me, int(text)))

    def drip(self, request, reply):
        try:
            size = _number(request.query, "bytes", 10, 1, MAX_DRIP_BYTES, int)
            duration = _number(request.query, "duration", 2.0, 0, MAX_DRIP_SECONDS)
            delay = _number(request.query, "delay", 0.0, 0, MAX_DRIP_SECONDS)
        except ValueError as exc:
            return _refused(f"/drip: {exc}")
        # The delay holds the answer whole, its head too (as /delay/ does): a proxy's timeout
        # for the first byte answers 504 for it; a gap in the bytes cuts the body instead.
        return Response(200, OCTETS, "", delay=delay,
                        stream=Drip(size, duration, delay, time.monotonic()))

    def events(self, request, reply):
        try:
            count = _number(request.query, "count", 10, 1, MAX_EVENTS, int)
            interval = _number(request.query, "interval", 1.0, MIN_INTERVAL, MAX_INTERVAL)
        except ValueError as exc:
            return _refused(f"/sse: {exc}")
        return Response(200, "text/event-stream", "", (("X-Accel-Buffering", "no"),),
                        stream=Events(self.me, count, interval, time.monotonic()))


# -- the loop's side ---------------------------------------------------------------------------

class Streams:
    """A loop's streams (connections in state STREAMING, each with its ``stream``): pieces
    made while the last has gone, timers for those that wait, counted in ``metrics``. A stream
    that ends hands its connection back with ``done(conn)`` (the Responder's flush: closed, or
    on to its next request), which says whether it may go on. A client has ``idle_timeout``
    to take each piece."""

    def __init__(self, connections, metrics, idle_timeout, done):
        self.connections, self.metrics = connections, metrics
        self.idle_timeout, self.done = idle_timeout, done
        connections.at_stop.append(self.going_away)
        self._timers = []  # (when, n, connection), a heap
        self._order = itertools.count()

    def begin(self, conn):
        """Its head went: count it, and send what it has. True when it has ended already and
        the connection may go on."""
        self.metrics.streams_open += 1
        return self.pump(conn, time.monotonic())

    def handle(self, conn, events):
        """The socket can take more, or the client sent something: requests pipelined behind
        the stream wait for its end; an end of the client's is its going."""
        if events & selectors.EVENT_READ:
            data = conn.receive()
            if data == b"":
                self.connections.close(conn)
                return False
            if data:
                conn.read_ahead(data)
        if events & selectors.EVENT_WRITE:
            return self.pump(conn, time.monotonic())
        return False

    def pump(self, conn, now):
        """Send, and make pieces while the last has gone; True when the stream ended and the
        connection may go on."""
        try:
            return self._pump(conn, conn.stream, now)
        except ClientGone:
            self.connections.close(conn)
            return False

    def _pump(self, conn, stream, now):
        while not conn.outgoing or conn.send():
            pieces, size, piece = [], 0, b""
            while size < PIECE and (piece := stream.take(now)):
                pieces.append(b"%x\r\n%s\r\n" % (len(piece), piece) if stream.chunked else piece)
                size += len(piece)
            if pieces:
                self.metrics.stream_bytes[(conn.handler.route_label,)] += size
                if len(pieces) == 1 and conn.tls is None:
                    conn.outgoing = pieces[0]  # a view of the pattern, say: sent as it is
                else:
                    conn.queue(b"".join(pieces))
            elif piece is None:
                return self._end(conn)
            else:  # its next piece is due later: its own time, not the client's, is awaited
                heapq.heappush(self._timers, (stream.due, next(self._order), conn))
                conn.enter(Connection.STREAMING, None)
                return False
        conn.enter(Connection.STREAMING, self.idle_timeout)  # the client must take it in time
        return False

    def _end(self, conn):
        self.metrics.streams_open -= 1
        chunked, conn.stream = conn.stream.chunked, None
        conn.queue(b"0\r\n\r\n" if chunked else b"", conn.close_after)  # TLS's close_notify too
        return self.done(conn)

    def next_due(self):
        return self._timers[0][0] if self._timers else None

    def turn(self, now):
        """Send to the streams whose time has come; those that ended, to go on."""
        ended = []
        while self._timers and self._timers[0][0] <= now:
            _, _, conn = heapq.heappop(self._timers)
            if conn.state is Connection.STREAMING and conn.stream is not None and self.pump(
                    conn, now):
                ended.append(conn)
        return ended

    def going_away(self, conn):
        """The shutdown delay is over: an endless kind of stream (/sse) ends now, cleanly."""
        if isinstance(conn.stream, Events):
            conn.stream.end()
            conn.close_after = True
            heapq.heappush(self._timers, (0.0, next(self._order), conn))
