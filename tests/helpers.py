"""What the tests share: friendlyhello in-process or as a subprocess, raw HTTP exchanges,
the counter in Redis, free ports, and skip-locally-fail-in-CI for missing services."""

import contextlib
import http.client
import io
import json
import os
import re
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import hello_server
from friendlyhello import logs, replicas, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "hello_server.py")
# What the page says without a count, as the README (and the tutorial) write it: written here,
# not taken from the code, so that a change to the code's text fails the tests.
DISABLED = "<i>cannot connect to Redis, counter disabled</i>"


def unavailable(message):
    """A tool or service a test needs is missing: skip locally, fail in CI, where it must be."""
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must run this test)")
    pytest.skip(message)


def wait_until(condition, within=5.0, what="the condition", pace=0.005, accept=bool):
    """Poll, every ``pace`` seconds, until ``accept(condition())`` (by default: it is true),
    and return what it gave; fail the test after ``within`` seconds. For state no event
    announces: a slower ``pace`` for a condition that costs (a docker command, a scrape)."""
    deadline = time.monotonic() + within
    while not accept(found := condition()):
        assert time.monotonic() < deadline, f"{what} did not come true within {within}s"
        time.sleep(pace)
    return found


def shut_down(sockets):
    """Shut sockets down both ways, waking any thread blocked on them."""
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def terminate(process, within=10):
    """SIGTERM a helper process (a Redis, a registry), then SIGKILL if it has not gone in time."""
    process.terminate()
    try:
        process.wait(within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_env(fake):
    """Settings that point the server at a (fake) Redis on loopback."""
    return {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(fake.port)}


def refused_env(**extra):
    """Settings that point the server at a port where nothing listens."""
    return {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(free_port()), "REDIS_TIMEOUT": "0.5", **extra}


def raw_exchange(port, data, timeout=5):
    """Send raw bytes; return everything the server answers until it closes (or resets)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    return b"".join(chunks)


def redis_counter(port, key=replicas.COUNTER_KEY, field=None):
    """A count as Redis has it (0 when unset), read with a bare inline command: a key's, or a
    hash field's."""
    command = b"GET %s\r\n" % key.encode() if field is None else b"HGET %s %s\r\n" % (key.encode(), field.encode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command)
        reply = sock.recv(100)
    return 0 if reply.startswith(b"$-1") else int(reply.split(b"\r\n")[1])


def children(pid):
    """The process's children (a supervisor's workers)."""
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return [int(p) for p in listing.read().split()]


def process_alive(pid):
    """True while the process runs: neither gone nor a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Running:
    """A server serving in a thread of this process."""

    def __init__(self, server, thread, access_log, error_log):
        self.server, self.thread = server, thread
        self.access_log, self.error_log = access_log, error_log
        self.port, self.tls_port = server.port, server.tls_port

    def get(self, path="/", **options):
        return request(self.port, path, **options)

    def log_lines(self):
        """The access log (stdout)."""
        return self.access_log.getvalue().splitlines()

    def error_lines(self):
        """The error log (stderr)."""
        return self.error_log.getvalue().splitlines()


@contextlib.contextmanager
def serving(env=None, hostname=None, bind="127.0.0.1"):
    """Serve with these settings (as environment variables) until the block ends: wired as
    main wires a process, its logs kept in memory."""
    config = settings.load_config(["--port", "0", "--bind", bind], env or {})
    access_log, error_log = io.StringIO(), io.StringIO()
    log = logs.Log(config.access_log, config.log_format, {}, access_log, error_log)
    tls = hello_server.TLSFiles(config, log) if config.tls_port is not None else None
    ports = hello_server.open_ports(config, tls)
    server = hello_server.wire(config, ports, log, hostname or socket.gethostname())
    died = []

    def serve():
        try:
            server.serve()
        except BaseException as exc:  # noqa: BLE001 - kept, and the test fails with it below
            died.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Running(server, thread, access_log, error_log)
    finally:
        server.stop()
        thread.join(10)
        assert not thread.is_alive(), "the server did not stop"
        assert not died, f"the server's loop died: {died[0]!r}"


class Reply:
    def __init__(self, response, body):
        self.status = response.status
        self.headers = response.headers
        self.body = body
        self.text = body.decode("utf-8", "replace")


def request(port, path="/", method="GET", headers=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return Reply(response, response.read())
    finally:
        conn.close()


# Where the servers the tests start keep their bytecode: outside the checkout, and kept even on
# a machine that sets PYTHONDONTWRITEBYTECODE (each start would compile every module again).
PYCACHE = os.path.join(tempfile.gettempdir(), "friendlyhello-test-pycache")


def child_environment():
    """The environment a server the tests start gets, before the test's own settings: this
    one's, without the settings a developer's shell may hold, output unbuffered."""
    keep = {k: v for k, v in os.environ.items() if k not in ("NAME", "PORT", "CI", "PYTHONDONTWRITEBYTECODE")}
    return {**keep, "PYTHONUNBUFFERED": "1", "PYTHONPYCACHEPREFIX": PYCACHE}


class Process:
    """friendlyhello as a subprocess, as a container would run it, in a process group of its
    own: ``finish()`` ends the group (a supervisor and its workers alike) whatever happened,
    and a test that never calls it is cleaned up after (conftest.py)."""

    running = []  # every Process not yet finished

    def __init__(self, env, args=()):
        full_env = {**child_environment(), **env}
        self.started = time.monotonic()
        self.process = subprocess.Popen([sys.executable, SERVER, *args], env=full_env, start_new_session=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        Process.running.append(self)
        self.port = self.tls_port = None
        self.first_line = None
        self.stderr_seen = ""  # what wait_for_error() read before finish()
        self._stderr_pending = b""  # read by it, not yet a whole line

    def wait_listening(self, timeout=10):
        """Wait for the start-up line; return it."""
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no start-up line within {timeout}s")
        self.first_line = self.process.stdout.readline().decode()
        urls = re.match(r".*listening on (https?://\S+)(?: and (https://\S+))?", self.first_line)
        assert urls, self.first_line + self.stderr_now()
        ports = {url.split(":")[0]: int(url.rsplit(":", 1)[1]) for url in urls.groups() if url}
        self.port, self.tls_port = ports.get("http", ports.get("https")), ports.get("https")
        return self.first_line

    def stderr_now(self):
        if self.process.poll() is None:
            return ""
        return self.process.stderr.read().decode()

    def wait_for_error(self, words, within=10):
        """Read its stderr (its event log) as lines come until one holds ``words``; that line.
        Read from the pipe itself: a buffered reader could hold a second line the selector
        would not wake for."""
        fd = self.process.stderr.fileno()
        deadline = time.monotonic() + within
        while True:
            while b"\n" in self._stderr_pending:
                line, self._stderr_pending = self._stderr_pending.split(b"\n", 1)
                self.stderr_seen += line.decode() + "\n"
                if words in line.decode():
                    return line.decode()
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no line with {words!r} on its stderr within {within}s:\n{self.stderr_seen}")
            data = os.read(fd, 65536)
            assert data, f"its stderr ended before a line with {words!r}:\n{self.stderr_seen}"
            self._stderr_pending += data

    def signal(self, signum=signal.SIGTERM):
        self.process.send_signal(signum)

    def wait(self, timeout=10):
        return self.process.wait(timeout)

    def finish(self, timeout=5):
        """Kill what is left of its process group, then read its output, never for longer
        than ``timeout``: a worker that outlived its supervisor holds the pipes open."""
        if self in Process.running:
            Process.running.remove(self)
        self._kill_group()
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_group()
            out, err = self.process.communicate(timeout=timeout)
        return out.decode(), self.stderr_seen + (self._stderr_pending + err).decode()

    def _kill_group(self):
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # its pid is its group's id
        except (ProcessLookupError, PermissionError):
            pass
        if self.process.poll() is None:
            self.process.wait()


def run_to_exit(env, args=(), timeout=10):
    """Run the server expecting it to exit by itself; return (code, stdout, stderr)."""
    proc = Process(env, args)
    try:
        code = proc.wait(timeout)
    finally:
        out, err = proc.finish()
    return code, out, err


def readme():
    """The README's text."""
    with open(os.path.join(ROOT, "README.md")) as file:
        return file.read()


def without_id(line):
    """An access log line (text) without its request's id and trace at the end."""
    return re.sub(r" id=\S+( trace=\S+ span=\S+)?$", "", line)


def metric_sample(text, name):
    """One unlabelled sample of a metrics page's text."""
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


def replica_view(server):
    """/replicas as JSON, from a server of this process."""
    return json.loads(server.get("/replicas", headers={"Accept": "application/json"}).body)


def flagged(server):
    """The replica view once its first replica is flagged with faults; else None."""
    view = replica_view(server)
    return view if view["replicas"] and view["replicas"][0]["faults"] else None
