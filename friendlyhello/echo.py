"""/echo: what this replica received and what it concluded of who sent it, as JSON or as text.

The request line and header fields as received, the TCP peer, what a PROXY header said, the
client and the rule that gave it, each forwarding header's entries, and the replica that
answered; for a POST, PUT or PATCH, what its body was (its length, SHA-256 and first KiB);
the request's id, and its W3C trace (tracing.py).
Every value that came from the request is shown escaped as the logs escape it.
"""

import json

from .logs import printable, request_target
from .proxies import conclude, forwarded_elements, not_believed, x_forwarded_for
from .responses import JSON, TEXT, Response
from .tls import forwarded_client_cert

_VARY_ACCEPT = (("Vary", "Accept"),)
_AS_GIVEN = ("X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port", "X-Real-IP")


class Echo:
    """The /echo route of a replica (``me``, a replicas.Identity) under the settings'
    TRUSTED_PROXIES and FORWARDED_HEADER."""

    def __init__(self, config, me):
        self.me = me
        self.trusted = config.trusted_proxies
        self.believed = config.forwarded_header

    def answer(self, request, reply):
        seen = self.seen(request)
        if request.wants_json:
            return Response(200, JSON, json.dumps(seen) + "\n", _VARY_ACCEPT)
        return Response(200, TEXT, as_text(seen), _VARY_ACCEPT)

    def seen(self, request):
        """What the request carried and what was concluded of it, as a JSON-ready object."""
        peer_host, peer_port = request.connection.peer[:2]
        proxy = request.connection.proxy
        via_header = proxy is not None and proxy.source is not None
        peer_is = "the PROXY header's source" if via_header else "the TCP peer"
        headers = request.headers
        found = conclude(request.address, headers, self.trusted, self.believed, peer_is)
        requestline = request.requestline.decode("latin-1").rstrip("\r\n")
        hops = [{"entry": hop.entry, "address": hop.address and str(hop.address),
                 "trusted": hop.trusted} for hop in x_forwarded_for(headers, self.trusted)]
        seen = {
            "request_line": request_target(requestline),
            "headers": [[name, request_target(value)] for name, value in headers.items()],
            "peer": {"address": peer_host, "port": peer_port},
            "proxy_protocol": None if proxy is None else _proxy_header(proxy),
            "client": found.client,
            "client_from": found.client_from,
            "forwarded_from": found.source,
            "forwarded_header": self.believed,
            "not_believed": not_believed(headers, self.believed),
            "x_forwarded_for": hops,
            "forwarded": forwarded_elements(headers.get_all("Forwarded", ())),
        }
        for name in _AS_GIVEN:
            seen[_key(name)] = headers.get(name)
        tls = request.connection.tls
        seen["tls"] = tls.info() if tls is not None and tls.version else None
        seen["forwarded_client_cert"] = self._client_cert(headers, peer_host)
        seen["x_forwarded_prefix"] = self._forwarded_prefix(headers, peer_host)
        seen["body"] = _body(request.body)
        seen["request_id"] = request.request_id
        seen["trace"] = _trace(request.trace)
        seen["replica"] = self.me.replica_id
        seen["version"] = self.me.version
        return seen


    def _client_cert(self, headers, peer):
        """X-Forwarded-Client-Cert (Envoy's): what a trusted proxy says of the client's
        certificate; from anyone else, not read (the client may have written it)."""
        value = headers.get("X-Forwarded-Client-Cert")
        if value is None:
            return None
        if not self.trusted.holds(peer):
            return {"from_trusted_proxy": False, "elements": None}
        return {"from_trusted_proxy": True, "elements": forwarded_client_cert(value)}

    def _forwarded_prefix(self, headers, peer):
        """X-Forwarded-Prefix: the path a proxy took off before passing the request on (so a
        page's links would carry it), believed from a trusted proxy only."""
        value = headers.get("X-Forwarded-Prefix")
        if value is None:
            return None
        return {"prefix": request_target(value), "from_trusted_proxy": self.trusted.holds(peer)}


def _body(body):
    """What a POST's, PUT's or PATCH's body was (None for a GET): its first KiB as UTF-8, each
    byte that is not written as an escape (\\x80), as a request target's are."""
    if body is None:
        return None
    return {"length": body.length, "sha256": body.sha256, "framing": body.framing,
            "content_type": body.content_type and request_target(body.content_type),
            "start": body.start.decode("utf-8", "backslashreplace")}


def _trace(trace):
    """What the traceparent said (None without one): when valid, the trace, the caller's span
    and this server's child of it; when not, only that, and the field escaped."""
    if trace is None:
        return None
    state = trace.state and request_target(trace.state)
    if not trace.valid:
        return {"traceparent": request_target(trace.given), "valid": False, "tracestate": state}
    return {"traceparent": trace.given, "valid": True, "trace_id": trace.trace_id,
            "parent_id": trace.parent_id, "flags": trace.flags, "span_id": trace.span_id,
            "tracestate": state}


def _proxy_header(proxy):
    return {"version": proxy.version, "command": proxy.command, "family": proxy.family,
            "source": proxy.source and list(proxy.source),
            "destination": proxy.destination and list(proxy.destination),
            "tlv_bytes": proxy.tlv_bytes}


def _key(header):
    return header.lower().replace("-", "_")


def as_text(seen):
    """/echo as text: the request as received, then what was concluded, a line each."""
    lines = [_shown(seen["request_line"])]
    lines += [f"{_shown(name)}: {_shown(value)}" for name, value in seen["headers"]]
    lines += ["", f"peer: {_host_port(seen['peer']['address'], seen['peer']['port'])}"]
    lines.append(f"proxy_protocol: {_proxy_words(seen['proxy_protocol'])}")
    lines.append(f"client: {seen['client']}")
    lines.append(f"client_from: {_shown(seen['client_from'])}")
    lines.append(f"forwarded_from: {seen['forwarded_from'] or 'none'}")
    lines.append(f"forwarded_header: {seen['forwarded_header'] or 'none'}")
    lines.append(f"not_believed: {', '.join(seen['not_believed']) or 'none'}")
    lines.append("x-forwarded-for:")
    for n, hop in enumerate(seen["x_forwarded_for"], 1):
        if hop["address"] is None:
            verdict = "not an address"
        else:
            verdict = "trusted proxy" if hop["trusted"] else "not trusted"
        lines.append(f"  hop {n}: {_shown(hop['entry'])} ({verdict})")
    lines.append(f"forwarded: {_shown(json.dumps(seen['forwarded']))}")
    for name in _AS_GIVEN:
        lines.append(f"{name.lower()}: {_shown(seen[_key(name)] or '-')}")
    lines.append(f"tls: {_shown(_tls_words(seen['tls']))}")
    cert = seen["forwarded_client_cert"]
    if cert is not None:
        said = json.dumps(cert["elements"]) if cert["from_trusted_proxy"] else "not read: the " \
            "peer is not a trusted proxy"
        lines.append(f"x-forwarded-client-cert: {_shown(said)}")
    prefix = seen["x_forwarded_prefix"]
    if prefix is not None:
        trust = "from a trusted proxy" if prefix["from_trusted_proxy"] else "not believed: the " \
            "peer is not a trusted proxy"
        lines.append(f"x-forwarded-prefix: {_shown(prefix['prefix'])} ({trust})")
    body = seen["body"]
    if body is not None:
        lines.append(f"body: {body['length']} bytes ({body['framing']}), sha256 {body['sha256']}, "
                     f"content type {_shown(body['content_type'] or '-')}")
        lines.append(f"body start: {_shown(body['start'])}")
    lines.append(f"request_id: {seen['request_id']}")
    lines.append(f"trace: {_trace_words(seen['trace'])}")
    lines.append(f"replica: {_shown(seen['replica'])}")
    lines.append(f"version: {seen['version']}")
    return "\n".join(lines) + "\n"


def _proxy_words(proxy):
    if proxy is None:
        return "none"
    words = f"v{proxy['version']} {proxy['command']} {proxy['family']}"
    if proxy["source"]:
        source = _host_port(*proxy["source"])
        destination = _host_port(*proxy["destination"])
        words += f" from {source} to {destination}"
    return words + f", {proxy['tlv_bytes']} bytes of TLVs"


def _trace_words(trace):
    if trace is None:
        return "none (no traceparent)"
    state = f", tracestate {_shown(trace['tracestate'])}" if trace["tracestate"] else ""
    if not trace["valid"]:
        return f"invalid traceparent {_shown(trace['traceparent'])} (ignored){state}"
    return (f"trace {trace['trace_id']}, parent span {trace['parent_id']}, this span "
            f"{trace['span_id']}, flags {trace['flags']}{state}")


def _tls_words(tls):
    if tls is None:
        return "none (plain HTTP)"
    words = f"{tls['version']} {tls['cipher']}, sni {tls['sni'] or '-'}, alpn {tls['alpn'] or '-'}"
    words += f", resumed {'yes' if tls['resumed'] else 'no'}"
    cert = tls["client_certificate"]
    if cert is None:
        return words + ", no client certificate"
    return words + f", client certificate {cert['subject']} from {cert['issuer']} " \
                   f"(sha256 {cert['sha256']})"


def _shown(text):
    return printable(text, quoted=False)


def _host_port(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
