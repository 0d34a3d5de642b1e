"""The route table's rows, and what a route's answer is given: the request as a PageRequest,
and Redis's reply (or why there is none) as a RedisReply.
"""

import collections


class Route(collections.namedtuple("Route", "answer redis_command counts_visit probe gate", defaults=(None,))):
    """One path: ``answer(request, reply)`` makes its Response from a PageRequest.

    ``redis_command`` (``encode_command()``'s bytes, made once) is sent first when set, and
    ``reply`` is then a ``RedisReply``; it is None when nothing was sent (a HEAD of a route
    that counts visits sends nothing). A ``probe`` is left out of the access log by default.
    A ``gate(request)``, when set, is asked first: a Response from it is the answer, and
    nothing is sent to Redis.
    """

    __slots__ = ()


PageRequest = collections.namedtuple("PageRequest", "wants_json query path requestline headers address connection")
PageRequest.__doc__ = """What an answer may read of its request: whether JSON ranks first, the
query, the path (without the query); and, for /echo, the request line (bytes), the header
fields, the address it came from (a PROXY header's source, else the TCP peer) and the
Connection (its ``peer``, its ``proxy`` header or None)."""
RedisReply = collections.namedtuple("RedisReply", "value error")
