"""Who sent a request: /echo, TRUSTED_PROXIES and the PROXY protocol. First what a proxy's
words are worth (in process), then the server reading PROXY headers on real sockets, then real
HAProxy and nginx from Debian's packages in front of it, with clients bound to their own
loopback addresses so that the client the server concludes can be checked."""

import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import time

import pytest

from friendlyhello import proxies
from friendlyhello.proxies import V2_SIGNATURE, Networks, ProxyRefused, read_proxy_header
from helpers import ROOT, free_port, redis_env, refused_env, serving, unavailable, wait_until, without_id


def v1(source="203.0.113.7", sport=40000, family="TCP4", destination="127.0.0.1", dport=80):
    return f"PROXY {family} {source} {destination} {sport} {dport}\r\n".encode()


def v2(command=0x21, family=0x11, source="198.51.100.7", sport=5555, destination="127.0.0.1", dport=80,
       tlvs=b"", length=None):
    pack = socket.inet_aton if family in (0x11, 0x12) else (lambda a: socket.inet_pton(socket.AF_INET6, a))
    addresses = pack(source) + pack(destination) + struct.pack("!HH", sport, dport) if family in (
        0x11, 0x12, 0x21, 0x22) else b"\x00" * (216 if family in (0x31, 0x32) else 0)
    payload = addresses + tlvs
    return V2_SIGNATURE + bytes([command, family]) + struct.pack("!H", len(payload) if length is None else length) \
        + payload


class Headers:
    """http.server's header API, as much as proxies.conclude() reads."""

    def __init__(self, **fields):
        self.fields = fields

    def get_all(self, name, default=()):
        return self.fields.get(name.replace("-", "_").lower(), default)


TRUSTED = Networks(proxies.parse_networks("10.0.0.0/8, 127.0.0.1, 2001:db8::/32"))


# -- what a proxy's words are worth ------------------------------------------------------------

XFF_NOT_TRUSTED = "X-Forwarded-For entry {}, the first from the right that is not a trusted proxy"


XFF, FWD, REAL = "X-Forwarded-For", "Forwarded", "X-Real-IP"


@pytest.mark.parametrize("peer, fields, believed, client, because, source, chain", [
    ("203.0.113.9", {"x_forwarded_for": ["1.2.3.4"]}, XFF, "203.0.113.9",
     "the TCP peer, which is not a trusted proxy (its headers are not believed)", XFF, "1.2.3.4 -"),
    ("10.0.0.2", {"x_forwarded_for": ["1.2.3.4, 10.0.0.3"]}, XFF, "1.2.3.4", XFF_NOT_TRUSTED.format(1),
     XFF, "1.2.3.4 - 10.0.0.3 T"),
    ("10.0.0.2", {"x_forwarded_for": ["6.6.6.6, 1.2.3.4", "10.0.0.3"]}, XFF, "1.2.3.4", XFF_NOT_TRUSTED.format(2),
     XFF, "6.6.6.6 - 1.2.3.4 - 10.0.0.3 T"),
    ("10.0.0.2", {"x_forwarded_for": ["10.0.0.9, 10.0.0.3"]}, XFF, "10.0.0.9",
     "every hop is a trusted proxy: the leftmost is the client", XFF, "10.0.0.9 T 10.0.0.3 T"),
    ("10.0.0.2", {"x_forwarded_for": ["1.2.3.4, nonsense, 10.0.0.3"]}, XFF, "10.0.0.3",
     "the nearest trusted proxy: X-Forwarded-For entry 2 ('nonsense') is not an address", XFF,
     "1.2.3.4 - nonsense ? 10.0.0.3 T"),
    ("10.0.0.2", {}, XFF, "10.0.0.2", "the TCP peer, a trusted proxy that forwarded no X-Forwarded-For", None, ""),
    ("10.0.0.2", {"forwarded": ['for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"'],
                  "x_forwarded_for": ["6.6.6.6"]}, FWD, "192.0.2.60", "Forwarded entry 1, the first from the right "
     "that is not a trusted proxy", FWD, "192.0.2.60 - [2001:db8::1]:4711 T"),
    ("10.0.0.2", {"forwarded": ["for=unknown", "nonsense"]}, FWD, "10.0.0.2",
     "the nearest trusted proxy: Forwarded entry 2 ('nonsense') is not an address", FWD,
     "unknown ? nonsense ?"),
    ("::ffff:10.0.0.2", {"x_forwarded_for": ["[2001:db8::5]:80, 1.2.3.4:5678"]}, XFF, "1.2.3.4",
     XFF_NOT_TRUSTED.format(2), XFF, "[2001:db8::5]:80 T 1.2.3.4:5678 -"),
    # A header the trusted proxies do not write is the client's own words: never believed.
    ("10.0.0.2", {"forwarded": ["for=6.6.6.6"], "x_forwarded_for": ["1.2.3.4"]}, XFF, "1.2.3.4",
     XFF_NOT_TRUSTED.format(1), XFF, "1.2.3.4 -"),
    ("10.0.0.2", {"forwarded": ["for=6.6.6.6"]}, XFF, "10.0.0.2",
     "the TCP peer, a trusted proxy that forwarded no X-Forwarded-For", None, ""),
    ("10.0.0.2", {"x_forwarded_for": ["6.6.6.6"], "forwarded": ["for=1.2.3.4"]}, FWD, "1.2.3.4",
     "Forwarded entry 1, the first from the right that is not a trusted proxy", FWD, "1.2.3.4 -"),
    ("10.0.0.2", {"x_real_ip": ["6.6.6.6", "1.2.3.4"], "x_forwarded_for": ["7.7.7.7"]}, REAL, "1.2.3.4",
     "X-Real-IP entry 2, the first from the right that is not a trusted proxy", REAL, "6.6.6.6 - 1.2.3.4 -"),
    ("10.0.0.2", {"x_forwarded_for": ["6.6.6.6"], "x_real_ip": ["6.6.6.6"]}, None, "10.0.0.2",
     "the TCP peer, a trusted proxy that forwarded nothing (FORWARDED_HEADER is none)", None, ""),
    # An IPv4-mapped IPv6 entry, as dual-stack proxies write it, is the IPv4 address.
    ("10.0.0.2", {"x_forwarded_for": ["::ffff:192.0.2.1"]}, XFF, "192.0.2.1", XFF_NOT_TRUSTED.format(1), XFF,
     "::ffff:192.0.2.1 -"),
    ("10.0.0.2", {"x_forwarded_for": ["::ffff:192.0.2.1, [::ffff:10.1.1.1]:80"]}, XFF, "192.0.2.1",
     XFF_NOT_TRUSTED.format(1), XFF, "::ffff:192.0.2.1 - [::ffff:10.1.1.1]:80 T"),
    ("10.0.0.2", {"forwarded": ['for="[::ffff:192.0.2.1]:80"']}, FWD, "192.0.2.1",
     "Forwarded entry 1, the first from the right that is not a trusted proxy", FWD, "[::ffff:192.0.2.1]:80 -"),
])
def test_the_client_is_the_first_address_from_the_peer_backwards_that_is_not_a_trusted_proxy(
        peer, fields, believed, client, because, source, chain):
    found = proxies.conclude(proxies.normal_address(peer), Headers(**fields), TRUSTED, believed)
    hops = " ".join(f"{hop.entry} {'?' if hop.address is None else 'T' if hop.trusted else '-'}" for hop in found.chain)
    assert (found.client, found.client_from, found.source, hops) == (client, because, source, chain)


@pytest.mark.parametrize("believed", [XFF, FWD, REAL, None])
def test_every_forwarding_header_but_the_one_believed_is_named_as_not_believed(believed):
    fields = {"x_forwarded_for": ["6.6.6.6"], "forwarded": ["for=6.6.6.6"], "x_real_ip": ["6.6.6.6"]}
    found = proxies.conclude("10.0.0.2", Headers(**fields), TRUSTED, believed)
    assert proxies.not_believed(Headers(**fields), believed) == [n for n in (XFF, FWD, REAL) if n != believed]
    assert found.client == ("10.0.0.2" if believed is None else "6.6.6.6")
    assert proxies.not_believed(Headers(), believed) == []


@pytest.mark.parametrize("text, shown", [
    ("::ffff:192.0.2.1", "192.0.2.1"), ("::FFFF:10.0.0.1", "10.0.0.1"), ("::ffff:c000:201", "::ffff:c000:201"),
    ("2001:db8::1", "2001:db8::1"), ("192.0.2.1", "192.0.2.1"), ("::ffff:nonsense.1", "::ffff:nonsense.1"),
])
def test_a_peer_written_as_an_ipv4_mapped_ipv6_address_is_its_ipv4_address(text, shown):
    assert proxies.normal_address(text) == shown


def test_a_forwarded_element_without_for_or_a_long_bad_entry_stops_the_walk_and_is_quoted_short():
    found = proxies.conclude("10.0.0.2", Headers(forwarded=["proto=https"]), TRUSTED, FWD)
    assert found.client_from == "the nearest trusted proxy: Forwarded entry 1 ('') is not an address"
    long = "h" * 80
    found = proxies.conclude("10.0.0.2", Headers(x_forwarded_for=[long]), TRUSTED, XFF)
    assert found.client_from == f"the nearest trusted proxy: X-Forwarded-For entry 1 ({'h' * 60!r}) is not an address"


def test_a_proxy_header_s_source_is_named_as_such():
    found = proxies.conclude("198.51.100.7", Headers(), TRUSTED, XFF, "the PROXY header's source")
    assert found.client_from == "the PROXY header's source, which is not a trusted proxy (its headers are not believed)"


@pytest.mark.parametrize("entry, address", [
    ("192.0.2.1", "192.0.2.1"), ("192.0.2.1:80", "192.0.2.1"), ('"[2001:db8::1]:80"', "2001:db8::1"),
    ("2001:db8::1", "2001:db8::1"), (' "192.0.2.1" ', "192.0.2.1"), ("unknown", None), ("_hidden", None),
    ("192.0.2.1X", None), ("X192.0.2.1", None), ("999.1.1.1", None), ("[192.0.2.1", None),
])
def test_a_forwarded_for_entry_is_an_address_with_or_without_its_port_or_nothing(entry, address):
    found = proxies.entry_address(entry)
    assert (found and str(found)) == address


def test_only_addresses_inside_the_trusted_blocks_are_trusted():
    assert TRUSTED.holds("10.255.0.1") and TRUSTED.holds("2001:db8:1::9") and TRUSTED.holds("::ffff:127.0.0.1")
    assert not TRUSTED.holds("11.0.0.1") and not TRUSTED.holds("nonsense") and not TRUSTED.holds("2001:db9::1")
    assert str(TRUSTED) == "10.0.0.0/8,127.0.0.1/32,2001:db8::/32" and str(Networks(())) == "none"


def test_without_trusted_proxies_the_client_is_the_peer_and_the_headers_are_shown_not_believed():
    found = proxies.conclude("10.0.0.2", Headers(x_forwarded_for=["1.2.3.4, x"]), Networks(()), XFF)
    assert (found.client, found.source) == ("10.0.0.2", "X-Forwarded-For") and "TRUSTED_PROXIES is empty" in \
        found.client_from
    assert [(hop.entry, hop.address and str(hop.address), hop.trusted) for hop in found.chain] == [
        ("1.2.3.4", "1.2.3.4", False), ("x", None, False)]


@pytest.mark.parametrize("value, elements", [
    ('for=192.0.2.43, for="[2001:db8:cafe::17]:4711"', [{"for": "192.0.2.43"}, {"for": "[2001:db8:cafe::17]:4711"}]),
    ('for=_hidden;proto=http;by=203.0.113.43', [{"for": "_hidden", "proto": "http", "by": "203.0.113.43"}]),
    ('For="a,b;c";host="x\\"y"', [{"for": "a,b;c", "host": 'x"y'}]),
    ("garbage, for=1.2.3.4", [{"invalid": "garbage"}, {"for": "1.2.3.4"}]),
    (",for=1.2.3.4", [{"for": "1.2.3.4"}]),                                 # an empty element is no element
    ('for="a\\",b";proto=http, for=1.2.3.4', [{"for": 'a",b', "proto": "http"}, {"for": "1.2.3.4"}]),
    ('host="a=b"', [{"host": "a=b"}]),
    ('for=""', [{"for": ""}]), ('for="', [{"for": '"'}]),                   # empty, and a quote never closed
])
def test_forwarded_is_read_as_rfc_7239_writes_it(value, elements):
    assert proxies.forwarded_elements([value]) == elements


@pytest.mark.parametrize("text, networks", [
    ("", ()), ("127.0.0.1", ("127.0.0.1/32",)), ("10.0.0.0/8, ::1,fd00::/8", ("10.0.0.0/8", "::1/128", "fd00::/8")),
    ("10.1.2.3/8", ("10.0.0.0/8",)), ("10.0.0.1,,10.0.0.2, ", ("10.0.0.1/32", "10.0.0.2/32")),
    ("::ffff:10.0.0.0/104, ::ffff:127.0.0.1", ("10.0.0.0/8", "127.0.0.1/32")),  # IPv4-mapped: the IPv4 block
    ("::ffff:0:0/95", ("::fffe:0:0/95",)),  # wider than the mapped block: IPv6 as given
])
def test_trusted_proxies_are_addresses_and_blocks(text, networks):
    assert tuple(map(str, proxies.parse_networks(text))) == networks


# -- the PROXY header, read ---------------------------------------------------------------------

@pytest.mark.parametrize("data, said", [
    (v1(), (1, "PROXY", "TCP4", ("203.0.113.7", 40000), ("127.0.0.1", 80), 0)),
    (v1("2001:db8::7", 1, "TCP6", "::1", 65535), (1, "PROXY", "TCP6", ("2001:db8::7", 1), ("::1", 65535), 0)),
    (b"PROXY UNKNOWN\r\n", (1, "PROXY", "UNKNOWN", None, None, 0)),
    (b"PROXY UNKNOWN ffff:f...f ffff:f...f 65535 65535\r\n", (1, "PROXY", "UNKNOWN", None, None, 0)),
    (v2(), (2, "PROXY", "TCP4", ("198.51.100.7", 5555), ("127.0.0.1", 80), 0)),
    (v2(family=0x21, source="2001:db8::9", destination="::1", tlvs=b"\x01\x00\x02h2\x04\x00\x00"),
     (2, "PROXY", "TCP6", ("2001:db8::9", 5555), ("::1", 80), 8)),
    (v2(command=0x20), (2, "LOCAL", "TCP4", None, None, 0)),  # a health check: the connection's own addresses
    (v2(family=0x00), (2, "PROXY", "UNSPEC", None, None, 0)),
    (v2(family=0x31), (2, "PROXY", "UNIX_STREAM", None, None, 0)),
])
def test_each_kind_of_proxy_header_reads_and_any_prefix_of_it_asks_for_more(data, said):
    mode = "v1" if data.startswith(b"PROXY") else "v2"
    for end in range(len(data)):
        assert read_proxy_header(data[:end], mode) is None and read_proxy_header(data[:end], "any") is None
    header, length = read_proxy_header(data + b"GET / HTTP/1.1\r\n", mode)
    assert tuple(header) == said and length == len(data)


MISSING = "the connection did not begin with a PROXY header"
V1_BAD = "a PROXY v1 line that does not follow the specification"


@pytest.mark.parametrize("data, mode, reason, detail", [
    (b"GET / HTTP/1.1\r\n\r\n", "any", "missing", MISSING),
    (b"POST / HTTP/1.1\r\n", "any", "missing", MISSING),                  # a P, but not PROXY
    (v2(), "v1", "missing", MISSING), (v1(), "v2", "missing", MISSING),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "v1", "malformed", V1_BAD),       # LF alone
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "v1", "malformed", V1_BAD),      # a port missing
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "v1", "malformed", "a PROXY v1 line with a port out of range"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "v1", "malformed", "a PROXY v1 line with a port out of range"),
    (b"PROXY TCP4 ::1 ::1 1 2\r\n", "v1", "malformed", "a PROXY v1 TCP4 line whose addresses are not TCP4"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "v1", "malformed", "a PROXY v1 TCP4 line whose addresses are not TCP4"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "v1", "malformed", V1_BAD),
    (b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", "v1", "malformed", "a PROXY v1 line longer than 107 bytes"),
    (b"PROXY UNKNOWN " + b"x" * 93, "v1", "malformed", "a PROXY v1 line longer than 107 bytes"),  # 107, no end
    (v2(command=0x22), "v2", "malformed", "a PROXY v2 header with an unknown version or command"),
    (v2(command=0x11), "v2", "malformed", "a PROXY v2 header with an unknown version or command"),
    (v2(family=0x41), "v2", "malformed", "a PROXY v2 header with an unknown address family"),
    (v2(length=8), "v2", "malformed", "a PROXY v2 TCP4 header too short for its addresses"),
    (v2(tlvs=b"\x01\x00\x09abc"), "v2", "malformed", "a PROXY v2 header whose TLVs overrun it"),
    (v2(tlvs=b"\x01\x00"), "v2", "malformed", "a PROXY v2 header whose TLVs overrun it"),
    (v2(tlvs=b"\x01\x00\x02h2\x04\x00\x09ab"), "v2", "malformed", "a PROXY v2 header whose TLVs overrun it"),
    (V2_SIGNATURE + b"\x21\x11\xff\xff", "v2", "malformed", "a PROXY v2 header of 65535 bytes (at most 2048)"),
    (V2_SIGNATURE + b"\x21\x11\x08\x01", "v2", "malformed", "a PROXY v2 header of 2049 bytes (at most 2048)"),
    (V2_SIGNATURE[:-1] + b"X", "v2", "missing", MISSING),
])
def test_a_malformed_or_missing_proxy_header_is_refused_with_its_reason(data, mode, reason, detail):
    with pytest.raises(ProxyRefused) as refused:
        read_proxy_header(data, mode)
    assert (refused.value.reason, str(refused.value)) == (reason, detail)


def test_proxy_headers_at_the_edges_of_what_the_specification_allows_are_read():
    assert read_proxy_header(v1(sport=0, dport=65535), "v1")[0].source == ("203.0.113.7", 0)
    assert read_proxy_header(v2(sport=40000, dport=65535), "v2")[0].source == ("198.51.100.7", 40000)
    largest = v2(tlvs=b"\x01\x07\xf1" + b"t" * (2048 - 12 - 3))  # a payload of exactly 2048 bytes
    header, length = read_proxy_header(largest, "v2")
    assert length == 16 + 2048 and header.tlv_bytes == 2048 - 12
    line = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"  # 107 bytes, CRLF included
    assert read_proxy_header(line, "v1") == (proxies.ProxyHeader(1, "PROXY", "UNKNOWN", None, None, 0), 107)


# -- the server behind a PROXY-speaking proxy ---------------------------------------------------

def exchange(port, data, source="127.0.0.1", timeout=5, pause=0.0):
    """Send ``data`` (in pieces with ``pause`` between them, if a list) from ``source``; all
    that came back until the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        try:
            for piece in data if isinstance(data, list) else [data]:
                sock.sendall(piece)
                time.sleep(pause)
        except OSError:  # closed under us: what came back is still read
            pass
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def refusals(server):
    """friendlyhello_proxy_refused_total by reason (asked for with a PROXY header of its own)."""
    found = {}
    scraped = exchange(server.port, v1() + b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    for line in scraped.decode().splitlines():
        if line.startswith("friendlyhello_proxy_refused_total{"):
            found[line.split('"')[1]] = int(line.rsplit(" ", 1)[1])
    return {reason: n for reason, n in found.items() if n}


ECHO = b"GET /echo HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nConnection: close\r\n\r\n"


def echoed(answer):
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_with_the_proxy_protocol_on_the_client_is_the_header_s_source_and_the_peer_is_kept(fake_redis):
    env = {**redis_env(fake_redis), "TRUSTED_PROXIES": "127.0.0.1", "PROXY_PROTOCOL": "any"}
    with serving(env) as server:
        first = echoed(exchange(server.port, v1("203.0.113.7", 40000) + ECHO))
        second = echoed(exchange(server.port, [v2(source="198.51.100.9")[:9], v2(source="198.51.100.9")[9:] + ECHO],
                                 pause=0.05))
        local = echoed(exchange(server.port, v2(command=0x20) + ECHO))
        page = exchange(server.port, v1() + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        log = server.log_lines()
    assert (first["client"], first["peer"]["address"]) == ("203.0.113.7", "127.0.0.1")
    assert first["proxy_protocol"] == {"version": 1, "command": "PROXY", "family": "TCP4",
                                       "source": ["203.0.113.7", 40000], "destination": ["127.0.0.1", 80],
                                       "tlv_bytes": 0}
    assert first["client_from"].startswith("the PROXY header's source")
    assert second["client"] == "198.51.100.9" and second["proxy_protocol"]["version"] == 2
    assert local["client"] == "127.0.0.1" and local["proxy_protocol"]["command"] == "LOCAL"
    assert page.startswith(b"HTTP/1.1 200 ") and fake_redis.visits == 1  # /echo counted none
    assert log[0].startswith('203.0.113.7 via 127.0.0.1 "GET /echo" 200 ')


def test_the_json_access_log_names_the_client_and_the_peer_it_came_through():
    env = refused_env(TRUSTED_PROXIES="127.0.0.1", LOG_FORMAT="json")
    with serving(env) as server:
        exchange(server.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.9\r\n"
                              b"Connection: close\r\n\r\n")
        exchange(server.port, ECHO, source="127.0.0.2")
        lines = [json.loads(line) for line in server.log_lines()]
    assert (lines[0]["client"], lines[0]["peer"]) == ("192.0.2.9", "127.0.0.1")
    assert lines[1]["client"] == "127.0.0.2" and "peer" not in lines[1]  # no proxy between: no peer of its own


def test_a_connection_without_a_good_proxy_header_or_from_an_untrusted_peer_is_closed_unanswered():
    env = refused_env(TRUSTED_PROXIES="127.0.0.1", PROXY_PROTOCOL="v1", IDLE_TIMEOUT="0.15")
    with serving(env) as server:
        assert exchange(server.port, ECHO) == b""                               # no header: missing
        assert exchange(server.port, b"PROXY TCP4 1.2.3.4\r\n" + ECHO) == b""   # malformed
        assert exchange(server.port, v1() + ECHO, source="127.0.0.2") == b""     # from a peer not trusted
        assert exchange(server.port, v1()[:10]) == b""                           # never finished: timeout
        assert exchange(server.port, v2() + ECHO) == b""                         # v2 where v1 is expected
        assert echoed(exchange(server.port, v1() + ECHO))["client"] == "203.0.113.7"  # and it still serves
        assert refusals(server) == {"missing": 2, "malformed": 1, "untrusted_peer": 1, "timeout": 1}
        said = [line for line in server.error_lines() if "redis" not in line]
    assert said[:3] == ["friendlyhello: 127.0.0.1: connection closed: the connection did not begin with a PROXY header",
                        "friendlyhello: 127.0.0.1: connection closed: a PROXY v1 line that does not follow the "
                        "specification",
                        "friendlyhello: 127.0.0.1: connection closed: the connection did not begin with a PROXY header"]
    assert not [line for line in said if "internal error" in line]


def test_a_proxy_header_counts_toward_no_limit_of_the_head_and_the_limits_hold_after_it():
    env = refused_env(TRUSTED_PROXIES="127.0.0.1", PROXY_PROTOCOL="any")
    with serving(env) as server:
        line = b"GET /echo?" + b"a" * (8190 - 20) + b" HTTP/1.1\r\n"
        long_header = b"PROXY UNKNOWN " + b"f" * 90 + b"\r\n"
        assert exchange(server.port, long_header + line + b"Host: x\r\nConnection: close\r\n\r\n").startswith(
            b"HTTP/1.1 200 ")
        too_long = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert exchange(server.port, v1() + too_long).startswith(b"HTTP/1.1 414 ")
        log = server.log_lines()
    assert without_id(log[-1]) == '203.0.113.7 via 127.0.0.1 "- -" 414 0.0ms'  # refused, and still named by the header


# -- /echo ----------------------------------------------------------------------------------------

def test_echo_shows_the_request_as_received_and_believes_only_trusted_proxies(fake_redis):
    forged = (b"GET /echo?x=1 HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6, 10.0.0.1\r\n"
              b"Forwarded: for=7.7.7.7\r\nX-Real-IP: 8.8.8.8\r\nx-forwarded-proto: https\r\n"
              b"X-Odd: <b>\xe2\x80\xaered\xc3\xa9\r\nAccept: application/json\r\nConnection: close\r\n\r\n")
    with serving({**redis_env(fake_redis), "TRUSTED_PROXIES": "127.0.0.1", "VERSION": "3"}) as server:
        direct = echoed(exchange(server.port, forged, source="127.0.0.2"))
        proxied = echoed(exchange(server.port, forged))
        text = exchange(server.port, forged.replace(b"Accept: application/json\r\n", b""))
        head = exchange(server.port, b"HEAD /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    env = {**redis_env(fake_redis), "TRUSTED_PROXIES": "127.0.0.1", "FORWARDED_HEADER": "forwarded"}
    with serving(env) as server:
        by_forwarded = echoed(exchange(server.port, forged))
    assert direct["request_line"] == "GET /echo?x=1 HTTP/1.1"
    assert direct["headers"][:3] == [["Host", "h"], ["X-Forwarded-For", "6.6.6.6, 10.0.0.1"],
                                     ["Forwarded", "for=7.7.7.7"]]
    assert direct["headers"][5] == ["X-Odd", "<b>\u202eredé"]  # as received (UTF-8 read as UTF-8)
    assert (direct["client"], direct["peer"]["address"]) == ("127.0.0.2", "127.0.0.2")  # forged: not believed
    assert (proxied["client"], proxied["forwarded_from"]) == ("10.0.0.1", "X-Forwarded-For")
    assert (proxied["forwarded_header"], proxied["not_believed"]) == ("X-Forwarded-For", ["Forwarded", "X-Real-IP"])
    assert proxied["forwarded"] == [{"for": "7.7.7.7"}]
    assert (by_forwarded["client"], by_forwarded["forwarded_from"]) == ("7.7.7.7", "Forwarded")
    assert by_forwarded["not_believed"] == ["X-Forwarded-For", "X-Real-IP"]
    assert [(hop["address"], hop["trusted"]) for hop in proxied["x_forwarded_for"]] == [("6.6.6.6", False),
                                                                                        ("10.0.0.1", False)]
    assert (proxied["x_real_ip"], proxied["x_forwarded_proto"], proxied["x_forwarded_host"]) == ("8.8.8.8", "https",
                                                                                                 None)
    assert (proxied["replica"], proxied["version"], proxied["proxy_protocol"]) == (socket.gethostname(), "3", None)
    body = text.split(b"\r\n\r\n", 1)[1].decode()
    assert text.startswith(b"HTTP/1.1 200 ") and b"Content-Type: text/plain; charset=utf-8" in text
    assert "X-Odd: <b>\\u202eredé\n" in body and "\u202e" not in body  # shown, never reordering what follows
    assert "\nclient: 10.0.0.1\n" in body and "  hop 1: 6.6.6.6 (not trusted)\n" in body
    assert "\nforwarded_header: X-Forwarded-For\nnot_believed: Forwarded, X-Real-IP\n" in body
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n") and fake_redis.visits == 0


def test_an_ipv4_client_of_a_dual_stack_port_or_a_proxy_header_is_shown_and_logged_as_ipv4(fake_redis):
    env = {**redis_env(fake_redis), "TRUSTED_PROXIES": "::ffff:127.0.0.0/104", "PROXY_PROTOCOL": "any"}
    with serving(env, bind="::") as server:
        direct = echoed(exchange(server.port, v1("::ffff:203.0.113.7", 1, "TCP6", "::ffff:127.0.0.1", 80) + ECHO))
        binary = echoed(exchange(server.port, v2(family=0x21, source="::ffff:198.51.100.9", destination="::1")
                                 + ECHO.replace(b"Host: x", b"Host: x\r\nX-Forwarded-For: ::ffff:192.0.2.1")))
        log = server.log_lines()
    assert (direct["client"], direct["peer"]["address"]) == ("203.0.113.7", "127.0.0.1")
    assert direct["proxy_protocol"]["source"] == ["203.0.113.7", 1]
    assert direct["proxy_protocol"]["destination"] == ["127.0.0.1", 80]
    assert (binary["client"], binary["proxy_protocol"]["source"]) == ("198.51.100.9", ["198.51.100.9", 5555])
    assert binary["x_forwarded_for"] == [{"entry": "::ffff:192.0.2.1", "address": "192.0.2.1", "trusted": False}]
    assert any(line.startswith('203.0.113.7 via 127.0.0.1 "GET /echo" 200') for line in log), log


def test_echo_on_a_kept_alive_connection_shows_only_its_own_request():
    with serving(refused_env()) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: h\r\nX-Secret: one\r\nAccept: application/json\r\n\r\n"
                     b"GET /echo HTTP/1.1\r\nHost: h\r\nAccept: application/json\r\nConnection: close\r\n\r\n")
        answers = b""
        while chunk := sock.recv(65536):
            answers += chunk
    second = json.loads(answers.rsplit(b"\r\n\r\n", 1)[1])
    assert answers.count(b"HTTP/1.1 200 ") == 2 and "one" not in json.dumps(second)


# -- behind real HAProxy and nginx -------------------------------------------------------------------

def fill(template, **values):
    with open(os.path.join(ROOT, "tests", "proxies", template)) as file:
        text = file.read()
    for name, value in values.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def wait_for_port(port, process, within=10):
    def listening():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            assert process.poll() is None, process.communicate(timeout=5)
            return False

    wait_until(listening, within, f"a listener on {port}", pace=0.05)


def run_proxy(kind, template, folder, listening_on, **values):
    """HAProxy or nginx, started with one of tests/proxies/'s files filled in with ``values``
    (its scratch files in ``folder``), once it listens on each port of ``listening_on``; end
    it with end_proxy()."""
    binary = shutil.which(kind, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if binary is None:
        unavailable(f"{kind} is not installed (apt-get install haproxy nginx-light libnginx-mod-stream)")
    config = folder / f"{kind}-{template}"
    config.write_text(fill(template, scratch=folder, **values))
    command = [binary, "-db", "-f", str(config)] if kind == "haproxy" else [binary, "-c", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for port in listening_on:
            wait_for_port(port, process)
    except BaseException:
        end_proxy(process)
        raise
    return process


def end_proxy(process):
    process.kill()
    process.communicate(timeout=10)


def unquoted_lines(doc, *templates):
    """The lines of ``doc``'s plain code blocks (those without a language) that none of the
    ``templates`` holds: what the docs quote of tests/proxies/'s files, and should not invent."""
    with open(os.path.join(ROOT, "docs", doc)) as file:
        text = file.read()
    blocks = [block for language, block in re.findall(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M) if not language]
    quoted = [line.strip() for block in blocks for line in block.splitlines()]
    used = {line.strip() for name in templates for line in fill(name).splitlines()}
    assert quoted, f"{doc} quotes nothing"
    return [line for line in quoted if line and line not in used]


@pytest.fixture
def front(tmp_path):
    """Start HAProxy or nginx with tests/proxies/haproxy.cfg or nginx.conf; ended by its pid."""
    started = []

    def start(kind, **ports):
        template = "haproxy.cfg" if kind == "haproxy" else "nginx.conf"
        started.append(run_proxy(kind, template, tmp_path, (ports["http_port"], ports["v1_port"]), **ports))
        return started[-1]

    yield start
    for process in started:
        end_proxy(process)


def through(port, source, forged=b""):
    """/echo as JSON through a proxy on ``port``, from the loopback address ``source``."""
    request = (b"GET /echo HTTP/1.1\r\nHost: demo.example\r\nAccept: application/json\r\n" + forged
               + b"Connection: close\r\n\r\n")
    return echoed(exchange(port, request, source=source))


# Every header a client may send to name itself: the three this server reads, and the ones
# other servers read (Akamai's, Cloudflare's, Fastly's, older load balancers').
FORGERIES = b"".join(b"%s: 6.6.6.6\r\n" % name for name in (
    b"X-Forwarded-For", b"Forwarded", b"X-Real-IP", b"True-Client-IP", b"CF-Connecting-IP", b"Fastly-Client-IP",
    b"X-Client-IP", b"Client-IP", b"X-Cluster-Client-IP", b"X-Original-Forwarded-For"))
FORGERIES = FORGERIES.replace(b"Forwarded: 6.6.6.6", b"Forwarded: for=6.6.6.6")


@pytest.mark.slow  # real HAProxy and nginx, started for it
@pytest.mark.parametrize("kind", ["haproxy", "nginx"])
def test_behind_a_real_proxy_the_client_is_the_one_that_connected_to_it_and_a_forgery_is_not_believed(
        front, fake_redis, kind):
    trusted = {**redis_env(fake_redis), "TRUSTED_PROXIES": "127.0.0.1"}
    with serving(trusted) as plain, serving({**trusted, "PROXY_PROTOCOL": "any", "ACCESS_LOG": "all"}) as proxied, \
            serving({**trusted, "FORWARDED_HEADER": "forwarded"}) as standard:
        ports = {"http_port": free_port(), "v1_port": free_port(), "v2_port": free_port(),
                 "forwarded_port": free_port(), "plain_port": plain.port, "proxy_port": proxied.port,
                 "forwarded_backend": standard.port}
        front(kind, **ports)
        by_header = through(ports["http_port"], "127.0.0.2")
        forged = through(ports["http_port"], "127.0.0.3", FORGERIES)
        by_forwarded = through(ports["forwarded_port"], "127.0.0.6")
        forged_forwarded = through(ports["forwarded_port"], "127.0.0.7", FORGERIES)
        by_v1 = through(ports["v1_port"], "127.0.0.4")
        forged_v1 = through(ports["v1_port"], "127.0.0.8", FORGERIES)
        by_v2 = through(ports["v2_port"], "127.0.0.5") if kind == "haproxy" else None
        log = proxied.log_lines()
        forged_log = plain.log_lines() + standard.log_lines()
    assert (by_header["client"], by_header["peer"]["address"]) == ("127.0.0.2", "127.0.0.1")
    assert by_header["forwarded_from"] == "X-Forwarded-For" and by_header["proxy_protocol"] is None
    assert forged["client"] == "127.0.0.3"  # the proxy's own entry, not the one the client wrote
    assert [hop["address"] for hop in forged["x_forwarded_for"]] == ["6.6.6.6", "127.0.0.3"]
    assert [hop["trusted"] for hop in forged["x_forwarded_for"]] == [False, False]
    assert forged["not_believed"] == ["Forwarded", "X-Real-IP"]  # passed on as the client wrote them
    assert forged["forwarded"][0] == {"for": "6.6.6.6"}
    assert (by_forwarded["client"], by_forwarded["forwarded_from"]) == ("127.0.0.6", "Forwarded")
    assert forged_forwarded["client"] == "127.0.0.7" and "X-Forwarded-For" in forged_forwarded["not_believed"]
    assert [element.get("for") for element in forged_forwarded["forwarded"]] == ["6.6.6.6", "127.0.0.7"]
    assert forged_v1["client"] == "127.0.0.8" and forged_v1["proxy_protocol"]["source"][0] == "127.0.0.8"
    assert by_v1["client"] == "127.0.0.4" and by_v1["proxy_protocol"]["version"] == 1
    assert by_v1["proxy_protocol"]["destination"] == ["127.0.0.1", ports["v1_port"]]
    if kind == "nginx":
        assert forged["x_real_ip"] == "127.0.0.3" and by_header["x_forwarded_proto"] == "http"
    else:
        assert forged["x_real_ip"] == "6.6.6.6"  # HAProxy passes it on untouched
        assert by_v2["client"] == "127.0.0.5" and by_v2["proxy_protocol"]["version"] == 2
        assert any(line.startswith('127.0.0.1 "GET /healthz" 200') for line in log), log  # checks: v2 LOCAL
    assert any(line.startswith('127.0.0.4 via 127.0.0.1 "GET /echo" 200') for line in log), log
    assert any(line.startswith('127.0.0.8 via 127.0.0.1 "GET /echo" 200') for line in log), log
    assert forged_log and not [line for line in forged_log + log if "6.6.6.6" in line]


@pytest.mark.slow  # a real HAProxy, started for it
def test_a_proxy_header_from_a_proxy_not_in_trusted_proxies_is_refused(front, fake_redis):
    env = {**redis_env(fake_redis), "TRUSTED_PROXIES": "127.0.0.9", "PROXY_PROTOCOL": "any"}
    with serving(env) as proxied, serving(redis_env(fake_redis)) as plain:
        ports = {"http_port": free_port(), "v1_port": free_port(), "v2_port": free_port(),
                 "forwarded_port": free_port(), "plain_port": plain.port, "proxy_port": proxied.port,
                 "forwarded_backend": plain.port}
        front("haproxy", **ports)
        answer = exchange(ports["v1_port"], ECHO, source="127.0.0.2")
        counted = proxied.server.metrics.proxy_refusals[("untrusted_peer",)]
    assert answer == b"" and counted >= 1 and fake_redis.visits == 0


# -- a fuzz of PROXY headers -------------------------------------------------------------------------

ANSWERS_TO_A_BAD_REQUEST = {b"200", b"400", b"404", b"405", b"408", b"414", b"431", b"501", b"505"}  # never a 500


@pytest.mark.slow  # a few hundred connections
def test_no_proxy_header_however_broken_gets_a_5xx_or_a_hang_or_stalls_the_loop():
    rng = random.Random(20261201)
    good = [v1(), v1("2001:db8::1", 1, "TCP6", "::1", 2), v2(), v2(family=0x21, source="::1", destination="::1"),
            v2(command=0x20), v2(tlvs=b"\x01\x00\x01x" * 10), b"PROXY UNKNOWN\r\n"]
    cases = []
    for _ in range(300):
        data = bytearray(rng.choice(good))
        action = rng.randrange(5)
        if action == 0:
            data = data[:rng.randrange(1, len(data))]                          # truncated
        elif action == 1:
            data[rng.randrange(len(data))] = rng.randrange(256)                # a byte changed
        elif action == 2:
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))  # more than it said
        elif action == 3 and data.startswith(V2_SIGNATURE):
            struct.pack_into("!H", data, 14, rng.randrange(65536))              # a wrong length
        else:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))  # noise
        cases.append(bytes(data))
    env = refused_env(TRUSTED_PROXIES="127.0.0.1", PROXY_PROTOCOL="any", IDLE_TIMEOUT="0.5")
    with serving(env) as server:
        started = time.monotonic()
        for data in cases:
            answer = exchange(server.port, data + ECHO, timeout=3)
            # closed unanswered, or (a good header, then bytes that are no request) HTTP's own answer
            assert answer == b"" or answer[9:12] in ANSWERS_TO_A_BAD_REQUEST, (data, answer[:100])
        slow = exchange(server.port, [bytes([b]) for b in v1()] + [ECHO], pause=0.01)  # a byte at a time
        took = time.monotonic() - started
        assert echoed(slow)["client"] == "203.0.113.7" and echoed(exchange(server.port, v2() + ECHO))
    assert took < 300 * 0.5 + 10  # nothing waited longer than the idle timeout


def test_the_proxy_docs_quote_the_proxy_configurations_the_tests_run():
    assert unquoted_lines("proxies.md", "haproxy.cfg", "nginx.conf") == []


ECHO_BEHIND_PROXIES = """GET /echo?x HTTP/1.1
Host: h
X-Forwarded-For: junk, 203.0.113.5, 2001:db8::7
X-Forwarded-Proto: https
X-Forwarded-Host: demo.example
X-Forwarded-Port: 443
X-Real-IP: 203.0.113.5
X-Odd: "quoted" \\u202e!
X-Request-Id: nginx-4f2a
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
Connection: close

peer: 127.0.0.1:PORT
proxy_protocol: v2 PROXY TCP6 from [2001:db8::9]:5555 to [::1]:80, 4 bytes of TLVs
client: 203.0.113.5
client_from: X-Forwarded-For entry 2, the first from the right that is not a trusted proxy
forwarded_from: X-Forwarded-For
forwarded_header: X-Forwarded-For
not_believed: X-Real-IP
x-forwarded-for:
  hop 1: junk (not an address)
  hop 2: 203.0.113.5 (not trusted)
  hop 3: 2001:db8::7 (trusted proxy)
forwarded: []
x-forwarded-proto: https
x-forwarded-host: demo.example
x-forwarded-port: 443
x-real-ip: 203.0.113.5
tls: none (plain HTTP)
request_id: nginx-4f2a
trace: trace 4bf92f3577b34da6a3ce929d0e0e4736, parent span 00f067aa0ba902b7, this span SPAN, flags 01
replica: web-1
version: 7
"""

ECHO_DIRECT = """GET /echo HTTP/1.1
Host: h
Connection: close

peer: 127.0.0.1:PORT
proxy_protocol: none
client: 127.0.0.1
client_from: the TCP peer (TRUSTED_PROXIES is empty: forwarded headers are not believed)
forwarded_from: none
forwarded_header: X-Forwarded-For
not_believed: none
x-forwarded-for:
forwarded: []
x-forwarded-proto: -
x-forwarded-host: -
x-forwarded-port: -
x-real-ip: -
tls: none (plain HTTP)
request_id: MADE-HERE
trace: none (no traceparent)
replica: web-1
version: 1
"""


def echo_text(answer):
    assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nContent-Type: text/plain; charset=utf-8\r\n" in answer
    assert b"\r\nVary: Accept\r\n" in answer
    text = re.sub(r"^peer: 127\.0\.0\.1:\d+$", "peer: 127.0.0.1:PORT", answer.split(b"\r\n\r\n", 1)[1].decode(),
                  flags=re.M)
    text = re.sub(r"^request_id: [0-9a-f]{12}-[0-9a-f]+$", "request_id: MADE-HERE", text, flags=re.M)
    return re.sub(r"this span [0-9a-f]{16},", "this span SPAN,", text)


def test_echo_as_text_reads_like_this_behind_proxies_and_without():
    env = refused_env(TRUSTED_PROXIES="127.0.0.1,2001:db8::/32", PROXY_PROTOCOL="v2", REPLICA_ID="web-1", VERSION="7")
    request = (b"GET /echo?x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: junk, 203.0.113.5, 2001:db8::7\r\n"
               b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: demo.example\r\nX-Forwarded-Port: 443\r\n"
               b"X-Real-IP: 203.0.113.5\r\nX-Odd: \"quoted\" \xe2\x80\xae!\r\nX-Request-Id: nginx-4f2a\r\n"
               b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
               b"Connection: close\r\n\r\n")
    with serving(env) as server:
        behind = exchange(server.port, v2(family=0x21, source="2001:db8::9", destination="::1", tlvs=b"\x01\x00\x01x")
                          + request)
    with serving(refused_env(REPLICA_ID="web-1")) as server:
        direct = exchange(server.port, b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert echo_text(behind) == ECHO_BEHIND_PROXIES
    assert echo_text(direct) == ECHO_DIRECT
    with serving(refused_env(TRUSTED_PROXIES="127.0.0.1", PROXY_PROTOCOL="v2")) as server:
        checked = exchange(server.port, v2(command=0x20) + b"GET /echo HTTP/1.1\r\nHost: h\r\n"
                                                            b"Connection: close\r\n\r\n")
    assert "\nproxy_protocol: v2 LOCAL TCP4, 0 bytes of TLVs\nclient: 127.0.0.1\n" in echo_text(checked)


def test_echo_as_json_says_the_same():
    env = refused_env(TRUSTED_PROXIES="127.0.0.1", PROXY_PROTOCOL="v1", REPLICA_ID="web-1")
    with serving(env) as server:
        answer = exchange(server.port, v1("2001:db8::5", 7, "TCP6", "::1", 80) + ECHO)
        seen = echoed(answer)
    assert b"\r\nContent-Type: application/json\r\n" in answer and b"\r\nVary: Accept\r\n" in answer
    assert seen == {
        "request_line": "GET /echo HTTP/1.1",
        "headers": [["Host", "x"], ["Accept", "application/json"], ["Connection", "close"]],
        "peer": {"address": "127.0.0.1", "port": seen["peer"]["port"]},
        "proxy_protocol": {"version": 1, "command": "PROXY", "family": "TCP6", "source": ["2001:db8::5", 7],
                           "destination": ["::1", 80], "tlv_bytes": 0},
        "client": "2001:db8::5",
        "client_from": "the PROXY header's source, which is not a trusted proxy (its headers are not believed)",
        "forwarded_from": None, "forwarded_header": "X-Forwarded-For", "not_believed": [],
        "x_forwarded_for": [], "forwarded": [],
        "x_forwarded_proto": None, "x_forwarded_host": None, "x_forwarded_port": None, "x_real_ip": None,
        "tls": None, "forwarded_client_cert": None, "x_forwarded_prefix": None, "body": None,
        "request_id": seen["request_id"], "trace": None,
        "replica": "web-1", "version": "1",
    }
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", seen["request_id"])  # made here: none came with it
    assert isinstance(seen["peer"]["port"], int) and seen["peer"]["port"] > 0
