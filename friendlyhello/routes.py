"""The route table's rows, and what a route's answer is given: the request as a PageRequest,
and what it waited for (Redis's reply, or its work's value; or why there is none) as a Reply.
"""

import typing


class Route(typing.NamedTuple):
    """One path: ``answer(request, reply)`` makes its Response from a PageRequest.

    ``redis_command`` (``encode_command()``'s bytes, made once) is sent first when set, and
    ``reply`` is then a ``Reply``; it is None when nothing was sent (a HEAD of a route
    that counts visits sends nothing). A ``work(request)`` is done off the loop instead (by
    the network tools' threads), and its value is the reply's. A ``probe`` is left out of the
    access log by default.
    A ``gate(request)``, when set, is asked first: a Response from it is the answer, and
    nothing is sent to Redis. A route that ``takes_body`` answers POST, PUT and PATCH too,
    once the body has been read: ``request.body`` is then a bodies.Body.
    """

    answer: typing.Callable
    redis_command: bytes | None = None
    counts_visit: bool = False
    probe: bool = False
    gate: typing.Callable | None = None
    takes_body: bool = False
    work: typing.Callable | None = None


class RouteTable(dict):
    """The route table, path -> Route, served under ``prefix`` (PATH_PREFIX; "" for the root),
    where the probes answer at the root too."""

    def __init__(self, rows, prefix=""):
        super().__init__(rows)
        self.prefix = prefix

    def within(self, path):
        """The path as the table knows it: one under the prefix without it, a probe's at the
        root as it is; None for any other (a 404, or the prefix itself: redirected)."""
        prefix = self.prefix
        if not prefix:
            return path
        if path.startswith(prefix) and path[len(prefix):len(prefix) + 1] == "/":
            return path[len(prefix):]
        route = self.get(path)
        return path if route is not None and route.probe else None


class PageRequest(typing.NamedTuple):
    """What an answer may read of its request."""

    wants_json: bool     # JSON ranks above HTML in its Accept field
    query: dict          # the query's parameters: name -> [values]
    path: str            # without the query, nor PATH_PREFIX
    requestline: bytes   # for /echo, as received
    headers: object      # http11.RequestHeaders
    address: str         # where it came from: a PROXY header's source, else the TCP peer
    connection: object   # its connection.Connection: its ``peer``, its ``proxy`` header or None
    body: object = None  # a POST's, PUT's or PATCH's body, once read (a bodies.Body)
    request_id: str = ""  # its id: the one it came with (X-Request-Id), else one made here
    trace: object = None  # its traceparent, read (a tracing.Trace), or None


class Reply(typing.NamedTuple):
    """What a route waited for: Redis's reply to its command, or its work's value; or why
    there is none (an error)."""

    value: object
    error: Exception | None
