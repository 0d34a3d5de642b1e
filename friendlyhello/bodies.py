"""Request bodies: what POST, PUT and PATCH send to /echo, read by the serving loop as it comes,
within limits, and summed up, never held.

A body is framed by Content-Length or by chunks (RFC 9112 7.1: chunk extensions ignored,
trailer fields read and dropped); http11.py has refused every head whose framing is in doubt
before a body is read, so a body is never read as a request nor a request as a body. Of what
arrives only the length, the SHA-256, and the first KiB are kept. More than MAX_BODY is 413
and the connection closes, nothing more read; a declared length over it is 413 at once, before
any 100 Continue. Between two reads the client has IDLE_TIMEOUT, and BODY_TIMEOUT for it all
(then 408).
"""

import http
import re
import selectors
import time
import typing

from .connection import Connection
from .responses import TEXT, Response

KEPT = 1024                  # the first bytes of a body shown by /echo
MAX_CHUNK_LINE = 4096        # a chunk's size line, its extensions included
MAX_TRAILERS = 16 * 1024     # the trailer section after the last chunk
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n")


class BodyRefused(Exception):
    """A body this server does not take: answered with ``status``, then the connection closes."""

    def __init__(self, status, words):
        super().__init__(words)
        self.status = status


class Body(typing.NamedTuple):
    """What a body was: its length, SHA-256 (hex), first KiB, framing and content type."""

    length: int
    sha256: str
    start: bytes
    framing: str         # "content-length" or "chunked"
    content_type: str | None


class BodyReader:
    """One body being read: ``take(buffer)`` consumes what of it the bytearray holds (leaving
    what follows it: the next request) and says whether it is whole. ``length``: its
    Content-Length, or None for chunks."""

    def __init__(self, length, max_body, content_type):
        import hashlib  # only where a body comes

        self.digest, self.max_body, self.content_type = hashlib.sha256(), max_body, content_type
        self.chunked = length is None
        self.left = 0 if self.chunked else length  # of this chunk, or of the whole body
        self.size, self.start, self.trailer_bytes = 0, b"", 0
        self.until = None  # when it must be whole (BODY_TIMEOUT), set by the loop
        self.phase = "size" if self.chunked else "data"  # chunks: size, data, crlf, trailers

    def take(self, buffer):
        while True:
            if self.phase == "data":
                piece = bytes(buffer[:self.left])
                del buffer[:len(piece)]
                self._add(piece)
                self.left -= len(piece)
                if self.left:
                    return False
                if not self.chunked:
                    return True
                self.phase = "crlf"
            elif self.phase == "size":
                line = self._line(buffer, MAX_CHUNK_LINE)
                if line is None:
                    return False
                size = _CHUNK_SIZE.fullmatch(line)
                if size is None:
                    raise BodyRefused(400, "a chunk's size line is not a hexadecimal size")
                self.left = int(size.group(1), 16)
                if self.size + self.left > self.max_body:
                    raise BodyRefused(413, f"a body over MAX_BODY ({self.max_body} bytes)")
                self.phase = "data" if self.left else "trailers"
            elif self.phase == "crlf":
                if len(buffer) < 2 and buffer[:1] in (b"", b"\r"):
                    return False
                end = 2 if buffer[:2] == b"\r\n" else 1 if buffer[:1] == b"\n" else 0
                if not end:
                    raise BodyRefused(400, "a chunk longer than its size")
                del buffer[:end]
                self.phase = "size"
            else:  # trailer fields, to the empty line: read and dropped
                line = self._line(buffer, MAX_TRAILERS)
                if line is None:
                    return False
                if line in (b"\r\n", b"\n"):
                    return True
                self.trailer_bytes += len(line)
                if self.trailer_bytes > MAX_TRAILERS:
                    raise BodyRefused(400, f"trailer fields over {MAX_TRAILERS} bytes")

    def _line(self, buffer, most):
        end = buffer.find(b"\n", 0, most + 1)
        if end < 0:
            if len(buffer) > most:
                raise BodyRefused(400, f"a chunk's line over {most} bytes")
            return None
        line = bytes(buffer[:end + 1])
        del buffer[:end + 1]
        return line

    def _add(self, piece):
        self.digest.update(piece)
        self.size += len(piece)
        if len(self.start) < KEPT:
            self.start += piece[:KEPT - len(self.start)]

    def body(self):
        return Body(self.size, self.digest.hexdigest(), self.start,
                    "chunked" if self.chunked else "content-length", self.content_type)


class Bodies:
    """A loop's bodies being read (connections in state BODY, each its ``body`` a BodyReader),
    each answered by ``responder`` once whole. ``config``: MAX_BODY, IDLE_TIMEOUT and
    BODY_TIMEOUT; bytes counted in ``metrics``."""

    def __init__(self, config, responder, metrics):
        self.max_body, self.idle_timeout = config.max_body, config.idle_timeout
        self.body_timeout, self.responder, self.metrics = config.body_timeout, responder, metrics

    def begin(self, conn):
        """A head that announced a body was read: refuse it at once if it is too long, else
        say 100 Continue when asked and read what came already. True when it was answered
        and the connection may go on."""
        handler = conn.handler
        length = handler.body_length
        if length is not None and length > self.max_body:
            refused = BodyRefused(413, f"a declared length over MAX_BODY ({self.max_body} bytes)")
            return self._refuse(conn, refused)
        conn.body = BodyReader(length, self.max_body, handler.headers.get("Content-Type"))
        conn.body.until = time.monotonic() + self.body_timeout
        if handler.expects_continue:
            conn.queue(CONTINUE)
            conn.send()
        return self._read(conn)

    def handle(self, conn, events):
        """More of the body came (or the client left)."""
        if not events & selectors.EVENT_READ:
            return False
        data = conn.receive()
        if data is None:
            return False
        if not data:  # gone before its body was whole
            self.responder.connections.close(conn)
            return False
        conn.buffer += data
        return self._read(conn)

    def _read(self, conn):
        before, route = len(conn.buffer), conn.handler.route_label
        try:
            whole = conn.body.take(conn.buffer)
        except BodyRefused as refused:
            self.metrics.body_bytes[(route,)] += before
            return self._refuse(conn, refused)
        self.metrics.body_bytes[(route,)] += before - len(conn.buffer)
        if not whole:
            seconds = min(self.idle_timeout, conn.body.until - time.monotonic())
            conn.enter(Connection.BODY, max(seconds, 0.0))
            return False
        body, conn.body = conn.body.body(), None
        return self.responder.respond(conn, conn.handler.answer_body(body))

    def _refuse(self, conn, refused):
        conn.body = None
        conn.handler.close_connection = True  # what follows is not read: the rest of the body
        conn.buffer.clear()
        phrase = http.HTTPStatus(refused.status).phrase
        words = f"{refused.status} {phrase}: {refused}\n"
        return self.responder.respond(conn, Response(refused.status, TEXT, words))
