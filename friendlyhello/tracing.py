"""Following one request through proxies and logs: its id, and the W3C trace it belongs to.

Each request has an id: the one it came with in ``X-Request-Id`` (nginx's ``$request_id``,
HAProxy's ``unique-id``), when that is 1 to 64 visible ASCII characters, else one made here
(this process's random prefix, made at start-up, and a count). It goes back in ``X-Request-Id``
on every answer and into the access log.

A ``traceparent`` field (W3C Trace Context, level 1) is read strictly: version ``00``, a 32- and
a 16-digit id in lowercase hex, neither all zeros, two hex digits of flags. A valid one gives
this server's span an id of its own (a child of the caller's), and both land in the log; an
invalid one is ignored there, and /echo shows it flagged invalid. ``tracestate`` is shown as
given beside it.
"""

import itertools
import os
import re
import typing

_GIVEN_ID = re.compile(r"[\x21-\x7e]{1,64}")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_NO_TRACE, _NO_PARENT = "0" * 32, "0" * 16


class RequestIds:
    """Makes each request's id, or keeps the one it came with. One per serving process (each
    worker has its own prefix, so ids never repeat across them)."""

    def __init__(self):
        self._prefix = os.urandom(6).hex()
        self._count = itertools.count(1)

    def take(self, given):
        """``given`` (the request's X-Request-Id values, or None) when it is one valid id; else
        a new one."""
        if given is not None and len(given) == 1 and _GIVEN_ID.fullmatch(given[0]):
            return given[0]
        return f"{self._prefix}-{next(self._count):x}"


class Trace(typing.NamedTuple):
    """What a request's ``traceparent`` said, and this server's span in that trace."""

    given: str               # the field as received
    valid: bool
    trace_id: str | None     # these three from the field, when valid
    parent_id: str | None
    flags: str | None
    span_id: str | None      # this server's span, a child of ``parent_id`` (valid only)
    state: str | None        # tracestate, as given (its fields joined with ", ")


def trace_of(headers):
    """The request's Trace, or None when it has no ``traceparent``. Two of them are invalid, as
    is anything but version 00 written exactly."""
    given = headers.get_all("traceparent")
    if not given:
        return None
    states = headers.get_all("tracestate")
    state = ", ".join(states) if states else None
    found = _TRACEPARENT.fullmatch(given[0].strip(" \t")) if len(given) == 1 else None
    if found is None or found.group(1) == _NO_TRACE or found.group(2) == _NO_PARENT:
        return Trace(", ".join(given), False, None, None, None, None, state)
    trace_id, parent_id, flags = found.groups()
    return Trace(given[0], True, trace_id, parent_id, flags, os.urandom(8).hex(), state)
