"""The HTTP/1.1 client `watch` sends its requests with: one request at a time on a connection
kept alive, each bounded by a deadline of its own whatever the server does.

Where ``http.client`` gives each read its timeout afresh, here the whole exchange (connecting,
the TLS handshake, sending, the head, every informational ``1xx`` answer and the body) must be
done by one deadline: a server that dribbles a byte a second, sends ``100 Continue`` without
end, or streams a body for ever, times the request out all the same. A body is read in pieces
and dropped, never held: only the first KEEP_BODY bytes of a JSON answer are kept (friendlyhello's
page is a few hundred bytes). Nothing here counts or prints; watch.py does.
"""

import re
import socket
import time
import typing

MAX_HEAD = 64 * 1024    # an answer's status line and header fields, at most
KEEP_BODY = 64 * 1024   # bytes of a JSON body kept, at most; the rest is read and dropped
_PIECE = 64 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [^\r\n]*)?\r?\n")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:[ \t]*;[^\r\n]*)?\r?\n")


class Malformed(Exception):
    """The server's answer is not HTTP/1.1 that this client can read."""


class ClosedBeforeAnswer(ConnectionResetError):
    """The connection closed (or reset) before any byte of the answer came: on a connection
    kept alive, the server closed it while idle, and the request may be sent again anew."""


class ClosedMidAnswer(ConnectionResetError):
    """The connection closed in the middle of an answer: the end of a body without a length,
    else an answer cut short."""


class Answer(typing.NamedTuple):
    status: int
    headers: dict       # field names lower-cased; the last value of each
    body: bytes         # the first KEEP_BODY bytes of a JSON body; empty for any other
    keep_alive: bool    # the connection may carry the next request


class Connection:
    """One connection to ``host``:``port`` (TLS when ``context``, an ssl.SSLContext, is given),
    opened at the first request and after any that leaves it unusable; ``close()`` ends it."""

    def __init__(self, host, port, context=None):
        self.host = host
        self.port = port or (443 if context else 80)
        self.context = context
        self.sock = None
        self._buffer = bytearray()
        self._deadline = 0.0
        self._nothing_yet = True  # no byte of the answer has come yet

    @property
    def is_open(self):
        return self.sock is not None

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._buffer.clear()

    def request(self, request_bytes, deadline):
        """Send one whole request (its head, no body) and read its answer by ``deadline`` (a
        time.monotonic() value). Raises TimeoutError past it, ConnectionRefusedError,
        ClosedBeforeAnswer or another ConnectionError, Malformed, or another OSError (a name
        that does not resolve); the connection is closed then, and after an answer that ends it."""
        self._deadline = deadline
        try:
            if self.sock is None:
                self._connect()
            self.sock.sendall(request_bytes)
            answer = self._answer()
        except BaseException:
            self.close()
            raise
        if not answer.keep_alive:
            self.close()
        return answer

    def _remaining(self):
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no whole answer within the timeout")
        return left

    def _connect(self):
        sock = socket.create_connection((self.host, self.port), timeout=self._remaining())
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context:
            sock.settimeout(self._remaining())
            sock = self.context.wrap_socket(sock, server_hostname=self.host)
        self.sock = sock

    def _receive(self):
        """More bytes into the buffer; ClosedBeforeAnswer or ClosedMidAnswer at an EOF."""
        self.sock.settimeout(self._remaining())
        try:
            data = self.sock.recv(_PIECE)
        except ConnectionResetError:
            if self._nothing_yet:
                raise ClosedBeforeAnswer("reset before an answer") from None
            raise
        if not data:
            if self._nothing_yet:
                raise ClosedBeforeAnswer("closed before an answer")
            raise ClosedMidAnswer("closed in the middle of the answer")
        self._nothing_yet = False
        self._buffer += data

    def _answer(self):
        self._nothing_yet = not self._buffer
        while True:  # informational answers (100 Continue, 103 Early Hints) come first
            version, status, headers = self._head()
            if status >= 200:
                break
            if status == 101:
                raise Malformed("101 Switching Protocols to a request that asked for no upgrade")
        body = self._body(status, headers)
        options = {o.strip().lower() for o in headers.get("connection", "").split(",")}
        framed = status in (204, 304) or "content-length" in headers or "chunked" in headers.get(
            "transfer-encoding", "").lower()
        persistent = version == b"1" or "keep-alive" in options  # HTTP/1.0 asks for it
        keep_alive = framed and persistent and "close" not in options
        return Answer(status, headers, body, keep_alive)

    def _head(self):
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                end += 4
                break
            if len(self._buffer) > MAX_HEAD:
                raise Malformed(f"an answer's head over {MAX_HEAD} bytes")
            self._receive()
        head = bytes(self._buffer[:end])
        del self._buffer[:end]
        line = _STATUS_LINE.match(head)
        if line is None:
            raise Malformed(f"not an HTTP/1.x status line: {head[:40]!r}")
        headers = {}
        for field in head[line.end():].split(b"\r\n"):
            name, colon, value = field.partition(b":")
            if colon:
                headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
        return line.group(1), int(line.group(2)), headers

    def _body(self, status, headers):
        keep = headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
        kept = bytearray()
        if status in (204, 304):
            return b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            pieces = self._chunks()
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit():
                raise Malformed(f"Content-Length: {length[:20]!r}")
            pieces = self._exactly(int(length))
        else:
            pieces = self._until_closed()
        for piece in pieces:
            if keep and len(kept) < KEEP_BODY:
                kept += piece[:KEEP_BODY - len(kept)]
        return bytes(kept)

    def _take(self, most):
        """Up to ``most`` bytes of what has come, receiving more if none has."""
        if not self._buffer:
            self._receive()
        piece = bytes(self._buffer[:most])
        del self._buffer[:most]
        return piece

    def _exactly(self, length):
        while length:
            piece = self._take(min(length, _PIECE))
            length -= len(piece)
            yield piece

    def _until_closed(self):
        while True:
            try:
                yield self._take(_PIECE)
            except ClosedMidAnswer:  # an EOF ends a body that has no length (a reset does not)
                return

    def _line(self):
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_HEAD:
                raise Malformed("a chunk's size line or a trailer too long")
            self._receive()
        line = bytes(self._buffer[:end + 1])
        del self._buffer[:end + 1]
        return line

    def _chunks(self):
        while True:
            size = _CHUNK_SIZE.fullmatch(self._line())
            if size is None:
                raise Malformed("a chunk whose size line is not hexadecimal")
            length = int(size.group(1), 16)
            if not length:
                break
            yield from self._exactly(length)
            if self._line() not in (b"\r\n", b"\n"):
                raise Malformed("a chunk longer than its size")
        while self._line() not in (b"\r\n", b"\n"):  # trailer fields, dropped
            pass
