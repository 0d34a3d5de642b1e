"""friendlyhello: the "Hello World! + visit counter" page of Docker's Get Started tutorial.

Standard library only. Each visit to ``/`` runs ``INCR counter`` on Redis (through
``resp_client``) and shows the number; when Redis cannot be reached the page says the
counter is disabled, at once, instead of hanging. Also serves ``/healthz`` (liveness),
``/readyz`` (Redis answers PING) and JSON for clients that ask for it.

It is built on ``http.server``'s request handler, with one change to how connections
are served: one thread serves all connections, non-blocking, with a selector, and one
more thread talks to Redis, sending the commands of all waiting requests in one pipeline.
Idle keep-alive connections and slow clients therefore cost no thread, no flood of
connections creates threads, and threads do not take turns at the interpreter lock on
every request. It serves small pages to demo, learning and probe traffic; it is not a
general web server (no request bodies, no TLS, no static files).

Run ``python3 hello_server.py --help`` for the settings.
"""

import argparse
import collections
import errno
import functools
import html
import http.client
import http.server
import io
import json
import os
import re
import resource
import selectors
import signal
import socket
import sys
import threading
import time

import resp_client

PAGE = "<h3>Hello {name}!</h3><b>Hostname:</b> {hostname}<br/><b>Visits:</b> {visits}"
COUNTER_DISABLED = "<i>cannot connect to Redis, counter disabled</i>"
COUNTER_KEY = "counter"
VERSION = "1.0"

MAX_REQUEST_LINE = 8 * 1024  # longer gets 414
MAX_HEAD = 16 * 1024          # request line plus headers; more gets 431
SWEEP_INTERVAL = 0.25       # how often idle and slow connections are checked for expiry
SHUTDOWN_GRACE = 5.0        # how long in-flight requests may finish after SIGTERM
MAX_PIPELINE = 256          # Redis commands sent in one round trip at most
HEALTHCHECK_TIMEOUT = 2.0   # the image's HEALTHCHECK gives it 3 s


# -- configuration: read once, validated, before anything binds ----------------------------

class ConfigError(Exception):
    """A setting has a value the program cannot use; the message is one line."""


def _whole(low, high):
    def parse(text):
        if not re.fullmatch(r"[0-9]+", text) or not low <= int(text) <= high:
            raise ValueError(f"a whole number from {low} to {high}")
        return int(text)
    return parse


def _seconds(low, high):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not low < value <= high:
            raise ValueError(f"a number of seconds above {low:g} and at most {high:g}")
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


class Setting(collections.namedtuple("Setting", "env default parse help secret", defaults=(False,))):
    """One setting: its environment variable, default, parser (raises ValueError) and help."""

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
    Setting("REDIS_URL", None, _text, "redis://[[user]:password@]host[:port][/db], rediss:// or "
            "unix:///path; replaces the four REDIS_* settings below", secret=True),
    Setting("REDIS_HOST", "redis", _host, "Redis host name"),
    Setting("REDIS_PORT", 6379, _whole(1, 65535), "Redis port"),
    Setting("REDIS_DB", 0, _whole(0, 100000), "Redis database number"),
    Setting("REDIS_PASSWORD", None, _text, "Redis password", secret=True),
    Setting("REDIS_TIMEOUT", 2.0, _seconds(0, 60), "seconds to wait for Redis to connect or reply"),
    Setting("ACCESS_LOG", "on", _choice("on", "off", "all"),
            "on: a line per request on stdout, health probes left out; all: probes too; off: none"),
    Setting("MAX_CONNECTIONS", 4096, _whole(1, 1000000),
            "open client connections at most; more wait in the listen backlog"),
    Setting("IDLE_TIMEOUT", 5.0, _seconds(0, 3600),
            "seconds a keep-alive connection may idle, a request head may take to arrive (then 408), "
            "and a client may take to read a response"),
]
_REDIS_PARTS = ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD")

# Every setting, validated, read once by load_config(); immutable.
Config = collections.namedtuple("Config", [s.field for s in SETTINGS] + ["healthcheck"])


def _argument_parser():
    parser = argparse.ArgumentParser(
        prog="hello_server.py",
        description="friendlyhello: Hello World! and a visit counter in Redis. Each setting is an "
                    "environment variable or the flag beside it (the flag wins).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    for s in SETTINGS:
        shown = "unset" if s.default is None else s.default
        parser.add_argument(s.flag, dest=s.field, metavar=s.env, help=f"{s.help} (default: {shown})")
    parser.add_argument("--healthcheck", action="store_true",
                        help="ask the server at PORT for /healthz and exit 0 if healthy, else 1 "
                             "(for HEALTHCHECK in an image without curl)")
    return parser


def load_config(argv=None, environ=None):
    """Read flags and environment once; raise ConfigError naming the first bad value."""
    environ = os.environ if environ is None else environ
    args = vars(_argument_parser().parse_args(argv))
    values, given = {}, set()
    for s in SETTINGS:
        if args[s.field] is not None:
            source, raw = s.flag, args[s.field]
        elif s.env in environ:
            source, raw = s.env, environ[s.env]
        else:
            values[s.field] = s.default
            continue
        given.add(s.env)
        try:
            values[s.field] = s.parse(raw)
        except ValueError as exc:
            shown = "(hidden)" if s.secret else repr(raw)
            raise ConfigError(f"{source}={shown} is not valid: expected {exc}") from None
    if "REDIS_URL" in given and given.intersection(_REDIS_PARTS):
        raise ConfigError("set REDIS_URL or REDIS_HOST/REDIS_PORT/REDIS_DB/REDIS_PASSWORD, not both")
    if values["redis_url"] is not None:
        try:
            resp_client.RespClient.from_url(values["redis_url"])
        except ValueError as exc:
            raise ConfigError(f"REDIS_URL is not valid: {exc}") from None
    return Config(**values, healthcheck=args["healthcheck"])


def redis_client(config):
    timeouts = dict(connect_timeout=config.redis_timeout, timeout=config.redis_timeout,
                    max_connections=1)  # one Redis thread, one connection
    if config.redis_url is not None:
        return resp_client.RespClient.from_url(config.redis_url, **timeouts)
    return resp_client.RespClient(config.redis_host, config.redis_port, db=config.redis_db,
                                  password=config.redis_password, **timeouts)


# -- the site: what each route answers ---------------------------------------------------------

Response = collections.namedtuple("Response", "status content_type body")
TEXT = "text/plain; charset=utf-8"
_INCR_COUNTER = resp_client.encode_command(("INCR", COUNTER_KEY))  # encoded once, sent on every visit
_PING = resp_client.encode_command(("PING",))


class Ask(collections.namedtuple("Ask", "command answer")):
    """A route's need for one Redis command (``encode_command()``'s bytes, made once);
    ``answer(reply, error)`` then makes the Response.

    The server sends the commands of all waiting requests to Redis together, in one pipeline,
    from its Redis thread; no request holds a thread while Redis is slow or away.
    """


class Site:
    """The pages. Knows HTTP statuses and content; nothing of sockets, and of Redis only
    resp_client's commands and errors."""

    def __init__(self, config, hostname=None):
        self.name = config.name
        self.hostname = socket.gethostname() if hostname is None else hostname
        self.shutting_down = False
        # Everything on the page but the count is fixed: build it once.
        assert PAGE.endswith("{visits}")
        self.page_start = PAGE[:-len("{visits}")].format(
            name=html.escape(self.name), hostname=html.escape(self.hostname))
        self._count_visit = {wants_json: Ask(_INCR_COUNTER, functools.partial(self._counted, wants_json))
                             for wants_json in (False, True)}

    def routes(self):
        """Every path served; anything else is 404. Only "/" counts a visit."""
        return {
            "/": self.page,
            "/healthz": self.healthz,
            "/readyz": self.readyz,
        }

    def page(self, wants_json, counting):
        if not counting:  # HEAD: the same headers, and no visit
            return self._render(wants_json, None, None)
        return self._count_visit[wants_json]

    def _counted(self, wants_json, visits, error):
        if error is None and type(visits) is not int:
            error = resp_client.ProtocolError(f"INCR answered {visits!r:.64}, not an integer")
        return self._render(wants_json, None if error else visits, error)

    def _render(self, wants_json, visits, error):
        if wants_json:
            body = json.dumps({"name": self.name, "hostname": self.hostname, "visits": visits,
                               "redis": _short_reason(error)})
            return Response(200, "application/json", body + "\n")
        text = COUNTER_DISABLED if visits is None else str(visits)
        return Response(200, "text/html; charset=utf-8", self.page_start + text)

    def healthz(self, wants_json, counting):
        if self.shutting_down:
            return Response(503, TEXT, "shutting down\n")
        return Response(200, TEXT, "ok\n")

    def readyz(self, wants_json, counting):
        if self.shutting_down:
            return Response(503, TEXT, "shutting down\n")
        return Ask(_PING, self._ready)

    def _ready(self, reply, error):
        if error is not None:
            return Response(503, TEXT, f"redis unavailable: {error}\n")
        return Response(200, TEXT, "ready\n")


def _short_reason(error):
    if error is None:
        return "ok"
    if error.command_sent and not isinstance(error, resp_client.ResponseError):
        return "no reply (the visit may have counted)"
    if isinstance(error, resp_client.RedisTimeoutError):
        return "timeout"
    if isinstance(error, resp_client.AuthenticationError):
        return "authentication failed"
    if isinstance(error, resp_client.ResponseError):
        return f"error {error.code}"
    if isinstance(error, resp_client.ProtocolError):
        return "protocol error"
    return "cannot connect"


# -- HTTP: one request at a time, on http.server's handler ----------------------------------

_CONTROL_CHARS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7f]}
_PROBES = {"/healthz", "/readyz"}


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers one request whose head the server has already read.

    ``request`` is the server's connection; the head is parsed from memory and the
    response is gathered in memory for the server to send. A route that needs Redis
    leaves ``ask`` set; the server gets the reply and calls ``respond()``.
    """

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # errors found before the version still get a status line
    server_version = f"friendlyhello/{VERSION}"
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = TEXT
    headers = None      # until a request head parses
    status = 0          # the status sent, for the access log
    ask = None          # the Redis command this request waits for, if any

    def setup(self):
        self.connection = self.request.sock
        self.rfile = io.BytesIO(self.request.head)
        self.wfile = io.BytesIO()

    def handle(self):
        self.handle_one_request()

    def parse_request(self):
        if not super().parse_request():
            return False
        if self.headers.defects:  # a header line without a colon, say
            self.send_error(400, "Malformed header line")
            return False
        if self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # bodies are not read: never parse one as a request
        return True

    def finish(self):
        pass  # the server sends self.wfile and decides what becomes of the connection

    def version_string(self):
        return self.server_version  # the app, not the Python version

    def log_request(self, code="-", size="-"):
        self.status = int(code)

    def log_message(self, format, *args):
        self.server.log_error(self.address_string(), format % args)

    def end_headers(self):
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            if not any(line.lower().startswith(b"connection:") for line in self._headers_buffer):
                self.send_header("Connection", "close")
        elif self.request_version == "HTTP/1.0":
            self.send_header("Connection", "keep-alive")
        super().end_headers()

    def do_GET(self):
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            self.send_response(404)
            self._send_body(TEXT, b"404 not found\n")
            return
        accept = self.headers.get("Accept", "")
        outcome = route("application/json" in accept and "text/html" not in accept,
                        counting=self.command == "GET")
        if isinstance(outcome, Ask):
            self.ask = outcome
        else:
            self.respond(outcome)

    do_HEAD = do_GET  # the same headers, no body, and no visit counted

    def _not_allowed(self):
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self._send_body(TEXT, b"405 method not allowed\n")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def respond(self, response):
        self.send_response(response.status)
        self.send_header("Vary", "Accept")
        self._send_body(response.content_type, response.body.encode())

    def _send_body(self, content_type, body):
        self.send_header("Content-Type", content_type)
        if self.command == "HEAD":  # a HEAD of "/" counts nothing, so its length would be wrong
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# -- the server: one thread for all HTTP, one for Redis ------------------------------------------

class Connection:
    __slots__ = ("sock", "address", "buffer", "head", "deadline", "events", "handler", "started",
                 "outgoing", "close_after", "closed")

    def __init__(self, sock, address):
        self.sock, self.address = sock, address
        self.buffer = bytearray()
        self.head = b""
        self.deadline = 0.0
        self.events = 0          # what the selector watches this socket for
        self.handler = None      # the request being answered (waiting for Redis, or being sent)
        self.started = 0.0
        self.outgoing = b""
        self.close_after = False
        self.closed = False

    def take_head(self):
        """Move one complete request head from the buffer to .head; False if none yet.

        Raises HeadTooLarge when the head (complete or not) is past the limits.
        """
        while self.buffer.startswith(b"\r\n"):  # blank lines before a request are allowed
            del self.buffer[:2]
        match = _END_OF_HEAD.search(self.buffer, 0, MAX_HEAD + 4)
        head = self.buffer if match is None else self.buffer[:match.end()]
        line_end = head.find(b"\n")
        if (len(head) if line_end < 0 else line_end) > MAX_REQUEST_LINE:
            raise HeadTooLarge(414, "URI Too Long")
        if len(head) > MAX_HEAD:
            raise HeadTooLarge(431, "Request Header Fields Too Large")
        if match is None:
            return False
        self.head = bytes(head)
        del self.buffer[:match.end()]
        return True


class HeadTooLarge(Exception):
    def __init__(self, status, reason):
        super().__init__(f"{status} {reason}")
        self.status, self.reason = status, reason


_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")


class HelloServer:
    """Serves HTTP from one selector thread; Redis commands go through one Redis thread.

    Sockets are non-blocking, so no client, however slow or idle, holds a thread. The
    Redis thread sends the commands of all waiting requests in one pipeline (one round
    trip for many pages) and hands the replies back; Redis's timeout bounds each trip.
    """

    def __init__(self, config, site, client, out=sys.stdout, err=sys.stderr):
        self.config, self.site, self.client = config, site, client
        self.routes = site.routes()
        self.out, self.err = out, err
        self._log_lock = threading.Lock()
        self.listener = _listen(config)
        self.port = self.listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._connections = set()
        self._accepting = False
        self._asks = []                        # (connection, command) for the Redis thread
        self._asks_ready = threading.Condition()
        self._answers = collections.deque()    # (connection, reply, error) back from it
        self._redis_thread = threading.Thread(target=self._redis_loop, name="redis", daemon=True)
        self._redis_stopping = False
        self.stopping = False
        self._log_probes = config.access_log == "all"

    # -- the selector thread ---------------------------------------------------------

    def serve(self):
        """Serve until stop(); then let in-flight requests finish (bounded) and return."""
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._accept(True)
        self._redis_thread.start()
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        grace_until = None
        try:
            while True:
                if self.stopping:
                    if grace_until is None:
                        grace_until = time.monotonic() + SHUTDOWN_GRACE
                        self._stop_taking_requests()
                    if not any(c.handler for c in self._connections) or time.monotonic() > grace_until:
                        return
                for key, events in self._selector.select(SWEEP_INTERVAL):
                    if key.data == "listener":
                        self._accept_waiting()
                    elif key.data == "wake":
                        self._take_answers()
                    elif events & selectors.EVENT_WRITE:
                        if self._flush(key.data):
                            self._serve_requests(key.data)
                    else:
                        self._read(key.data)
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + SWEEP_INTERVAL
        finally:
            self._shut_down()

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

    def _accept(self, on):
        if on != self._accepting:
            if on:
                self._selector.register(self.listener, selectors.EVENT_READ, "listener")
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
                self.log_error("-", f"accept failed: {exc}")
                self._accept(False)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, address[0])
            self._connections.add(conn)
            self._wait_for_request(conn)

    def _watch(self, conn, events):
        """Have the selector watch the connection for these events (0: not at all)."""
        if events == conn.events:
            return
        if not conn.events:
            self._selector.register(conn.sock, events, conn)
        elif not events:
            self._selector.unregister(conn.sock)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.events = events

    def _wait_for_request(self, conn):
        conn.deadline = time.monotonic() + self.config.idle_timeout
        self._watch(conn, selectors.EVENT_READ)

    def _read(self, conn):
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.buffer += data
        self._serve_requests(conn)

    def _serve_requests(self, conn):
        """Answer the complete requests the connection has sent, until one has to wait."""
        while True:
            try:
                complete = conn.take_head()
            except HeadTooLarge as exc:
                self._refuse(conn, exc.status, exc.reason)
                return
            if not complete:
                self._watch(conn, selectors.EVENT_READ)
                return
            self._watch(conn, 0)
            conn.started = time.monotonic()
            try:
                conn.handler = Handler(conn, (conn.address, 0), self)
            except Exception as exc:  # noqa: BLE001 - a bug of ours: this request fails, not the server
                self._internal_error(conn, exc)
                return
            if conn.handler.ask is not None:
                with self._asks_ready:
                    self._asks.append((conn, conn.handler.ask.command))
                    self._asks_ready.notify()
                return
            if not self._respond(conn):
                return

    def _take_answers(self):
        try:
            self._wake_r.recv(4096)
        except BlockingIOError:
            pass
        while self._answers:
            conn, reply, error = self._answers.popleft()
            if conn.closed:
                continue
            handler = conn.handler
            if self.stopping:
                handler.close_connection = True
            try:
                if error is not None and not isinstance(error, resp_client.RedisError):
                    raise error  # a bug of ours on the Redis thread, not an outage
                handler.respond(handler.ask.answer(reply, error))
            except Exception as exc:  # noqa: BLE001 - a bug of ours: this request fails, not the server
                self._internal_error(conn, exc)
                continue
            if self._respond(conn):
                self._serve_requests(conn)

    def _respond(self, conn):
        """Send the handler's response; True when the connection may go on to its next request."""
        handler = conn.handler
        self.log_request(handler, conn.address, conn.started)
        conn.outgoing = handler.wfile.getvalue()
        conn.close_after = handler.close_connection or self.stopping
        return self._flush(conn)

    def _flush(self, conn):
        try:
            sent = conn.sock.send(conn.outgoing)
        except BlockingIOError:
            sent = 0
        except OSError:  # the client went away: nothing more to send it
            self._close(conn)
            return False
        conn.outgoing = conn.outgoing[sent:]
        if conn.outgoing:  # the client reads slowly: wait until it can take more
            conn.deadline = time.monotonic() + self.config.idle_timeout
            self._watch(conn, selectors.EVENT_WRITE)
            return False
        conn.handler = None
        if conn.close_after:
            self._close(conn)
            return False
        conn.deadline = time.monotonic() + self.config.idle_timeout
        return True

    def _sweep(self, now):
        for conn in [c for c in self._connections if c.events and c.deadline < now]:
            if conn.events == selectors.EVENT_READ and conn.buffer:
                self._refuse(conn, 408, "Request Timeout")  # a head that never finished arriving
            else:
                self._close(conn)  # idle, or not reading what we send
        if not self.stopping and len(self._connections) < self.config.max_connections:
            self._accept(True)  # after a failed accept(), try again

    def _internal_error(self, conn, exc):
        self.log_error(conn.address, f"internal error: {exc!r}")
        self._refuse(conn, 500, "Internal Server Error")

    def _refuse(self, conn, status, reason):
        """Answer a request that never became one (too large, too slow), and close."""
        self.log_access(conn.address, "-", "-", status, 0.0)
        try:
            conn.sock.send(b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                           % (status, reason.encode()))
        except OSError:
            pass
        self._close(conn)

    def _close(self, conn):
        if conn.closed:
            return
        self._watch(conn, 0)
        conn.sock.close()
        conn.closed = True
        conn.handler = None
        self._connections.discard(conn)
        if not self.stopping:
            self._accept(True)

    def _stop_taking_requests(self):
        self._accept(False)
        self.listener.close()
        for conn in [c for c in self._connections if not c.handler]:
            self._close(conn)

    def _shut_down(self):
        for conn in list(self._connections):
            self._close(conn)
        with self._asks_ready:
            self._redis_stopping = True
            self._asks_ready.notify()
        self._redis_thread.join(self.config.redis_timeout * 2 + 1)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the Redis thread --------------------------------------------------------------

    def _redis_loop(self):
        while True:
            with self._asks_ready:
                self._asks_ready.wait_for(lambda: self._asks or self._redis_stopping)
                if self._redis_stopping:
                    return
                batch, self._asks = self._asks[:MAX_PIPELINE], self._asks[MAX_PIPELINE:]
            try:
                replies = self.client.pipeline([command for _, command in batch])
                errors = [r if isinstance(r, resp_client.ResponseError) else None for r in replies]
            except Exception as exc:  # noqa: BLE001 - RedisError, or a bug reported per request
                replies, errors = [None] * len(batch), [exc] * len(batch)
            self._answers.extend((conn, reply, error) for (conn, _), reply, error
                                 in zip(batch, replies, errors))
            self._wake()

    # -- logs ------------------------------------------------------------------------

    def log_request(self, handler, address, started):
        path = handler.path if hasattr(handler, "path") else "-"
        if self.config.access_log == "off" or (path in _PROBES and not self._log_probes):
            return
        self.log_access(address, handler.command or "-", path, handler.status,
                        time.monotonic() - started)

    def log_access(self, address, method, path, status, seconds):
        if self.config.access_log == "off":
            return
        line = f'{address} "{method} {path}" {status} {seconds * 1000:.1f}ms'
        self._write(self.out, line.translate(_CONTROL_CHARS))

    def log_error(self, address, message):
        self._write(self.err, f"friendlyhello: {address}: {message}".translate(_CONTROL_CHARS))

    def _write(self, stream, line):
        with self._log_lock:
            stream.write(line + "\n")
            stream.flush()


def _listen(config):
    """Bind and listen, or raise SystemExit with one line that says how to fix it."""
    family = socket.AF_INET6 if ":" in config.bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.bind, config.port))
        sock.listen(1024)  # bursts of new connections must not meet dropped SYNs
    except OSError as exc:
        sock.close()
        where = f"port {config.port} on {config.bind}"
        if isinstance(exc, PermissionError):
            raise SystemExit(
                f"friendlyhello: not allowed to listen on {where} as user {os.getuid()}: "
                f"set PORT=8080 (publish with -p 4000:8080), or give the container "
                f"--sysctl net.ipv4.ip_unprivileged_port_start=0") from None
        if exc.errno == errno.EADDRINUSE:
            raise SystemExit(f"friendlyhello: {where} is already in use: stop the other "
                             f"program or choose another port, e.g. PORT=8080") from None
        raise SystemExit(f"friendlyhello: cannot listen on {where}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


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


def _raise_file_limit(wanted):
    """Idle connections are cheap here but each is a file descriptor: allow enough."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv=None):
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"friendlyhello: {exc}", file=sys.stderr)
        return 2
    if config.healthcheck:
        return healthcheck(config)
    _raise_file_limit(config.max_connections + 64)
    client = redis_client(config)
    server = HelloServer(config, Site(config), client)
    stops = []

    def on_signal(signum, frame):
        stops.append(signum)
        if len(stops) > 1:  # asked twice: stop waiting for in-flight requests
            os._exit(1)
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host = f"[{config.bind}]" if ":" in config.bind else config.bind
    print(f"friendlyhello listening on http://{host}:{server.port} "
          f"(redis {client.address} db {client.db})", flush=True)
    server.serve()
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
