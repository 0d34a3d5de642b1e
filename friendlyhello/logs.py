
import json
import sys
import threading
import time

# -- the logs ----------------------------------------------------------------------------------

_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7f]} | {ord('"'): '\\"', ord("\\"): "\\\\"}


def printable(text):
    """Anything from a request or a setting, made safe to quote in one log line."""
    return text.translate(_ESCAPES)


class Log:
    """The access log and the start-up line (stdout), the error log (stderr), each line written
    whole: words, or with LOG_FORMAT=json one JSON object per line (every control character
    escaped), carrying the replica's hostname and pod fields."""

    def __init__(self, access_log, log_format="text", identity=None, out=sys.stdout, err=sys.stderr):
        self.access, self.probes = access_log != "off", access_log == "all"
        self.json = log_format == "json"
        self.identity = identity or {}
        self.out, self.err = out, err
        self._lock = threading.Lock()

    def request(self, address, method, target, status, seconds, probe):
        if not self.access or (probe and not self.probes):
            return
        target = target if target is None or len(target) <= 1024 else target[:1024] + "..."  # lines stay
        # under PIPE_BUF, so one write() each: workers sharing stdout never interleave mid-line
        if self.json:
            self._write(self.out, self._object("info", method=method or "-", path=target or "-", status=status,
                                               duration_ms=round(seconds * 1000, 3), client=address))
        else:
            self._write(self.out, f'{address} "{printable(method or "-")} {printable(target or "-")}" '
                                  f'{status} {seconds * 1000:.1f}ms')

    def info(self, message):
        self._write(self.out, self._object("info", message=message) if self.json else message)

    def error(self, where, message):
        if self.json:
            self._write(self.err, self._object("error", where=where, message=message))
        else:
            self._write(self.err, f"friendlyhello: {where}: {printable(message)}")

    def _object(self, level, **fields):
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        return json.dumps({"time": stamp, "level": level, **fields, **self.identity})

    def _write(self, stream, line):
        with self._lock:
            stream.write(line + "\n")
            stream.flush()
