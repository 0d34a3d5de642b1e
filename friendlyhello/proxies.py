"""What proxies say about a request's client, and how much of it to believe: TRUSTED_PROXIES,
FORWARDED_HEADER, the PROXY protocol header (v1 text and v2 binary, as HAProxy's specification
defines them), X-Forwarded-For, RFC 7239 Forwarded and X-Real-IP.

Nothing a client sends is believed unless a trusted proxy vouches for it, and only in the one
header that the trusted proxies write (FORWARDED_HEADER): a proxy passes every other header on
untouched, so a client could write any of them itself. The client is found from the TCP peer
backwards: the peer, then that header's entries right to left, the first address that is not
a trusted proxy is the client. An entry that is not an address stops the walk (it is shown,
flagged, never believed). An IPv4 address written as IPv6 (``::ffff:192.0.2.1``, as dual-stack
sockets and proxies write it) is read as the IPv4 address, wherever it comes from. Nothing
here touches a socket.
"""

import ipaddress
import re
import struct
import typing

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107                 # the whole v1 line, CRLF included, at most (the specification's bound)
V2_MAX_PAYLOAD = 2048        # addresses and TLVs; load balancers send a few hundred bytes
PROXY_MODES = ("off", "v1", "v2", "any")
# FORWARDED_HEADER's values, and the header each names (none: believe the peer, or the PROXY
# header's source, alone).
FORWARDED_HEADERS = {
    "x-forwarded-for": "X-Forwarded-For",
    "forwarded": "Forwarded",
    "x-real-ip": "X-Real-IP",
    "none": None,
}


class ProxyRefused(Exception):
    """A connection whose PROXY header is missing or malformed: closed without an answer.
    ``reason`` is its label in /metrics."""

    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason


def parse_networks(text):
    """Addresses and CIDR blocks, comma-separated (IPv4 and IPv6): TRUSTED_PROXIES and
    DIAL_ALLOW."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError("addresses or CIDR blocks separated by commas "
                             f"({item[:60]!r} is neither)") from None
        networks.append(_ipv4_network(network))
    return tuple(networks)


_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def _ipv4_network(network):
    """A block of IPv4-mapped addresses (::ffff:10.0.0.0/104) as the IPv4 block it is
    (10.0.0.0/8)."""
    if network.version == 6 and network.subnet_of(_MAPPED):
        first = network.network_address.ipv4_mapped
        return ipaddress.ip_network(f"{first}/{network.prefixlen - 96}")
    return network


def normal_address(text):
    """A socket's or a header's address text, an IPv4-mapped one as its IPv4 address; other
    text as it is. Cheap for the common case: only text that starts as a mapped one is parsed."""
    if text[:7].lower() == "::ffff:" and "." in text:
        address = _address(text)
        return text if address is None else str(address)
    return text


class Networks:
    """Networks a setting names (the trusted proxies', where /dial may go); ``holds(address)``
    takes an ip_address or text, an IPv4-mapped address as the IPv4 one."""

    def __init__(self, networks):
        self.networks = networks

    def __bool__(self):
        return bool(self.networks)

    def __str__(self):
        return ",".join(map(str, self.networks)) or "none"

    def holds(self, address):
        if isinstance(address, str):
            address = _address(address)
        if address is None:
            return False
        return any(address in network for network in self.networks)


def _address(text):
    """The address in ``text``, an IPv4-mapped IPv6 one as its IPv4 address; None if none."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address.ipv4_mapped or address if address.version == 6 else address


# -- the PROXY header ---------------------------------------------------------------------------

class ProxyHeader(typing.NamedTuple):
    """What a PROXY header said. The source and destination are (address, port), or None
    when it gave none to use."""

    version: int                     # 1 or 2
    command: str                     # PROXY, or LOCAL (a health check)
    family: str                      # TCP4, TCP6, UNKNOWN, UNSPEC...
    source: tuple | None
    destination: tuple | None
    tlv_bytes: int                   # bytes of TLVs (v2), skipped


_V1_ADDRESS = rb"([0-9a-fA-F.:]{2,39})"
_V1_PORT = rb"([0-9]{1,5})"
_V1 = re.compile(rb"PROXY (?:(TCP4|TCP6) " + _V1_ADDRESS + b" " + _V1_ADDRESS + b" " + _V1_PORT
                 + b" " + _V1_PORT + rb"|UNKNOWN[^\r\n]*)\r\n")
_V2_FAMILIES = {0x00: ("UNSPEC", 0), 0x11: ("TCP4", 12), 0x12: ("UDP4", 12), 0x21: ("TCP6", 36),
                0x22: ("UDP6", 36), 0x31: ("UNIX_STREAM", 216), 0x32: ("UNIX_DGRAM", 216)}


def read_proxy_header(data, mode):
    """Read the PROXY header at the start of ``data`` (bytes received so far): (header, its
    length), or None while more bytes are needed. Raise ProxyRefused when it is missing or
    malformed; a header longer than the specification allows is malformed as soon as that shows."""
    if data[:1] == b"P" and mode in ("v1", "any"):
        if data[:6] != b"PROXY "[:len(data)]:
            raise ProxyRefused("missing", "the connection did not begin with a PROXY header")
        end = data.find(b"\n", 0, V1_MAX)
        if end < 0:
            if len(data) >= V1_MAX:
                raise ProxyRefused("malformed", "a PROXY v1 line longer than 107 bytes")
            return None
        return _v1(bytes(data[:end + 1])), end + 1  # a line ending in LF alone does not match
    if data[:1] == b"\r" and mode in ("v2", "any"):
        if V2_SIGNATURE[:len(data)] != data[:len(V2_SIGNATURE)]:
            raise ProxyRefused("missing", "the connection did not begin with a PROXY header")
        if len(data) < 16:
            return None
        length = struct.unpack_from("!H", data, 14)[0]
        if length > V2_MAX_PAYLOAD:
            raise ProxyRefused("malformed", f"a PROXY v2 header of {length} bytes "
                                            f"(at most {V2_MAX_PAYLOAD})")
        if len(data) < 16 + length:
            return None
        return _v2(data[12], data[13], bytes(data[16:16 + length])), 16 + length
    if not data:
        return None
    raise ProxyRefused("missing", "the connection did not begin with a PROXY header")


def _v1(line):
    match = _V1.fullmatch(line)
    if match is None:
        raise ProxyRefused("malformed", "a PROXY v1 line that does not follow the specification")
    family = (match.group(1) or b"UNKNOWN").decode()
    if family == "UNKNOWN":
        return ProxyHeader(1, "PROXY", family, None, None, 0)
    kind = ipaddress.IPv4Address if family == "TCP4" else ipaddress.IPv6Address
    try:
        source = kind(match.group(2).decode())
        destination = kind(match.group(3).decode())
    except ValueError:
        raise ProxyRefused("malformed", f"a PROXY v1 {family} line whose addresses are not "
                                        f"{family}") from None
    for text in match.group(4, 5):
        if int(text) > 65535 or (len(text) > 1 and text[:1] == b"0"):
            raise ProxyRefused("malformed", "a PROXY v1 line with a port out of range")
    source_port, destination_port = int(match.group(4)), int(match.group(5))
    return ProxyHeader(1, "PROXY", family, (_shown(source), source_port),
                       (_shown(destination), destination_port), 0)


def _v2(version_command, family_byte, payload):
    if version_command >> 4 != 2 or version_command & 0x0F not in (0, 1):
        raise ProxyRefused("malformed", "a PROXY v2 header with an unknown version or command")
    command = "LOCAL" if version_command & 0x0F == 0 else "PROXY"
    if family_byte not in _V2_FAMILIES:
        raise ProxyRefused("malformed", "a PROXY v2 header with an unknown address family")
    family, size = _V2_FAMILIES[family_byte]
    if len(payload) < size:
        raise ProxyRefused("malformed", f"a PROXY v2 {family} header too short for its addresses")
    tlvs = payload[size:]
    offset = 0
    while offset < len(tlvs):  # type, length, value: skipped, but they must add up
        if offset + 3 > len(tlvs):
            raise ProxyRefused("malformed", "a PROXY v2 header whose TLVs overrun it")
        offset += 3 + struct.unpack_from("!H", tlvs, offset + 1)[0]
        if offset > len(tlvs):
            raise ProxyRefused("malformed", "a PROXY v2 header whose TLVs overrun it")
    if command == "LOCAL" or family not in ("TCP4", "TCP6"):  # a health check, or nothing to use
        return ProxyHeader(2, command, family, None, None, len(tlvs))
    width = 4 if family == "TCP4" else 16
    kind = ipaddress.IPv4Address if family == "TCP4" else ipaddress.IPv6Address
    source = kind(payload[:width])
    destination = kind(payload[width:2 * width])
    source_port, destination_port = struct.unpack_from("!HH", payload, 2 * width)
    return ProxyHeader(2, command, family, (_shown(source), source_port),
                       (_shown(destination), destination_port), len(tlvs))


def _shown(address):
    """An address from a PROXY header as text: an IPv4-mapped one as its IPv4 address."""
    return str(address.ipv4_mapped or address if address.version == 6 else address)


# -- the client, concluded ------------------------------------------------------------------------

class Hop(typing.NamedTuple):
    """One forwarded-for entry."""

    entry: str                # as given
    address: object           # the ip_address in it, or None if it is not one
    trusted: bool             # that address is a trusted proxy

class Conclusion(typing.NamedTuple):
    """Who the client is, and why."""

    client: str                 # the client's address
    client_from: str            # in words, the rule that gave it
    chain: list                 # the believed header's entries, left to right, as Hops
    source: str | None          # the believed header, when it had entries; else None


_FOR_ENTRY = re.compile(r"\[([0-9a-fA-F:.]+)\](?::[0-9]{1,5})?"  # [IPv6]:port, [IPv6]
                        r"|([0-9.]+)(?::[0-9]{1,5})?"          # IPv4:port, IPv4
                        r"|([0-9a-fA-F:.]+)")                  # IPv6


def entry_address(entry):
    """The address in a forwarded-for entry ("192.0.2.1", "192.0.2.1:80", "[2001:db8::1]:80",
    "2001:db8::1"), or None ("unknown", "_hidden", anything else)."""
    match = _FOR_ENTRY.fullmatch(entry.strip().strip('"'))
    return _address(next(filter(None, match.groups()))) if match else None


def forwarded_elements(values):
    """RFC 7239 Forwarded fields: a list of {parameter: value} per element, left to right
    (quoted strings unquoted); an element that does not parse is {"invalid": its text}."""
    elements = []
    for value in values:
        for element in _split_outside_quotes(value, ","):
            pairs = {}
            for pair in _split_outside_quotes(element, ";"):
                name, equals, text = pair.strip().partition("=")
                if not equals or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                    pairs = {"invalid": element.strip()}
                    break
                quoted = len(text) > 1 and text.startswith('"') and text.endswith('"')
                if quoted:
                    text = re.sub(r"\\(.)", r"\1", text[1:-1])
                pairs[name.lower()] = text
            if pairs:
                elements.append(pairs)
    return elements


def _split_outside_quotes(text, separator):
    parts = []
    current = []
    quoted = False
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def hops(entries, trusted):
    """Forwarded-for entries as Hops: each with its address, if it is one, and whether trusted."""
    return [Hop(entry, address, bool(address) and trusted.holds(address))
            for entry, address in ((e, entry_address(e)) for e in entries)]


def x_forwarded_for(headers, trusted):
    """The X-Forwarded-For fields' entries, every field in order, as Hops."""
    entries = []
    for value in headers.get_all("X-Forwarded-For", ()):
        entries += [entry.strip() for entry in value.split(",")]
    return hops(entries, trusted)


def _forwarded_for(headers, trusted):
    """RFC 7239 Forwarded's for= entries, every element in order, as Hops."""
    elements = forwarded_elements(headers.get_all("Forwarded", ()))
    return hops([element.get("for", element.get("invalid", "")) for element in elements], trusted)


def _real_ip(headers, trusted):
    """X-Real-IP: one address a field (a proxy that adds a field of its own adds it last)."""
    return hops([value.strip() for value in headers.get_all("X-Real-IP", ())], trusted)


_CHAINS = {"X-Forwarded-For": x_forwarded_for, "Forwarded": _forwarded_for, "X-Real-IP": _real_ip}


def not_believed(headers, believed):
    """The forwarding headers a request carried that are not the one believed, by name (for
    /echo: the client may have written them)."""
    return [name for name in _CHAINS if name != believed and headers.get_all(name)]


def conclude(peer, headers, trusted, believed, peer_is="the TCP peer"):
    """The client of a request from ``peer`` (the TCP peer's address, or the source a trusted
    PROXY header gave: ``peer_is`` says which), with ``headers`` (http.server's), under
    ``trusted`` (a Networks), believing only the header named ``believed`` (FORWARDED_HEADERS'
    value: "X-Forwarded-For", "Forwarded", "X-Real-IP", or None for none)."""
    chain = _CHAINS[believed](headers, trusted) if believed else []
    source = believed if chain else None
    if not trusted:
        return Conclusion(peer, f"{peer_is} (TRUSTED_PROXIES is empty: forwarded headers are "
                                "not believed)", chain, source)
    if not trusted.holds(peer):
        return Conclusion(peer, f"{peer_is}, which is not a trusted proxy (its headers are "
                                "not believed)", chain, source)
    nearest = peer
    for n, hop in enumerate(reversed(chain), 1):
        place = len(chain) - n + 1
        if hop.address is None:
            return Conclusion(nearest, f"the nearest trusted proxy: {source} entry {place} "
                                       f"({hop.entry[:60]!r}) is not an address", chain, source)
        if not hop.trusted:
            return Conclusion(str(hop.address), f"{source} entry {place}, the first from the "
                                                "right that is not a trusted proxy", chain, source)
        nearest = str(hop.address)
    if chain:
        return Conclusion(nearest, "every hop is a trusted proxy: the leftmost is the client",
                          chain, source)
    forwarded = f"no {believed}" if believed else "nothing (FORWARDED_HEADER is none)"
    return Conclusion(nearest, f"{peer_is}, a trusted proxy that forwarded {forwarded}", chain,
                      source)
