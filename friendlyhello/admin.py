"""The admin port: faults turned on and off at run time, by whoever holds ADMIN_TOKEN.

Off unless ADMIN_PORT is set. It is a port of its own, so that a published port, a network
policy or a firewall can keep it apart from the page, and a thread of its own serves it, so
that it still answers while the main port hangs. That thread serves its connections as the
main port's loop does, non-blocking, with a selector: each connection has ADMIN_TIMEOUT in all
to send its request and read the answer, and at most MAX_OPEN are open (a new one closes the
oldest), so clients that send nothing, or a byte at a time, hold nothing up. It is for a person
or a script, not for load. With WORKERS the supervisor serves it, and every worker reads what
it sets (faults.py).

    GET  /faults                                the faults, as JSON
    POST /faults/ready?state=fail|ok            readiness fails, or not
    POST /faults/live?state=fail|ok             liveness fails (so the image's HEALTHCHECK)
    POST /faults/hang?state=on|off              the main port accepts and reads, answers nothing
    POST /faults/errors?rate=R[&status=S]       a share of pages fails with S (400-599)
    POST /faults/latency?seconds=S|LOW-HIGH     seconds added to each page
    POST /faults/clear                          every fault off
    POST /faults/crash[?code=N]                 answer, then the process exits with N (default 1)

Parameters come in the query or a form-encoded body. Every request must carry
``Authorization: Bearer ADMIN_TOKEN`` (compared in constant time), else 401 and nothing else is
said: the token is checked as soon as the head is read, before the method, the path or a body
is looked at. Only a head that cannot be read at all (malformed, too long) is answered before
it. Every answer is a whole HTTP/1.1 response with a JSON body, and every change is logged with
the address that asked for it. With TLS_CERT set it speaks HTTPS only (the certificate the
main port serves, reloaded with it), as the token must not cross a network in clear; a client
whose handshake's messages do not go out at once is dropped (it is not for load).
"""

import email.utils
import hashlib
import hmac
import http
import json
import re
import selectors
import socket
import threading
import time
import urllib.parse

from .connection import HeadRefused, head_size
from .faults import error_rate, latency_range
from .http11 import malformed_lines
from .proxies import normal_address
from .tls import Channel, Closed, HandshakeRefused

ADMIN_TIMEOUT = 2.0  # seconds a client may take to send its request and read the answer, in all
MAX_BODY = 4096      # bytes of form-encoded parameters at most
MAX_HEAD = 8192      # the request line and header fields at most (a request line of 4096 at most)
MAX_OPEN = 64        # connections open at once; one more closes the oldest
LINGER = 0.5         # seconds an answered client's further bytes are read and dropped, at most


class AdminError(Exception):
    """A request the admin port refuses: its status and what to say."""

    def __init__(self, status, message, headers=()):
        super().__init__(message)
        self.status, self.headers = status, headers


def _state(params, on, off):
    value = params.get("state")
    if value not in (on, off):
        raise AdminError(400, f"state must be {on} or {off}")
    return value == on


def _ready(state, params):
    return state._replace(ready_fails=_state(params, "fail", "ok"))


def _live(state, params):
    return state._replace(live_fails=_state(params, "fail", "ok"))


def _hang(state, params):
    return state._replace(hangs=_state(params, "on", "off"))


def _errors(state, params):
    try:
        rate = error_rate(params.get("rate", ""))
    except ValueError as exc:
        raise AdminError(400, f"rate: {exc}") from None
    status = params.get("status", str(state.error_status))
    if not (status.isascii() and status.isdigit() and 400 <= int(status) <= 599):
        raise AdminError(400, "status must be a whole number from 400 to 599")
    return state._replace(error_rate=rate, error_status=int(status))


def _latency(state, params):
    try:
        return state._replace(latency=latency_range(params.get("seconds", "")))
    except ValueError as exc:
        raise AdminError(400, f"seconds: {exc}") from None


def _clear(state, params):
    return state.cleared()


# What each POST changes: a function of the faults now and the parameters, giving the new faults.
CHANGES = {
    "/faults/ready": _ready,
    "/faults/live": _live,
    "/faults/hang": _hang,
    "/faults/errors": _errors,
    "/faults/latency": _latency,
    "/faults/clear": _clear,
}
_PATHS = {"/faults": "GET", "/faults/crash": "POST", **{path: "POST" for path in CHANGES}}


class AdminPort:
    """Serves the admin port on ``listener`` (bound already) from a daemon thread: changes go
    to ``faults`` (a Faults: ``state`` and ``set``), then ``changed()`` is called (to wake the
    serving loop); a crash asked for calls ``crash(code)`` once the answer is sent."""

    def __init__(self, listener, token, faults, log, changed=lambda: None, crash=None, tls=None):
        self.listener = listener
        self.tls = tls  # a tls.TLSFiles: HTTPS only
        self.faults = faults
        self.log = log
        self.changed, self.crash = changed, crash
        self._token = hashlib.sha256(token.encode()).digest()
        self._closed = threading.Event()
        self.loop = None  # the thread's _Loop, made by start()
        self._wake_reader, self._wake_writer = socket.socketpair()
        # A daemon: a process that is done serving exits without waiting for the admin port.
        self._thread = threading.Thread(target=self._serve, name="admin", daemon=True)

    @property
    def port(self):
        return self.listener.getsockname()[1]

    def start(self):
        self.listener.setblocking(False)
        self.loop = _Loop(self)
        self._thread.start()

    def close(self):
        """Stop serving: the thread is woken, closes every connection and the port, and ends."""
        self._closed.set()
        try:
            self._wake_writer.send(b"x")
        except OSError:
            pass
        if self._thread.ident is not None:
            self._thread.join(1)
        else:
            self.listener.close()

    def _serve(self):
        try:
            self.loop.run()
        finally:
            self.loop.close()
            self.listener.close()
            self._wake_reader.close()
            self._wake_writer.close()

    def authorized(self, header):
        """True when ``header`` (Authorization) carries the token: compared as digests, in
        constant time, so neither its length nor its bytes leak by timing."""
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            hashlib.sha256(given.strip().encode()).digest(), self._token)

    def answer(self, method, path, params, who):
        """The status and JSON object for an authorized request, and the code to exit with
        after it (or None)."""
        if path not in _PATHS:
            changes = ", ".join(sorted(CHANGES))
            raise AdminError(404, f"no such path; try GET /faults, or POST one of {changes}, "
                                  "/faults/crash")
        if method != _PATHS[path]:
            raise AdminError(405, f"{path} takes {_PATHS[path]}", (("Allow", _PATHS[path]),))
        if path == "/faults":
            return 200, self.faults.state.as_json(), None
        if path == "/faults/crash":
            code = params.get("code", "1")
            if not (code.isascii() and code.isdigit() and int(code) <= 255):
                raise AdminError(400, "code must be a whole number from 0 to 255")
            self.log.error("admin", f"crash asked for by {who}: exiting with code {int(code)}")
            return 200, {"crash": {"code": int(code)}}, int(code)
        before = self.faults.state
        after = CHANGES[path](before, params)
        self.faults.set(after)
        self.changed()
        if after != before:
            words = after.words()
            (self.log.warning if words else self.log.info)(
                "faults", f"{words or 'none on'} (set on the admin port by {who})")
        return 200, after.as_json(), None

    def refuse(self, who):
        self.log.warning("admin", f"refused {who}: no valid Authorization: Bearer token")
        return AdminError(401, "an Authorization: Bearer header with the admin token is needed",
                          (("WWW-Authenticate", 'Bearer realm="friendlyhello admin"'),))


class _Client:
    """One admin connection: what it sent, its request's head once read, what to send it."""

    __slots__ = ("sock", "who", "deadline", "received", "request", "outgoing", "crash", "lingering",
                 "tls")

    def __init__(self, sock, who, deadline, tls=None):
        self.sock = sock
        self.tls = tls  # a tls.Channel, on HTTPS
        self.who = who
        self.deadline = deadline
        self.received = bytearray()
        self.request = None    # the Request, once its head is read and its token checked
        self.outgoing = None   # the answer's bytes not sent yet, once there is an answer
        self.crash = None      # the code to exit with once the answer is out
        self.lingering = False  # answered: what it still sends is read and dropped until it closes


class Request:
    """An admin request's head, as read: method, target's path and query, header fields (by
    lower-cased name, the last of each), where its body starts and how long it is."""

    __slots__ = ("method", "path", "query", "fields", "body_start", "body_length")

    def __init__(self, method, path, query, fields, body_start):
        self.method = method
        self.path = path
        self.query = query
        self.fields = fields
        self.body_start = body_start
        self.body_length = 0


_START_LINE = re.compile(rb"([!-~]+) ([!-~]+) HTTP/1\.[0-9]\r?\n")


def read_head(data):
    """The Request whose head starts ``data``, or None while it is incomplete. AdminError for
    one that cannot be read: malformed (400, 505), or too long (414, 431)."""
    try:
        size = head_size(data, MAX_HEAD // 2, MAX_HEAD)
    except HeadRefused as exc:
        raise AdminError(exc.status, http.HTTPStatus(exc.status).phrase) from None
    if size is None:
        return None
    head = bytes(data[:size])
    status = malformed_lines(head)
    if status:
        raise AdminError(status, http.HTTPStatus(status).phrase)
    start = _START_LINE.match(head)
    method, target = start.group(1).decode(), start.group(2).decode("latin-1")
    fields = {}
    for line in head[start.end():].splitlines():
        name, colon, value = line.partition(b":")
        if colon:
            fields[name.decode().lower()] = value.strip().decode("latin-1")
    path, _, query = target.partition("?")
    return Request(method, path, query, fields, size)


def body_length(request):
    """How long the body of an authorized request is; AdminError for one it cannot take."""
    if "transfer-encoding" in request.fields:
        raise AdminError(400, "send parameters in the query, or a body with a Content-Length")
    length = request.fields.get("content-length", "0")
    if not (length.isascii() and length.isdigit()):
        raise AdminError(400, "Content-Length must be a whole number")
    if int(length) > MAX_BODY:
        raise AdminError(413, f"a body of at most {MAX_BODY} bytes")
    return int(length)


def params_of(query, body):
    """The query's parameters, and a form-encoded body's: one value each (the last)."""
    params = {}
    for text in (query, body):
        params.update(urllib.parse.parse_qsl(text, keep_blank_values=True))
    return params


def response_bytes(status, body, headers=(), head_only=False):
    """A whole HTTP/1.1 response with a JSON body: it closes, and is never cached."""
    data = (json.dumps(body) + "\n").encode()
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", "Server: friendlyhello-admin",
             f"Date: {email.utils.formatdate(usegmt=True)}", "Content-Type: application/json",
             f"Content-Length: {len(data)}", "Cache-Control: no-store", "Connection: close",
             *(f"{name}: {value}" for name, value in headers)]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + data


class _Loop:
    """The admin thread's selector loop over the listener, the wake-up socket and the clients."""

    def __init__(self, port):
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.clients = {}  # socket -> _Client, oldest first
        self.paused_until = None  # accepting paused after a failed accept (out of descriptors)
        self.selector.register(port._wake_reader, selectors.EVENT_READ)
        self.selector.register(port.listener, selectors.EVENT_READ)

    def run(self):
        while not self.port._closed.is_set():
            now = time.monotonic()
            if self.paused_until is not None and now >= self.paused_until:
                self.paused_until = None
                self.selector.register(self.port.listener, selectors.EVENT_READ)
            deadlines = [c.deadline for c in self.clients.values()]
            if self.paused_until is not None:
                deadlines.append(self.paused_until)
            wait = max(min(deadlines, default=now + 1.0) - now, 0.0)
            if self.port.tls is not None:
                self.port.tls.look(now)
                wait = min(wait, 1.0)
            for key, events in self.selector.select(wait):
                if key.fileobj is self.port.listener:
                    self.accept()
                elif key.fileobj is not self.port._wake_reader:
                    self.serve(self.clients[key.fileobj], events)
            now = time.monotonic()
            for client in [c for c in self.clients.values() if c.deadline <= now]:
                self.drop(client)  # too slow to send its request, or to read the answer

    def accept(self):
        for _ in range(MAX_OPEN):
            try:
                sock, address = self.port.listener.accept()
            except BlockingIOError:
                return
            except OSError:  # out of file descriptors, say: try again in a moment
                self.selector.unregister(self.port.listener)
                self.paused_until = time.monotonic() + 0.1
                return
            if len(self.clients) >= MAX_OPEN:
                self.drop(next(iter(self.clients.values())))
            sock.setblocking(False)
            deadline = time.monotonic() + ADMIN_TIMEOUT
            tls = self.port.tls and Channel(self.port.tls.context)
            self.clients[sock] = _Client(sock, normal_address(address[0]), deadline, tls)
            self.selector.register(sock, selectors.EVENT_READ)

    def serve(self, client, events):
        try:
            if client.lingering:
                if not client.sock.recv(65536):
                    self.drop(client)
                return
            if client.outgoing is None:
                self.read(client)
            if client.outgoing is not None:
                self.write(client)
        except OSError:  # the client went
            self.drop(client)
        except Exception as exc:  # noqa: BLE001 - a bug of ours fails this request, not the port
            self.port.log.error("admin", f"internal error: {exc!r}")
            self.answer(client, response_bytes(500, {"error": "internal error"}))
            self.write(client)

    def read(self, client):
        data = client.sock.recv(65536)
        if data and client.tls is not None:
            data = self.decrypt(client, data)
            if data is None:
                return
        if not data:
            self.drop(client)
            return
        client.received += data
        try:
            if client.request is None:
                client.request = read_head(client.received)
                if client.request is None:
                    return
                if not self.port.authorized(client.request.fields.get("authorization")):
                    raise self.port.refuse(client.who)
                client.request.body_length = body_length(client.request)
            request = client.request
            end = request.body_start + request.body_length
            if len(client.received) < end:
                return
            body = bytes(client.received[request.body_start:end]).decode("latin-1")
            params = params_of(request.query, body)
            status, answer, client.crash = self.port.answer(request.method, request.path, params,
                                                            client.who)
            self.answer(client, response_bytes(status, answer))  # a HEAD got 405 in answer()
        except AdminError as exc:
            head_only = client.request is not None and client.request.method == "HEAD"
            refusal = response_bytes(exc.status, {"error": str(exc)}, exc.headers, head_only)
            self.answer(client, refusal)

    def decrypt(self, client, data):
        """The plain bytes of what came on HTTPS (None: none yet); b"" when it must go."""
        try:
            plain = client.tls.receive(data)
        except HandshakeRefused as refused:
            if refused.outcome != "plain_http":
                return b""
            self.answer(client, response_bytes(400, {"error": "this port speaks HTTPS"}))
            return None
        except Closed:
            return b""
        output = client.tls.output()
        if output and client.sock.send(output) < len(output):
            return b""  # the handshake's messages did not go at once
        return plain or None

    def answer(self, client, data):
        if client.tls is not None and client.tls.version:
            data = client.tls.encrypt(data, close=True)
        client.outgoing = data
        self.selector.modify(client.sock, selectors.EVENT_WRITE)

    def write(self, client):
        sent = client.sock.send(client.outgoing)
        client.outgoing = client.outgoing[sent:]
        if client.outgoing:
            return
        # Closed at once, a socket with unread bytes (a body it did not take) would reset the
        # connection and lose the answer: its sending side is shut, and the rest read and dropped.
        _shut_sending(client.sock)
        client.lingering = True
        client.deadline = min(client.deadline, time.monotonic() + LINGER)
        self.selector.modify(client.sock, selectors.EVENT_READ)
        if client.crash is not None:
            self.port.log.close()
            self.port.crash(client.crash)

    def drop(self, client):
        if self.clients.pop(client.sock, None) is not None:
            self.selector.unregister(client.sock)
            client.sock.close()

    def close(self):
        for client in list(self.clients.values()):
            self.drop(client)
        self.selector.close()


def _shut_sending(sock):
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
