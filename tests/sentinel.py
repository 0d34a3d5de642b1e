"""A primary, two replicas and three Sentinels, real redis-servers on loopback for tests, each
started and stopped by its pid: down-after 1 s, so a failover takes a few seconds."""

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from helpers import free_port, terminate, wait_until
from redis_server import RedisServer, require_redis_server

MASTER = "mymaster"
DOWN_AFTER_MS = 1000
# A replica's first sync at once (Redis 7 waits 5 s for more replicas to share a diskless one);
# and as docs/sentinel.md says to run them: a primary left without a replica takes no writes.
SERVER_OPTIONS = ["--repl-diskless-sync-delay", "0", "--min-replicas-to-write", "1",
                  "--min-replicas-max-lag", "5"]


def known(lines):
    """From SENTINEL master's replies (their words, one after another: redis-cli's lines): each
    sentinel's count of the replicas and of the other sentinels it knows."""
    return [(int(lines[i + 1]), int(lines[j + 1])) for i, j in zip(
        [n for n, line in enumerate(lines) if line == "num-slaves"],
        [n for n, line in enumerate(lines) if line == "num-other-sentinels"], strict=True)]


def call(port, *args, timeout=2):
    """One command to a server on loopback, its reply's first line (enough for these tests)."""
    import resp_client

    with resp_client.RespClient("127.0.0.1", port, connect_timeout=timeout, timeout=timeout,
                                max_connections=1) as client:
        return client.execute(*args)


class SwitchNews:
    """The moment the first of these sentinels publishes +switch-master (its failover done), as
    seen by plain subscribers of our own: ``at`` is its time.monotonic(), None while none came."""

    def __init__(self, ports):
        import socket

        self.at = None
        self._socks = [socket.create_connection(("127.0.0.1", port), timeout=2) for port in ports]
        for sock in self._socks:
            sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$14\r\n+switch-master\r\n")
            threading.Thread(target=self._read, args=(sock,), daemon=True).start()

    def _read(self, sock):
        seen = b""
        sock.settimeout(None)
        while b"$7\r\nmessage\r\n" not in seen:
            try:
                chunk = sock.recv(4096)
            except OSError:
                return
            if not chunk:
                return
            seen += chunk
        now = time.monotonic()
        self.at = now if self.at is None else min(self.at, now)

    def close(self):
        for sock in self._socks:
            sock.close()


class Sentinel:
    def __init__(self, primary_port, quorum=2):
        self.binary = require_redis_server()
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="friendlyhello-sentinel-")
        self.config = os.path.join(self.directory, "sentinel.conf")
        with open(self.config, "w") as out:
            out.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
                      f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} {quorum}\n"
                      f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                      f"sentinel failover-timeout {MASTER} 4000\n"
                      f"sentinel parallel-syncs {MASTER} 2\n")
        self.process = None

    def start(self):
        self.process = subprocess.Popen([self.binary, self.config, "--sentinel"], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
        threading.Thread(target=self.process.stdout.read, daemon=True).start()
        wait_until(lambda: self._answers(), 10, f"sentinel on {self.port}", pace=0.05)
        return self

    def _answers(self):
        try:
            return call(self.port, "PING", timeout=0.5) in ("PONG", b"PONG")
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def primary(self):
        host, port = call(self.port, "SENTINEL", "get-master-addr-by-name", MASTER)
        return int(port)

    def stop(self):
        if self.process is not None:
            terminate(self.process)
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


class Replicated:
    """A primary and two replicas, watched by three sentinels: ``servers`` by port."""

    def __init__(self):
        primary = RedisServer(extra=SERVER_OPTIONS)
        self.servers = {primary.port: primary}
        self.first_primary = primary.port
        self.sentinels = []

    def __enter__(self):
        primary = self.servers[self.first_primary].start()
        for _ in range(2):
            replica = RedisServer(extra=[*SERVER_OPTIONS, "--replicaof", "127.0.0.1", str(primary.port)]).start()
            self.servers[replica.port] = replica
        wait_until(lambda: all(self.in_sync(port) for port in self.servers if port != primary.port), 10,
                   "two replicas in sync", pace=0.05)
        self.sentinels = [Sentinel(primary.port).start() for _ in range(3)]
        wait_until(lambda: all(self._sees_all(s) for s in self.sentinels), 15, "the sentinels to know each other",
                   pace=0.1)
        return self

    def __exit__(self, *exc_info):
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers.values():
            if server.process is not None and server.process.poll() is None:
                os.kill(server.process.pid, signal.SIGCONT)  # one paused by a test stops all the same
            server.cleanup()

    @property
    def addresses(self):
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def primary(self):
        return self.sentinels[0].primary()

    def in_sync(self, port):
        """Whether the replica on ``port`` has its link to its primary up."""
        try:
            info = call(port, "INFO", "replication")
        except Exception:  # noqa: BLE001 - not answering
            return False
        return "master_link_status:up" in (info.decode() if isinstance(info, bytes) else info)

    def wait_until_all_in_sync(self):
        """Every replica's link to the primary up (after a failover, they sync again), and every
        sentinel seeing both replicas well: until then, a failover may find none to promote."""
        primary = self.primary()
        wait_until(lambda: all(self.in_sync(port) for port, server in self.servers.items()
                               if port != primary and server.process is not None), 20,
                   "the replicas in sync", pace=0.1)
        wait_until(lambda: all(self._replicas_well(s) for s in self.sentinels), 30,
                   "the sentinels to see both replicas in sync", pace=0.2)

    def _replicas_well(self, sentinel):
        try:
            replicas = call(sentinel.port, "SENTINEL", "replicas", MASTER)
        except Exception:  # noqa: BLE001 - not answering
            return False
        fields = [dict(zip(r[::2], r[1::2], strict=True)) for r in replicas]
        well = [f for f in fields if f.get(b"flags", f.get("flags")) in (b"slave", "slave")
                and f.get(b"master-link-status", f.get("master-link-status")) in (b"ok", "ok")]
        return len(well) == 2

    def _sees_all(self, sentinel):
        try:
            others = call(sentinel.port, "SENTINEL", "sentinels", MASTER)
            replicas = call(sentinel.port, "SENTINEL", "replicas", MASTER)
        except Exception:  # noqa: BLE001 - not yet
            return False
        return len(others) == 2 and len(replicas) == 2

    def failover(self):
        """SENTINEL FAILOVER, and the new primary's port once every sentinel names it."""
        old = self.primary()
        wait_until(lambda: self.failover_taken(), 30, "the sentinels to take a failover", pace=0.2)
        wait_until(lambda: all(s.primary() != old for s in self.sentinels), 15, "the failover", pace=0.05)
        return self.primary()

    def failover_taken(self):
        """SENTINEL FAILOVER taken (not refused: INPROG while the last failover is settling,
        NOGOODSLAVE while no replica has been seen in sync for long enough)."""
        import resp_client

        try:
            call(self.sentinels[0].port, "SENTINEL", "failover", MASTER)
            return True
        except resp_client.ResponseError as exc:
            if str(exc).startswith(("INPROG", "NOGOODSLAVE")):
                return False
            raise

    def wait_for_new_primary(self, old, within=15):
        started = time.monotonic()
        wait_until(lambda: all(s.primary() != old for s in self.sentinels), within, "a new primary", pace=0.05)
        return self.primary(), time.monotonic() - started
