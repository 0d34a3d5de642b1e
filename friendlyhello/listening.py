"""Listening: the port, bound and listening, or one line that says how to fix why not."""

import errno
import os
import resource
import socket


class ListenError(Exception):
    """The port cannot be listened on; the message says how to fix it, in one line."""


def listen(config, setting="PORT", shared_port=False, only_bind=False):
    """Bind and listen (on ``config.port``, which ``setting`` names), non-blocking, or raise
    ListenError.

    ``shared_port``: with SO_REUSEPORT, so that each worker listens on a socket of its own and
    the kernel spreads new connections over them (a socket inherited by all spread them badly
    here: whichever worker woke first took a whole burst). ``only_bind``: the supervisor's,
    which holds the port and checks it can be had, but takes no connections."""
    family = socket.AF_INET6 if ":" in config.bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((config.bind, config.port))
        if not only_bind:
            sock.listen(1024)  # bursts of new connections must not meet dropped SYNs
    except OSError as exc:
        sock.close()
        where = f"port {config.port} on {config.bind}"
        if isinstance(exc, PermissionError):
            raise ListenError(
                f"not allowed to listen on {where} as user {os.getuid()}: "
                f"set {setting}=8080 (publish with -p 4000:8080), or give the container "
                f"--sysctl net.ipv4.ip_unprivileged_port_start=0") from None
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"{where} is already in use: stop the other "
                              f"program or choose another port, e.g. {setting}=8080") from None
        raise ListenError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def raise_file_limit(wanted):
    """Idle connections are cheap here but each is a file descriptor: allow enough."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
