"""The answering side of the serving loop: each answer held while it must wait, then counted,
logged and written, and its connection moved on to its next request, to lingering or closed.

An answer is **held** (no thread waits) until its delay ends (``/delay/``, FAULT_LATENCY), or,
while the hang fault is on, until the hang ends: the port then accepts and reads but answers
nothing, probes included. It is **released** when it is sent. Nothing here reads a socket.
"""

import heapq
import itertools
import time

import resp_client

from .connection import LINGER, ClientGone, Connection
from .proxies import conclude
from .responses import error_response, response_bytes
from .tracing import RequestIds


class Responder:
    """Answers for the loop, on ``connections`` (a Connections table): every answer starts
    with ``headers`` (a CommonHeaders). ``hanging`` and ``stopping`` are the loop's to set."""

    def __init__(self, config, connections, metrics, log, headers):
        self.connections = connections
        self.metrics = metrics
        self.log = log
        self.idle_timeout = config.idle_timeout
        self.forwarded_header = config.forwarded_header
        self._headers = headers
        self.ids = RequestIds()  # made here: in each serving process, after a worker's fork
        self._trusted = config.trusted_proxies or None  # None: the client is the connection's
        self.hanging = False   # the hang fault, as the loop last read it
        self.stopping = False  # every answer closes its connection
        self._held_until = []  # (when, n, connection): answers held until then, a heap
        self._held_order = itertools.count()
        self._held_by_hang = []  # connections whose answers wait for the hang to end

    def respond(self, conn, response):
        """Send the handler's response, or hold it; True when the connection may go on to its
        next request."""
        if self.hanging:  # answered when the hang ends
            conn.held = response
            conn.enter(Connection.WAITING, None)
            self._held_by_hang.append(conn)
            return False
        if response.delay:
            conn.held = response._replace(delay=0.0)
            conn.enter(Connection.WAITING, response.delay)
            heapq.heappush(self._held_until, (conn.deadline, next(self._held_order), conn))
            return False
        handler = conn.handler
        seconds = time.monotonic() - conn.started
        self.metrics.request(handler.command, handler.route_label, response.status, seconds)
        client = conn.address if self._trusted is None else self._client(conn, handler)
        target = handler.path or handler.requestline
        tls = conn.tls and conn.tls.version
        self.log.request(client, handler.command, target, response.status, seconds, handler.probe,
                         conn.peer[0], tls, handler.request_id, handler.trace)
        if response.upgrade is not None:  # 101: its greeting follows, in WebSocket's frames
            conn.ws, greeting = response.upgrade
            data = response_bytes(response, self._headers(), request_id=handler.request_id)
            return self._send(conn, data + greeting, False, False)
        close = handler.close_connection or self.stopping
        stream = response.stream
        if stream is not None and not stream.length_known:  # chunked, or until the close
            stream.chunked = handler.request_version != "HTTP/1.0"
            close = close or not stream.chunked
        data = response_bytes(response, self._headers(), head_only=handler.head_only, close=close,
                              keep_alive=handler.request_version == "HTTP/1.0",
                              request_id=handler.request_id)
        # Lingering is for a client that may still be sending: one that asked to close is done.
        linger = not (handler.client_closes and not conn.buffer)
        if stream is not None and not handler.head_only:  # its head now; then the Streams
            conn.stream = stream
            conn.queue(data)
            conn.close_after, conn.linger = close, linger
            return self.flush(conn)
        return self._send(conn, data, close, linger)

    def answer_from_redis(self, conn, reply, error):
        """Respond to a request that waited on Redis, with its reply or its error; True when
        the connection may go on."""
        try:
            if error is not None and not isinstance(error, resp_client.RedisError):
                raise error  # a bug of ours on the Redis thread, not Redis unavailable
            response = conn.handler.answer(reply, error)
        except Exception as exc:  # noqa: BLE001 - a bug of ours: this request fails, no more
            self.internal_error(conn, exc)
            return False
        return self.respond(conn, response)

    def _client(self, conn, handler):
        """The client, for the access log, as concluded from the trusted proxies' headers."""
        if handler.headers is None:  # a request line that never became a request
            return conn.address
        return conclude(conn.address, handler.headers, self._trusted, self.forwarded_header).client

    def release(self, conn):
        """Send an answer held until now; True when the connection may go on."""
        response, conn.held = conn.held, None
        if response is None or conn.state is not Connection.WAITING:
            return False
        return self.respond(conn, response)

    def next_release(self):
        """When the first answer held for its delay comes due; None when none is."""
        return self._held_until[0][0] if self._held_until else None

    def due(self, now):
        """The connections whose answers held for a delay are due by ``now``, soonest first."""
        due = []
        while self._held_until and self._held_until[0][0] <= now:
            due.append(heapq.heappop(self._held_until)[2])
        return due

    def follow_hang(self, hangs):
        """Start or end hanging (the hang fault is ``hangs``): at its end, the connections whose
        answers it held, in the order held, to release; None while it has not ended."""
        ended, self.hanging = self.hanging and not hangs, hangs
        if not ended:
            return None
        held, self._held_by_hang = self._held_by_hang, []
        return held

    def refuse(self, conn, status, response=None):
        """Answer a request that never became one (too large, too slow, plain HTTP on the TLS
        port), with ``response`` (else the status's own), and close."""
        handler, conn.handler = conn.handler, None  # an internal error's, or none
        request_id = handler.request_id if handler is not None else self.ids.take(None)
        self.metrics.request(None, "other", status, 0.0)
        self.log.request(conn.address, None, None, status, 0.0, False, conn.peer[0], None,
                         request_id)
        data = response_bytes(response or error_response(status), self._headers(), close=True,
                              request_id=request_id)
        self._send(conn, data, True, linger=True)

    def internal_error(self, conn, exc):
        self.log.error(conn.address, f"internal error: {exc!r}")
        self.refuse(conn, 500)

    def _send(self, conn, data, close, linger):
        conn.queue(data, close)
        conn.close_after = close
        conn.linger = linger
        return self.flush(conn)

    def flush(self, conn):
        """Send what the connection has to send; True when it may go on to its next request."""
        try:
            all_sent = conn.send()
        except ClientGone:  # nothing more to send it
            self.connections.close(conn)
            return False
        if not all_sent:  # the client reads slowly: wait until it can take more
            conn.enter(Connection.SENDING, self.idle_timeout)
        elif conn.stream is not None:  # a streamed answer's head went: its body follows
            conn.enter(Connection.STREAMING, None)
            return True
        elif not conn.close_after:
            conn.handler = None
            if conn.ws is not None:  # upgraded: the loop's WebSockets take it on
                conn.enter(Connection.WEBSOCKET, None)
                return True
            conn.enter(Connection.READING, self.idle_timeout)
            return True
        elif conn.linger and conn.shut_sending():
            conn.handler = None
            conn.enter(Connection.LINGERING, LINGER)
        else:
            self.connections.close(conn)
        return False
