"""Responses: what a route answers (a status, a content type, a body and its own headers), and
the bytes every answer leaves as, errors included.
"""

import email.utils
import http
import http.client
import http.server
import time
import typing
import urllib.parse

from . import SERVER_NAME

TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
JSON = "application/json"


class Response(typing.NamedTuple):
    """What to answer."""

    status: int
    content_type: str
    body: str
    headers: tuple = ()   # (name, value) pairs beyond the common ones
    delay: float = 0.0    # seconds to hold it before it is sent (held by the loop, not a thread)
    upgrade: tuple | None = None  # a 101's (websocket.Session, its greeting frame)
    stream: object = None         # a body made over time (streams.py), instead of ``body``


def error_response(status):
    """The plain answer to a request that failed: status and reason, as text."""
    return Response(status, TEXT, f"{status} {http.HTTPStatus(status).phrase}\n")


# -- the response bytes: every answer, errors included, leaves through here -------------------

# A reason phrase is optional (RFC 9112 4): codes without one of http's get none.
_STATUS_LINES = {code: f"HTTP/1.1 {code} \r\n" for code in range(200, 600)}
_STATUS_LINES.update({s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in http.HTTPStatus})
_NO_CONTENT = {101, 204, 304}  # answers that carry no content, nor a Content-Length
REPLICA_HEADER, VERSION_HEADER = "Friendlyhello-Replica", "Friendlyhello-Version"


class CommonHeaders:
    """The fields every answer starts with: Date (made at most once a second), Server, two
    that keep answers from being sniffed or cached, and the replica and version that answered
    (so a client can see a rolling update, whatever it asked). The replica's name is sent as
    UTF-8, percent-encoded beyond ASCII; VERSION is ASCII already."""

    def __init__(self, replica, version):
        visible_ascii_but_percent = "".join(map(chr, range(0x21, 0x7f))).replace("%", "")
        replica = urllib.parse.quote(replica, safe=visible_ascii_but_percent)
        self._fixed = (f"\r\nServer: {SERVER_NAME}\r\nX-Content-Type-Options: nosniff\r\n"
                       f"Cache-Control: no-store\r\n{REPLICA_HEADER}: {replica}\r\n"
                       f"{VERSION_HEADER}: {version}\r\n")
        self._second = None  # the second the Date field was made in
        self._text = ""

    def __call__(self):
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._text = "Date: " + email.utils.formatdate(now, usegmt=True) + self._fixed
        return self._text


def response_bytes(response, common, *, head_only=False, close=False, keep_alive=False,
                   request_id=None):
    """The whole response, in one buffer: status, the ``common`` fields (a CommonHeaders'
    text), the request's id, the route's, the body."""
    body = response.body.encode()
    parts = [_STATUS_LINES[response.status], common]
    if request_id is not None:  # visible ASCII, whether it came with it or was made here
        parts += ["X-Request-Id: ", request_id, "\r\n"]
    if response.content_type:  # none on a 101
        parts += ["Content-Type: ", response.content_type, "\r\n"]
    head_only = head_only or response.status in _NO_CONTENT
    stream = response.stream
    if stream is not None:  # its framing, for a HEAD too: the body follows, or would
        if stream.length_known:
            parts += ["Content-Length: ", str(stream.length), "\r\n"]
        elif stream.chunked:
            parts.append("Transfer-Encoding: chunked\r\n")
    elif not head_only:  # a HEAD of "/" counts nothing, so its length would not be the GET's
        parts += ["Content-Length: ", str(len(body)), "\r\n"]
    for name, value in response.headers:
        parts += [name, ": ", value, "\r\n"]
    if close:
        parts.append("Connection: close\r\n")
    elif keep_alive:
        parts.append("Connection: keep-alive\r\n")
    parts.append("\r\n")
    head = "".join(parts).encode("latin-1")
    return head if head_only else head + body
