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
  a ``RecursionError`` or an ``OSError``;
* no message of this module holds any part of a password, whatever shape a URL has.

It is not a full Redis library: no pub/sub, no cluster, no client-side caching.
Connection state (MULTI, SELECT, WATCH) does not survive between calls because each
call may use another pooled connection; send a transaction with ``pipeline()``.

Read top to bottom: errors, encoding, the reply reader, one connection, the back-off
while the server is unavailable, the client (pool and calls), connecting, URL parsing.
"""

import collections
import ipaddress
import itertools
import re
import select
import socket
import ssl
import struct
import threading
import time
import urllib.parse

__all__ = [
    "RespClient", "encode_command", "encode_transaction", "Transaction",
    "parse_url", "parse_addresses", "address_of", "valid_host", "means_unavailable",
    "expect_integer",
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


# -- errors ------------------------------------------------------------------------------------

class RedisError(Exception):
    """Base of every error this module raises for a call with valid arguments.

    ``command_sent`` is True when the call failed after its command started on its way:
    the server may have run it (an INCR may have counted) though no reply came back.
    ``cause`` is set on a call refused at once while the server is unavailable: the error
    that made it so, so a caller can keep saying *why* Redis is unavailable.
    """

    command_sent = False
    cause = None


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


def means_unavailable(error):
    """True when an error says the server cannot be used now: every error but an error reply
    to a command (WRONGTYPE, OOM, ...), which is an answer. Refused credentials make it unavailable:
    nothing will work until someone fixes them."""
    return not isinstance(error, ResponseError) or isinstance(error, AuthenticationError)


def expect_integer(reply, command):
    """The reply of a command that answers an integer (INCR), or ProtocolError."""
    if type(reply) is not int:
        raise ProtocolError(f"{command} answered {reply!r:.64}, not an integer")
    return reply


def _value_of(reply):
    """A reply as a caller of one command gets it: the value, or its error reply raised."""
    if isinstance(reply, ResponseError):
        raise reply
    return reply


# -- encoding ----------------------------------------------------------------------------------

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


class Transaction(bytes):
    """Commands encoded once as one MULTI ... EXEC block (``encode_transaction()``). In a
    pipeline it takes one place, and its reply is EXEC's: the list of its commands' replies
    (an error reply in its place; Redis runs them all), or the error that refused the whole
    block. Redis runs it whole or not at all: a connection lost before EXEC runs none of it."""

    replies = 2  # what Redis sends back for it: MULTI's +OK, a +QUEUED per command, EXEC's


def _exec_reply(replies):
    """A transaction's reply, from all of Redis's replies to it: EXEC's; but where Redis
    refused the block (EXECABORT), the refusal that made it (OOM, READONLY, NOAUTH...)."""
    executed = replies[-1]
    if isinstance(executed, ResponseError) and executed.code == "EXECABORT":
        return next((r for r in replies[:-1] if isinstance(r, ResponseError)), executed)
    return executed


def encode_transaction(commands):
    commands = [encode_command(tuple(c)) for c in commands]
    multi, exec_ = encode_command(("MULTI",)), encode_command(("EXEC",))
    block = Transaction(b"".join([multi, *commands, exec_]))
    block.replies = len(commands) + 2
    return block


# -- the reply reader --------------------------------------------------------------------------

_INTEGER = re.compile(rb"-?[0-9]+")
_DOUBLE_WORDS = {b"inf": float("inf"), b"-inf": float("-inf"), b"nan": float("nan")}
_CLOSED_MID_REPLY = "Redis closed the connection in the middle of a reply"


def _integer(text):
    if not _INTEGER.fullmatch(text):
        raise ProtocolError(f"expected an integer, got {bytes(text)[:64]!r}")
    try:
        return int(text)
    except ValueError:  # longer than Python's int-from-string limit
        raise ProtocolError(f"integer too long: {bytes(text)[:64]!r}...") from None


def _hashable(value):
    """Set members and map keys: nested arrays become tuples; anything else unhashable is
    refused."""
    if isinstance(value, list):
        value = tuple(_hashable(v) for v in value)
    try:
        hash(value)
    except TypeError:
        raise ProtocolError(f"{value!r:.64} cannot be a set member or a map key") from None
    return value


class ReplyReader:
    """Parses RESP2/RESP3 replies from a buffer; ``recv``/``recv_into`` top it up.

    One method per reply type, chosen by the first byte. Both callables raise on a
    timeout; they return no bytes when the server closed the connection.
    """

    def __init__(self, recv, recv_into, max_bulk, max_array):
        self._recv, self._recv_into = recv, recv_into
        self.max_bulk, self.max_array = max_bulk, max_array
        self.buffer = bytearray()
        self.pos = 0

    def has_unread(self):
        return self.pos < len(self.buffer)

    def read(self, depth=0):
        line = self._line()
        if not line:
            raise ProtocolError("empty reply line")
        parse = self._TYPES.get(line[0])
        if parse is None:
            raise ProtocolError(f"unknown reply type {chr(line[0])!r} in {bytes(line[:64])!r}")
        return parse(self, line[1:], depth)

    # -- one method per type ---------------------------------------------------------------

    def _simple(self, rest, depth):
        return rest.decode("utf-8", "replace")

    def _error(self, rest, depth):
        return _error_reply(rest.decode("utf-8", "replace"))

    def _number(self, rest, depth):
        return _integer(rest)

    def _bulk(self, rest, depth):
        length = self._length(rest, self.max_bulk, "bulk")
        return None if length == -1 else self._exact(length)

    def _blob_error(self, rest, depth):
        data = self._bulk(rest, depth)
        return None if data is None else _error_reply(data.decode("utf-8", "replace"))

    def _verbatim(self, rest, depth):
        data = self._bulk(rest, depth)
        if data is None:
            return None
        if len(data) < 4 or data[3:4] != b":":
            raise ProtocolError(f"verbatim string without a format: {data[:64]!r}")
        return data[4:]

    def _array(self, rest, depth):
        count = self._count(rest, depth)
        return None if count == -1 else [self.read(depth + 1) for _ in range(count)]

    def _set(self, rest, depth):
        items = self._array(rest, depth)
        return None if items is None else {_hashable(item) for item in items}

    def _map(self, rest, depth):
        count = self._count(rest, depth)
        if count == -1:
            return None
        return {_hashable(self.read(depth + 1)): self.read(depth + 1) for _ in range(count)}

    def _attribute(self, rest, depth):
        self._map(rest, depth)  # attributes annotate the reply that follows: skip them
        return self.read(depth + 1)

    def _null(self, rest, depth):
        if rest:
            raise ProtocolError(f"null with a payload: {bytes(rest[:64])!r}")
        return None

    def _boolean(self, rest, depth):
        if rest not in (b"t", b"f"):
            raise ProtocolError(f"invalid boolean {bytes(rest[:64])!r}")
        return rest == b"t"

    def _double(self, rest, depth):
        try:
            return _DOUBLE_WORDS.get(bytes(rest).lower()) or float(rest)
        except ValueError:
            raise ProtocolError(f"invalid double {bytes(rest[:64])!r}") from None

    _TYPES = {
        ord("+"): _simple, ord("-"): _error, ord(":"): _number, ord("$"): _bulk,
        ord("*"): _array, ord(">"): _array, ord("~"): _set, ord("%"): _map,
        ord("|"): _attribute, ord("_"): _null, ord("#"): _boolean, ord(","): _double,
        ord("("): _number, ord("!"): _blob_error, ord("="): _verbatim,
    }

    # -- lengths, lines and exact byte counts ------------------------------------------------

    def _count(self, rest, depth):
        if depth >= MAX_DEPTH:
            raise ProtocolError(f"replies nested deeper than {MAX_DEPTH}")
        return self._length(rest, self.max_array, "aggregate")

    @staticmethod
    def _length(text, limit, what):
        length = _integer(text)
        if length < -1:
            raise ProtocolError(f"negative {what} length {length}")
        if length > limit:
            raise ProtocolError(f"{what} length {length} exceeds the limit of {limit}")
        return length

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

    def _fill(self):
        chunk = self._recv()
        if not chunk:
            raise RedisConnectionError(_CLOSED_MID_REPLY)
        if self.pos == len(self.buffer):
            self.buffer[:] = chunk
        else:
            del self.buffer[:self.pos]
            self.buffer += chunk
        self.pos = 0

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
                got = self._recv_into(view)
                if not got:
                    raise RedisConnectionError(_CLOSED_MID_REPLY)
                view = view[got:]
            del view  # release the buffer export so out can shrink
            tail = out[length:]
            del out[length:]
            data = bytes(out)
        if tail != b"\r\n":
            raise ProtocolError(f"bulk string of length {length} not followed by CRLF")
        return data


# -- one connection: a socket, a deadline per call, a reader ----------------------------------

class _Connection:
    """One socket to Redis. Each call sends, then reads its replies within one deadline."""

    def __init__(self, sock, timeout, limits, generation):
        self.sock = sock
        self.timeout = timeout
        self.generation = generation  # the pool's, when it was opened
        self.role = None              # what ROLE said when it opened, where it was asked
        self.reader = ReplyReader(self._recv, self._recv_into, *limits)
        self._deadline = 0.0
        self._first_read = True     # the socket's own timeout is still the whole call's
        self._shortened = False     # a later read shortened it: restore before the next call
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._wait_at_most(timeout)

    def is_stale(self):
        """True if the server closed this idle connection or sent stray bytes."""
        if self.reader.has_unread():
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

    def call(self, payload, replies):
        if self._shortened:
            self._wait_at_most(self.timeout)
            self._shortened = False
        self._first_read = True
        self._deadline = time.monotonic() + self.timeout
        try:
            self.sock.sendall(payload)
            return [self.reader.read() for _ in range(replies)]
        except (TimeoutError, BlockingIOError):  # BlockingIOError: the kernel's SO_RCVTIMEO
            error = RedisTimeoutError(f"no reply from Redis within {self.timeout:.3g}s")
        except OSError as exc:
            error = RedisConnectionError(f"connection to Redis lost: {exc}")
        except (RedisConnectionError, ProtocolError) as exc:
            error = exc
        error.command_sent = True
        raise error

    def _recv(self):
        self._budget()
        return self.sock.recv(_RECV_SIZE)

    def _recv_into(self, view):
        self._budget()
        return self.sock.recv_into(view)

    def _budget(self):
        """Before each read after a call's first, shrink the socket timeout to what is left."""
        if self._first_read:
            self._first_read = False
            return
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self._wait_at_most(remaining)
        self._shortened = True

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


# -- the back-off while unavailable -------------------------------------------------------------

class _Backoff:
    """After a failure, calls fail fast until the window ends; then one call probes.

    Not locked itself: the client calls it under its own lock.
    """

    def __init__(self):
        self.failures = 0
        self.retry_at = 0.0
        self.probing = False
        self.last_error = None

    def admit(self, address):
        """Let a call go ahead: True if it is the probe that tries the server again. Raise the
        fail-fast error."""
        if not self.failures:
            return False
        wait = self.retry_at - time.monotonic()
        if wait <= 0 and not self.probing:
            self.probing = True
            return True
        when = f"retry in {wait:.2f}s" if wait > 0 else "another call is retrying"
        error = RedisConnectionError(
            f"Redis at {address} is unavailable ({when}; last error: {self.last_error})")
        error.cause = self.last_error
        raise error

    @property
    def clear(self):
        """Not backing off: calls go ahead without taking the client's lock."""
        return not self.failures and not self.probing

    def end_probe(self):
        self.probing = False

    def forget(self):
        """Calls go ahead again at once (unless one is probing already)."""
        if not self.probing:
            self.failures = 0

    def record(self, error):
        """A call ended: None when the server answered, else the error that says it is away."""
        if error is None or not means_unavailable(error):
            self.failures = 0
            return
        self.failures += 1
        window = min(BACKOFF_FIRST * 2 ** (self.failures - 1), BACKOFF_CAP)
        self.retry_at = time.monotonic() + window
        self.last_error = error


# -- the client --------------------------------------------------------------------------------

def _check_options(protocol, username, password, db, connect_timeout, timeout, max_connections):
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


class RespClient:
    """A Redis client shared by all threads; connects lazily, pools connections."""

    def __init__(self, host="redis", port=DEFAULT_PORT, *, db=0, username=None, password=None,
                 connect_timeout=2.0, timeout=2.0, unix_socket=None, ssl_context=None,
                 protocol=2, max_connections=32, max_bulk_length=MAX_BULK_LENGTH,
                 max_array_length=MAX_ARRAY_LENGTH, sentinels=None, master_name="mymaster",
                 sentinel_username=None, sentinel_password=None):
        _check_options(protocol, username, password, db, connect_timeout, timeout,
                       max_connections)
        self.host, self.port, self.db = host, port, db
        self.unix_socket, self.username = unix_socket, username
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self.ssl_context, self.protocol = ssl_context, protocol
        self.max_connections = max_connections
        self.address = address_of(host, port, unix_socket)
        limits = (max_bulk_length, max_array_length)
        setup = _setup_commands(protocol, username, password, db)
        options = (host, port, unix_socket, ssl_context, connect_timeout, timeout, limits, setup)
        if sentinels:  # the primary is whichever server the sentinels name
            named = ", ".join(address_of(h, p) for h, p in sentinels)
            self.address = f"the primary of {master_name} (sentinels {named})"
            asking = _setup_commands(2, sentinel_username, sentinel_password, 0)
            self._connector = _SentinelConnector(sentinels, master_name, asking, self.address,
                                                 *options)
            self._connector.switched = self._switched
        else:
            self._connector = _Connector(self.address, *options)
        self.sentinel = self._connector if sentinels else None
        self._idle = []
        self._in_use = 0  # connections taken from the pool or being opened
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        # Callers waiting for a connection, first come first served: a freed slot is handed to
        # the first of them, so a busy thread that calls again at once cannot starve the others.
        self._waiting, self._handed = collections.deque(), set()
        self._generation = 0  # raised by close(): connections of older ones are not pooled
        self._backoff = _Backoff()

    @classmethod
    def from_url(cls, url, **options):
        """``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` or ``unix:///path``
        (see ``parse_url``); ``options`` override what the URL says."""
        return cls(**{**parse_url(url), **options})

    def __repr__(self):
        return f"RespClient({self.address!r}, db={self.db})"

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- the commands ----------------------------------------------------------------------

    def execute(self, *args):
        """Send one command and return its reply; an error reply is raised."""
        return _value_of(self._call(encode_command(args), 1)[0])

    def pipeline(self, commands):
        """Send several commands in one write; return their replies in order.

        Each command is a sequence of arguments, or the bytes ``encode_command()`` made of
        one (encode a constant command once), or a ``Transaction``. Error replies are
        returned in place as ``ResponseError`` values, not raised.
        """
        commands = list(commands)
        if not commands:
            return []
        payload = b"".join(c if isinstance(c, bytes) else encode_command(tuple(c))
                           for c in commands)
        counts = [c.replies if isinstance(c, Transaction) else 1 for c in commands]
        replies = self._call(payload, sum(counts))
        if len(replies) == len(commands):
            return replies
        return [_exec_reply(replies[end - count:end]) if count > 1 else replies[end - 1]
                for count, end in zip(counts, itertools.accumulate(counts), strict=True)]

    def incr(self, key):
        return expect_integer(self.execute("INCR", key), "INCR")

    def ping(self):
        return self.execute("PING") in ("PONG", b"PONG")

    def close(self):
        """Close idle connections now, busy ones when their call ends, and any subscription."""
        self._drop_pool()
        if self.sentinel is not None:
            self.sentinel.stop_watch()

    def _switched(self):
        """The sentinels announced another primary: drop the pool, and stop backing off."""
        with self._lock:
            self._backoff.forget()
        self._drop_pool()

    def _drop_pool(self):
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- the pool ----------------------------------------------------------------------------

    def _call(self, payload, replies):
        conn, probing = self._checkout()
        try:
            result = conn.call(payload, replies)
        except (RedisConnectionError, RedisTimeoutError, ProtocolError) as exc:
            self._checkin(conn, broken=True)
            self._ended(probing, exc)
            raise
        except BaseException:  # e.g. KeyboardInterrupt mid-reply: the stream is out of step
            self._checkin(conn, broken=True)
            self._abandoned(probing)
            raise
        self._checkin(conn)
        self._ended(probing, None)
        if self.sentinel is not None and _not_the_primary(result):
            self._drop_pool()  # a demoted primary, or one without its replicas: ask them again
        return result

    @property
    def primary(self):
        """With sentinels, (host, port, since: a time.time()) of the primary in use; else None."""
        return self.sentinel.in_use() if self.sentinel is not None else None

    def _checkout(self):
        """Take a pooled connection (or open one); fail fast while backing off. Returns the
        connection and whether this call is the probe that tries the server again."""
        with self._lock:
            probing = self._backoff.admit(self.address)
            if self._in_use < self.max_connections and not self._waiting:
                self._in_use += 1
            else:
                turn = object()
                self._waiting.append(turn)
                if not self._slot_freed.wait_for(lambda: turn in self._handed, self.timeout):
                    self._waiting.remove(turn)
                    if probing:
                        self._backoff.end_probe()
                    raise RedisTimeoutError(
                        f"all {self.max_connections} Redis connections stayed busy for "
                        f"{self.timeout:g}s")
                self._handed.remove(turn)  # the slot came counted, from the caller that freed it
            conn = self._idle.pop() if self._idle else None
            generation = self._generation
        try:
            while conn is not None and conn.is_stale():
                conn.close()
                with self._lock:
                    conn = self._idle.pop() if self._idle else None
            return (conn or self._connector.connect(generation)), probing
        except RedisError as exc:
            self._checkin(None)
            self._ended(probing, exc)
            raise
        except BaseException:
            self._checkin(None)
            self._abandoned(probing)
            raise

    def _checkin(self, conn, broken=False):
        """Give the connection back to the pool (closed, if broken or the pool was closed)."""
        with self._lock:
            keep = conn is not None and not broken and conn.generation == self._generation
            if keep:
                self._idle.append(conn)
            if self._waiting:  # the slot passes to the first waiting caller
                self._handed.add(self._waiting.popleft())
                self._slot_freed.notify_all()
            else:
                self._in_use -= 1
        if conn is not None and not keep:
            conn.close()

    def _ended(self, probing, error):
        """Note how a call ended: ``error`` None when the server answered, else why it failed."""
        if error is None and not probing and self._backoff.clear:
            return  # the common case, without taking the lock
        with self._lock:
            if probing:
                self._backoff.end_probe()
            self._backoff.record(error)

    def _abandoned(self, probing):
        """A call ended for a reason that says nothing about the server (an interrupt, a bug)."""
        if probing:
            with self._lock:
                self._backoff.end_probe()


# -- connecting ------------------------------------------------------------------------------

def _setup_commands(protocol, username, password, db):
    """What every new connection sends first (HELLO or AUTH, then SELECT), encoded, and how many."""
    commands = []
    if protocol == 3:
        hello = ["HELLO", 3]
        if password is not None:
            hello += ["AUTH", username or "default", password]
        commands.append(hello)
    elif password is not None:
        commands.append(["AUTH", username, password] if username else ["AUTH", password])
    if db:
        commands.append(["SELECT", db])
    return b"".join(encode_command(c) for c in commands), len(commands)


class _Connector:
    """Opens connections to one server: name lookup and connect within ``connect_timeout``,
    TLS when asked, then the setup commands; every failure a typed error."""

    def __init__(self, address, host, port, unix_socket, ssl_context, connect_timeout, timeout,
                 limits, setup):
        self.address = address
        self.host = host
        self.port = port
        self.unix_socket = unix_socket
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.limits, self.setup = limits, setup

    def connect(self, generation):
        return self.connect_to(self.host, self.port, self.address, generation, self.setup)

    def connect_to(self, host, port, address, generation, setup, within=None):
        """A connection to ``host``:``port`` (named ``address`` in errors), ``setup`` sent;
        ``within`` seconds to connect and for each reply, if given (a sentinel's share)."""
        limit = within or self.connect_timeout
        deadline = time.monotonic() + limit
        try:
            sock = self._open_socket(deadline, host, port)
        except TimeoutError:
            raise RedisTimeoutError(
                f"could not connect to Redis at {address} within {limit:.3g}s") from None
        except OSError as exc:
            raise RedisConnectionError(
                f"cannot connect to Redis at {address}: {_reason(exc)}") from None
        if not isinstance(sock, ssl.SSLSocket):
            sock.settimeout(None)  # blocking; _Connection bounds waits with SO_RCVTIMEO
        conn = _Connection(sock, within or self.timeout, self.limits, generation)
        payload, count = setup
        if count:
            try:
                for reply in conn.call(payload, count):
                    conn.role = _value_of(reply)  # the last is ROLE's, where it was asked
            except ResponseError as exc:  # refused credentials, or a SELECT of a database it lacks
                conn.close()
                if isinstance(exc, AuthenticationError):
                    raise
                # The server answered, but no command of the caller's can run on this
                # connection: Redis is unavailable (back-off), not an error reply.
                error = RedisConnectionError(
                    f"Redis at {address} refused the connection's setup: {exc}")
                error.cause = exc
                raise error from None
            except RedisError as exc:
                conn.close()
                exc.command_sent = False  # only AUTH/SELECT went out, not the caller's command
                raise
            except BaseException:
                conn.close()
                raise
        return conn

    def _open_socket(self, deadline, host, port):
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
        for family, kind, proto, _, address in _resolve(host, port, deadline):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(remaining)
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.ssl_context is not None:
                    sock = self.ssl_context.wrap_socket(sock, server_hostname=host)
                return sock
            except TimeoutError:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                last_error = exc
        raise last_error


# -- Sentinel: which server is the primary ------------------------------------------------------

# Errors that say the connection's server is not (or no more) the primary to write to: the pool
# is dropped, and the next connection asks the sentinels again.
NOT_THE_PRIMARY = ("READONLY", "MASTERDOWN", "LOADING", "NOREPLICAS", "EXECABORT", "UNBLOCKED")


MAX_SENTINELS = 16  # the ones given, and those they name (SENTINEL sentinels), at most


class _SentinelConnector(_Connector):
    """Opens connections to the server the Sentinels name as the primary of ``master_name``,
    as Redis's "Sentinel client guidelines" say: the ``sentinels`` ((host, port) pairs) asked in
    turn, all within the connect timeout, the one that answered first the next time; ``SENTINEL
    get-master-addr-by-name``, and ``SENTINEL sentinels`` to learn the others; a new
    connection's ``ROLE`` must say master (a replica, or a primary no sentinel names any more, is
    dropped and the sentinels asked again). Once a primary is in use, a _PrimaryWatch follows
    what they name, and calls ``switched()`` when it changes."""

    def __init__(self, sentinels, master_name, sentinel_setup, *args):
        super().__init__(*args)
        self.sentinels, self.master_name = list(sentinels), master_name
        self._given = set(self.sentinels)  # never dropped; learned ones go when none names them
        self.sentinel_setup = sentinel_setup
        self._question = encode_command(("SENTINEL", "get-master-addr-by-name", master_name)) + \
            encode_command(("SENTINEL", "sentinels", master_name))
        self.primary = None       # (host, port) of the primary last connected to
        self.primary_since = None  # time.time() it became that
        self.replicas = None      # how many replicas its ROLE named connected
        self.switched = None      # called when the sentinels name a new primary
        self._watch = None
        self._lock = threading.Lock()

    def connect(self, generation):
        host, port = self.ask_sentinels(generation)
        address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        payload, count = self.setup
        conn = self.connect_to(host, port, address, generation, (payload + _ROLE, count + 1))
        role = conn.role if isinstance(conn.role, list) and conn.role else ["?"]
        if _text(role[0]) != "master":
            conn.close()
            raise RedisConnectionError(f"Redis at {address} is not the primary (its ROLE: "
                                       f"{_text(role[0])})")
        with self._lock:
            if self.primary != (host, port):
                self.primary, self.primary_since = (host, port), time.time()
            self.replicas = len(role[2]) if len(role) > 2 and isinstance(role[2], list) else 0
        if self.switched is not None and (self._watch is None or not self._watch.alive()):
            self._watch = _PrimaryWatch(self, self.master_name, self.switched)  # one to follow
        return conn

    def stop_watch(self):
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()

    def sentinel_list(self):
        with self._lock:
            return list(self.sentinels)

    def ask_sentinels(self, generation):
        """The primary's (host, port), from the first sentinel that knows it. All are asked
        within the connect timeout, each in its share of what is left (a third at most), so one
        that does not answer leaves the others time, and the caller is not held for each."""
        sentinels, failures = self.sentinel_list(), []
        deadline = time.monotonic() + self.connect_timeout
        for left, (host, port) in zip(range(len(sentinels), 0, -1), sentinels, strict=True):
            where = f"{host}:{port}"
            try:
                conn = self.connect_to(host, port, f"sentinel {where}", generation,
                                       self.sentinel_setup,
                                       max((deadline - time.monotonic()) / min(left, 3), 0.001))
            except AuthenticationError:
                raise
            except RedisError as exc:
                failures.append(f"{where} ({_reason_of(exc)})")
                continue
            try:
                reply, others = conn.call(self._question, 2)
            except RedisError as exc:
                failures.append(f"{where} ({_reason_of(exc)})")
                continue
            finally:
                conn.close()
            named = _named_address(reply)
            if named is None:
                failures.append(f"{where} (knows no primary named {self.master_name})"
                                if reply is None else f"{where} (answered no host and port)")
                continue
            self._answered((host, port), _sentinels_named(others))
            return named
        raise RedisConnectionError(f"no sentinel named the primary of {self.master_name}: "
                                   + ", ".join(failures))

    def _answered(self, sentinel, others):
        """This sentinel answered: asked first next time; the others it names (those not given)
        are asked after the given ones, and a learned one it no longer names is forgotten."""
        with self._lock:
            kept = [s for s in self.sentinels
                    if s != sentinel and (s in self._given or s in others)]
            learned = [s for s in others if s not in kept and s != sentinel]
            self.sentinels = [sentinel, *kept, *learned][:max(MAX_SENTINELS, len(self._given))]

    def in_use(self):
        return None if self.primary is None else (*self.primary, self.primary_since)

    def replaced(self, generation):
        """Whether the sentinels name another primary than the one in use (never raises: a
        sentinel that does not answer says nothing)."""
        if self.primary is None:
            return False
        try:
            return self.ask_sentinels(generation) != self.primary
        except RedisError:
            return False


_SUBSCRIBE = encode_command(("SUBSCRIBE", "+switch-master"))
_PING = encode_command(("PING",))


class _PrimaryWatch:
    """A thread that follows which server the sentinels name the primary of ``master_name``, and
    calls ``switched()`` when it changes, so that the client's calls never wait on a sentinel:

    - Sentinel's ``+switch-master`` news, subscribed to as a hint (the guidelines' word), on
      every sentinel that takes a subscription (the one that led a failover tells first, the
      others hear of it seconds later). A sentinel that drops it is subscribed to again after
      RETRY; one silent for QUIET seconds is pinged, and dropped when it has not answered QUIET
      seconds later.
    - Never the only signal: every CHECK_EVERY seconds it asks them which server is the primary
      (a failover made by hand leaves the old one taking writes until they reconfigure it)."""

    RETRY = 1.0
    QUIET = 5.0
    CHECK_EVERY = 3.0

    def __init__(self, connector, master_name, switched):
        self._connector, self._name, self._switched = connector, master_name, switched
        self._stopped = threading.Event()
        self._conns = {}  # sentinel: [connection, when it last spoke, whether it was pinged]
        self._thread = threading.Thread(target=self._run, name="sentinel-watch", daemon=True)
        self._thread.start()

    def alive(self):
        return not self._stopped.is_set() and self._thread.is_alive()

    def stop(self):
        self._stopped.set()
        for conn, _, _ in dict(self._conns).values():  # (a copy: the thread changes it)
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread where it waits
            except OSError:
                pass

    def _run(self):
        retry_at, check_at = 0.0, time.monotonic() + self.CHECK_EVERY
        try:
            while not self._stopped.is_set():
                if time.monotonic() >= retry_at:
                    self._subscribe_anew()
                    retry_at = time.monotonic() + self.RETRY
                if time.monotonic() >= check_at:
                    check_at = time.monotonic() + self.CHECK_EVERY
                    if self._connector.replaced(-1):
                        self._switched()
                if not self._conns:
                    self._stopped.wait(self.RETRY)
                    continue
                poller = select.poll()
                for conn, _, _ in self._conns.values():
                    poller.register(conn.sock, select.POLLIN)
                ready = {fd for fd, _ in poller.poll(self.RETRY * 1000)}
                for sentinel, (conn, spoke, pinged) in list(self._conns.items()):
                    try:
                        self._follow(sentinel, conn, spoke, pinged, conn.sock.fileno() in ready)
                    except RedisError:
                        del self._conns[sentinel]
                        conn.close()
        finally:
            for conn, _, _ in self._conns.values():
                conn.close()

    def _subscribe_anew(self):
        """A subscription on each sentinel that has none."""
        for host, port in self._connector.sentinel_list():
            if (host, port) in self._conns or self._stopped.is_set():
                continue
            try:  # briefly: the others' news waits meanwhile
                conn = self._connector.connect_to(host, port, f"sentinel {host}:{port}", -1,
                                                  self._connector.sentinel_setup,
                                                  min(self._connector.connect_timeout, 0.5))
            except RedisError:
                continue
            try:
                conn.call(_SUBSCRIBE, 1)
            except RedisError:
                conn.close()
                continue
            self._conns[(host, port)] = [conn, time.monotonic(), False]

    def _follow(self, sentinel, conn, spoke, pinged, readable):
        """Read what this sentinel said (its news, or a pong), or ping it when it was quiet."""
        now = time.monotonic()
        if not readable and not conn.reader.has_unread():
            if now - spoke > self.QUIET * (2 if pinged else 1):
                if pinged:
                    raise RedisTimeoutError(f"sentinel {sentinel} stopped answering")
                conn.call(_PING, 0)
                self._conns[sentinel][2] = True
            return
        news = conn.call(b"", 1)[0]
        if not isinstance(news, list) or not news:
            raise ProtocolError(f"sentinel {sentinel} sent {news!r} to a subscriber")
        self._conns[sentinel][1:] = [now, False]  # a pong, or news: it is alive
        if _text(news[0]) == "message" and len(news) == 3:
            words = _text(news[2]).split()
            if words and words[0] == self._name:
                self._switched()


def _named_address(reply):
    """A sentinel's [host, port] as (host, port); None for anything else (a hostile one)."""
    if not (isinstance(reply, list) and len(reply) == 2):
        return None
    host, port = _text(reply[0]), _text(reply[1])
    if not valid_host(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    return host, int(port)


def _sentinels_named(reply):
    """The (host, port) of each sentinel a ``SENTINEL sentinels`` reply names (each a flat list
    of fields); an error reply, or a field that is not an address, names none."""
    found = []
    for entry in reply[:MAX_SENTINELS] if isinstance(reply, list) else ():
        if isinstance(entry, list):
            pairs = zip(entry[::2], entry[1::2], strict=False)  # (an odd field left out)
            fields = {_text(key): value for key, value in pairs}
            named = _named_address([fields.get("ip", b""), fields.get("port", b"")])
            if named is not None:
                found.append(named)
    return found


def _not_the_primary(replies):
    return any(isinstance(r, ResponseError) and r.args[0].startswith(NOT_THE_PRIMARY)
               for r in replies)


_ROLE = encode_command(("ROLE",))


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _reason_of(error):
    """A sentinel's failure in a few words: its error's message after the address."""
    text = str(error)
    return text.split(": ", 1)[1] if ": " in text else text


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
        except UnicodeError:  # an empty or over-long label: the IDNA codec refuses it
            outcome.append(OSError("not a valid host name"))
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


def address_of(host="redis", port=DEFAULT_PORT, unix_socket=None):
    """The server's address as messages name it: host:port, [v6]:port or unix:/path."""
    if unix_socket:
        return f"unix:{unix_socket}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- URL parsing -------------------------------------------------------------------------------

_SCHEMES = ("redis", "rediss", "unix")
_URL_OPTIONS = ("db", "password", "username", "protocol")


_BAD_HOST = "Redis URL's host is not a valid host name or IP address"


def parse_addresses(text, example="redis-1:6379,redis-2:6379"):
    """``host:port`` pairs, comma-separated (``[::1]:26379`` for an IPv6 address), as a tuple of
    (host, port); ValueError naming the shape expected (and ``example``), quoting nothing."""
    found = []
    for item in text.split(","):
        host, colon, port = item.strip().rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not colon or not valid_host(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"host:port pairs, comma-separated, such as {example}")
        found.append((host, int(port)))
    return tuple(found)


def parse_url(url):
    """Read ``redis://[[user]:password@]host[:port][/db][?option=value...]``, ``rediss://...``
    (TLS, verified against the system's CAs) or ``unix://[[user]:password@]/path``; return
    ``RespClient``'s keyword arguments. Options: db, password, username, protocol (2 or 3).

    The credentials are everything between ``//`` and the *last* ``@``, so a password may
    hold ``/ ? # @ :`` unescaped (or percent-escaped). A ValueError's message names the part
    that is wrong and quotes nothing of the URL: a mistyped URL can put a password anywhere
    (``redis://default:PASS`` with the ``@host`` forgotten has it where the port goes).
    """
    scheme, slashes, rest = url.partition("://")
    if not slashes or scheme.lower() not in _SCHEMES:
        raise ValueError("Redis URL must start with redis://, rediss:// or unix://")
    scheme = scheme.lower()
    userinfo, at, location = rest.rpartition("@")
    username, password = _credentials(userinfo) if at else (None, None)
    try:
        parts = urllib.parse.urlsplit("x://" + location)
    except ValueError:  # unbalanced or invalid [brackets]; its message quotes nothing either
        raise ValueError(_BAD_HOST) from None
    if parts.fragment:
        raise ValueError("a Redis URL has no #fragment "
                         "(percent-encode a '#' in the password as %23)")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_URL_OPTIONS))
    if unknown:
        raise ValueError(f"Redis URL has an unknown ?option (allowed: {', '.join(_URL_OPTIONS)})")

    def option(name, value):
        return query[name][-1] if name in query else value

    username = option("username", username) or None
    password = option("password", password)
    if username is not None and password is None:
        raise ValueError("a Redis URL with a username needs a password")
    db_text = option("db", parts.path.lstrip("/") if scheme != "unix" else "") or "0"
    if not re.fullmatch(r"[0-9]{1,9}", db_text):
        raise ValueError("Redis URL's database (/db or ?db=) must be a whole number")
    protocol_text = option("protocol", "2")
    if protocol_text not in ("2", "3"):
        raise ValueError("Redis URL's ?protocol= must be 2 or 3")
    settings = dict(db=int(db_text), username=username, password=password,
                    protocol=int(protocol_text))
    if scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// Redis URL needs a socket path, e.g. unix:///run/redis.sock")
        return {**settings, "unix_socket": urllib.parse.unquote(parts.path)}
    host, colon, port_text = parts.netloc.rpartition(":") if not parts.netloc.endswith("]") else (
        parts.netloc, "", "")
    if not colon:
        host, port_text = parts.netloc, str(DEFAULT_PORT)
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError("Redis URL's port must be a number from 1 to 65535 "
                         "(a user:password needs an @ before the host: "
                         "redis://user:password@host:port)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host and not valid_host(host):
        raise ValueError(_BAD_HOST)
    if scheme == "rediss":
        settings["ssl_context"] = ssl.create_default_context()
    return {**settings, "host": host or "localhost", "port": int(port_text)}


_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def valid_host(host):
    """An IP address, or a DNS name whose labels are 1-63 letters, digits, - and _ (container
    networks use _), 253 characters at most: what a name lookup can take without an error."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _credentials(userinfo):
    """``[user]:password`` between // and @ (a user alone is refused later, naming no part)."""
    user, colon, password = userinfo.partition(":")
    if any(c in user for c in "/?#"):  # an '@' in the query or path, not credentials: refused
        raise ValueError("a Redis URL's credentials must come before the host: "
                         "redis://[[user]:password@]host (percent-encode '@' elsewhere as %40)")
    return urllib.parse.unquote(user) or None, urllib.parse.unquote(password) if colon else None
