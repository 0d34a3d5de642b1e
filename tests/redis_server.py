"""A real redis-server for tests, on a free loopback port, started and stopped by its pid."""

import os
import shutil
import subprocess
import tempfile
import threading

from helpers import free_port, terminate, unavailable


def require_redis_server():
    """Skip locally, fail in CI, when redis-server is not installed."""
    path = shutil.which("redis-server")
    if path is None:
        unavailable("redis-server is not installed (apt-get install redis-server)")
    return path


class RedisServer:
    def __init__(self, *, password=None, appendonly=False, unix_socket=False, tls=None, extra=()):
        self.binary = require_redis_server()
        self.password = password
        self.appendonly = appendonly
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="friendlyhello-redis-")
        self.unix_socket = os.path.join(self.directory, "redis.sock") if unix_socket else None
        self.tls = tls  # (certificate file, key file): serve TLS only, on self.port
        self.extra = list(extra)  # more of redis-server's options, such as --replicaof
        self.process = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.cleanup()

    @property
    def url(self):
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}"

    def start(self):
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                   "--dir", self.directory, "--save", "", "--daemonize", "no", "--hz", "100",  # stops in 10 ms, not 100
                   "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"]
        if self.password:
            command += ["--requirepass", self.password]
        if self.unix_socket:
            command += ["--unixsocket", self.unix_socket]
        if self.tls:
            command[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            command += ["--tls-cert-file", self.tls[0], "--tls-key-file", self.tls[1],
                        "--tls-ca-cert-file", self.tls[0], "--tls-auth-clients", "no"]
        command += self.extra
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # redis-server says so on stdout once it accepts connections: wait for that line.
        output = []
        for line in self.process.stdout:
            output.append(line)
            if b"Ready to accept connections" in line:
                # Keep reading its log, or a full pipe would one day block it.
                threading.Thread(target=self.process.stdout.read, daemon=True).start()
                return self
        raise RuntimeError("redis-server did not start:\n" + b"".join(output).decode(errors="replace"))

    def stop(self):
        if self.process is not None:
            terminate(self.process)
            self.process = None

    def kill(self):
        """Stop at once, as a crash would (append-only data written so far survives)."""
        self.process.kill()
        self.process.wait()
        self.process = None

    def restart(self):
        self.stop()
        return self.start()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
