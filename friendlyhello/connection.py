
import re
import selectors
import socket
import time

MAX_REQUEST_LINE = 8 * 1024  # longer gets 414
MAX_HEAD = 16 * 1024         # request line plus headers; more gets 431 (so do over 100 headers)
LINGER = 2.0                 # after closing our side, how long to read and drop what a client still sends


# -- a connection and where it stands ----------------------------------------------------------

class HeadRefused(Exception):
    """A request head past the limits: answered with ``status``, then the connection closes."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


_END_OF_HEAD = re.compile(rb"\n\r?\n")
_BLANK_LINES = re.compile(rb"(?:\r?\n)+")


class Connection:
    """One client connection: its bytes, its deadline and its state.

    READING   waiting for (the rest of) a request head; the head must arrive by the deadline
    READY     more requests are buffered than one turn of the loop serves: the rest wait for
              the next turn, so a client that pipelines thousands cannot hold up the others
    WAITING   a request waits for Redis; the socket is not watched
    SENDING   a response is going out; the client must take it by the deadline
    LINGERING our side is shut after a response: what the client still sends is read and
              dropped until it closes or the deadline, so it can read our answer (RFC 9112 9.6)
    CLOSED    done
    """

    READING, READY, WAITING, SENDING, LINGERING, CLOSED = (
        "reading", "ready", "waiting", "sending", "lingering", "closed")

    __slots__ = ("sock", "address", "selector", "state", "events", "deadline", "buffer", "outgoing",
                 "handler", "started", "close_after", "linger")

    def __init__(self, sock, address, selector):
        self.sock, self.address, self.selector = sock, address, selector
        self.state = None
        self.events = 0            # what the selector watches the socket for
        self.deadline = 0.0
        self.buffer = bytearray()  # received, not yet parsed
        self.outgoing = b""        # to send
        self.handler = None        # the request being answered
        self.started = 0.0         # when its head was complete
        self.close_after = False   # close once the response is sent...
        self.linger = False        # ...and linger, since the client may still be sending

    def enter(self, state, seconds):
        """Move to a state, with ``seconds`` until its deadline (None: no deadline of its own);
        the selector then watches the socket for what that state waits for."""
        events = _EVENTS[state]
        if events != self.events:
            if not self.events:
                self.selector.register(self.sock, events, self)
            elif not events:
                self.selector.unregister(self.sock)
            else:
                self.selector.modify(self.sock, events, self)
            self.events = events
        self.state = state
        self.deadline = float("inf") if seconds is None else time.monotonic() + seconds

    def send(self):
        """Send what is waiting to go: True when all of it went, None when the client is gone."""
        try:
            sent = self.sock.send(self.outgoing)
        except BlockingIOError:
            sent = 0
        except OSError:
            return None
        self.outgoing = self.outgoing[sent:]
        return not self.outgoing

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
        end = _END_OF_HEAD.search(self.buffer, 0, MAX_HEAD + 3)
        size = len(self.buffer) if end is None else end.end()
        line_end = self.buffer.find(b"\n", 0, size)
        if (size if line_end < 0 else line_end) > MAX_REQUEST_LINE:
            raise HeadRefused(414)
        if size > MAX_HEAD:
            raise HeadRefused(431)
        if end is None:
            return None
        head = bytes(self.buffer[:size])
        del self.buffer[:size]
        return head


_EVENTS = {Connection.READING: selectors.EVENT_READ, Connection.READY: 0, Connection.WAITING: 0,
           Connection.SENDING: selectors.EVENT_WRITE, Connection.LINGERING: selectors.EVENT_READ,
           Connection.CLOSED: 0}
