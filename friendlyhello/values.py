"""What each setting's text may be: the parsers of the settings table (settings.py). Each
takes the text and returns the value, or raises ValueError saying what is allowed (never
quoting a secret).
"""

import re

import resp_client

from . import cpus
from .proxies import FORWARDED_HEADERS, Networks, parse_networks


def whole(low, high):
    def parse(text):
        if not re.fullmatch(r"[0-9]+", text) or not low <= int(text) <= high:
            raise ValueError(f"a whole number from {low} to {high}")
        return int(text)
    return parse


def seconds(low, high, low_allowed=False):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (low < value <= high or low_allowed and value == low):
            bound = "from" if low_allowed else "above"
            raise ValueError(f"a number of seconds {bound} {low:g} and at most {high:g}")
        return value
    return parse


def choice(*allowed):
    def parse(text):
        if text.lower() not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return text.lower()
    return parse


def text(max_length):
    """Text that is shown (on the page, in logs, in Redis): printable UTF-8, one line."""
    def parse(text):
        if len(text) > max_length or not printable(text):
            raise ValueError(f"printable UTF-8 text of at most {max_length} characters, "
                             "without control or bidirectional formatting characters")
        return text
    return parse


# C0 and C1 controls and DEL, which terminals act on; lone surrogates, which is how os.environ
# keeps a byte that is not UTF-8; bidirectional controls, which reorder what a reader sees.
# (Ranges rather than unicodedata: the tiny image would carry its megabyte of tables.)
_NOT_PRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f"                      # C0, DEL, C1
                            "\ud800-\udfff"                               # lone surrogates
                            "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")  # bidirectional


def printable(text):
    return not _NOT_PRINTABLE.search(text)


def version(text):
    """Shown in a response header too: printable ASCII, no spaces at its ends."""
    if not re.fullmatch(r"[!-~]([ -~]{0,62}[!-~])?", text):
        raise ValueError("1 to 64 printable ASCII characters, such as 2 or v1.4.2-rc1")
    return text


def secret(text):
    """A password: any characters, but they must be sendable (UTF-8)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("UTF-8 text (it holds a byte that is not UTF-8)") from None
    return text


def token(text):
    """ADMIN_TOKEN: what a Bearer header carries (RFC 6750's token68), long enough not to guess."""
    if not re.fullmatch(r"[A-Za-z0-9._~+/-]{16,256}=*", text):
        raise ValueError("16 to 256 letters, digits or -._~+/ "
                         "(make one with: openssl rand -hex 16)")
    return text


def port_or_off(text):
    """PORT: a port, or off (TLS_PORT alone serves)."""
    if text.lower() == "off":
        return None
    try:
        return whole(0, 65535)(text)
    except ValueError:
        raise ValueError("a whole number from 0 to 65535, or off (serve TLS_PORT alone)") from None


def path(text):
    """A file's path: shown in messages, so printable; its contents never are."""
    if not text or len(text) > 4096 or not printable(text):
        raise ValueError("the path of a file, in printable characters")
    return text


def host(text):
    if not resp_client.valid_host(text):
        raise ValueError("a host name or IP address, such as 0.0.0.0, :: or redis")
    return text


def workers(text):
    if text.lower() == "auto":
        return cpus.available()
    return whole(1, 256)(text)


def networks(text):
    """TRUSTED_PROXIES, DIAL_ALLOW: addresses and CIDR blocks."""
    return Networks(parse_networks(text))


def forwarded_header(text):
    """FORWARDED_HEADER: the header's name as requests spell it (None for none)."""
    return FORWARDED_HEADERS[choice(*FORWARDED_HEADERS)(text)]


def sentinels(text):
    """REDIS_SENTINELS: host:port,host:port,... ([::1]:26379 for an IPv6 address)."""
    return resp_client.parse_addresses(text, "sentinel-1:26379,sentinel-2:26379")


def wait_replicas(text):
    """REDIS_WAIT_REPLICAS: a number of replicas, or all (those the primary has connected)."""
    return "all" if text.lower() == "all" else whole(0, 100)(text)


def redis_url(text):
    secret(text)
    resp_client.parse_url(text)  # a ValueError's message quotes nothing of the URL
    return text


def path_prefix(text):
    """PATH_PREFIX: where every route is served, such as /app (a trailing slash dropped; empty:
    the root)."""
    prefix = text.rstrip("/")
    if prefix and (len(prefix) > 200 or not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", prefix)
                   or {".", ".."} & set(prefix.split("/"))):
        raise ValueError("a path such as /app or /demo/hello: segments of letters, digits and "
                         "-._~, none of them . or ..")
    return prefix
