"""A small, thread-safe Redis client on the standard library alone.

It speaks RESP2 (and RESP3 when asked or when a server sends it) over TCP, TLS or a
Unix socket, with a bounded pool of connections that all threads share. It is built
for a web server that must never hang on Redis:

* every call is bounded: ``connect_timeout`` covers name lookup plus connect and
  ``timeout`` covers the reply of each call, however the server dribbles it;
* after a connection-level failure, calls fail at once for a short, growing back-off
  window (about 0.2 s doubling to 2 s) and only one caller at a time probes the server;
* a command is never sent twice for one call: idle pooled connections that the server
  closed are found and replaced *before* use, and nothing is retried after bytes left;
* a broken or hostile server can only produce the typed errors below, never a hang,
  a ``RecursionError`` or an ``OSError``.

It is not a full Redis library: no pub/sub, no cluster, no client-side caching.
Connection state (MULTI, SELECT, WATCH) does not survive between calls because each
call may use another pooled connection; send a transaction with ``pipeline()``.
"""

import ipaddress
import re
import select
import socket
import ssl
import struct
import threading
import time
import urllib.parse

__all__ = [
    "RespClient", "encode_command",
    "RedisError", "RedisConnectionError", "RedisTimeoutError",
    "ResponseError", "AuthenticationError", "ProtocolError",
]

DEFAULT_PORT = 6379
MAX_BULK_LENGTH = 512 * 1024 * 1024     # Redis's own proto-max-bulk-len
MAX_ARRAY_LENGTH = 1024 * 1024 * 1024   # Redis's own limit on a multibulk
MAX_DEPTH = 200                         # nesting; well below Python's recursion limit
MAX_LINE_LENGTH = 1024 * 1024           # simple strings, errors, numbers
BACKOFF_FIRST = 0.2
BACKOFF_CAP = 2.0
_RECV_SIZE = 65536
_UNKNOWN = object()


class RedisError(Exception):
    """Base of every error this module raises for a call with valid arguments.

    ``command_sent`` is True when the call failed after its command started on its way:
    the server may have run it (an INCR may have counted) though no reply came back.
    """

    command_sent = False


class RedisConnectionError(RedisError):
    """The server could not be reached, or the connection broke during a call."""


class RedisTimeoutError(RedisError):
    """Connecting or waiting for a reply took longer than its timeout."""


class ProtocolError(RedisError):
    """The server sent bytes that are not valid RESP (or exceed a limit)."""


class ResponseError(RedisError):
    """The server answered with an error reply; ``code`` is its first word."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message
        first = message.split(" ", 1)[0]
        self.code = first if first.isupper() else "ERR"


class AuthenticationError(ResponseError):
    """The server refused our credentials, or wants some and got none."""


_AUTH_CODES = {"NOAUTH", "WRONGPASS"}
_AUTH_MESSAGES = ("ERR invalid password", "ERR AUTH")


def _error_reply(message):
    error = ResponseError(message)
    if error.code in _AUTH_CODES or message.startswith(_AUTH_MESSAGES):
        return AuthenticationError(message)
    return error


def encode_command(args):
    """Encode one command as a RESP array of bulk strings.

    ``str`` is sent as UTF-8; ``bytes``, ``int`` and ``float`` as they are. Anything
    else (``bool`` and ``None`` included) raises ``TypeError`` before a byte is sent.
    """
    if not args:
        raise ValueError("a command needs at least its name")
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, (bytes, bytearray, memoryview)):
            arg = bytes(arg)
        elif isinstance(arg, int) and not isinstance(arg, bool):
            arg = b"%d" % arg
        elif isinstance(arg, float):
            arg = repr(arg).encode()
        else:
            raise TypeError(
                f"cannot send {type(arg).__name__} to Redis: use str, bytes, int or float")
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


_INTEGER = re.compile(rb"-?[0-9]+")
_DOUBLE_WORDS = {b"inf": float("inf"), b"-inf": float("-inf"), b"nan": float("nan")}


def _integer(text):
    if not _INTEGER.fullmatch(text):
        raise ProtocolError(f"expected an integer, got {bytes(text)[:64]!r}")
    try:
        return int(text)
    except ValueError:  # longer than Python's int-from-string limit
        raise ProtocolError(f"integer too long: {bytes(text)[:64]!r}...") from None


class _Connection:
    """One socket with a read buffer and the RESP reply reader."""

    def __init__(self, sock, timeout, limits):
        self.sock = sock
        self.timeout = timeout
        self.max_bulk, self.max_array = limits
        self.buffer = bytearray()
        self.pos = 0
        self.deadline = 0.0
        self.reads = 0
        self.generation = 0
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._wait_at_most(timeout)

    def is_stale(self):
        """True if the server closed this idle connection or sent stray bytes."""
        if self.pos < len(self.buffer):
            return True
        try:
            return bool(self._poller.poll(0))
        except OSError:
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- one call: send, then read within one deadline ---------------------------------

    def _wait_at_most(self, seconds):
        """Bound each read and write. On plain sockets the kernel keeps the time
        (SO_RCVTIMEO): a Python socket timeout would add a poll() to every call."""
        if isinstance(self.sock, ssl.SSLSocket):
            self.sock.settimeout(seconds)
            return
        whole = int(seconds)
        limit = struct.pack("ll", whole, max(int((seconds - whole) * 1e6), 1 if not whole else 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)

    def call(self, payload, replies):
        if self.reads > 1:  # an earlier call shortened the wait
            self._wait_at_most(self.timeout)
        self.reads = 0
        self.deadline = time.monotonic() + self.timeout
        try:
            self.sock.sendall(payload)
            if replies == 1:
                return [self.read_reply(0)]
            return [self.read_reply(0) for _ in range(replies)]
        except (TimeoutError, BlockingIOError):  # BlockingIOError: the kernel's SO_RCVTIMEO
            error = RedisTimeoutError(f"no reply from Redis within {self.timeout:g}s")
        except OSError as exc:
            error = RedisConnectionError(f"connection to Redis lost: {exc}")
        except (RedisConnectionError, ProtocolError) as exc:
            error = exc
        error.command_sent = True
        raise error

    def _budget(self):
        """Before each read after a call's first, shrink the socket timeout to what is left."""
        if self.reads:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._wait_at_most(remaining)
        self.reads += 1

    def _fill(self):
        self._budget()
        chunk = self.sock.recv(_RECV_SIZE)
        if not chunk:
            raise RedisConnectionError("Redis closed the connection in the middle of a reply")
        if self.pos == len(self.buffer):
            self.buffer[:] = chunk
        else:
            if self.pos:
                del self.buffer[:self.pos]
            self.buffer += chunk
        self.pos = 0

    def _line(self):
        searched = 0  # bytes after self.pos already known to hold no CRLF
        while True:
            end = self.buffer.find(b"\r\n", self.pos + searched)
            if end >= 0:
                line = self.buffer[self.pos:end]
                self.pos = end + 2
                return line
            searched = max(len(self.buffer) - self.pos - 1, 0)
            if searched > MAX_LINE_LENGTH:
                raise ProtocolError(f"reply line longer than {MAX_LINE_LENGTH} bytes")
            self._fill()

    def _exact(self, length):
        """Return the next ``length`` bytes and check the CRLF that ends them."""
        want = length + 2
        available = len(self.buffer) - self.pos
        if available >= want:
            data = bytes(self.buffer[self.pos:self.pos + length])
            tail = self.buffer[self.pos + length:self.pos + want]
            self.pos += want
        else:  # large or split: read straight into one buffer, no repeated copies
            out = bytearray(want)
            out[:available] = self.buffer[self.pos:]
            self.buffer.clear()
            self.pos = 0
            view = memoryview(out)[available:]
            while view:
                self._budget()
                got = self.sock.recv_into(view)
                if not got:
                    raise RedisConnectionError("Redis closed the connection in the middle of a reply")
                view = view[got:]
            del view  # release the buffer export so out can shrink
            tail = out[length:]
            del out[length:]
            data = bytes(out)
        if tail != b"\r\n":
            raise ProtocolError(f"bulk string of length {length} not followed by CRLF")
        return data

    def _length(self, text, limit, what):
        length = _integer(text)
        if length < -1:
            raise ProtocolError(f"negative {what} length {length}")
        if length > limit:
            raise ProtocolError(f"{what} length {length} exceeds the limit of {limit}")
        return length

    def read_reply(self, depth):
        line = self._line()
        if not line:
            raise ProtocolError("empty reply line")
        kind = line[0]
        rest = line[1:]
        if kind == 58:    # ':' integer
            return _integer(rest)
        if kind == 43:    # '+' simple string
            return rest.decode("utf-8", "replace")
        if kind == 36:    # '$' bulk string
            length = self._length(rest, self.max_bulk, "bulk")
            return None if length == -1 else self._exact(length)
        if kind == 45:    # '-' error
            return _error_reply(rest.decode("utf-8", "replace"))
        if kind in (42, 126, 62, 37, 124):  # '*' array, '~' set, '>' push, '%' map, '|' attribute
            if depth >= MAX_DEPTH:
                raise ProtocolError(f"replies nested deeper than {MAX_DEPTH}")
            count = self._length(rest, self.max_array, "aggregate")
            if count == -1:
                return None
            if kind in (37, 124):
                pairs = [(self.read_reply(depth + 1), self.read_reply(depth + 1)) for _ in range(count)]
                if kind == 124:  # attributes annotate the reply that follows: skip them
                    return self.read_reply(depth + 1)
                return {_hashable(key): value for key, value in pairs}
            items = [self.read_reply(depth + 1) for _ in range(count)]
            if kind == 126:
                try:
                    return set(items)
                except TypeError:
                    return items
            return items
        if kind == 95:    # '_' null
            if rest:
                raise ProtocolError(f"null with a payload: {bytes(line[:64])!r}")
            return None
        if kind == 35:    # '#' boolean
            if rest not in (b"t", b"f"):
                raise ProtocolError(f"invalid boolean {bytes(rest[:64])!r}")
            return rest == b"t"
        if kind == 44:    # ',' double
            try:
                return _DOUBLE_WORDS.get(bytes(rest).lower()) or float(rest)
            except ValueError:
                raise ProtocolError(f"invalid double {bytes(rest[:64])!r}") from None
        if kind == 40:    # '(' big number
            return _integer(rest)
        if kind in (33, 61):  # '!' blob error, '=' verbatim string
            length = self._length(rest, self.max_bulk, "bulk")
            if length == -1:
                return None
            data = self._exact(length)
            if kind == 33:
                return _error_reply(data.decode("utf-8", "replace"))
            if length < 4 or data[3:4] != b":":
                raise ProtocolError(f"verbatim string without a format: {data[:64]!r}")
            return data[4:]
        raise ProtocolError(f"unknown reply type {chr(kind)!r} in {bytes(line[:64])!r}")


def _hashable(key):
    if isinstance(key, list):
        key = tuple(_hashable(k) for k in key)
    try:
        hash(key)
    except TypeError:
        raise ProtocolError(f"map key {key!r:.64} cannot be a dict key") from None
    return key


class RespClient:
    """A Redis client shared by all threads; connects lazily, pools connections."""

    def __init__(self, host="redis", port=DEFAULT_PORT, *, db=0, username=None, password=None,
                 connect_timeout=2.0, timeout=2.0, unix_socket=None, ssl_context=None,
                 protocol=2, max_connections=32, max_bulk_length=MAX_BULK_LENGTH,
                 max_array_length=MAX_ARRAY_LENGTH):
        if protocol not in (2, 3):
            raise ValueError(f"protocol must be 2 or 3, not {protocol!r}")
        if username is not None and password is None:
            raise ValueError("a username needs a password")
        if not (isinstance(db, int) and db >= 0):
            raise ValueError(f"db must be a whole number >= 0, not {db!r}")
        if not (connect_timeout > 0 and timeout > 0):
            raise ValueError("timeouts must be positive numbers of seconds")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections!r}")
        self.host, self.port, self.db = host, port, db
        self.unix_socket = unix_socket
        self.username, self._password = username, password
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self.ssl_context, self.protocol = ssl_context, protocol
        self._limits = (max_bulk_length, max_array_length)
        self.address = f"unix:{unix_socket}" if unix_socket else _host_port(host, port)
        self._setup = self._setup_commands()
        self._idle = []
        self.max_connections = max_connections
        self._in_use = 0  # connections taken from the pool or being opened
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._generation = 0
        # Outage state: after a failure, calls fail fast until _retry_at; then one probes.
        self._failures = 0
        self._retry_at = 0.0
        self._probing = False
        self._last_error = ""

    @classmethod
    def from_url(cls, url, **options):
        """``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` or ``unix:///path``."""
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"Redis URL scheme must be redis://, rediss:// or unix://, not {url.split(':')[0]!r}://")
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"db", "password", "username", "protocol"}
        if unknown:
            raise ValueError(f"unknown Redis URL option {sorted(unknown)[0]!r} (allowed: db, password, username, protocol)")

        def option(name, value):
            return query[name][-1] if name in query else value

        username = option("username", urllib.parse.unquote(parts.username) if parts.username else None)
        password = option("password", urllib.parse.unquote(parts.password) if parts.password is not None else None)
        db_text = option("db", parts.path.lstrip("/") if scheme != "unix" else "") or "0"
        if not re.fullmatch(r"[0-9]+", db_text):
            raise ValueError(f"Redis database must be a whole number, not {db_text!r}")
        protocol_text = option("protocol", "2")
        if protocol_text not in ("2", "3"):
            raise ValueError(f"Redis protocol must be 2 or 3, not {protocol_text!r}")
        settings = dict(db=int(db_text), username=username or None, password=password,
                        protocol=int(protocol_text))
        if scheme == "unix":
            if not parts.path:
                raise ValueError("a unix:// Redis URL needs a socket path, e.g. unix:///run/redis.sock")
            settings["unix_socket"] = parts.path
            return cls(**{**settings, **options})
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError(f"Redis URL port must be a number from 1 to 65535 in {parts.netloc.rpartition('@')[2]!r}") from None
        if scheme == "rediss":
            options.setdefault("ssl_context", ssl.create_default_context())
        return cls(parts.hostname or "localhost", port, **{**settings, **options})

    def __repr__(self):
        return f"RespClient({self.address!r}, db={self.db})"

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- the commands ----------------------------------------------------------------

    def execute(self, *args):
        """Send one command and return its reply; an error reply is raised."""
        return _raise_error(self._call(encode_command(args), 1)[0])

    def pipeline(self, commands):
        """Send several commands in one write; return their replies in order.

        Each command is a sequence of arguments, or the bytes ``encode_command()`` made of
        one (encode a constant command once). Error replies are returned in place as
        ``ResponseError`` values, not raised.
        """
        commands = list(commands)
        if not commands:
            return []
        payload = b"".join(c if isinstance(c, bytes) else encode_command(tuple(c)) for c in commands)
        return self._call(payload, len(commands))

    def incr(self, key):
        reply = self.execute("INCR", key)
        if type(reply) is not int:
            raise ProtocolError(f"INCR answered {reply!r:.64}, not an integer")
        return reply

    def ping(self):
        return self.execute("PING") in ("PONG", b"PONG")

    def close(self):
        """Close idle connections now and busy ones when their call ends."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- the pool and the outage state -----------------------------------------------

    def _call(self, payload, replies):
        conn, probing = self._checkout()
        try:
            result = conn.call(payload, replies)
        except (RedisConnectionError, RedisTimeoutError, ProtocolError) as exc:
            self._checkin(conn, broken=True)
            self._record(exc, probing)
            raise
        except BaseException:  # e.g. KeyboardInterrupt mid-reply: the stream is out of step
            self._checkin(conn, broken=True)
            self._record(_UNKNOWN, probing)
            raise
        self._checkin(conn)
        self._record(None, probing)
        return result

    def _checkout(self):
        """Take a pooled connection (or the right to open one), or fail fast in an outage."""
        probing = False
        with self._lock:
            if self._failures:
                wait = self._retry_at - time.monotonic()
                if wait > 0 or self._probing:
                    when = f"retry in {wait:.2f}s" if wait > 0 else "another call is retrying"
                    raise RedisConnectionError(
                        f"Redis at {self.address} is unavailable ({when}; last error: {self._last_error})")
                self._probing = probing = True
            if self._in_use >= self.max_connections and not self._slot_freed.wait_for(
                    lambda: self._in_use < self.max_connections, self.timeout):
                if probing:
                    self._probing = False
                raise RedisTimeoutError(
                    f"all {self.max_connections} Redis connections stayed busy for {self.timeout:g}s")
            self._in_use += 1
            conn = self._idle.pop() if self._idle else None
        try:
            while conn is not None and conn.is_stale():
                conn.close()
                with self._lock:
                    conn = self._idle.pop() if self._idle else None
            return (conn or self._connect()), probing
        except BaseException as exc:
            self._checkin(None)
            self._record(exc if isinstance(exc, RedisError) else _UNKNOWN, probing)
            raise

    def _checkin(self, conn, broken=False):
        """Give the connection back to the pool (closed, if broken or the pool was closed)."""
        with self._lock:
            self._in_use -= 1
            if self._in_use == self.max_connections - 1:  # it was full: a caller may be waiting
                self._slot_freed.notify()
            if conn is None:
                return
            keep = not broken and conn.generation == self._generation
            if keep:
                self._idle.append(conn)
        if not keep:
            conn.close()

    def _record(self, error, probing):
        """Note how a call ended: a failure opens (or widens) the fail-fast window.

        ``error`` is None when the server answered, ``_UNKNOWN`` when the call ended
        for a reason that says nothing about the server.
        """
        if error is None and not probing and not self._failures:
            return  # the common case, without taking the lock
        with self._lock:
            if probing:
                self._probing = False
            if error is _UNKNOWN:
                return
            if error is None or isinstance(error, ResponseError) and not isinstance(error, AuthenticationError):
                self._failures = 0
                return
            self._failures += 1
            backoff = min(BACKOFF_FIRST * 2 ** (self._failures - 1), BACKOFF_CAP)
            self._retry_at = time.monotonic() + backoff
            self._last_error = str(error)

    # -- connecting ------------------------------------------------------------------

    def _setup_commands(self):
        commands = []
        if self.protocol == 3:
            hello = ["HELLO", 3]
            if self._password is not None:
                hello += ["AUTH", self.username or "default", self._password]
            commands.append(hello)
        elif self._password is not None:
            commands.append(["AUTH", self.username, self._password] if self.username else ["AUTH", self._password])
        if self.db:
            commands.append(["SELECT", self.db])
        return b"".join(encode_command(c) for c in commands), len(commands)

    def _connect(self):
        deadline = time.monotonic() + self.connect_timeout
        try:
            sock = self._open_socket(deadline)
        except TimeoutError:
            raise RedisTimeoutError(
                f"could not connect to Redis at {self.address} within {self.connect_timeout:g}s") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis at {self.address}: {_reason(exc)}") from None
        if not isinstance(sock, ssl.SSLSocket):
            sock.settimeout(None)  # blocking; _Connection bounds waits with SO_RCVTIMEO
        conn = _Connection(sock, self.timeout, self._limits)
        with self._lock:
            conn.generation = self._generation
        payload, count = self._setup
        if count:
            try:
                for reply in conn.call(payload, count):
                    _raise_error(reply)
            except RedisError as exc:
                conn.close()
                exc.command_sent = False  # only AUTH/SELECT went out, not the caller's command
                raise
            except BaseException:
                conn.close()
                raise
        return conn

    def _open_socket(self, deadline):
        if self.unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.connect(self.unix_socket)
            except BaseException:
                sock.close()
                raise
            return sock
        last_error = OSError("no address found")
        for family, kind, proto, _, address in _resolve(self.host, self.port, deadline):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(remaining)
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.ssl_context is not None:
                    sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
                return sock
            except TimeoutError:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                last_error = exc
        raise last_error


def _resolve(host, port, deadline):
    """getaddrinfo with a deadline: the C resolver has none of its own."""
    try:
        ipaddress.ip_address(host)
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except ValueError:
        pass
    outcome = []
    done = threading.Event()

    def lookup():
        try:
            outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            outcome.append(exc)
        done.set()

    threading.Thread(target=lookup, name=f"resolve {host}", daemon=True).start()
    if not done.wait(max(deadline - time.monotonic(), 0)):
        raise TimeoutError
    if isinstance(outcome[0], OSError):
        raise outcome[0]
    return outcome[0]


def _reason(exc):
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    return exc.strerror or str(exc) or type(exc).__name__


def _host_port(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _raise_error(reply):
    if isinstance(reply, ResponseError):
        raise reply
    return reply
