"""The server loop: one thread serves every connection, non-blocking, with a selector.

Idle keep-alive connections and slow clients therefore cost no thread, no flood of connections
creates threads, and threads do not take turns at the interpreter lock on every request.
Requests that need Redis wait (holding no thread) while the RedisThread asks it,
each with a deadline of its own; those of one turn of the loop are handed over together, so
the two threads take turns at the interpreter lock once a turn, not once a request.
"""

import heapq
import itertools
import os
import selectors
import socket
import time

import resp_client

from .connection import LINGER, ClientGone, Connection, Connections, HeadRefused
from .http11 import RequestHandler
from .proxies import ProxyRefused, conclude, read_proxy_header
from .responses import error_response, response_bytes

SWEEP_INTERVAL = 0.25  # how often idle and slow connections are checked for expiry (and faults read)
REQUESTS_PER_TURN = 8  # pipelined requests of one connection served per turn of the loop
WAIT_MARGIN = 0.5      # beyond Redis's own timeouts, how long a request may wait for its reply
INPUT_WHILE_HANGING = 64 * 1024  # while hanging, what a connection may send unanswered before it is closed


class Waker:
    """Wakes the loop from another thread or a signal handler: a byte on a socket pair."""

    def __init__(self):
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self):
        try:
            self._writer.send(b"x")
        except OSError:  # full: a wake-up is already pending
            pass

    def clear(self):
        try:
            self.reader.recv(4096)
        except BlockingIOError:
            pass

    def close(self):
        self.reader.close()
        self._writer.close()


_WAKE = object()  # the selector's key for the waker


class HelloServer:
    """Serves HTTP on ``listener`` from one selector thread; Redis commands go through
    ``redis_thread`` (a RedisThread that wakes the loop with ``waker``); every answer starts
    with ``headers`` (a CommonHeaders).

    The loop accepts, reads heads, hands each to a RequestHandler with the ``routes``,
    sends the response (or submits the Redis command and sends when the reply comes back,
    or when its wait runs out), and sweeps expired connections. ``stop()`` (safe from a signal
    handler) turns readiness to 503 at once (``lifecycle``), goes on serving for
    SHUTDOWN_DELAY, then closes the port and lets the requests in flight finish within
    DRAIN_TIMEOUT. Accepting and closing connections is the Connections table's job.

    While the hang fault is on (``faults``), it accepts and reads but answers nothing, probes
    included, and lets no connection expire: what is asked meanwhile is answered when it ends.
    """

    def __init__(self, config, routes, redis_thread, waker, metrics, lifecycle, listener, log, headers, faults,
                 supervisor_pid=None):
        self.config, self.routes, self.redis_thread, self.waker = config, routes, redis_thread, waker
        self.metrics, self.lifecycle, self.listener, self.log = metrics, lifecycle, listener, log
        self.supervisor_pid = supervisor_pid  # in a worker: it shuts down when the supervisor is gone
        self.port = listener.getsockname()[1]
        self.stopping = False
        # How long a request may wait on Redis: one round trip (connect, then reply), and a margin.
        self.redis_wait = 2 * config.redis_timeout + WAIT_MARGIN
        self._selector = selectors.DefaultSelector()
        self.connections = Connections(listener, self._selector, config.max_connections, config.idle_timeout,
                                       metrics, log, config.trusted_proxies if config.proxy_protocol != "off" else None)
        self._headers = headers  # a CommonHeaders
        self._trusted = config.trusted_proxies or None  # None: the client is where the connection came from
        self._ready = []  # connections in state READY, served next turn
        self._for_redis = []  # (connection, handler), command: what this turn sends to Redis
        self._held_until = []  # (when, n, connection): answers held until then, a heap
        self._held_order = itertools.count()
        self.faults = faults
        self._hanging = False  # the hang fault, as this loop last read it
        self._held_by_hang = []  # connections whose answers wait for the hang to end

    def serve(self):
        """Serve until stop(); then let in-flight requests finish (bounded) and return."""
        self._selector.register(self.waker.reader, selectors.EVENT_READ, _WAKE)
        self.connections.accept()
        self.redis_thread.start()
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
                        self.connections.stop_accepting()
                    if drain_until is not None and (not self.connections.busy() or now > drain_until):
                        return
                    wait = min(wait, max(delay_until - now, 0.0)) if drain_until is None else wait
                if self._held_until:
                    wait = min(wait, max(self._held_until[0][0] - time.monotonic(), 0.0))
                if self._for_redis:  # the turn's Redis commands, together (as auto-pipelining clients do)
                    self.redis_thread.submit(self._for_redis)
                    self._for_redis = []
                for key, events in self._selector.select(0 if self._ready else wait):
                    self._handle(key.data, events)
                self._serve_ready()
                now = time.monotonic()
                while self._held_until and self._held_until[0][0] <= now:
                    self._release(heapq.heappop(self._held_until)[2])
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + SWEEP_INTERVAL
        finally:
            self._shut_down()

    def _handle(self, data, events):
        if data is Connections.LISTENER:
            self.connections.accept_waiting()
        elif data is _WAKE:
            self.waker.clear()
            self._take_replies()
            if self.faults.state.hangs != self._hanging:  # the admin port woke us
                self._follow_hang()
        else:
            try:
                if events & selectors.EVENT_WRITE:
                    if self._flush(data):
                        self._serve_requests(data)
                else:
                    self._read(data)
            except Exception as exc:  # noqa: BLE001 - a bug of ours ends this connection, not the server
                self.log.error(data.address, f"internal error: {exc!r}")
                self.connections.close(data)

    def stop(self):
        """Safe from a signal handler or another thread."""
        self.stopping = True
        self.lifecycle.shutting_down = True
        self.waker.wake()

    def _follow_hang(self):
        """Start or end hanging as the faults say; at its end, answer what was asked meanwhile."""
        if self.faults.state.hangs == self._hanging:
            return
        self._hanging = self.faults.state.hangs
        if self._hanging:
            return
        held, self._held_by_hang = self._held_by_hang, []
        for conn in held:
            self._release(conn)
        for conn in self.connections.with_requests():
            conn.enter(Connection.READY, None)
            self._ready.append(conn)

    def _sweep(self, now):
        self.faults.refresh()  # with workers: what the supervisor's admin port set
        self._follow_hang()
        for conn in [] if self._hanging else self.connections.expired(now):
            if conn.proxy is Connection.PROXY_PENDING:
                self.metrics.proxy_refused("timeout")  # its PROXY header never came whole
                self.connections.close(conn)
            elif conn.state is Connection.READING and conn.buffer:
                self._refuse(conn, 408)  # a head that never finished arriving
            elif conn.state is Connection.WAITING and conn.held is not None:
                self._release(conn)
            elif conn.state is Connection.WAITING:
                self._answer(conn, None, self._no_reply_in_time())
            else:
                self.connections.close(conn)  # idle, not reading what we send, or done lingering
        self.connections.accept()  # after a failed accept(), try again
        self.metrics.publish()
        if self.supervisor_pid is not None and os.getppid() != self.supervisor_pid and not self.stopping:
            self.log.warning("worker", "the supervisor is gone: shutting down")
            self.stop()

    # -- requests and responses ---------------------------------------------------------------

    def _read(self, conn):
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if conn.state is Connection.READY or conn.state is Connection.WAITING:
            conn.read_ahead(data)  # served after the answer under way
        elif not data:
            self.connections.close(conn)
        elif conn.state is Connection.READING:
            conn.buffer += data
            if self._hanging and len(conn.buffer) > INPUT_WHILE_HANGING:
                self.connections.close(conn)
            elif conn.proxy is not Connection.PROXY_PENDING or self._take_proxy_header(conn):
                self._serve_requests(conn)
        # LINGERING: what comes after our last answer is dropped

    def _take_proxy_header(self, conn):
        """Read the PROXY header the connection must begin with: True once it is read (and out
        of the buffer: it counts toward no limit of the request head); False while more must
        come, or when the connection was closed for it."""
        try:
            read = read_proxy_header(conn.buffer, self.config.proxy_protocol)
        except ProxyRefused as refused:
            self.metrics.proxy_refused(refused.reason)
            self.log.warning(conn.address, f"connection closed: {refused}")
            self.connections.close(conn)
            return False
        if read is None:
            return False
        conn.proxy, length = read
        del conn.buffer[:length]
        if conn.proxy.source is not None:
            conn.address = conn.proxy.source[0]
        return True

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
            if conn.state is not Connection.READING or self._hanging:
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
                handler = conn.handler = RequestHandler(head, conn.address, self.routes, conn)
            except Exception as exc:  # noqa: BLE001 - a bug of ours: this request fails, not the server
                self._internal_error(conn, exc)
                return
            if handler.route is not None:
                conn.enter(Connection.WAITING, self.redis_wait)
                self._for_redis.append(((conn, handler), handler.route.redis_command))  # sent at the turn's end
                return
            if not self._respond(conn, handler.response):
                return
        if conn.state is Connection.READING and conn.buffer:
            conn.enter(Connection.READY, None)
            self._ready.append(conn)

    def _no_reply_in_time(self):
        error = resp_client.RedisTimeoutError(f"no reply from the Redis thread within {self.redis_wait:g}s")
        error.command_sent = True  # it may have left, and may yet count
        return error

    def _take_replies(self):
        for (conn, handler), reply, error in self.redis_thread.replies():
            if conn.handler is handler and conn.state is Connection.WAITING:  # else: answered at its deadline
                self._answer(conn, reply, error)

    def _answer(self, conn, reply, error):
        """Answer a request that waited on Redis, then go on to the connection's next ones."""
        try:
            if error is not None and not isinstance(error, resp_client.RedisError):
                raise error  # a bug of ours on the Redis thread, not Redis unavailable
            response = conn.handler.answer(reply, error)
        except Exception as exc:  # noqa: BLE001 - a bug of ours: this request fails, not the server
            self._internal_error(conn, exc)
            return
        if self._respond(conn, response):
            self._serve_requests(conn)

    def _respond(self, conn, response):
        """Send the handler's response (or hold it, for its ``delay``: no thread waits); True when
        the connection may go on to its next request."""
        if self._hanging:  # answered when the hang ends
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
        self.log.request(client, handler.command, handler.path or handler.requestline, response.status, seconds,
                         handler.probe, conn.peer[0])
        close = handler.close_connection or self.stopping
        data = response_bytes(response, self._headers(), head_only=handler.head_only, close=close,
                              keep_alive=handler.request_version == "HTTP/1.0")
        # Lingering is for a client that may still be sending: one that asked to close is done.
        return self._send(conn, data, close, linger=not (handler.client_closes and not conn.buffer))

    def _client(self, conn, handler):
        """The client, for the access log, as concluded from the trusted proxies' headers."""
        if handler.headers is None:  # a request line that never became a request
            return conn.address
        return conclude(conn.address, handler.headers, self._trusted, self.config.forwarded_header).client

    def _release(self, conn):
        """Send an answer held until now, then go on to the connection's next requests."""
        response, conn.held = conn.held, None
        if response is not None and conn.state is Connection.WAITING and self._respond(conn, response):
            self._serve_requests(conn)

    def _refuse(self, conn, status):
        """Answer a request that never became one (too large, too slow), and close."""
        self.metrics.request(None, "other", status, 0.0)
        self.log.request(conn.address, None, None, status, 0.0, False, conn.peer[0])
        conn.handler = None
        self._send(conn, response_bytes(error_response(status), self._headers(), close=True), True, linger=True)

    def _internal_error(self, conn, exc):
        self.log.error(conn.address, f"internal error: {exc!r}")
        self._refuse(conn, 500)

    def _send(self, conn, data, close, linger):
        conn.outgoing, conn.close_after, conn.linger = data, close, linger
        return self._flush(conn)

    def _flush(self, conn):
        """Send what the connection has to send; True when it may go on to its next request."""
        try:
            all_sent = conn.send()
        except ClientGone:  # nothing more to send it
            self.connections.close(conn)
            return False
        if not all_sent:  # the client reads slowly: wait until it can take more
            conn.enter(Connection.SENDING, self.config.idle_timeout)
        elif not conn.close_after:
            conn.handler = None
            conn.enter(Connection.READING, self.config.idle_timeout)
            return True
        elif conn.linger and conn.shut_sending():
            conn.handler = None
            conn.enter(Connection.LINGERING, LINGER)
        else:
            self.connections.close(conn)
        return False

    def _shut_down(self):
        self.connections.close_all()
        self.redis_thread.stop()
        self._selector.close()
        self.waker.close()
