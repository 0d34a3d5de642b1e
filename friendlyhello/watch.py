"""watch: steady requests to a URL, and a table of who answered and what failed, redrawn each
second; run it through a rolling update to see whether the update dropped anything.

    python3 hello_server.py watch http://localhost:4000/ [--rate 20] [--duration 60] ...

Each answer is counted for the version and the replica that its Friendlyhello-Version and
Friendlyhello-Replica fields name ("unknown" when a server does not send them). A request
fails by kind: refused (nothing listens), reset (the connection broke, or closed before an
answer), timeout (no whole answer within --timeout, however the server dribbled it), non-2xx,
other (a name that does not resolve, a malformed answer), in-flight (still unanswered when
the run ended). On a connection kept alive, a request the server closed the connection under
before answering is sent again once on a new one, as browsers do, and counted as retried.

Every request started is counted, answered or not, and the run ends within its duration and
one timeout whatever the server does (a second Ctrl-C: at once). Bodies are read and dropped
(http_client.py). Exit status: 0 when no request failed, 1 when any did, 2 on bad usage.
Standard library only: it runs in the tiny image (``docker run friendlyhello watch http://web/``).
With a ws:// or wss:// URL it holds WebSockets instead, and counts what ended each
(watch_websocket.py); what is counted and shown is watch_tally.py's.
"""

import argparse
import json
import signal
import ssl
import sys
import threading
import time
import urllib.parse

from . import http_client, watch_tally, watch_websocket
from .responses import REPLICA_HEADER, VERSION_HEADER
from .watch_tally import UNKNOWN, Result, failure_kind, table

SCHEMES = ("http", "https", "ws", "wss")

DESCRIPTION = ("Steady requests to a URL, counted by the version and replica that answered (the "
               "Friendlyhello-Version and -Replica fields), failures by kind; exit status 1 if "
               "any failed.")


class Watch(watch_tally.Runner):
    """HTTP requests, one at a time on each connection (kept alive, unless --new-connection)."""

    def __init__(self, options):
        super().__init__(options)
        target = urllib.parse.urlsplit(options.url)
        self._host = target.hostname
        self._port = target.port
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        close = "Connection: close\r\n" if options.new_connection else ""
        self._request = (f"GET {path} HTTP/1.1\r\nHost: {target.netloc}\r\n"
                         "Accept: application/json, */*;q=0.5\r\n"
                         "User-Agent: friendlyhello-watch\r\n"
                         f"{close}\r\n").encode("latin-1")

    def client(self):
        conn = http_client.Connection(self._host, self._port, self.options.context)
        while self.turn():
            sent = self.now()
            number = self.begin(sent)
            deadline = time.monotonic() + self.options.timeout
            reused, retried = conn.is_open, False
            try:
                try:
                    answer = conn.request(self._request, deadline)
                except http_client.ClosedBeforeAnswer:
                    if not reused:
                        raise
                    retried = True  # closed under us while idle: once more, anew
                    answer = conn.request(self._request, deadline)
            except (OSError, http_client.Malformed) as error:
                failed = Result(sent, self.now(), kind=failure_kind(error), retried=retried)
                self.finish(number, failed)
                continue
            if self.options.new_connection:
                conn.close()
            self.finish(number, self._result(sent, answer, retried))
        conn.close()

    def _result(self, sent, answer, retried):
        visits = redis = None
        headers = answer.headers
        if headers.get(VERSION_HEADER.lower()) is not None and answer.body:
            try:
                page = json.loads(answer.body)
                visits = page.get("visits") if isinstance(page.get("visits"), int) else None
                redis = page.get("redis") if isinstance(page.get("redis"), str) else None
            except (ValueError, AttributeError):
                pass
        version = headers.get(VERSION_HEADER.lower(), UNKNOWN)
        replica = headers.get(REPLICA_HEADER.lower(), UNKNOWN)
        kind = None if 200 <= answer.status < 300 else "non-2xx"
        return Result(sent, self.now(), version, replica, kind, answer.status, retried, visits,
                      redis)


# -- the command ---------------------------------------------------------------------------------

def _number(low, high, kind=float):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low < value <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a number above {low:g} and at most {high:g}")
        return value
    return parse


def parse_options(argv):
    parser = argparse.ArgumentParser(prog="hello_server.py watch", description=DESCRIPTION)
    parser.add_argument("url", help="what to ask, such as http://localhost:4000/ (or a "
                                    "WebSocket to hold: ws://localhost:4000/ws)")
    parser.add_argument("--duration", type=_number(0, 86400),
                        help="seconds to run (default: until Ctrl-C)")
    parser.add_argument("--rate", type=_number(0, 10000), default=20.0,
                        help="requests (or WebSocket messages) a second, in all (20)")
    parser.add_argument("--connections", type=_number(0, 1000, int), default=4,
                        help="requests at once at most: a connection each (4); WebSockets held")
    parser.add_argument("--new-connection", action="store_true",
                        help="a new TCP connection per request, as browsers behind a load "
                             "balancer see it")
    parser.add_argument("--timeout", type=_number(0, 600), default=5.0,
                        help="seconds to wait for a whole answer, or an echo (5)")
    parser.add_argument("--cacert", metavar="FILE",
                        help="the CA certificates to trust for https:// and wss://, in PEM "
                             "(default: the system's)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object, and nothing else")
    options = parser.parse_args(argv)
    try:
        target = urllib.parse.urlsplit(options.url)
        target.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        parser.error(f"url: {exc}")
    if target.scheme not in SCHEMES or not target.hostname:
        parser.error("url: expected http://, https://, ws:// or wss:// and a host, such as "
                     "http://localhost:4000/")
    if options.new_connection and target.scheme in ("ws", "wss"):
        parser.error("--new-connection: a WebSocket is a connection held, opened again only "
                     "when it ends")
    options.context = None
    if target.scheme in ("https", "wss") or options.cacert:
        try:
            options.context = ssl.create_default_context(cafile=options.cacert)
        except (OSError, ssl.SSLError) as exc:
            parser.error(f"--cacert: {options.cacert}: {exc.strerror or exc}")
    return options


def main(argv):
    options = parse_options(argv)
    if options.url.startswith(("ws:", "wss:")):
        watch = watch_websocket.WebSocketWatch(options)
    else:
        watch = Watch(options)
    hurry = threading.Event()  # a second Ctrl-C: no waiting for the requests in flight

    def on_signal(signum, frame):
        hurry.set() if watch.stop.is_set() else watch.halt()

    for signum in (signal.SIGINT, signal.SIGTERM):  # set, not inherited: `&` ignores SIGINT
        signal.signal(signum, on_signal)
    live = sys.stdout.isatty() and not options.json
    threads = watch.run()
    end = watch.started + options.duration if options.duration else float("inf")
    while not watch.stop.wait(min(1.0, max(end - time.monotonic(), 0))) and time.monotonic() < end:
        if live:
            seen = watch.summary(time.monotonic() - watch.started)
            sys.stdout.write("\x1b[H\x1b[2J" + table(seen))
            sys.stdout.flush()
    elapsed = time.monotonic() - watch.started
    watch.halt()  # in flight: each ends by its own deadline, and by finish_by
    while any(t.is_alive() for t in threads) and not hurry.is_set():
        if time.monotonic() >= watch.finish_by:
            break
        hurry.wait(0.02)
    watch.end()
    seen = watch.summary(elapsed)
    if options.json:
        sys.stdout.write(json.dumps(seen) + "\n")
    else:
        sys.stdout.write(("\x1b[H\x1b[2J" if live else "") + table(seen))
    sys.stdout.flush()
    return 1 if watch.failed(seen) else 0
