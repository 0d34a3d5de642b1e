"""HTTP/1.1 as this server speaks it: http.server's request handler, through its hooks.

http.server parses each request head (from memory: this module touches no socket); the hooks
here hold it to RFC 9112 (one rule for line endings, strict framing and Host, absolute-form
targets), negotiate JSON or HTML (Accept), decline browser prefetches of a page that counts,
and find the request's route in the route table.
"""

import functools
import http
import http.client
import http.server
import io
import re
import urllib.parse

from . import SERVER_NAME
from .responses import TEXT, Response, error_response
from .routes import PageRequest, Reply
from .tracing import trace_of

_NOT_FOUND = Response(404, TEXT, "404 not found\n")
_NOT_ALLOWED = Response(405, TEXT, "405 method not allowed\n", (("Allow", "GET, HEAD"),))
_NOT_ALLOWED_BUT_BODIES = _NOT_ALLOWED._replace(headers=(("Allow", "GET, HEAD, POST, PUT, PATCH"),))


def prefers_json(accept):
    """True when an Accept field ranks application/json above text/html (RFC 9110 12.5.1):
    the most specific media range that matches each type gives its q; ties go to HTML.
    Browsers send a handful of short values: those are parsed once and remembered."""
    if len(accept) <= 256:
        return _remembered_ranking(accept)
    return ranks_json_first(accept)


_QVALUE = re.compile(r" *(0(\.[0-9]{0,3})?|1(\.0{0,3})?) *")  # RFC 9110 12.4.2's weight


def ranks_json_first(accept):
    ranks = {"text/html": (-1, 0.0), "application/json": (-1, 0.0)}  # (specificity, q)
    for item in accept.split(","):
        media, *parameters = item.split(";")
        media = media.strip().lower()
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                q = float(value) if _QVALUE.fullmatch(value) else -1.0
        if q < 0:
            continue  # a malformed q: the range is ignored
        kind = media.split("/")[0]
        for ours, (specificity, _) in ranks.items():
            if media == ours:
                match = 2
            elif media == kind + "/*" and ours.startswith(kind + "/"):
                match = 1
            elif media == "*/*":
                match = 0
            else:
                match = -1
            if match > specificity:
                ranks[ours] = (match, q)
    return ranks["application/json"][1] > ranks["text/html"][1]


# At most 256 fields of at most 256 characters are kept, whatever clients send.
_remembered_ranking = functools.lru_cache(maxsize=256)(ranks_json_first)


_PREFETCH_FIELDS = ("Sec-Purpose", "Purpose", "X-Purpose", "X-Moz")


def is_prefetch(headers):
    """A browser fetching ahead of a navigation that may never happen (Sec-Purpose: prefetch,
    or prefetch;prerender; the older Purpose, X-Purpose and X-Moz fields)."""
    for field in _PREFETCH_FIELDS:
        value = headers.get(field)
        first = re.split(r"[;, ]", value.strip().lower(), maxsplit=1)[0] if value else ""
        if first in ("prefetch", "preview"):
            return True
    return False


# A prefetch of a page that counts is declined: browsers drop a prefetch answered 503,
# and the real navigation then fetches the page again and counts once.
_PREFETCH_DECLINED = Response(503, TEXT, "prefetch declined: this page counts visits\n",
                              (("Retry-After", "0"),))


# -- HTTP: http.server's handler, through its hooks -------------------------------------------

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/([0-9])\.[0-9]")
_HEADER_LINE = re.compile(_TOKEN + rb":[\t\x20-\x7e\x80-\xff]*")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]*)(:[0-9]*)?")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_ABSOLUTE_FORM = re.compile(r"[Hh][Tt][Tt][Pp][Ss]?://")
# http.client refuses a head of this many header lines (its _MAXHEADERS counts the blank one).
MAX_HEADER_FIELDS = 100


class RequestHeaders(http.client.HTTPMessage):
    """http.server's header fields (its ``MessageClass``), looked up by a dict: the fields are
    indexed by lower-cased name once, at the first lookup, where a Message scans every field
    for each of the dozen lookups a request makes. Bodies are never parsed (bodies.py sums
    them up), so neither is the content type: the email parser asks for it only to split a
    body into parts."""

    _index = None

    def _fields(self):
        if self._index is None:
            self._index = {}
            for name, value in self._headers:  # as the parser left them: Latin-1 text, a str each
                self._index.setdefault(name.lower(), []).append(value)
        return self._index

    def get(self, name, failobj=None):
        values = self._fields().get(name.lower())
        return values[0] if values else failobj

    def get_all(self, name, failobj=None):
        return self._fields().get(name.lower(), failobj)

    def get_content_type(self):
        return "text/plain"

    def get_content_maintype(self):
        return "text"


class RequestHandler(http.server.BaseHTTPRequestHandler):
    """Reads one request head from memory and decides what it asks for.

    As in http.server, constructing it handles the request: ``setup()``, ``handle()`` and
    ``finish()`` run at once. http.server parses the head; the hooks here hold it to RFC
    9112 (one rule for line endings, strict framing and Host, absolute-form targets) and
    leave the result in ``response`` (ready now) or ``route`` (its Redis command must be
    sent first, then ``answer()``). Nothing here touches a socket.
    """

    protocol_version = "HTTP/1.1"
    MessageClass = RequestHeaders
    default_request_version = "HTTP/1.0"  # errors found before the version still get a status line
    server_version = SERVER_NAME
    response = None          # the answer, when it needs nothing from Redis
    route = None             # the route waiting for its Redis reply
    probe = False            # a health probe: left out of the access log by default
    route_label = "other"    # the route table's path, for metrics: a bounded label
    page_request = None
    route_path = ""          # the target's path, without its query
    client_closes = False    # the client asked to close after this response
    body_announced = None    # the head says a body follows: its Content-Length, or "chunked"
    reads_body = False       # its body is to be read (bodies.py), then answer_body()
    body_length = None       # that body's Content-Length; None: chunked
    expects_continue = False  # Expect: 100-continue
    body_route = None        # the route whose answer waits for the body
    command = path = headers = None
    requestline = ""
    request_version = default_request_version
    request_id = None        # the one it came with (X-Request-Id), else one made here
    trace = None             # its traceparent, read (a tracing.Trace), where it has one

    def __init__(self, head, address, routes, connection, ids):
        self.connection = connection  # where it came from (its peer, its PROXY header): for /echo
        self._ids = ids               # a tracing.RequestIds: the serving process's
        super().__init__(head, address, routes)  # handles the request, as http.server does
        if self.request_id is None:  # its head never had fields: an id of our own
            self.request_id = self._ids.take(None)

    @property
    def routes(self):
        """The route table (http.server calls it the server)."""
        return self.server

    @property
    def head_only(self):
        return self.command == "HEAD"

    def setup(self):
        self.rfile = io.BytesIO(self.request)
        self.wfile = io.BytesIO()  # only http.server's own "100 Continue" lands here: never sent

    def handle(self):
        self.handle_one_request()

    def finish(self):
        pass

    def send_error(self, code, message=None, explain=None):
        self.response = error_response(code)
        self.close_connection = True

    def parse_request(self):
        self.requestline = self.raw_requestline[:200].decode("latin-1").rstrip("\r\n")
        status = malformed_lines(self.request)
        if status:
            self.send_error(status)
            return False
        if not super().parse_request():
            return False
        self.request_id = self._ids.take(self.headers.get_all("X-Request-Id"))
        self.trace = trace_of(self.headers)
        status = self._framing_error() or self._host_error() or self._target_error()
        if status:
            self.send_error(status)
            return False
        options = set()
        for value in self.headers.get_all("Connection", ()):
            options.update(option.strip().lower() for option in value.split(","))
        self.client_closes = "close" in options or (
            self.request_version == "HTTP/1.0" and "keep-alive" not in options)
        self.close_connection = self.client_closes or self.close_connection
        path = self.route_path = self.routes.within(self.path_only())
        if path is None:  # outside PATH_PREFIX: 404, or the prefix itself (redirected)
            self.route_path = ""
        elif path in self.routes:
            self.route_label = path
        else:  # a route taking the rest of the path: "/status/" for /status/418
            prefix = path[:path.rfind("/") + 1]
            if len(prefix) > 1 and prefix in self.routes:
                self.route_label = prefix
        return True

    def _framing_error(self):
        """RFC 9112 6.3: a body whose length is in doubt is an error, and a body that is not
        read (any but a route's that takes one) closes the connection after the answer: never
        parsed as a request."""
        lengths = self.headers.get_all("Content-Length", ())
        codings = self.headers.get_all("Transfer-Encoding", ())
        if codings:
            names = [c.strip().lower() for v in codings for c in v.split(",")]
            if lengths or self.request_version == "HTTP/1.0" or names[-1] != "chunked":
                return 400  # two framings, or a length that cannot be known
            if names.count("chunked") > 1:
                return 400  # chunked applied twice
            if len(names) > 1:
                return 501  # a coding this server does not implement
            self.close_connection, self.body_announced = True, "chunked"
        elif lengths:
            if len(lengths) != 1 or not _CONTENT_LENGTH.fullmatch(lengths[0].strip()):
                return 400
            if int(lengths[0]) > 0:
                self.close_connection, self.body_announced = True, int(lengths[0])
        return None

    def handle_expect_100(self):
        """http.server's own 100 Continue would be sent before the body is known to be
        welcome: the loop sends it, once it knows (bodies.py)."""
        self.expects_continue = True
        return True

    def _host_error(self):
        hosts = self.headers.get_all("Host", ())
        if len(hosts) > 1 or (not hosts and self.request_version != "HTTP/1.0"):
            return 400
        if hosts and not _HOST.fullmatch(hosts[0].strip()):
            return 400
        return None

    def _target_error(self):
        """origin-form (/path), absolute-form (http://host/path, as through a proxy), or * for
        OPTIONS."""
        if self.path.startswith("/") or (self.path == "*" and self.command == "OPTIONS"):
            return None
        if _ABSOLUTE_FORM.match(self.path):
            rest = self.path.split("://", 1)[1]
            end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
            authority, target = rest[:end], rest[end:]
            if authority and _HOST.fullmatch(authority):  # no userinfo: _HOST has no "@"
                # http://h?x=1 is /?x=1
                self.path = target if target.startswith("/") else "/" + target
                return None
        return 400

    def path_only(self):
        return self.path.split("?", 1)[0]

    def do_GET(self):
        route = self.routes.get(self.route_label)  # "other" is no route
        if route is None:
            self.response = _moved(self.routes.prefix, self.path) or _NOT_FOUND
        elif route.counts_visit and is_prefetch(self.headers):
            self.response = _PREFETCH_DECLINED
        else:
            self.probe = route.probe
            self.page_request = self._page_request()
            if route.gate is not None:
                self.response = route.gate(self.page_request)
                if self.response is not None:
                    return
            if (route.redis_command is None and route.work is None
                    or route.counts_visit and self.head_only):
                self.response = route.answer(self.page_request, None)
            else:
                self.route = route

    do_HEAD = do_GET  # the same headers, no body, and no visit counted

    def _page_request(self):
        query = urllib.parse.parse_qs(self.path.partition("?")[2]) if "?" in self.path else {}
        wants_json = prefers_json(self.headers.get("Accept", ""))
        return PageRequest(wants_json, query, self.route_path, self.raw_requestline,
                           self.headers, self.client_address, self.connection,
                           request_id=self.request_id, trace=self.trace)

    def do_POST(self):  # noqa: N802 - http.server's name
        """A body for a route that takes one (/echo): read by the loop, then answer_body()."""
        route = self.routes.get(self.route_label)
        if route is None or not route.takes_body:
            return self._not_allowed()
        self.close_connection = self.client_closes  # the body is read: the connection goes on
        self.reads_body, self.body_route = True, route
        self.body_length = None if self.body_announced == "chunked" else self.body_announced or 0
        self.page_request = self._page_request()

    do_PUT = do_PATCH = do_POST

    def answer_body(self, body):
        """The route's Response once its body has been read (a bodies.Body)."""
        return self.body_route.answer(self.page_request._replace(body=body), None)

    def _not_allowed(self):
        route = self.routes.get(self.route_label)
        self.response = _NOT_ALLOWED_BUT_BODIES if route and route.takes_body else _NOT_ALLOWED

    do_DELETE = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    def answer(self, reply, error):
        """The route's Response once Redis has answered (or failed), or its work has ended."""
        return self.route.answer(self.page_request, Reply(reply, error))


def _moved(prefix, target):
    """For PATH_PREFIX itself, 308 to it with a slash (the query kept); else None."""
    path, mark, query = target.partition("?")
    if not prefix or path != prefix:
        return None
    return Response(308, TEXT, f"308 the page is at {prefix}/\n",
                    (("Location", f"{prefix}/{mark}{query}"),))


def malformed_lines(head):
    """400 unless every line is well formed (RFC 9112 2-5): a request line of method, target
    and HTTP/d.d with single spaces; header lines as name:value with no control characters
    (NUL and bare CR included) and no folding. A line ends in LF or CRLF, everywhere alike.
    505 for a major version other than 1; 431 for MAX_HEADER_FIELDS fields or more (the
    limit http.client applies, made a rule of ours)."""
    lines = head.split(b"\n")
    first = _REQUEST_LINE.fullmatch(lines[0][:-1] if lines[0].endswith(b"\r") else lines[0])
    if first is None:
        return 400
    if first.group(3) != b"1":
        return 505
    for line in lines[1:]:
        if line.endswith(b"\r"):
            line = line[:-1]
        if line and not _HEADER_LINE.fullmatch(line):
            return 400
    if len(lines) - 3 >= MAX_HEADER_FIELDS:  # less the request line, the empty line, the end
        return 431
    return None
