"""Collect what friendlyhello needs to run, and nothing else, into a root for a FROM-scratch image.

    python3 scripts/collect_runtime.py --app DIR --out ROOT [--entry /usr/local/bin/python3]

Standard library only; no network and no pip. It runs the server from DIR with this very
interpreter along every path it can take (the page, JSON, probes, a bad request, --help,
--healthcheck, a bad setting, rediss://, a unix socket, a name lookup, HTTPS with a client
certificate, SIGTERM), each with
`-X importtime`, and copies into ROOT:

* the interpreter, at its own path, and a link to it at --entry;
* every standard-library module those runs imported, compiled ahead of time into sourceless
  .pyc files at the module's own path (so the interpreter finds its library as it always does);
* every extension module they loaded, and every shared library that the interpreter and those
  extensions need (from ldd), the dynamic loader included; symbolic links on the way (such as
  Debian's /lib -> usr/lib) are made again as links;
* the CA bundle that OpenSSL reads by default, so rediss:// verifies against the system's CAs;
* the app's own modules and package, compiled, in /app.

It prints what it copied, one path a line, to ROOT/../runtime-files.txt (for the image's file
list test) and a summary by kind to stdout. It does not care where this Python keeps things:
/usr/local with a shared libpython (the official image), /usr/bin statically linked (Debian),
or anywhere else (pyenv); it asks the interpreter.
"""

import argparse
import importlib.util
import os
import py_compile
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import time

APP_MODULES = ("hello_server", "resp_client")
APP_PACKAGE = "friendlyhello"  # every module of it goes in, imported on every path or not
PYTHON_FLAGS = ("-S",)  # as the image runs it: no site, so no site-packages and no sitecustomize


# -- running the server's paths ---------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_module(app, args=(), env=None, serve=None):
    """Run `python -m hello_server ARGS` with -X importtime; return the modules it imported.

    With ``serve``, the server is started and ``serve(port)`` is called while it runs; then it
    gets SIGTERM, as a container's stop sends it."""
    environ = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    command = [sys.executable, *PYTHON_FLAGS, "-X", "importtime", "-m", "hello_server", *args]
    process = subprocess.Popen(command, cwd=app, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if serve is not None:
        line = process.stdout.readline().decode()
        port = int(re.search(r":(\d+) \(", line).group(1))
        serve(port)
        process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", err.decode(), re.M))


def ask(port, raw):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        while sock.recv(65536):
            pass


def serve_every_page(port):
    for raw in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n",
                b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /livez HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
                b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nSec-Purpose: prefetch\r\n\r\n",
                b"\x16\x03\x01\x00\x01\x00\r\n\r\n",
                b"GET / HTTP/2.0\r\n\r\n",
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                b"\x81\x82abcd\x09\x0b" b"\x88\x80abcd"):  # a WebSocket: "hi", then Close
        ask(port, raw + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


ADMIN_TOKEN = "collect-token-0123456789"


def administer(admin_port):
    """Every kind of admin request: a read, changes (a hang among them), a refusal, a bad one."""
    bearer = f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
    for raw in (b"GET /faults HTTP/1.1\r\n" + bearer + b"\r\n",
                b"POST /faults/hang?state=on HTTP/1.1\r\n" + bearer + b"\r\n",
                b"POST /faults/hang?state=off HTTP/1.1\r\n" + bearer + b"\r\n",
                b"POST /faults/latency HTTP/1.1\r\n" + bearer + b"Content-Length: 15\r\n\r\nseconds=0.1-0.2",
                b"POST /faults/clear HTTP/1.1\r\n" + bearer + b"\r\n",
                b"POST /faults/errors?rate=2 HTTP/1.1\r\n" + bearer + b"\r\n",
                b"GET /faults HTTP/1.1\r\n\r\n",
                b"BREW /faults HTTP/1.1\r\n\r\n"):
        ask(admin_port, raw)


def with_admin(env):
    """Settings with the admin port on, and what serves it and every page."""
    admin_port = free_port()

    def serve(port):
        serve_every_page(port)
        administer(admin_port)
    return {**env, "ADMIN_PORT": str(admin_port), "ADMIN_TOKEN": ADMIN_TOKEN}, serve


def with_tls(app, env, scratch, clients):
    """Settings that serve HTTPS alone (PORT=off) with a certificate made here by the openssl
    command line (Debian's ca-certificates, in the base image, brings it), the certificate its
    own CA for client certificates; and what asks for pages over TLS, with one, then runs the
    health check (its imports added to ``clients``)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("collect_runtime: no openssl command, to make a certificate for the TLS path")
    cert, key = os.path.join(scratch, "tls.crt"), os.path.join(scratch, "tls.key")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    env = {**env, "PORT": "off", "TLS_PORT": str(free_port()), "TLS_CERT": cert, "TLS_KEY": key,
           "TLS_CLIENT_CA": cert, "TLS_CLIENT_AUTH": "optional"}
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.load_cert_chain(cert, key)

    def serve(port):
        for path in ("/", "/echo", "/healthz"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, context.wrap_socket(sock) as tls:
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                while tls.recv(65536):
                    pass
        ask(port, b"GET / HTTP/1.1\r\n\r\n")  # HTTP in clear, on the TLS port
        clients.append(run_module(app, ["--healthcheck"], env=env))
    return env, serve


def imported_modules(app):
    """Every module any path of the server imports, by name."""
    fake_redis = socket.create_server(("127.0.0.1", 0))  # accepts, never answers: a timeout path
    base = {"BIND": "127.0.0.1", "PORT": "0", "REDIS_TIMEOUT": "0.2", "ACCESS_LOG": "all",
            "NAME": "World", "POD_NAME": "p", "NODE_NAME": "n"}
    with tempfile.TemporaryDirectory() as scratch:
        runs = [
            run_module(app, env={**base, "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(fake_redis.getsockname()[1])},
                       serve=serve_every_page),
            run_module(app, env={**base, "REDIS_HOST": "no-such-host.invalid", "READY_NEEDS_REDIS": "on"},
                       serve=serve_every_page),
            run_module(app, env={**base, "REDIS_URL": f"rediss://127.0.0.1:{free_port()}/0"}, serve=serve_every_page),
            run_module(app, env={**base, "REDIS_URL": f"unix://{scratch}/redis.sock"}, serve=serve_every_page),
            run_module(app, env={**base, "WORKERS": "2", "LOG_FORMAT": "json", "REDIS_HOST": "127.0.0.1",
                                 "REDIS_PORT": str(fake_redis.getsockname()[1])}, serve=serve_every_page),
            run_module(app, env=(admin := with_admin(base))[0], serve=admin[1]),
            run_module(app, env=(admin := with_admin({**base, "WORKERS": "2"}))[0], serve=admin[1]),
            run_module(app, ["--help"]),
            run_module(app, env={"PORT": "eighty"}),
            run_module(app, ["--healthcheck"], env={"PORT": str(free_port())}),
        ]
        clients = []  # the health check and `watch`, run against a server
        runs.append(run_module(app, env=(tls := with_tls(app, base, scratch, clients))[0], serve=tls[1]))
        runs.append(run_module(app, env=base, serve=lambda port: clients.extend([
            run_module(app, ["--healthcheck"], env={"PORT": str(port), "BIND": "127.0.0.1"}),
            run_module(app, ["watch", f"http://127.0.0.1:{port}/", "--duration", "0.5", "--json"]),
            run_module(app, ["watch", f"http://127.0.0.1:{port}/nope", "--duration", "0.3", "--new-connection"]),
            run_module(app, ["watch", "http://no-such-host.invalid/", "--duration", "0.3", "--timeout", "1"]),
            run_module(app, ["watch", "ftp://host/"])])))
        runs.extend(clients)
    fake_redis.close()
    return set().union(*runs)


# -- copying, links kept ---------------------------------------------------------------------

class Root:
    """The image's root being filled; every path is the one it has on this machine."""

    def __init__(self, out):
        self.out = out
        self.files = []

    def _within(self, path):
        return os.path.join(self.out, path.lstrip("/"))

    def copy(self, path):
        """Copy a file to the same path, making each symbolic link on the way a link again."""
        path = os.path.abspath(path)
        parts, done = path.strip("/").split("/"), "/"
        for i, part in enumerate(parts):
            current = os.path.join(done, part)
            if os.path.islink(current):
                target = os.readlink(current)
                self.link(current, target)
                resolved = os.path.normpath(os.path.join(done, target))
                return self.copy(os.path.join(resolved, *parts[i + 1:]))
            done = current
        if not os.path.exists(self._within(path)):
            os.makedirs(os.path.dirname(self._within(path)), exist_ok=True)
            shutil.copy2(path, self._within(path))
            self.files.append(path)
        return path

    def link(self, path, target):
        within = self._within(path)
        if not os.path.lexists(within):
            os.makedirs(os.path.dirname(within), exist_ok=True)
            os.symlink(target, within)
            self.files.append(path)

    def compile(self, source, path):
        """Compile a module into a sourceless .pyc at ``path`` (no source, so nothing to write later)."""
        os.makedirs(os.path.dirname(self._within(path)), exist_ok=True)
        py_compile.compile(source, cfile=self._within(path), dfile=path, doraise=True, optimize=2,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        self.files.append(path)


def shared_libraries(binary):
    """The libraries ldd says the binary loads, the dynamic loader among them."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return re.findall(r"(?:=> )?(/\S+) \(0x", out)


def collect(app, out, entry):
    root = Root(out)
    stdlib = {os.path.realpath(sysconfig.get_paths()[key]) for key in ("stdlib", "platstdlib")}
    sizes = {"interpreter and libraries": 0, "standard library": 0, "CA certificates": 0, "our code": 0}

    def add(kind, path):
        sizes[kind] += os.path.getsize(path)

    interpreter = os.path.realpath(sys.executable)
    binaries = [root.copy(interpreter)]
    add("interpreter and libraries", interpreter)
    if entry != interpreter:
        root.link(entry, interpreter)

    # os is frozen into the interpreter, but os.py(c) is the landmark by which it finds its library.
    landmark = os.path.join(sysconfig.get_paths()["stdlib"], "os.py")
    root.compile(landmark, landmark + "c")
    add("standard library", root._within(landmark + "c"))
    for name in sorted(imported_modules(app)):
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:  # tried and not found there either (Jython's org.python, say)
            continue
        origin = spec and spec.origin
        if not origin or origin in ("built-in", "frozen") or name in APP_MODULES or \
                name.split(".")[0] == APP_PACKAGE:
            continue
        real = os.path.realpath(origin)
        if not any(real.startswith(folder + os.sep) for folder in stdlib):
            raise SystemExit(f"collect_runtime: {name} comes from {origin}, outside the standard library")
        if origin.endswith(".py"):
            root.compile(origin, origin + "c")
            add("standard library", root._within(origin + "c"))
        else:  # an extension module
            binaries.append(root.copy(origin))
            add("standard library", origin)
    for binary in binaries:
        for library in shared_libraries(binary):
            if not os.path.exists(root._within(library)):
                add("interpreter and libraries", os.path.realpath(library))
                root.copy(library)

    cafile = ssl.get_default_verify_paths().openssl_cafile
    if os.path.exists(cafile):
        root.copy(cafile)
        add("CA certificates", os.path.realpath(cafile))

    package = sorted(f"{APP_PACKAGE}/{file[:-3]}" for file in os.listdir(os.path.join(app, APP_PACKAGE))
                     if file.endswith(".py"))
    for name in [*APP_MODULES, *package]:
        root.compile(os.path.join(app, name + ".py"), f"/app/{name}.pyc")
        add("our code", root._within(f"/app/{name}.pyc"))
    return root.files, sizes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", required=True,
                        help="the folder holding hello_server.py, resp_client.py and friendlyhello/")
    parser.add_argument("--out", required=True, help="the root to fill (made if missing)")
    parser.add_argument("--entry", default="/usr/local/bin/python3", help="where to link the interpreter")
    args = parser.parse_args()
    started = time.monotonic()
    files, sizes = collect(os.path.abspath(args.app), os.path.abspath(args.out), args.entry)
    with open(os.path.join(os.path.dirname(os.path.abspath(args.out)), "runtime-files.txt"), "w") as listing:
        listing.write("".join(path + "\n" for path in sorted(files)))
    for kind, size in sizes.items():
        print(f"collect_runtime: {kind}: {size:,} bytes")
    print(f"collect_runtime: {len(files)} files and links, {sum(sizes.values()):,} bytes, "
          f"in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()
