"""friendlyhello: the "Hello World! + visit counter" page of Docker's Get Started tutorial.

Standard library only. Each visit to ``/`` runs ``INCR counter`` on Redis (through
``resp_client``) and shows the number; when Redis cannot be reached the page says the
counter is disabled, at once, instead of hanging. Also serves ``/healthz`` (liveness),
``/readyz`` (Redis answers PING) and JSON for clients that ask for it.

It is built on ``http.server``'s request handler, with one change to how connections
are served: one thread waits on all open connections with a selector and hands each
complete request head to a bounded pool of worker threads. Idle keep-alive connections
and slow clients therefore cost no thread, and no flood of connections creates threads.
It serves small pages to demo, learning and probe traffic; it is not a general web
server (no request bodies, no TLS, no static files).

Run ``python3 hello_server.py --help`` for the settings.
"""

import argparse
import collections
import dataclasses
import html
import http.client
import http.server
import io
import json
import os
import re
import resource
import select
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
LINGER_MS = 2               # how long a worker waits for a keep-alive client's next request


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


def _bind(text):
    if not text or any(c.isspace() for c in text):
        raise ValueError("an IP address or host name to listen on, such as 0.0.0.0 or ::")
    return text


@dataclasses.dataclass(frozen=True)
class Setting:
    env: str
    default: object
    parse: object
    help: str
    secret: bool = False

    @property
    def flag(self):
        return "--" + self.env.lower().replace("_", "-")

    @property
    def field(self):
        return self.env.lower()


SETTINGS = [
    Setting("NAME", "world", _text, "who the page greets"),
    Setting("PORT", 80, _whole(0, 65535), "TCP port to listen on (0 picks a free one)"),
    Setting("BIND", "0.0.0.0", _bind, "address to listen on"),
    Setting("REDIS_URL", None, _text, "redis://[[user]:password@]host[:port][/db], rediss:// or "
            "unix:///path; replaces the four REDIS_* settings below", secret=True),
    Setting("REDIS_HOST", "redis", _bind, "Redis host name"),
    Setting("REDIS_PORT", 6379, _whole(1, 65535), "Redis port"),
    Setting("REDIS_DB", 0, _whole(0, 100000), "Redis database number"),
    Setting("REDIS_PASSWORD", None, _text, "Redis password", secret=True),
    Setting("REDIS_TIMEOUT", 2.0, _seconds(0, 60), "seconds to wait for Redis to connect or reply"),
    Setting("ACCESS_LOG", "on", _choice("on", "off", "all"),
            "on: a line per request on stdout, health probes left out; all: probes too; off: none"),
    Setting("THREADS", 4, _whole(1, 1024),
            "worker threads answering requests (more only add lock contention: see README)"),
    Setting("MAX_CONNECTIONS", 4096, _whole(1, 1000000),
            "open client connections at most; more wait in the listen backlog"),
    Setting("IDLE_TIMEOUT", 5.0, _seconds(0, 3600),
            "seconds a keep-alive connection may idle, and a request head may take to arrive"),
]
_REDIS_PARTS = ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD")

Config = dataclasses.make_dataclass(
    "Config", [(s.field, object) for s in SETTINGS] + [("healthcheck", bool, False)], frozen=True)
Config.__doc__ = "Every setting, validated; built once by load_config()."


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
    config = Config(**values, healthcheck=args["healthcheck"])
    try:
        redis_client(config)
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL is not valid: {exc}") from None
    return config


def redis_client(config):
    timeouts = dict(connect_timeout=config.redis_timeout, timeout=config.redis_timeout,
                    max_connections=config.threads)
    if config.redis_url is not None:
        return resp_client.RespClient.from_url(config.redis_url, **timeouts)
    return resp_client.RespClient(config.redis_host, config.redis_port, db=config.redis_db,
                                  password=config.redis_password, **timeouts)


# -- the site: what each route answers ---------------------------------------------------------

Response = collections.namedtuple("Response", "status content_type body")
TEXT = "text/plain; charset=utf-8"


class Site:
    """The pages. Knows HTTP statuses and content, nothing of sockets or RESP."""

    def __init__(self, config, client, hostname=None):
        self.name = config.name
        self.hostname = socket.gethostname() if hostname is None else hostname
        self.client = client
        self.count_visit = client.prepare("INCR", COUNTER_KEY, reply_type=int)
        self.shutting_down = False
        # Everything on the page but the count is fixed: build it once.
        assert PAGE.endswith("{visits}")
        self.page_start = PAGE[:-len("{visits}")].format(
            name=html.escape(self.name), hostname=html.escape(self.hostname))

    def routes(self):
        """Every path served; anything else is 404. Only "/" counts a visit."""
        return {
            "/": self.page,
            "/healthz": self.healthz,
            "/readyz": self.readyz,
        }

    def page(self, wants_json, counting):
        visits, error = None, None
        if counting:
            try:
                visits = self.count_visit()
            except resp_client.RedisError as exc:
                error = exc
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
        try:
            self.client.ping()
        except resp_client.RedisError as exc:
            return Response(503, TEXT, f"redis unavailable: {exc}\n")
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
    response is gathered in memory, then sent in one write.
    """

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # errors found before the version still get a status line
    server_version = f"friendlyhello/{VERSION}"
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = TEXT
    headers = None      # until a request head parses
    status = 0          # the status sent, for the access log

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
        self._answer()

    do_HEAD = do_GET  # the same headers, no body, and no visit counted

    def _not_allowed(self):
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self._send_body(TEXT, b"405 method not allowed\n")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def _answer(self):
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            self.send_response(404)
            self._send_body(TEXT, b"404 not found\n")
            return
        accept = self.headers.get("Accept", "")
        wants_json = "application/json" in accept and "text/html" not in accept
        response = route(wants_json, counting=self.command == "GET")
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


# -- the server: one selector thread for waiting, a bounded pool for answering ------------------

class Connection:
    __slots__ = ("sock", "address", "buffer", "head", "deadline", "poller")

    def __init__(self, sock, address):
        self.sock, self.address = sock, address
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)
        self.buffer = bytearray()
        self.head = b""
        self.deadline = 0.0

    def take_head(self):
        """Move one complete request head from the buffer to .head; False if none yet.

        Raises HeadTooLarge when the head (complete or not) is past the limits.
        """
        while self.buffer[:2] == b"\r\n":  # blank lines before a request are allowed
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
    def __init__(self, config, site, out=sys.stdout, err=sys.stderr):
        self.config, self.site = config, site
        self.routes = site.routes()
        self.out, self.err = out, err
        self._log_lock = threading.Lock()
        self.listener = _listen(config)
        self.port = self.listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._returned = collections.deque()  # connections workers hand back to the selector
        self._jobs = collections.deque()
        self._jobs_ready = threading.Condition()
        self._workers = []
        self._idle_workers = 0
        self._busy = 0
        self._open = 0
        self._accepting = False
        self.stopping = False
        self._stopped = threading.Event()
        self._log_probes = config.access_log == "all"

    # -- the selector thread ---------------------------------------------------------

    def serve(self):
        """Serve until stop(); then finish in-flight requests (bounded) and return."""
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._accept(True)
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        try:
            while not self.stopping:
                for key, _ in self._selector.select(SWEEP_INTERVAL):
                    if key.data == "listener":
                        self._accept_waiting()
                    elif key.data == "wake":
                        self._take_back()
                    else:
                        self._read(key.data)
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + SWEEP_INTERVAL
        finally:
            self._drain()

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
            if self._open >= self.config.max_connections:
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
            self._open += 1
            self._park(Connection(sock, address[0]))

    def _park(self, conn):
        conn.deadline = time.monotonic() + self.config.idle_timeout
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _read(self, conn):
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn, registered=True)
            return
        conn.buffer += data
        try:
            complete = conn.take_head()
        except HeadTooLarge as exc:
            self._refuse(conn, exc.status, exc.reason)
            self._close(conn, registered=True)
            return
        if complete:
            self._selector.unregister(conn.sock)
            self._submit(conn)

    def _take_back(self):
        try:
            self._wake_r.recv(4096)
        except BlockingIOError:
            pass
        while self._returned:
            conn = self._returned.popleft()
            if conn is None:  # a worker closed a connection
                self._open -= 1
                if not self.stopping:
                    self._accept(True)
                continue
            try:
                complete = conn.take_head()  # it may hold pipelined requests already
            except HeadTooLarge as exc:
                self._refuse(conn, exc.status, exc.reason)
                self._close(conn, registered=False)
                continue
            if complete:
                self._submit(conn)
            else:
                self._park(conn)

    def _sweep(self, now):
        expired = [key.data for key in self._selector.get_map().values()
                   if isinstance(key.data, Connection) and key.data.deadline < now]
        for conn in expired:
            if conn.buffer:  # a request head that did not finish arriving in time
                self._refuse(conn, 408, "Request Timeout")
            self._close(conn, registered=True)

    def _refuse(self, conn, status, reason):
        """Answer a request that never became one (too large, too slow); the caller closes."""
        self.log_access(conn.address, "-", "-", status, 0.0)
        try:
            conn.sock.send(b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                           % (status, reason.encode()))
        except OSError:
            pass

    def _close(self, conn, registered):
        if registered:
            self._selector.unregister(conn.sock)
        conn.sock.close()
        self._open -= 1
        if not self.stopping:
            self._accept(True)

    def _drain(self):
        self._accept(False)
        self.listener.close()
        for key in list(self._selector.get_map().values()):
            if isinstance(key.data, Connection):
                self._close(key.data, registered=True)
        deadline = time.monotonic() + SHUTDOWN_GRACE
        with self._jobs_ready:
            self._jobs_ready.wait_for(lambda: not self._busy and not self._jobs,
                                      max(deadline - time.monotonic(), 0))
            self._jobs.extend([None] * len(self._workers))  # one "exit" per worker
            self._jobs_ready.notify_all()
        while self._returned:
            conn = self._returned.popleft()
            if conn is not None:
                conn.sock.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # -- the worker pool -------------------------------------------------------------

    def _submit(self, conn):
        with self._jobs_ready:
            self._jobs.append(conn)
            self._busy += 1
            if self._idle_workers >= len(self._jobs):
                self._jobs_ready.notify()
                return
            if len(self._workers) < self.config.threads:
                worker = threading.Thread(target=self._work, name=f"http-{len(self._workers)}",
                                          daemon=True)
                self._workers.append(worker)
                worker.start()
            else:
                self._jobs_ready.notify()

    def _work(self):
        while True:
            with self._jobs_ready:
                self._idle_workers += 1
                self._jobs_ready.wait_for(lambda: self._jobs)
                self._idle_workers -= 1
                conn = self._jobs.popleft()
            if conn is None:
                return
            try:
                self._serve_connection(conn)
            finally:
                with self._jobs_ready:
                    self._busy -= 1
                    self._jobs_ready.notify_all()

    def _serve_connection(self, conn):
        """Answer the requests this connection has sent; then hand it back, or close it."""
        conn.sock.settimeout(self.config.idle_timeout)
        keep = False
        try:
            while True:
                started = time.monotonic()
                handler = Handler(conn, (conn.address, 0), self)
                self.log_request(handler, conn.address, started)
                conn.sock.sendall(handler.wfile.getvalue())
                keep = not (handler.close_connection or self.stopping)
                if not keep or self._jobs:  # other connections are waiting: take turns
                    break
                if not (conn.take_head() or self._next_request_soon(conn)):
                    break
        except HeadTooLarge as exc:  # a pipelined request past the limits
            self._refuse(conn, exc.status, exc.reason)
            keep = False
        except OSError:  # the client went away or stopped reading: nothing to answer
            keep = False
        except Exception as exc:  # a bug of ours: say so, and drop this connection only
            self.log_error(conn.address, f"internal error: {exc!r}")
            keep = False
        if keep:
            conn.sock.setblocking(False)
        else:
            conn.sock.close()
        self._returned.append(conn if keep else None)
        self._wake()

    def _next_request_soon(self, conn):
        """Wait a moment for the client's next request (keep-alive clients send it at once).

        Serving it here saves two thread hand-offs; a client that stays quiet, or sends
        only part of a head, goes back to the selector thread, so it holds no worker.
        """
        if not conn.poller.poll(LINGER_MS):
            return False
        try:
            data = conn.sock.recv(65536)
        except OSError:
            return False
        conn.buffer += data
        return bool(data) and conn.take_head()

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
        if exc.errno == 98:  # EADDRINUSE
            raise SystemExit(f"friendlyhello: {where} is already in use: stop the other "
                             f"program or choose another port, e.g. PORT=8080") from None
        raise SystemExit(f"friendlyhello: cannot listen on {where}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def healthcheck(config):
    """The image's HEALTHCHECK: 0 if this container's server answers /healthz with 200."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.bind, config.bind)
    conn = http.client.HTTPConnection(host, config.port, timeout=config.redis_timeout)
    try:
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
    except OSError as exc:
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
    server = HelloServer(config, Site(config, client))
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
