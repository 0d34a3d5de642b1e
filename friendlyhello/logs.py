"""The logs: the access log and the start-up line on stdout, events on stderr; words, or with
LOG_FORMAT=json one JSON object per line.

A log write never blocks serving and never ends it. Container log drivers and ``kubectl
logs`` pipelines stall, and readers go away (``| head``): so the serving thread only puts a
line in a bounded buffer, and a thread per stream writes it out. When the buffer is full the
line is dropped and counted (``dropped``, shown in /metrics), and once writing works again a
line says how many were lost. When a stream's reader is gone for good, logging to it stops;
serving goes on.
"""

import collections
import json
import os
import sys
import threading
import time

_BIDI_CONTROLS = [0x061c, 0x200e, 0x200f, *range(0x202a, 0x202f), *range(0x2066, 0x206a)]
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7f, 0xa0)]}  # C0, DEL, C1
_CONTROLS |= {c: f"\\u{c:04x}" for c in _BIDI_CONTROLS}
_ESCAPES = _CONTROLS | {ord('"'): '\\"', ord("\\"): "\\\\"}  # and what quotes a field in a log line
_SURROGATES = range(0xd800, 0xe000)


def printable(text, quoted=True):
    """Anything from a request or a setting, made safe to quote in one log line: controls that
    a terminal acts on and bidirectional overrides are written as escapes (and, ``quoted``,
    the quote and the backslash, so a quoted field's end stays plain)."""
    text = text.translate(_ESCAPES if quoted else _CONTROLS)
    if any(ord(c) in _SURROGATES for c in text):
        text = "".join(f"\\u{ord(c):04x}" if ord(c) in _SURROGATES else c for c in text)
    return text


def request_target(target):
    """A request target as the client sent its bytes: http.server decodes them as Latin-1, but
    a path such as /café arrives as UTF-8."""
    try:
        return target.encode("latin-1").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return target


class Log:
    """Lines to stdout (``out``: requests, the start-up line) and stderr (``err``: events),
    each line whole and at most one write: words, or JSON objects carrying the replica's
    hostname and pod fields. Levels: error (something is wrong), warning (something is
    degraded, such as Redis unavailable), info (everything else, recoveries included)."""

    MAX_TARGET = 1024  # longer targets are cut, so lines stay under PIPE_BUF

    def __init__(self, access_log, log_format="text", identity=None, out=None, err=None):
        self.access, self.probes = access_log != "off", access_log == "all"
        self.json = log_format == "json"
        self.identity = identity or {}
        self.out = _Stream(out if out is not None else sys.stdout, "stdout", self._dropped_line)
        self.err = _Stream(err if err is not None else sys.stderr, "stderr", self._dropped_line)

    @property
    def dropped(self):
        """Lines dropped because a stream's reader was slow or gone."""
        return self.out.dropped + self.err.dropped

    def request(self, address, method, target, status, seconds, probe, peer=None, tls=None,
                request_id=None, trace=None):
        """A request's line: the client's ``address`` and, when the connection came from
        elsewhere (a proxy), its ``peer``; on TLS, its version (``tls``); then the request's
        id and, where its traceparent was valid, the trace and this server's span in it."""
        if not self.access or (probe and not self.probes):
            return
        peer = None if peer == address else peer
        if target is not None:
            if len(target) > self.MAX_TARGET:
                target = target[:self.MAX_TARGET] + "..."
            target = request_target(target)
        if self.json:
            fields = {"method": method or "-", "path": target or "-", "status": status,
                      "duration_ms": round(seconds * 1000, 3), "client": address}
            if peer:
                fields["peer"] = peer
            if tls:
                fields["tls"] = tls
            if request_id:
                fields["request_id"] = request_id
            if trace is not None and trace.valid:
                fields["trace_id"], fields["span_id"] = trace.trace_id, trace.span_id
            self.out.put(self._object("info", **fields))
        else:
            via = f" via {peer}" if peer else ""
            over = f" {tls}" if tls else ""
            if request_id:  # visible ASCII: written as it is
                over += f" id={request_id}"
            if trace is not None and trace.valid:
                over += f" trace={trace.trace_id} span={trace.span_id}"
            self.out.put(f'{address}{via} "{printable(method or "-")} '
                         f'{printable(target or "-")}" {status} {seconds * 1000:.1f}ms{over}')

    def started(self, message):
        """The start-up line, on stdout: what a user running it sees first."""
        self.out.put(self._object("info", message=message) if self.json else message)

    def info(self, where, message):
        self._event("info", where, message)

    def warning(self, where, message):
        self._event("warning", where, message)

    def error(self, where, message):
        self._event("error", where, message)

    def _event(self, level, where, message):
        self.err.put(self._event_line(level, where, message))

    def _event_line(self, level, where, message):
        if self.json:
            return self._object(level, where=where, message=message)
        return f"friendlyhello: {where}: {printable(message)}"

    def _dropped_line(self, count, name):
        return self._event_line("warning", "log",
                                f"{count} lines dropped: the reader of {name} did not keep up")

    def close(self, timeout=1.0):
        """Write what is buffered, waiting at most ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        self.out.close(deadline)
        self.err.close(deadline)

    def _object(self, level, **fields):
        now = time.time()
        milliseconds = int(now % 1 * 1000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{milliseconds:03d}Z"
        return json.dumps({"time": stamp, "level": level, **fields, **self.identity})


class _Stream:
    """One output stream. A stream with a file descriptor is written by a thread of its own,
    from a bounded buffer; one without (a StringIO in tests) is written at once."""

    BUFFERED_LINES = 1024  # lines are at most about 1.1 KB: about 1 MB at most
    WRITE_SIZE = 4096  # lines are joined up to this: one write() each, never torn (PIPE_BUF)

    def __init__(self, stream, name, dropped_line):
        self.name, self._dropped_line = name, dropped_line
        self.dropped = 0
        self._stream = stream
        try:
            stream.flush()
            self._fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            self._fd = None
        self._gone = False
        self._start()
        if self._fd is not None:
            os.register_at_fork(after_in_child=self._start)

    def _start(self):
        """A fresh buffer and no thread yet (again in a forked worker: threads do not survive a
        fork)."""
        self._lines = collections.deque()
        self._changed = threading.Condition()
        self._writer = None
        self._unreported = 0  # dropped since the last line that said so
        self._writing = False

    def put(self, line):
        if self._fd is None:
            self._stream.write(line + "\n")
            return
        with self._changed:
            if self._gone or len(self._lines) >= self.BUFFERED_LINES:
                self.dropped += 1
                self._unreported += 1
                return
            self._lines.append(line + "\n")
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_lines, name=f"log {self.name}",
                                                daemon=True)
                self._writer.start()
            elif not self._writing:
                self._changed.notify()

    def close(self, deadline):
        if self._fd is None or self._writer is None:
            return
        with self._changed:
            self._changed.wait_for(lambda: not self._lines and not self._writing or self._gone,
                                   max(deadline - time.monotonic(), 0))

    def _write_lines(self):
        while True:
            with self._changed:
                self._changed.notify_all()  # close() waits for an empty buffer
                self._changed.wait_for(lambda: self._lines)
                self._writing = True
                chunk, size = [], 0
                if self._unreported:
                    chunk.append(self._dropped_line(self._unreported, self.name) + "\n")
                    self._unreported = 0
                while self._lines and (not chunk or size + len(self._lines[0]) <= self.WRITE_SIZE):
                    chunk.append(self._lines.popleft())
                    size += len(chunk[-1])
            try:
                self._write("".join(chunk).encode("utf-8", "backslashreplace"))
            except OSError:  # the reader is gone (EPIPE): no more logging here, but serving goes on
                with self._changed:
                    self._gone = True
                    self.dropped += len(chunk) + len(self._lines)
                    self._lines.clear()
                    self._writing = False
                    self._changed.notify_all()
                return
            with self._changed:
                self._writing = False

    def _write(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
