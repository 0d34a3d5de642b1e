"""The admin port: faults turned on and off at run time, by whoever holds ADMIN_TOKEN.

Off unless ADMIN_PORT is set. It is a port of its own, so that a published port, a network
policy or a firewall can keep it apart from the page, and a thread of its own serves it, one
request at a time, each within ADMIN_TIMEOUT: it is for a person or a script, not for load, and
it still answers while the main port hangs. With WORKERS the supervisor serves it, and every
worker reads what it sets (faults.py).

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
said. Every answer is JSON, and every change is logged with the address that asked for it.
"""

import hashlib
import hmac
import http
import http.server
import json
import socket
import threading
import time
import urllib.parse

from .faults import error_rate, latency_range

ADMIN_TIMEOUT = 2.0  # seconds an admin client may take to send its request and read the answer, in all
MAX_BODY = 4096      # bytes of form-encoded parameters at most


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
CHANGES = {"/faults/ready": _ready, "/faults/live": _live, "/faults/hang": _hang, "/faults/errors": _errors,
           "/faults/latency": _latency, "/faults/clear": _clear}
_PATHS = {"/faults": "GET", "/faults/crash": "POST", **{path: "POST" for path in CHANGES}}


class AdminPort:
    """Serves the admin port on ``listener`` (bound already) from a daemon thread: changes go
    to ``faults`` (a Faults: ``state`` and ``set``), then ``changed()`` is called (to wake the
    serving loop); a crash asked for calls ``crash(code)`` once the answer is sent."""

    def __init__(self, listener, token, faults, log, changed=lambda: None, crash=None):
        self.listener, self.faults, self.log = listener, faults, log
        self.changed, self.crash = changed, crash
        self._token = hashlib.sha256(token.encode()).digest()
        self._closed = False
        # A daemon: a process that is done serving exits without waiting for the admin port.
        self._thread = threading.Thread(target=self._serve, name="admin", daemon=True)

    @property
    def port(self):
        return self.listener.getsockname()[1]

    def start(self):
        self.listener.setblocking(True)
        self._thread.start()

    def close(self):
        """Stop serving: the thread waiting in accept() is woken, and ends."""
        self._closed = True
        _cut(self.listener)
        self.listener.close()
        self._thread.join(1)

    def _serve(self):
        while True:
            try:
                sock, address = self.listener.accept()
            except OSError:  # closed, or out of file descriptors: try again in a moment
                if self._closed:
                    return
                time.sleep(0.1)
                continue
            guard = threading.Timer(ADMIN_TIMEOUT, _cut, (sock,))  # a slow client holds the port no longer
            guard.start()
            try:
                _Handler(sock, address, self)
            except OSError:  # the client went, or was cut off
                pass
            except Exception as exc:  # noqa: BLE001 - a bug of ours fails this request, not the port
                self.log.error("admin", f"internal error: {exc!r}")
            finally:
                guard.cancel()
                sock.close()

    def authorized(self, header):
        """True when ``header`` (Authorization) carries the token: compared as digests, in
        constant time, so neither its length nor its bytes leak by timing."""
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            hashlib.sha256(given.strip().encode()).digest(), self._token)

    def answer(self, method, path, params, header, who):
        """The status and JSON object for one request, and the code to exit with after it (or None)."""
        if not self.authorized(header):
            self.log.warning("admin", f"refused {who}: no valid Authorization: Bearer token")
            raise AdminError(401, "an Authorization: Bearer header with the admin token is needed",
                             (("WWW-Authenticate", 'Bearer realm="friendlyhello admin"'),))
        if path not in _PATHS:
            raise AdminError(404, f"no such path; try GET /faults, or POST one of {', '.join(sorted(CHANGES))}, "
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


def _cut(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Handler(http.server.BaseHTTPRequestHandler):
    """One admin request: http.server reads its head; AdminPort decides the answer."""

    protocol_version = "HTTP/1.1"
    timeout = ADMIN_TIMEOUT

    def version_string(self):  # the Server field: no Python version
        return "friendlyhello-admin"

    def do_GET(self):
        self._respond()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _respond(self):
        crash = None
        try:
            target = urllib.parse.urlsplit(self.path)
            params = self._params(target.query)
            status, body, crash = self.server.answer(self.command, target.path, params,
                                                     self.headers.get("Authorization"), self.client_address[0])
            headers = ()
        except AdminError as exc:
            status, body, headers = exc.status, {"error": str(exc)}, exc.headers
        self._send(status, body, headers)
        if crash is not None:
            self.server.log.close()
            self.server.crash(crash)

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request line, an unknown method), as JSON."""
        self._send(code, {"error": message or http.HTTPStatus(code).phrase})

    def _send(self, status, body, headers=()):
        data = (json.dumps(body) + "\n").encode()
        self.send_response(status)
        for name, value in (("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                            ("Cache-Control", "no-store"), ("Connection", "close"), *headers):
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":  # parse_request sets it first thing, None until the line is read
            self.wfile.write(data)
        self.wfile.flush()
        self.close_connection = True

    def _params(self, query):
        """The query's parameters, and a form-encoded body's: one value each (the last)."""
        if "Transfer-Encoding" in self.headers:
            raise AdminError(400, "send parameters in the query, or a body with a Content-Length")
        length = self.headers.get("Content-Length", "0")
        if not (length.isascii() and length.isdigit()):
            raise AdminError(400, "Content-Length must be a whole number")
        if int(length) > MAX_BODY:
            raise AdminError(413, f"a body of at most {MAX_BODY} bytes")
        body = self.rfile.read(int(length)).decode("latin-1") if int(length) else ""
        params = {}
        for text in (query, body):
            params.update(urllib.parse.parse_qsl(text, keep_blank_values=True))
        return params

    def log_message(self, format, *args):  # noqa: A002 - http.server's name: changes are logged by AdminPort
        pass

