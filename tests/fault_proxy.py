"""A fault-injecting TCP proxy between friendlyhello and a real Redis, switchable mid-test.

Modes (for connections old and new):
  pass     forward both ways
  refuse   stop listening: new connections are refused (existing ones are cut)
  silent   accept and read, never forward or answer
  delay    forward, but hold each reply back for `delay` seconds
  cut      forward the request; send the first half of the reply, then close (FIN)
  reset    like cut, but end with a TCP reset (RST)
  drip     forward replies one byte per segment
"""

import socket
import threading
import time

from helpers import shut_down

MODES = {"pass", "refuse", "silent", "delay", "cut", "reset", "drip"}


class FaultProxy:
    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.mode = "pass"
        self.delay = 0.0
        self._lock = threading.Lock()
        self._sockets = set()
        self._closed = False
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.port = self._listener.getsockname()[1]
        self._accepting = self._start(self._accept_loop, self._listener)

    def set(self, mode, delay=0.0):
        assert mode in MODES, mode
        with self._lock:
            previous, self.mode, self.delay = self.mode, mode, delay
        if mode == "refuse" and previous != "refuse":
            self._stop_listening()
            self._cut_all()
        elif previous == "refuse" and mode != "refuse":
            self._listener = socket.create_server(("127.0.0.1", self.port), backlog=256)
            self._accepting = self._start(self._accept_loop, self._listener)

    def close(self):
        self._closed = True
        self._stop_listening()
        self._cut_all()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _stop_listening(self):
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._accepting.join(5)

    def _cut_all(self):
        with self._lock:
            shut_down(list(self._sockets))

    def _start(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        return thread

    def _track(self, *socks):
        with self._lock:
            self._sockets.update(socks)

    def _accept_loop(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                upstream = socket.create_connection(self.upstream, timeout=2)
                upstream.settimeout(None)
                upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                client.close()  # the real Redis is down: so is the proxy's far end
                continue
            self._track(client, upstream)
            self._start(self._requests, client, upstream)
            self._start(self._replies, upstream, client)

    def _requests(self, client, upstream):
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                if self.mode != "silent":
                    upstream.sendall(data)
        except OSError:
            pass
        finally:
            self._close(client, upstream)

    def _replies(self, upstream, client):
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                mode = self.mode
                if mode == "delay":
                    time.sleep(self.delay)
                if mode in ("cut", "reset"):
                    client.sendall(data[:max(len(data) // 2, 1) - 1] if len(data) > 1 else b"")
                    if mode == "reset":
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    break
                if mode == "drip":
                    for i in range(len(data)):
                        client.sendall(data[i:i + 1])
                        time.sleep(0.0005)
                elif mode != "silent":
                    client.sendall(data)
        except OSError:
            pass
        finally:
            self._close(client, upstream)

    def _close(self, *socks):
        for sock in socks:
            try:
                sock.close()
            except OSError:
                pass
        with self._lock:
            self._sockets.difference_update(socks)
