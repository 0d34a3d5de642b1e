"""Streams' cost: /bytes/N in MB/s per core against nginx serving a file of the same size, and
the server's memory while a gigabyte streams to a slow reader.

    python3 bench/streams.py [--rounds 3] [--size 268435456]

Throughput: one client (a plain socket, reading into one buffer) fetches /bytes/SIZE from
friendlyhello and a file of SIZE bytes from nginx (one process, sendfile on, its defaults
otherwise), on a keep-alive connection, alternating, for at least 3 s each; the server's
user+sys CPU from /proc over the bytes it sent: MB (10^6 bytes) per CPU-second. Memory: 1 GiB
of /bytes read at 50 MB/s, the server's resident memory (VmRSS) sampled each 64 MiB. Least of
the rounds (the most MB per CPU-second), median beside it. Target: at least 0.5x nginx's MB per CPU-second. Every
process it starts is stopped by its pid; all traffic stays on 127.0.0.1.
"""

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time

from cpu import cpu_seconds
from run import PROCESSES, free_port, listening, nginx, start, stop, wait_until

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)


def fetch(sock, target, buffer):
    """One GET on a kept-alive connection, its body read into ``buffer`` and dropped: its size."""
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    head, _, rest = head.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(
        b"content-length:")))
    got = len(rest)
    while got < length:
        got += sock.recv_into(buffer)
    return length


def mb_per_cpu_second(pid, port, target, least_seconds=3.0):
    buffer = bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        fetch(sock, target, buffer)  # warm
        before, started, sent = cpu_seconds(pid), time.monotonic(), 0
        while time.monotonic() - started < least_seconds:
            sent += fetch(sock, target, buffer)
        return sent / (cpu_seconds(pid) - before) / 1e6


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


def slow_gigabyte(pid, port, rate=50e6):
    """VmRSS (KiB) each 64 MiB while 1 GiB of /bytes is read at ``rate`` bytes a second."""
    buffer, samples = bytearray(1 << 20), []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /bytes/1073741824 HTTP/1.1\r\nHost: x\r\n\r\n")
        started, got = time.monotonic(), 0
        while got < (1 << 30):
            got += sock.recv_into(buffer, 256 * 1024)
            ahead = got / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
            if got >> 26 > len(samples):
                samples.append(rss_kib(pid))
    return samples


def ours():
    port = free_port()
    env = {"PORT": str(port), "BIND": "127.0.0.1", "ACCESS_LOG": "off", "REDIS_HOST": "127.0.0.1",
           "REDIS_PORT": str(free_port()), "REDIS_TIMEOUT": "0.2"}
    process = start([sys.executable, os.path.join(ROOT, "hello_server.py")], env=env)
    wait_until(lambda: listening(port), 10, "friendlyhello listening")
    return process, port


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256 * 1024 * 1024)
    args = parser.parse_args()
    figures = ([], [])
    try:
        with tempfile.TemporaryDirectory() as scratch:
            with open(os.path.join(scratch, "file.bin"), "wb") as out:
                out.truncate(args.size)  # a file of that size (nginx reads it from the page cache)
            server = f"        sendfile on;\n        root {scratch};"  # the file from the page cache
            for n in range(args.rounds):
                for side, (make, target) in enumerate(((ours, f"/bytes/{args.size}"),
                                                       (lambda: nginx(scratch, server), "/file.bin"))):
                    process, port = make()
                    figures[side].append(mb_per_cpu_second(process.pid, port, target))
                    stop(process)
                print(f"round {n + 1}: {figures[0][-1]:.0f} MB per CPU-second against nginx's "
                      f"{figures[1][-1]:.0f}", flush=True)
            process, port = ours()
            samples = slow_gigabyte(process.pid, port)
            stop(process)
    finally:
        for process in list(PROCESSES):
            stop(process)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.size} bytes a request; best of "
          f"{args.rounds} rounds (median in brackets)\n")
    print("| figure | friendlyhello | nginx | ratio | target |\n| --- | ---: | ---: | ---: | ---: |")
    a, b = figures
    print(f"| MB per CPU-second | {max(a):.0f} ({statistics.median(a):.0f}) | {max(b):.0f} "
          f"({statistics.median(b):.0f}) | {max(a) / max(b):.2f}x | ≥ 0.5x |")
    print(f"\n1 GiB of /bytes to a reader taking 50 MB/s: resident memory {min(samples)} to {max(samples)} KiB "
          f"over {len(samples)} samples")


if __name__ == "__main__":
    main()
