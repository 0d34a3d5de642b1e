"""The server loop: one thread serves every connection, non-blocking, with a selector.

Idle keep-alive connections and slow clients therefore cost no thread, no flood of connections
creates threads, and threads do not take turns at the interpreter lock on every request.
Requests that need Redis wait (holding no thread) while the RedisThread asks it,
each with a deadline of its own; those of one turn of the loop are handed over together, so
the two threads take turns at the interpreter lock once a turn, not once a request.
"""

import os
import selectors
import socket
import time

import resp_client

from .bodies import Bodies
from .connection import ClientGone, Connection, Connections, HeadRefused, Port
from .http11 import RequestHandler
from .responder import Responder
from .responses import TEXT, Response
from .streams import Streams
from .websocket import WebSockets

SWEEP_INTERVAL = 0.25  # how often expired connections are looked for (and faults read)
REQUESTS_PER_TURN = 8  # pipelined requests of one connection served per turn of the loop
WAIT_MARGIN = 0.5      # beyond Redis's own timeouts, how long a request may wait for its reply
INPUT_WHILE_HANGING = 64 * 1024  # while hanging, what a connection may send before it is closed
PLAIN_HTTP_ON_TLS = Response(400, TEXT, "400 Bad Request: this port speaks HTTPS; the request "
                                        "was sent in plain HTTP (use https://)\n")


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


class Shutdown:
    """The two timers of a stop, one after the other: ``delay`` seconds of serving as before
    (SHUTDOWN_DELAY), then, the port closed, ``drain`` seconds for what is in flight."""

    def __init__(self, delay, drain):
        self.delay, self.drain = delay, drain
        self.delay_until = self.drain_until = None

    def next_wait(self, now, connections, wait):
        """How long the loop may wait now (at most ``wait``); None once it is done."""
        if self.delay_until is None:
            self.delay_until = now + self.delay
        if self.drain_until is None and now >= self.delay_until:
            self.drain_until = now + self.drain
            connections.stop_accepting()
        if self.drain_until is None:
            return min(wait, max(self.delay_until - now, 0.0))
        if not connections.busy() or now > self.drain_until:
            return None
        return wait


def until(wait, *due):
    """``wait``, or less: until the soonest of the times ``due`` comes (an answer held, a
    WebSocket's ping or tick; None: nothing due)."""
    for when in due:
        if when is not None:
            wait = min(wait, max(when - time.monotonic(), 0.0))
    return wait


def no_reply_within(seconds):
    """The error of a request whose Redis reply did not come back in time."""
    error = resp_client.RedisTimeoutError(f"no reply from the Redis thread within {seconds:g}s")
    error.command_sent = True  # it may have left, and may yet count
    return error


def loop_parts(config, connections, responder, metrics):
    """The parts of the loop that serve connections in a state of their own, by that state:
    each has begin(conn) and handle(conn, events), True when the connection may go on to its
    next request (WebSockets never do); the WebSockets and the Streams have timers too."""
    return {Connection.WEBSOCKET: WebSockets(connections, metrics, config.ws_ping_interval),
            Connection.STREAMING: Streams(connections, metrics, config.idle_timeout,
                                          responder.flush),
            Connection.BODY: Bodies(config, responder, metrics)}


class Waits:
    """Where a request's answer waits, off the loop: its Redis command, sent with the turn's
    others in one round trip (as auto-pipelining does), or its work (a route's ``work``: /dns,
    /dial), handed at once to the network tools' threads. Either wakes the loop when done."""

    def __init__(self, redis_thread, tools, redis_wait):
        self.redis_thread, self.tools, self.redis_wait = redis_thread, tools, redis_wait
        self._for_redis = []  # (connection, handler), command: what this turn sends to Redis

    def add(self, conn, handler):
        route = handler.route
        if route.work is None:
            conn.enter(Connection.WAITING, self.redis_wait)
            self._for_redis.append(((conn, handler), route.redis_command))
        else:
            conn.enter(Connection.WAITING, self.tools.wait)  # network_tools.TOOL_WAIT
            self.tools.submit((conn, handler), route.work, handler.page_request)

    def send(self):
        """The turn's Redis commands, together."""
        if self._for_redis:
            self.redis_thread.submit(self._for_redis)
            self._for_redis = []

    def replies(self):
        """(connection, handler), reply, error: what came back, from Redis or from a tool."""
        yield from self.redis_thread.replies()
        if self.tools is not None:
            yield from self.tools.results()


class HelloServer:
    """Serves HTTP on the ``ports`` (connection.Port: plain, or TLS with its files): accepts,
    sets up TLS, reads heads, hands each to a RequestHandler with the ``routes``, has the
    Responder send the answer (or submits its Redis command to ``redis_thread``, which wakes the
    loop with ``waker``), and sweeps expired connections, none while the hang fault is on.
    ``stop()`` (safe from a signal handler) turns readiness to 503 at once; then Shutdown runs."""

    def __init__(self, config, routes, redis_thread, waker, metrics, lifecycle, ports, log,
                 headers, faults, supervisor_pid=None, tools=None):
        self.config, self.routes, self.faults, self.log = config, routes, faults, log
        self.redis_thread, self.waker, self.stopping = redis_thread, waker, False
        self.metrics, self.lifecycle = metrics, lifecycle
        self.supervisor_pid = supervisor_pid  # in a worker: it stops when the supervisor is gone
        self.tls = next((port.tls for port in ports if port.tls), None)  # the TLSFiles
        self.redis_wait = 2 * config.redis_timeout + WAIT_MARGIN  # connect, reply, and a margin
        self._selector = selectors.DefaultSelector()
        proxies = config.trusted_proxies if config.proxy_protocol != "off" else None
        self.connections = Connections(ports, self._selector, config.max_connections,
                                       config.idle_timeout, metrics, log, proxies)
        self.responder = Responder(config, self.connections, metrics, log, headers)
        self.port, self.tls_port = self.connections.port_numbers()
        self.parts = loop_parts(config, self.connections, self.responder, metrics)
        self.websockets = self.parts[Connection.WEBSOCKET]  # their timers: see serve()
        self.streams = self.parts[Connection.STREAMING]
        self._ready = []  # connections in state READY, served next turn
        self.waits = Waits(redis_thread, tools, self.redis_wait)  # answers waited for off the loop

    def serve(self):
        """Serve until stop(); then let in-flight requests finish (bounded) and return."""
        self._selector.register(self.waker.reader, selectors.EVENT_READ, _WAKE)
        self.connections.accept()
        self.redis_thread.start()
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        shutdown = Shutdown(self.config.shutdown_delay, self.config.drain_timeout)
        try:
            while True:
                wait = SWEEP_INTERVAL
                if self.stopping:
                    wait = shutdown.next_wait(time.monotonic(), self.connections, wait)
                    if wait is None:
                        return
                wait = until(wait, self.responder.next_release(), self.websockets.next_due(),
                             self.streams.next_due())
                self.waits.send()
                for key, events in self._selector.select(0 if self._ready else wait):
                    self._handle(key.data, events)
                self._serve_ready()
                now = time.monotonic()
                self.websockets.turn(now)
                for conn in self.streams.turn(now):  # streams that ended: on to their next requests
                    self._serve_requests(conn)
                for conn in self.responder.due(now):
                    self._release(conn)
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + SWEEP_INTERVAL
        finally:
            self.connections.close_all()
            self.redis_thread.stop()
            self._selector.close()
            self.waker.close()

    def _handle(self, data, events):
        if type(data) is Port:
            self.connections.accept_waiting(data)
        elif data is _WAKE:
            self.waker.clear()
            self._take_replies()
            self._follow_hang()  # if the admin port woke us for it
        else:
            try:
                if (part := self.parts.get(data.state)) is not None:
                    if part.handle(data, events):
                        self._serve_requests(data)
                elif data.state is Connection.HANDSHAKE:  # HTTP in clear is answered in clear
                    step = self.connections.handshake(data, self.config.proxy_protocol)
                    if step == "plain_http":
                        self.responder.refuse(data, 400, PLAIN_HTTP_ON_TLS)
                    elif step == "done" and self.responder.flush(data):  # its last messages
                        self._serve_requests(data)
                elif events & selectors.EVENT_WRITE:
                    if self.responder.flush(data):
                        self._serve_requests(data)
                else:
                    self._read(data)
            except ClientGone:
                self.connections.close(data)
            except Exception as exc:  # noqa: BLE001 - a bug of ours ends this connection only
                self.log.error(data.address, f"internal error: {exc!r}")
                self.connections.close(data)

    def stop(self):
        """Safe from a signal handler or another thread."""
        self.stopping = self.responder.stopping = self.lifecycle.shutting_down = True
        self.waker.wake()

    def _follow_hang(self):
        """Start or end hanging as the faults say; at its end, answer what was asked meanwhile."""
        held = self.responder.follow_hang(self.faults.state.hangs)
        if held is not None:  # it has ended
            for conn in held:
                self._release(conn)
            self._ready += self.connections.ready_again()

    def _sweep(self, now):
        self.faults.refresh()  # with workers: what the supervisor's admin port set
        self._follow_hang()
        if self.tls is not None:
            self.tls.look(now)  # the files changed, or SIGHUP asked
        for conn in [] if self.responder.hanging else self.connections.expired(now):
            if self.connections.end_expired(conn):
                continue
            if conn.state is Connection.READING or conn.state is Connection.BODY:
                self.responder.refuse(conn, 408)  # a head, or a body, that never came whole
            elif conn.held is not None:
                self._release(conn)
            else:
                self._answer(conn, None, no_reply_within(self.redis_wait))
        self.connections.accept()  # after a failed accept(), try again
        self.metrics.publish()
        if self.supervisor_pid not in (None, os.getppid()) and not self.stopping:
            self.log.warning("worker", "the supervisor is gone: shutting down")
            self.stop()

    def _read(self, conn):
        data = conn.receive(decrypt=conn.state is not Connection.LINGERING)
        if data is None:
            return
        if conn.state is Connection.READY or conn.state is Connection.WAITING:
            conn.read_ahead(data)  # served after the answer under way
        elif not data:
            self.connections.close(conn)
        elif conn.state is Connection.READING:
            conn.buffer += data
            if self.responder.hanging and len(conn.buffer) > INPUT_WHILE_HANGING:
                self.connections.close(conn)
            elif conn.proxy is not Connection.PROXY_PENDING or self.connections.take_proxy_header(
                    conn, self.config.proxy_protocol):
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
        this turn's share is served (or it became a WebSocket)."""
        for _ in range(REQUESTS_PER_TURN):
            part = self.parts.get(conn.state)  # upgraded, streaming, or a body to read
            if part is not None and not part.begin(conn):
                return
            if conn.state is not Connection.READING or self.responder.hanging:
                return
            try:
                head = conn.take_head()
            except HeadRefused as refused:
                self.responder.refuse(conn, refused.status)
                return
            if head is None:
                return
            conn.started = time.monotonic()
            try:
                handler = conn.handler = RequestHandler(head, conn.address, self.routes, conn,
                                                        self.responder.ids)
            except Exception as exc:  # noqa: BLE001 - a bug of ours: this request fails, no more
                self.responder.internal_error(conn, exc)
                return
            if handler.reads_body:  # the loop's Bodies read it, then answer
                conn.enter(Connection.BODY, self.config.idle_timeout)
                continue
            if handler.route is not None:  # its Redis command, or its work: see Waits
                self.waits.add(conn, handler)
                return
            if not self.responder.respond(conn, handler.response):
                return
        if conn.state is Connection.READING and conn.buffer:
            conn.enter(Connection.READY, None)
            self._ready.append(conn)

    def _take_replies(self):
        for (conn, handler), reply, error in self.waits.replies():
            if conn.handler is handler and conn.state is Connection.WAITING:  # else: timed out
                self._answer(conn, reply, error)

    def _answer(self, conn, reply, error):
        """Answer a request that waited on Redis, then go on to the connection's next ones."""
        if self.responder.answer_from_redis(conn, reply, error):
            self._serve_requests(conn)

    def _release(self, conn):
        """Send an answer held until now, then go on to the connection's next requests."""
        if self.responder.release(conn):
            self._serve_requests(conn)
