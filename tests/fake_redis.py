"""A Redis stand-in for tests: a real TCP server on 127.0.0.1, scriptable per test.

By default it answers like a very small Redis (PING, ECHO, GET, SET, DEL, INCR, INCRBY,
HINCRBY, EXPIRE, AUTH, SELECT, HELLO, FLUSHALL, MULTI and EXEC). The replica view's script is
left to the real Redis of test_replicas.py. A test can queue scripted answers that take the
place of the next replies, in order: raw bytes, or one of the actions below. Every byte
received is recorded, so tests can assert the exact wire format. A replica's heartbeat is
answered at once and only counted (``heartbeats``): it is neither a command a page sent nor
does it take a scripted answer.

A MULTI ... EXEC block (friendlyhello's visits) is one command: recorded as
``[b"MULTI", command, ...]`` when its EXEC arrives, its +OK and +QUEUED answered at once, and
a scripted answer takes the place of EXEC's. An integer in it (``b":7\r\n"``) stands for
the counter's value after the visits, the rest of EXEC's reply made up around it; anything
else is EXEC's whole reply.
"""

import collections
import socket
import threading
import time

from friendlyhello import replicas
from helpers import shut_down


class Dribble:
    """Send these bytes one per TCP segment."""

    def __init__(self, data, pause=0.001):
        self.data, self.pause = data, pause


class Delay:
    """Wait, then send these bytes."""

    def __init__(self, seconds, data):
        self.seconds, self.data = seconds, data


class Silence:
    """Never answer again on this connection (but keep it open and keep reading)."""


class Hangup:
    """Send these bytes (maybe none), then close the connection (FIN, or RST if reset)."""

    def __init__(self, data=b"", reset=False):
        self.data, self.reset = data, reset


class FakeRedis:
    def __init__(self, password=None):
        self.password = password
        self.received = bytearray()
        self.commands = []
        self.connections = 0
        self.closed_connections = 0
        self.store = {}
        self.heartbeats = 0
        self._script = collections.deque()
        self._changed = threading.Condition()
        self._sockets = set()
        self._threads = []
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}"
        self._closed = False
        self._spawn(self._accept_loop)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def script(self, *actions):
        """Queue answers for the next commands, one action per command."""
        with self._changed:
            self._script.extend(actions)

    def wait_for_commands(self, count, timeout=5.0):
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.commands) >= count, timeout):
                raise AssertionError(f"fake Redis got {len(self.commands)} commands, expected {count}")

    def wait_for_closed_connections(self, count, timeout=5.0):
        with self._changed:
            if not self._changed.wait_for(lambda: self.closed_connections >= count, timeout):
                raise AssertionError(f"fake Redis closed {self.closed_connections} connections, expected {count}")

    def stop(self):
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self._listener.close()
        with self._changed:
            shut_down(list(self._sockets))
        for thread in self._threads:
            thread.join(5)

    # -- serving -------------------------------------------------------------------

    def _spawn(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self):
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._changed:
                self.connections += 1
                self._sockets.add(sock)
            self._spawn(self._serve, sock)

    def _serve(self, sock):
        buffer = bytearray()
        silent = False
        queued = None  # the commands of a MULTI block, until its EXEC
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                with self._changed:
                    self.received += chunk
                buffer += chunk
                while True:
                    try:
                        command = _parse_command(buffer)
                    except ValueError:  # not RESP (a TLS hello, say): hang up as Redis would
                        return
                    if command is None:
                        break
                    if command[:2] == [b"EVAL", _HEARTBEAT]:
                        with self._changed:
                            self.heartbeats += 1
                        if not silent:
                            sock.sendall(b":%d\r\n" % time.time())
                        continue
                    name = command[0].upper()
                    if name == b"MULTI" or (queued is not None and name != b"EXEC"):
                        queued = [] if name == b"MULTI" else [*queued, command]
                        if not silent:
                            sock.sendall(b"+OK\r\n" if name == b"MULTI" else b"+QUEUED\r\n")
                        continue
                    if name == b"EXEC" and queued is not None:
                        command, queued = [b"MULTI", *queued], None
                    with self._changed:
                        self.commands.append(command)
                        action = self._script.popleft() if self._script else None
                        if action is None and not silent:
                            action = self._answer(command)
                        elif command[0] == b"MULTI":
                            action = _as_exec(action)
                        self._changed.notify_all()
                    if silent:
                        continue
                    if not self._act(sock, action):
                        if isinstance(action, Silence):
                            silent = True
                            continue
                        return
        except OSError:
            return
        finally:
            sock.close()
            with self._changed:
                self._sockets.discard(sock)
                self.closed_connections += 1
                self._changed.notify_all()

    def _act(self, sock, action):
        """Carry out one answer; False when the connection should stop answering."""
        if isinstance(action, bytes):
            sock.sendall(action)
        elif isinstance(action, Dribble):
            for i in range(len(action.data)):
                sock.sendall(action.data[i:i + 1])
                time.sleep(action.pause)
        elif isinstance(action, Delay):
            time.sleep(action.seconds)
            sock.sendall(action.data)
        elif isinstance(action, Hangup):
            sock.sendall(action.data)
            if action.reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return False
        elif isinstance(action, Silence):
            return False
        else:
            raise TypeError(f"unknown fake Redis action {action!r}")
        return True

    @property
    def visit_counts(self):
        """The visits each of friendlyhello's visit commands asked to count, in order."""
        return [int(c[2][2]) for c in self.commands if c[0] == b"MULTI" and c[2][:2] == [b"INCRBY", b"counter"]]

    @property
    def visits(self):
        """Visits that pages asked to count."""
        return sum(self.visit_counts)

    def _answer(self, command):
        """A tiny Redis: enough for the client and the server under test."""
        name = command[0].upper()
        args = command[1:]
        if name == b"MULTI":  # the block, whole: EXEC's answer
            answers = [self._answer(c) for c in args]
            return b"*%d\r\n" % len(answers) + b"".join(answers)
        if name == b"EXEC":
            return b"-ERR EXEC without MULTI\r\n"
        if name == b"HINCRBY":
            key = (args[0], args[1])
            self.store[key] = b"%d" % (int(self.store.get(key, b"0")) + int(args[2]))
            return b":%s\r\n" % self.store[key]
        if name == b"EXPIRE":
            return b":1\r\n"
        if name == b"AUTH":
            if self.password is None:
                return b"-ERR AUTH <password> called without any password configured\r\n"
            return b"+OK\r\n" if args[-1] == self.password.encode() else \
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
        if name == b"PING":
            return b"+PONG\r\n"
        if name == b"ECHO":
            return _bulk(args[0])
        if name == b"SELECT":
            return b"+OK\r\n"
        if name == b"HELLO":
            return b"%1\r\n+proto\r\n:3\r\n"
        if name == b"SET":
            self.store[args[0]] = args[1]
            return b"+OK\r\n"
        if name == b"GET":
            return _bulk(self.store.get(args[0]))
        if name == b"DEL":
            return b":%d\r\n" % sum(self.store.pop(k, None) is not None for k in args)
        if name == b"FLUSHALL":
            self.store.clear()
            return b"+OK\r\n"
        if name in (b"INCR", b"INCRBY"):
            value = int(self.store.get(args[0], b"0")) + (int(args[1]) if name == b"INCRBY" else 1)
            self.store[args[0]] = b"%d" % value
            return b":%d\r\n" % value
        return b"-ERR unknown command '%s'\r\n" % name


_HEARTBEAT = replicas.HEARTBEAT_SCRIPT.encode()


def _as_exec(action):
    """A scripted answer to a MULTI block, as EXEC's reply: an integer stands for the counter's
    value (the replica's count and the expiry answered around it); the rest is EXEC's reply."""
    def wrapped(data):
        return b"*3\r\n:1\r\n" + data + b":1\r\n" if data.startswith(b":") else data

    if isinstance(action, bytes):
        return wrapped(action)
    if isinstance(action, Delay):
        return Delay(action.seconds, wrapped(action.data))
    if isinstance(action, Dribble):
        return Dribble(wrapped(action.data), action.pause)
    if isinstance(action, Hangup):
        return Hangup(wrapped(action.data), action.reset)
    return action


def _bulk(value):
    return b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value)


def _parse_command(buffer):
    """Take one complete RESP array of bulk strings off the front of buffer, or None."""
    if not buffer.startswith(b"*"):
        if buffer:
            raise ValueError(f"not a RESP array: {bytes(buffer[:40])!r}")
        return None
    end = buffer.find(b"\r\n")
    if end < 0:
        return None
    count = int(buffer[1:end])
    pos = end + 2
    args = []
    for _ in range(count):
        end = buffer.find(b"\r\n", pos)
        if end < 0:
            return None
        if buffer[pos:pos + 1] != b"$":
            raise ValueError(f"not a bulk string: {bytes(buffer[pos:pos + 20])!r}")
        length = int(buffer[pos + 1:end])
        start = end + 2
        if len(buffer) < start + length + 2:
            return None
        args.append(bytes(buffer[start:start + length]))
        pos = start + length + 2
    del buffer[:pos]
    return args
