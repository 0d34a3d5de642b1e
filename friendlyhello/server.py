
import os
import selectors
import signal
import socket
import time

import resp_client

from .connection import LINGER, Connection, HeadRefused
from .http11 import RequestHandler
from .redis_pipeline import RedisPipeline, redis_client
from .responses import HttpDate, error_response, response_bytes

SWEEP_INTERVAL = 0.25        # how often idle and slow connections are checked for expiry
REQUESTS_PER_TURN = 8        # pipelined requests of one connection served per turn of the loop


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


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


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
