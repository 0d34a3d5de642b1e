"""WebSocket (RFC 6455, version 13) at /ws: the upgrade's answer, and each connection's frames,
read and written by the serving loop as every other connection's bytes (TLS included).

A WebSocket greets with one text message (JSON: the replica, its version, the request's header
fields), then echoes every message, text as text and binary as binary; ``/ws?ticks=S`` also
sends a tick every S seconds. The protocol is held to whole: client frames masked, fragments
with control frames between them, pings answered, the close handshake with the code echoed;
invalid UTF-8 closes with 1007, a broken frame with 1002, a message over WS_MAX_MESSAGE with
1009. No extension is offered (permessage-deflate neither), so a reserved bit is an error.
"""

import base64
import codecs
import heapq
import itertools
import json
import selectors
import struct
import time

from . import responses
from .connection import LINGER, ClientGone, Connection

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES, CONTROL_OPCODES = {CONTINUATION, TEXT, BINARY}, {CLOSE, PING, PONG}
OPCODES = DATA_OPCODES | CONTROL_OPCODES
FRAMES_PER_TURN = 64        # frames of one connection handled per turn of the loop
CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
GOING_AWAY, PROTOCOL_ERROR, NOT_UTF8, TOO_BIG, POLICY = 1001, 1002, 1007, 1009, 1008
MIN_TICK, MAX_TICK = 0.05, 3600.0


class ProtocolError(Exception):
    """What a client sent breaks the protocol: closed with ``code``."""

    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code


class UpgradeRefused(Exception):
    """A request to /ws that is not an upgrade this server takes: its status and words."""

    def __init__(self, status, words, headers=()):
        super().__init__(words)
        self.status, self.headers = status, headers


def _tokens(value):
    return {token.strip().lower() for token in (value or "").split(",")}


def accept(headers, query):
    """The Sec-WebSocket-Accept value for a valid upgrade, and its tick interval (None: none);
    UpgradeRefused when it is not one."""
    if "websocket" not in _tokens(headers.get("Upgrade")) or "upgrade" not in _tokens(
            headers.get("Connection")):
        raise UpgradeRefused(426, "this is a WebSocket: send Upgrade: websocket, Connection: "
                                  "Upgrade, Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key",
                             (("Upgrade", "websocket"), ("Connection", "Upgrade")))
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        raise UpgradeRefused(426, "Sec-WebSocket-Version 13 is the one spoken here",
                             (("Sec-WebSocket-Version", "13"),))
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        raise UpgradeRefused(400, "Sec-WebSocket-Key must be 16 bytes in base64") from None
    ticks = None
    if "ticks" in query:
        try:
            ticks = float(query["ticks"][-1])
        except ValueError:
            ticks = float("nan")
        if not MIN_TICK <= ticks <= MAX_TICK:
            raise UpgradeRefused(400, f"ticks: seconds from {MIN_TICK:g} to {MAX_TICK:g}")
    return accept_value(key), ticks


def accept_value(key):
    """What Sec-WebSocket-Accept answers a Sec-WebSocket-Key with."""
    import hashlib  # only where a WebSocket opens

    digest = hashlib.sha1(key.encode() + GUID).digest()  # noqa: S324 - RFC 6455's, not for secrecy
    return base64.b64encode(digest).decode()


def frame(opcode, payload=b"", mask=None):
    """A final frame: a server's, unmasked; or a client's, masked with ``mask`` (4 bytes)."""
    length, masked = len(payload), 0x80 if mask else 0
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, masked | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, masked | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, masked | 127, length)
    return head + mask + unmask(payload, mask) if mask else head + payload


def close_frame(code, reason=""):
    return frame(CLOSE, struct.pack("!H", code) + reason.encode()[:120])


def unmask(masked, key):
    """The payload of a client frame: XOR with its 4-byte key, done as big integers (the same
    XOR masks one)."""
    if not masked:
        return b""
    length = len(masked)
    repeated = (key * (length // 4 + 1))[:length]
    return (int.from_bytes(masked, "big") ^ int.from_bytes(repeated, "big")).to_bytes(length, "big")


class Session:
    """One WebSocket's state: the message being assembled, whether a Close went out, how it
    ended, its ticks and whether a ping waits for its pong (the loop keeps its timers)."""

    __slots__ = ("me", "max_message", "opcode", "fragments", "size", "decoder", "close_sent",
                 "closed_by", "ticks", "sequence", "pong_due")

    def __init__(self, me, max_message, ticks=None):
        self.me, self.max_message = me, max_message
        self.opcode = None      # the message being assembled: TEXT or BINARY
        self.fragments = []
        self.size = 0
        self.decoder = None     # an incremental UTF-8 decoder, for a text message
        self.close_sent = False
        self.closed_by = None   # the code it was closed with, once it was
        self.ticks = ticks      # seconds between ticks, or None
        self.sequence = 0
        self.pong_due = False   # a ping went out, unanswered

    def frames(self, buffer):
        """Take the whole frames at the start of ``buffer`` (a bytearray), at most
        FRAMES_PER_TURN: (opcode, payload, final) each. ProtocolError for a broken one."""
        taken = []
        while len(taken) < FRAMES_PER_TURN and len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            final, opcode, length = first & 0x80, first & 0x0F, second & 0x7F
            if first & 0x70:
                raise ProtocolError(PROTOCOL_ERROR, "a reserved bit is set (no extension)")
            if opcode not in OPCODES:
                raise ProtocolError(PROTOCOL_ERROR, f"opcode {opcode} is reserved")
            if not second & 0x80:
                raise ProtocolError(PROTOCOL_ERROR, "a client's frame must be masked")
            if opcode in CONTROL_OPCODES and (length > 125 or not final):
                raise ProtocolError(PROTOCOL_ERROR, "a control frame is short and whole")
            at = 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length, at = struct.unpack_from("!H", buffer, 2)[0], 4
            elif length == 127:
                if len(buffer) < 10:
                    break
                length, at = struct.unpack_from("!Q", buffer, 2)[0], 10
                if length >> 63:
                    raise ProtocolError(PROTOCOL_ERROR, "a 64-bit length with its top bit set")
            if opcode not in CONTROL_OPCODES and self.size + length > self.max_message:
                raise ProtocolError(TOO_BIG, f"a message over {self.max_message} bytes")
            if len(buffer) < at + 4 + length:
                break
            key = bytes(buffer[at:at + 4])
            payload = unmask(bytes(buffer[at + 4:at + 4 + length]), key)
            del buffer[:at + 4 + length]
            taken.append((opcode, payload, bool(final)))
        return taken

    def message(self, opcode, payload, final):
        """A data frame taken in: the whole message (its opcode and payload) once its last
        fragment came, else None."""
        if opcode == CONTINUATION and self.opcode is None:
            raise ProtocolError(PROTOCOL_ERROR, "a continuation with no message begun")
        if opcode != CONTINUATION and self.opcode is not None:
            raise ProtocolError(PROTOCOL_ERROR, "a new message inside a fragmented one")
        if opcode != CONTINUATION:
            self.opcode = opcode
            self.decoder = codecs.getincrementaldecoder("utf-8")() if opcode == TEXT else None
        if self.decoder is not None:
            try:
                self.decoder.decode(payload, final)  # fails at the first bad byte, not the end
            except UnicodeDecodeError:
                raise ProtocolError(NOT_UTF8, "a text message that is not UTF-8") from None
        self.fragments.append(payload)
        self.size += len(payload)
        if not final:
            return None
        whole = (self.opcode, b"".join(self.fragments))
        self.opcode, self.fragments, self.size, self.decoder = None, [], 0, None
        return whole

    @staticmethod
    def close_code(payload):
        """The code a Close frame's payload carries (1005: none), checked as RFC 6455 says."""
        if not payload:
            return 1005
        if len(payload) == 1:
            raise ProtocolError(PROTOCOL_ERROR, "a Close frame of one byte")
        code = struct.unpack("!H", payload[:2])[0]
        if code not in CLOSE_CODES and not 3000 <= code <= 4999:
            raise ProtocolError(PROTOCOL_ERROR, f"close code {code} is not one to send")
        try:
            payload[2:].decode()
        except UnicodeDecodeError:
            raise ProtocolError(NOT_UTF8, "a close reason that is not UTF-8") from None
        return code

    def greeting(self, headers):
        fields = [[name, value] for name, value in headers.items()]
        return self.text({"hostname": self.me.hostname, "replica": self.me.replica_id,
                          "version": self.me.version, "headers": fields})

    def tick(self):
        self.sequence += 1
        return self.text({"tick": self.sequence, "replica": self.me.replica_id,
                          "version": self.me.version})

    def text(self, value):
        return frame(TEXT, json.dumps(value).encode())


# -- the route and the loop's side ---------------------------------------------------------------

class Upgrade:
    """The /ws route of a replica (``me``): 101 and a Session, or why not."""

    def __init__(self, config, me):
        self.me, self.max_message = me, config.ws_max_message

    def answer(self, request, reply):
        try:
            if not request.requestline.startswith(b"GET ") or not request.requestline.rstrip(
                    ).endswith(b"HTTP/1.1"):
                raise UpgradeRefused(426, "a WebSocket opens with GET and HTTP/1.1",
                                     (("Upgrade", "websocket"), ("Connection", "Upgrade")))
            key, ticks = accept(request.headers, request.query)
        except UpgradeRefused as refused:
            words = f"{refused.status} {refused}\n"
            return responses.Response(refused.status, responses.TEXT, words, refused.headers)
        session = Session(self.me, self.max_message, ticks)
        greeting = session.greeting(request.headers)
        return responses.Response(101, "", "", (("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                                ("Sec-WebSocket-Accept", key)),
                                  upgrade=(session, greeting))


class WebSockets:
    """A loop's open WebSockets (connections in state WEBSOCKET, each with its Session): their
    frames read and answered, a bounded number per turn, their pings (every ``ping_interval``;
    one unanswered by the next closes it) and ticks, their going away at a stop (Close 1001),
    counted in ``metrics``."""

    def __init__(self, connections, metrics, ping_interval):
        self.connections, self.metrics = connections, metrics
        connections.at_stop.append(self.going_away)  # at a stop, each WebSocket is told
        self.ping_interval = ping_interval
        self._timers = []  # (when, n, connection, "ping" or "tick"), a heap
        self._order = itertools.count()
        self._again = []   # connections with frames left for the next turn

    def begin(self, conn):
        """Its 101 and greeting went: count it, start its timers, read what already came."""
        self.metrics.websockets_open += 1
        self.metrics.websocket_message("sent")
        now = time.monotonic()
        self._schedule(conn, now + self.ping_interval, "ping")
        if conn.ws.ticks:
            self._schedule(conn, now + conn.ws.ticks, "tick")
        self.serve(conn)

    def handle(self, conn, events):
        """The selector says the socket can be written (the backlog goes) or read."""
        if events & selectors.EVENT_WRITE:
            self._send(conn, b"")
        if events & selectors.EVENT_READ and conn.state is Connection.WEBSOCKET:
            data = conn.receive()
            if data is None:
                return
            if not data:
                return self._gone(conn, "cut")
            conn.buffer += data
            self.serve(conn)

    def serve(self, conn):
        """Answer the whole frames it has sent, up to FRAMES_PER_TURN; the rest next turn."""
        session, out = conn.ws, []
        try:
            frames = session.frames(conn.buffer)
            for opcode, payload, final in frames:
                if opcode == CLOSE:
                    code = session.close_code(payload)
                    if not session.close_sent:
                        out.append(frame(CLOSE, payload[:2]))  # its code echoed
                        session.close_sent = True
                    return self._closing(conn, out, code)
                if session.close_sent:
                    continue  # after our Close, only its Close matters
                if opcode == PING:
                    out.append(frame(PONG, payload))
                elif opcode == PONG:
                    session.pong_due = False
                else:
                    whole = session.message(opcode, payload, final)
                    if whole is not None:
                        self.metrics.websocket_message("received")
                        self.metrics.websocket_message("sent")
                        out.append(frame(*whole))
        except ProtocolError as refused:
            out.append(close_frame(refused.code, str(refused)))
            session.close_sent = True
            return self._closing(conn, out, refused.code)
        if len(frames) == FRAMES_PER_TURN:
            self._again.append(conn)
        self._send(conn, b"".join(out))

    def going_away(self, conn):
        """The replica stops: Close 1001, and the client's Close awaited (DRAIN_TIMEOUT)."""
        if conn.ws is not None and not conn.ws.close_sent and conn.state is Connection.WEBSOCKET:
            conn.ws.close_sent = True
            self._send(conn, close_frame(GOING_AWAY, "the replica is stopping"))

    def next_due(self):
        return self._timers[0][0] if self._timers else None

    def turn(self, now):
        """Each turn of the loop: frames left from the last, then the timers that are due."""
        if self._again:
            again, self._again = self._again, []
            for conn in again:
                if conn.state is Connection.WEBSOCKET:
                    self.serve(conn)
        while self._timers and self._timers[0][0] <= now:
            _, _, conn, kind = heapq.heappop(self._timers)
            if conn.state is not Connection.WEBSOCKET or conn.ws.close_sent:
                continue
            if kind == "tick":
                self.metrics.websocket_message("sent")
                self._send(conn, conn.ws.tick())
                self._schedule(conn, now + conn.ws.ticks, "tick")
            elif conn.ws.pong_due:  # the last ping went unanswered for a whole interval
                conn.ws.close_sent = True
                self._closing(conn, [close_frame(POLICY, "no pong came")], POLICY)
            else:
                conn.ws.pong_due = True
                self._send(conn, frame(PING, b"friendlyhello"))
                self._schedule(conn, now + self.ping_interval, "ping")

    def _schedule(self, conn, when, kind):
        heapq.heappush(self._timers, (when, next(self._order), conn, kind))

    def _closing(self, conn, out, code):
        """The close handshake is over on our side: send what is left, then close."""
        self._count_close(conn, code)
        conn.close_after, conn.linger = True, True
        self._send(conn, b"".join(out))

    def _gone(self, conn, why):
        if conn.ws.closed_by is None:
            self._count_close(conn, why)
        self.connections.close(conn)

    def _count_close(self, conn, code):
        if conn.ws.closed_by is None:
            conn.ws.closed_by = code
            self.metrics.websockets_open -= 1
            self.metrics.websocket_close(code)

    def _send(self, conn, data):
        """Queue ``data`` and send what the socket takes; once a closing one's last byte is
        out, shut its sending side (then it lingers, as an answered HTTP client does)."""
        try:
            if data:
                conn.queue(data, close=conn.close_after)  # TLS's close_notify after the last
            all_sent = conn.send()
        except ClientGone:
            return self._gone(conn, "cut")
        if all_sent and conn.close_after:
            if conn.shut_sending():
                return conn.enter(Connection.LINGERING, LINGER)
            return self._gone(conn, "cut")
        conn.enter(Connection.WEBSOCKET, None)
