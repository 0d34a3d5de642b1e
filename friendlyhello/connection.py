"""A client connection: its bytes, its deadline and its state, which it moves itself (the
selector watches its socket for what each state waits for)."""

import re
import selectors
import socket
import time
import typing

from .proxies import ProxyRefused, normal_address, read_proxy_header
from .tls import Channel, Closed, HandshakeRefused

MAX_REQUEST_LINE = 8 * 1024  # longer gets 414
MAX_HEAD = 16 * 1024         # request line plus headers; more gets 431
LINGER = 2.0                 # after closing our side, how long to drop what a client still sends
READ_AHEAD = 64 * 1024       # what a client may send while its request waits; the rest waits
                             # in the kernel
MAX_BACKLOG = 256 * 1024     # a WebSocket's frames waiting to go, past which its own are not read


class HeadRefused(Exception):
    """A request head past the limits: answered with ``status``, then the connection closes."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


class ClientGone(Exception):
    """The client closed or reset the connection: nothing more can be sent to it."""


_END_OF_HEAD = re.compile(rb"\n\r?\n")
_BLANK_LINES = re.compile(rb"(?:\r?\n)+")


def head_size(buffer, max_line=MAX_REQUEST_LINE, max_head=MAX_HEAD):
    """The length of the request head at the start of ``buffer`` (its empty line included), or
    None while it is incomplete. Raises HeadRefused as soon as it is past a limit: 414 for a
    request line over ``max_line``, 431 for a head over ``max_head``."""
    end = _END_OF_HEAD.search(buffer, 0, max_head + 3)
    size = len(buffer) if end is None else end.end()
    line_end = buffer.find(b"\n", 0, size)
    if (size if line_end < 0 else line_end) > max_line:
        raise HeadRefused(414)
    if size > max_head:
        raise HeadRefused(431)
    return None if end is None else size


class Connection:
    """One client connection: its bytes, its deadline and its state.

    HANDSHAKE TLS is being set up (on the TLS port; after the PROXY header, where one comes):
              it must be done by the deadline
    READING   waiting for (the rest of) a request head; the head must arrive by the deadline
    BODY      reading a request's body (bodies.py): more of it must come by the deadline
    READY     more requests are buffered than one turn of the loop serves: the rest wait for
              the next turn, so a client that pipelines thousands cannot hold up the others
    WAITING   a request waits for Redis (or its delay)
    WEBSOCKET upgraded (websocket.py): frames both ways, no deadline of its own (pings say
              whether the client is there); not read while MAX_BACKLOG waits to go to it
    SENDING   a response is going out; the client must take it by the deadline
    STREAMING its head went, and its body is being made a piece at a time (streams.py): the
              client must take each piece by the deadline; none while a piece's time is awaited
    LINGERING our side is shut after a response: what the client still sends is read and
              dropped until it closes or the deadline, so it can read our answer (RFC 9112 9.6)
    CLOSED    done
    """

    HANDSHAKE, READING, BODY, READY, WAITING, SENDING, STREAMING, WEBSOCKET, LINGERING, CLOSED = (
        "handshake", "reading", "body", "ready", "waiting", "sending", "streaming", "websocket",
        "lingering", "closed")
    # What the selector watches the socket for in each state. READY and WAITING go on reading
    # what the client sends (up to READ_AHEAD; see read_ahead()): a request that waits on Redis
    # costs no change to the selector, where unwatching and watching again cost two syscalls.
    EVENTS = {
        HANDSHAKE: selectors.EVENT_READ,  # and EVENT_WRITE while its output waits to go
        READING: selectors.EVENT_READ,
        BODY: selectors.EVENT_READ,
        READY: selectors.EVENT_READ,
        WAITING: selectors.EVENT_READ,
        SENDING: selectors.EVENT_WRITE,
        STREAMING: selectors.EVENT_READ,  # and EVENT_WRITE while a piece waits to go
        WEBSOCKET: selectors.EVENT_READ,  # and EVENT_WRITE while frames wait to go
        LINGERING: selectors.EVENT_READ,
        CLOSED: 0,
    }

    __slots__ = ("sock", "address", "peer", "proxy", "selector", "state", "events", "deadline",
                 "buffer", "outgoing", "handler", "started", "close_after", "linger", "held", "tls",
                 "ws", "stream", "body")

    PROXY_PENDING = "pending"  # ``proxy`` until the PROXY header has been read, where one must come

    def __init__(self, sock, address, selector, expect_proxy=False, tls=None):
        self.sock, self.selector = sock, selector
        # The TCP peer (host, port) and the client's address, which a PROXY header's source
        # replaces: an IPv4 peer of a dual-stack socket (::ffff:192.0.2.1) as its IPv4 address.
        host = normal_address(address[0])
        self.peer, self.address = (host, address[1]), host
        self.proxy = self.PROXY_PENDING if expect_proxy else None  # then what the PROXY header said
        self.state = None
        self.events = 0            # what the selector watches the socket for
        self.deadline = 0.0
        self.buffer = bytearray()  # received, not yet parsed
        self.outgoing = b""        # to send
        self.handler = None        # the request being answered
        self.started = 0.0         # when its head was complete
        self.close_after = False   # close once the response is sent...
        self.linger = False        # ...and linger, since the client may still be sending
        self.held = None           # an answer held until its deadline or the hang's end (WAITING)
        self.tls = tls             # a tls.Channel on the TLS port; its bytes pass through it
        self.ws = None             # a websocket.Session, once upgraded
        self.stream = None         # the answer's body being streamed (streams.py), if one is
        self.body = None           # the request's body being read (bodies.BodyReader), if one is

    def enter(self, state, seconds):
        """Move to a state, with ``seconds`` until its deadline (None: no deadline of its own);
        the selector then watches the socket for what that state waits for."""
        events = self.EVENTS[state]
        if state is self.WEBSOCKET and len(self.outgoing) >= MAX_BACKLOG:
            events = 0  # a client that does not read has its frames left unread
        if (state is self.READY or state is self.WAITING or state is self.STREAMING) and len(
                self.buffer) >= READ_AHEAD:
            events = 0  # enough is read ahead: the rest waits in the kernel
        if (state is self.HANDSHAKE or state is self.WEBSOCKET or state is self.STREAMING) and (
                self.outgoing):
            events |= selectors.EVENT_WRITE
        self._watch(events)
        self.state = state
        self.deadline = float("inf") if seconds is None else time.monotonic() + seconds

    def read_ahead(self, data):
        """Keep what the client sent while an earlier request is being answered (READY,
        WAITING); at its end (``data`` empty: closed or reset) or at READ_AHEAD bytes, stop
        watching until the answer is sent: the next state watches again (READING; READY and
        WAITING only below READ_AHEAD), and reading sees the end again, or the rest."""
        self.buffer += data
        if not data or len(self.buffer) >= READ_AHEAD:
            self._watch(0)

    def _watch(self, events):
        if events != self.events:
            if not self.events:
                self.selector.register(self.sock, events, self)
            elif not events:
                self.selector.unregister(self.sock)
            else:
                self.selector.modify(self.sock, events, self)
            self.events = events

    def receive(self, decrypt=True):
        """What the client sent: None when nothing is there yet, b"" when it closed (or reset,
        or ended TLS). On TLS, the plain bytes once the handshake is done (what TLS has to
        send meanwhile, such as a key update, goes out with the next answer)."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return None
        except OSError:
            return b""
        if not data or not decrypt or self.tls is None or not self.tls.version:
            return data
        try:
            data = self.tls.decrypt(data)
        except Closed:
            return b""
        self.outgoing += self.tls.output()
        return data or None

    def queue(self, data, close=False):
        """Put ``data`` to be sent (then TLS's close_notify, on TLS, with ``close``)."""
        if self.tls is None or not self.tls.version:
            self.outgoing += data  # after a WebSocket's frames still waiting, if any
        else:
            self.outgoing += self.tls.encrypt(data, close)

    def send(self):
        """Send what is waiting to go: True when all of it went, False when some is left for
        when the client reads; ClientGone when it is gone."""
        try:
            sent = self.sock.send(self.outgoing)
        except BlockingIOError:
            sent = 0
        except OSError:
            raise ClientGone from None
        rest = self.outgoing[sent:]
        self.outgoing = rest or b""  # a stream's piece may be a memoryview: none is left of it
        return not rest

    def shut_sending(self):
        """Send our end of the stream (FIN) but keep reading; False if the socket is gone."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        return True

    def close(self):
        self.enter(Connection.CLOSED, None)
        self.sock.close()
        self.handler = None

    def take_head(self):
        """Remove one complete request head from the buffer and return it; None if none yet.

        Empty lines before a request are skipped (RFC 9112 2.2). Raises HeadRefused when
        the head, complete or not, is past the limits.
        """
        blank = _BLANK_LINES.match(self.buffer)
        if blank:
            del self.buffer[:blank.end()]
        size = head_size(self.buffer)
        if size is None:
            return None
        head = bytes(self.buffer[:size])
        del self.buffer[:size]
        return head


class Port(typing.NamedTuple):
    """A listening socket, and for the TLS port its tls.TLSFiles (None: plain HTTP)."""

    sock: socket.socket
    tls: object = None


class Connections:
    """The open connections: accepted from the ``ports`` while fewer than ``max_connections``
    are open (the rest wait in the backlog), each closed once, counted in
    ``metrics.open_connections``. ``stopping`` keeps the listener closed once it is. With
    ``proxies`` (a proxies.Networks, when the PROXY protocol is on) a peer outside it is closed
    as soon as it is accepted, and counted."""

    def __init__(self, ports, selector, max_connections, idle_timeout, metrics, log,
                 proxies=None):
        self.ports, self.selector = ports, selector
        self.max_connections, self.idle_timeout = max_connections, idle_timeout
        self.metrics, self.log = metrics, log
        # With the PROXY protocol on: the only peers taken, each to send a PROXY header first.
        self.proxies = proxies
        self.stopping = False
        self.at_stop = []  # each called with every connection left when the port closes
        self._open = set()
        self._accepting = False

    def port_numbers(self):
        """The plain port's number (else the TLS port's), and the TLS port's (or None)."""
        numbers = {port.tls is not None: port.sock.getsockname()[1] for port in self.ports}
        return numbers.get(False, numbers.get(True)), numbers.get(True)

    def busy(self):
        """True while a request is being answered, or a WebSocket is open."""
        return any(c.handler or c.ws for c in self._open)

    def accept(self, on=True):
        """Watch the listener for new connections (or stop), unless the table is full or it is
        stopping."""
        on = on and not self.stopping and len(self._open) < self.max_connections
        if on != self._accepting:
            for port in self.ports:
                if on:
                    self.selector.register(port.sock, selectors.EVENT_READ, port)
                else:
                    self.selector.unregister(port.sock)
            self._accepting = on

    def accept_waiting(self, port):
        """Take the connections waiting in the port's backlog, a bounded number per turn."""
        for _ in range(64):
            if len(self._open) >= self.max_connections:
                self.accept(False)  # the rest wait in the backlog
                return
            try:
                sock, address = port.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # out of file descriptors, say: stop until the next sweep
                self.log.error("-", f"accept failed: {exc}")
                self.accept(False)
                return
            if self.proxies is not None and not self.proxies.holds(address[0]):
                sock.close()  # a PROXY header from it could be a lie: no byte of it is read
                self.metrics.proxy_refused("untrusted_peer")
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = None if port.tls is None else Channel(port.tls.context)
            conn = Connection(sock, address, self.selector, self.proxies is not None, tls)
            self._open.add(conn)
            self.metrics.open_connections += 1
            if tls is None:
                conn.enter(Connection.READING, self.idle_timeout)
            else:
                self.metrics.tls_connections += 1
                conn.enter(Connection.HANDSHAKE, self.idle_timeout)

    def take_proxy_header(self, conn, mode):
        """Read the PROXY header (PROXY_PROTOCOL ``mode``) the connection must begin with: True
        once it is read (and out of the buffer: it counts toward no limit of the request head);
        False while more must come, or when the connection was closed for it."""
        try:
            read = read_proxy_header(conn.buffer, mode)
        except ProxyRefused as refused:
            self.metrics.proxy_refused(refused.reason)
            self.log.warning(conn.address, f"connection closed: {refused}")
            self.close(conn)
            return False
        if read is None:
            return False
        conn.proxy, length = read
        del conn.buffer[:length]
        if conn.proxy.source is not None:
            conn.address = conn.proxy.source[0]
        return True

    def handshake(self, conn, proxy_mode):
        """Read the TLS port's first bytes: the PROXY header (PROXY_PROTOCOL ``proxy_mode``),
        where one must come, then TLS's handshake. What it came to: "done" (what TLS still has
        to send is to be flushed, then requests read), "plain_http" (the client spoke HTTP in
        clear: to be answered so), or None (not yet, or closed)."""
        if conn.outgoing:  # the handshake's messages waited to go
            if not conn.send():
                return None
            conn.enter(Connection.HANDSHAKE, conn.deadline - time.monotonic())  # reading alone
        data = conn.receive(decrypt=False)
        if not data:
            return None if data is None else self.close(conn)
        if conn.proxy is Connection.PROXY_PENDING:
            conn.buffer += data
            if not self.take_proxy_header(conn, proxy_mode):
                return None
            data, conn.buffer = bytes(conn.buffer), bytearray()
            if not data:
                return None
        try:
            plain = conn.tls.receive(data)
        except HandshakeRefused as refused:
            self.metrics.tls_handshake(refused.outcome)
            if refused.outcome == "plain_http":
                conn.buffer += data
                return refused.outcome
            conn.outgoing += refused.alert
            conn.send()  # what went wrong, as TLS says it; then closed
            return self.close(conn)
        conn.outgoing += conn.tls.output()
        if not conn.tls.version:
            conn.send()
            return conn.enter(Connection.HANDSHAKE, conn.deadline - time.monotonic())
        self.metrics.tls_handshake("ok")
        conn.buffer += plain
        conn.close_after = False
        return "done"

    def close(self, conn):
        if conn.state is Connection.CLOSED:
            return
        conn.close()
        self._open.discard(conn)
        self.metrics.open_connections -= 1
        if conn.stream is not None:  # cut in the middle
            conn.stream = None
            self.metrics.streams_open -= 1
        if conn.tls is not None:
            self.metrics.tls_connections -= 1
        self.accept()

    def end_expired(self, conn):
        """Close an expired connection unless a request of it is to be answered (a head that
        never finished, an answer waiting): True when closed. A PROXY header or handshake
        that never came whole is counted."""
        if conn.proxy is Connection.PROXY_PENDING:
            self.metrics.proxy_refused("timeout")
        elif conn.state is Connection.HANDSHAKE:
            self.metrics.tls_handshake("timeout")
        elif conn.state is Connection.WAITING or conn.state is Connection.BODY or (
                conn.state is Connection.READING and conn.buffer):
            return False
        self.close(conn)  # idle, not reading what we send, or done lingering
        return True

    def expired(self, now):
        return [c for c in self._open if c.deadline < now]

    def ready_again(self):
        """The connections reading, with bytes of requests not yet served, moved to READY."""
        ready = [c for c in self._open if c.state is Connection.READING and c.buffer]
        for conn in ready:
            conn.enter(Connection.READY, None)
        return ready

    def stop_accepting(self):
        """Close the port, and every connection that is not answering a request."""
        self.accept(False)
        self.stopping = True
        for port in self.ports:
            port.sock.close()
        for conn in [c for c in self._open if not c.handler and c.ws is None]:
            self.close(conn)
        for conn in list(self._open):
            for going_away in self.at_stop:
                going_away(conn)  # a WebSocket's Close, an endless stream's end

    def close_all(self):
        for conn in list(self._open):
            self.close(conn)

