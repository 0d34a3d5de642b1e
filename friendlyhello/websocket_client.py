"""The WebSocket client `watch ws://` holds its connections with: RFC 6455 from the client's
side. The opening handshake (its Sec-WebSocket-Accept checked), masked frames out, the
server's frames in (unmasked, no reserved bit, control frames short and whole), pings answered
with pongs, and the close handshake either way.

It extends http_client's connection, so every wait is bounded by a deadline the caller gives,
whatever the server does (a byte a second, a message without end); a message over
MAX_MESSAGE is refused rather than held. Nothing here counts or prints; watch_websocket.py does.
"""

import base64
import os
import select
import struct

from . import http_client, websocket
from .websocket import CLOSE, CONTINUATION, CONTROL_OPCODES, OPCODES, PING, PONG

MAX_MESSAGE = 1024 * 1024  # a server's message, at most
NORMAL = 1000


class Refused(Exception):
    """The upgrade was answered with another status than 101."""

    def __init__(self, status, headers):
        super().__init__(f"the upgrade was answered with {status}")
        self.status, self.headers = status, headers


class ServerClosed(Exception):
    """The server's Close came, and ours answered it: its code (1005: none) and reason."""

    def __init__(self, code, reason):
        super().__init__(f"closed by the server with {code} {reason}".rstrip())
        self.code = code


class WebSocket(http_client.Connection):
    """One WebSocket to ``host``:``port`` (TLS when ``context``, an ssl.SSLContext, is given):
    ``open()`` it, ``send()`` messages, take the server's with ``message()``, and
    ``close_handshake()`` at the end."""

    def open(self, target, host_field, deadline):
        """Connect and upgrade to ``target`` (a path and query): the 101's header fields.
        Refused for another status; Malformed, TimeoutError or another OSError as
        http_client's request() raises them."""
        self.close()
        self._deadline = deadline
        key = base64.b64encode(os.urandom(16)).decode()
        try:
            self._connect()
            self.sock.sendall((f"GET {target} HTTP/1.1\r\nHost: {host_field}\r\n"
                               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                               "User-Agent: friendlyhello-watch\r\n\r\n").encode("latin-1"))
            self._nothing_yet = True
            _, status, headers = self._head()
            if status != 101:
                raise Refused(status, headers)
            if headers.get("sec-websocket-accept") != websocket.accept_value(key):
                raise http_client.Malformed("a 101 whose Sec-WebSocket-Accept does not answer")
        except BaseException:
            self.close()
            raise
        self._nothing_yet = False  # from here, an EOF is ClosedMidAnswer: the connection cut
        return headers

    def waiting(self):
        """Whether bytes of the server's have come that select() cannot see (kept here, or
        decrypted and held by the TLS layer)."""
        return bool(self._buffer) or bool(self.context and self.sock.pending())

    def readable(self, also, timeout):
        """Wait up to ``timeout`` seconds for the server's bytes or for ``also`` (a file
        descriptor) to be readable; which of the two are."""
        if self.waiting():
            return True, False
        ready, _, _ = select.select([self.sock, also], [], [], max(timeout, 0))
        return self.sock in ready, also in ready

    def send(self, opcode, payload, deadline):
        self._deadline = deadline
        self.sock.settimeout(self._remaining())
        self.sock.sendall(websocket.frame(opcode, payload, os.urandom(4)))

    def message(self, deadline, wait=True):
        """The server's next whole message, (TEXT or BINARY, its payload); pings on the way
        answered. Without ``wait``, None once a control frame was seen to and no message is
        under way (what the server sends unasked: a ping, say). ServerClosed when its Close
        came; ClosedMidAnswer at an EOF with no Close, another ConnectionError, TimeoutError
        or Malformed."""
        self._deadline = deadline
        opcode, fragments, size = None, [], 0
        while True:
            kind, payload, final = self._frame()
            if kind == PING:
                self.send(PONG, payload, deadline)
            if kind in (PING, PONG):
                if not wait and opcode is None:
                    return None
                continue
            if kind == CLOSE:
                self._closed_by_server(payload)
            if (kind == CONTINUATION) == (opcode is None):
                raise http_client.Malformed("a fragment out of its message's order")
            opcode = opcode or kind
            size += len(payload)
            if size > MAX_MESSAGE:
                raise http_client.Malformed(f"a message over {MAX_MESSAGE} bytes")
            fragments.append(payload)
            if final:
                return opcode, b"".join(fragments)

    def close_handshake(self, deadline, code=NORMAL):
        """Send our Close and read on to the server's: whether it came by ``deadline``; the
        connection is closed either way."""
        try:
            self.send(CLOSE, struct.pack("!H", code), deadline)
            while True:
                self.message(deadline)  # messages still on their way, dropped
        except ServerClosed:
            return True
        except (OSError, http_client.Malformed):
            return False
        finally:
            self.close()

    def _closed_by_server(self, payload):
        """Its Close: answered with its code, then its end of the connection awaited."""
        code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        reason = payload[2:].decode(errors="replace")
        try:
            self.send(CLOSE, payload[:2], self._deadline)
            while self.sock.recv(4096):  # the server closes TCP once our Close came
                self.sock.settimeout(self._remaining())
        except OSError:
            pass  # a reset, or the deadline, ends the wait all the same
        self.close()
        raise ServerClosed(code, reason)

    def _frame(self):
        """The next whole frame of the server's: (opcode, payload, final)."""
        while True:
            head = self._frame_head()
            if head is not None and len(self._buffer) >= head[2] + head[3]:
                opcode, final, at, length = head
                payload = bytes(self._buffer[at:at + length])
                del self._buffer[:at + length]
                return opcode, payload, final
            self._receive()

    def _frame_head(self):
        """(opcode, final, where the payload starts, its length) once a frame's head has come."""
        if len(self._buffer) < 2:
            return None
        first, second = self._buffer[0], self._buffer[1]
        opcode, length = first & 0x0F, second & 0x7F
        if first & 0x70 or second & 0x80:
            raise http_client.Malformed("a server frame masked or with a reserved bit set")
        if opcode not in OPCODES:
            raise http_client.Malformed(f"a frame with the reserved opcode {opcode}")
        if opcode in CONTROL_OPCODES and (length > 125 or not first & 0x80):
            raise http_client.Malformed("a control frame over 125 bytes or fragmented")
        at = {126: 4, 127: 10}.get(length, 2)
        if len(self._buffer) < at:
            return None
        if at > 2:
            length = int.from_bytes(self._buffer[2:at], "big")
        if length > MAX_MESSAGE:
            raise http_client.Malformed(f"a frame over {MAX_MESSAGE} bytes")
        return opcode, bool(first & 0x80), at, length
