"""Small helpers the test modules share."""

import os
import socket

import pytest


def unavailable(message):
    """A tool or service a test needs is missing: skip locally, fail in CI, where it must be."""
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must run this test)")
    pytest.skip(message)


def shut_down(sockets):
    """Shut sockets down both ways, waking any thread blocked on them."""
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
