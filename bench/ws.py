"""WebSocket's cost: server CPU per echoed message against the `websockets` package's asyncio
server on this machine, and the memory each idle WebSocket holds.

    python3 bench/ws.py [--rounds 3] [--seconds 4] [--idle 2000]

Echo: 10 connections, each sending 50 masked text messages of 32 bytes at a time and reading
their 50 echoes, for the seconds given, against friendlyhello's /ws and against an echo server
on `websockets.asyncio.server` (its own documentation's, one process), alternating; the
server's user+sys CPU from /proc over the messages echoed. Idle: that many WebSockets opened and
left open, the server's resident memory (VmRSS) before and after, per connection. Least of the
rounds (median in brackets). Targets: at most 0.67x the peer's CPU per message; at most 8 KiB
per idle WebSocket. Needs the websockets package (requirements-dev.txt). Every process it
starts is stopped by its pid; all traffic stays on 127.0.0.1.
"""

import argparse
import functools
import os
import resource
import socket
import statistics
import struct
import sys
import threading
import time

from cpu import cpu_per
from run import PROCESSES, free_port, listening, start, stop, wait_until

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
PEER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(websocket):
    async for message in websocket:
        await websocket.send(message)

async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), ping_interval=None, compression=None):
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"""
MESSAGE = b"\x81\xa0" + b"\x00" * 4 + b"m" * 32  # a masked text frame of 32 bytes (a zero mask)
BURST = 50


def open_ws(port, greeting):
    """A WebSocket past its upgrade (and friendlyhello's greeting, which it sends first)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(UPGRADE)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    rest = data.split(b"\r\n\r\n", 1)[1]
    while greeting and len(rest) < frame_size(rest):  # the greeting read whole, and dropped
        rest += sock.recv(65536)
    return sock


def frame_size(data):
    """How long the server frame at the start of ``data`` is, as far as can be told yet."""
    if len(data) < 4:
        return 4
    length = data[1] & 0x7F
    return 2 + length if length < 126 else 4 + struct.unpack("!H", data[2:4])[0]


def echo_load(port, seconds, greeting, connections=10):
    """Messages echoed by the server in ``seconds`` over ``connections``."""
    done, stop_at = [0] * connections, time.monotonic() + seconds
    burst, answer = MESSAGE * BURST, 2 + 32

    def client(n):
        sock = open_ws(port, greeting)
        while time.monotonic() < stop_at:
            sock.sendall(burst)
            wanted, got = answer * BURST, 0
            while got < wanted:
                got += len(sock.recv(65536))
            done[n] += BURST
        sock.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])


def per_idle(process, port, count, greeting):
    before = rss_kb(process.pid)
    sockets = [open_ws(port, greeting) for _ in range(count)]
    time.sleep(1)
    after = rss_kb(process.pid)
    for sock in sockets:
        sock.close()
    return (after - before) * 1024 / count


def ours():
    port = free_port()
    env = {"PORT": str(port), "BIND": "127.0.0.1", "ACCESS_LOG": "off", "REDIS_HOST": "127.0.0.1",
           "REDIS_PORT": str(free_port()), "REDIS_TIMEOUT": "0.2", "MAX_CONNECTIONS": "20000"}
    process = start([sys.executable, os.path.join(ROOT, "hello_server.py")], env=env)
    wait_until(lambda: listening(port), 10, "friendlyhello listening")
    return process, port


def peer():
    port = free_port()
    process = start([sys.executable, "-c", PEER, str(port)])
    wait_until(lambda: listening(port), 10, "the websockets server listening")
    return process, port


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--idle", type=int, default=2000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * args.idle + 1000)), hard))
    figures = {"cpu": ([], []), "idle": ([], [])}
    try:
        for n in range(args.rounds):
            for side, (make, greets) in enumerate(((ours, True), (peer, False))):
                process, port = make()
                figures["cpu"][side].append(cpu_per(process.pid, functools.partial(echo_load, port, greeting=greets),
                                                          args.seconds))
                figures["idle"][side].append(per_idle(process, port, args.idle, greets))
                stop(process)
            print(f"round {n + 1}: CPU per message {figures['cpu'][0][-1]:.1f} µs against "
                  f"{figures['cpu'][1][-1]:.1f}; per idle WebSocket {figures['idle'][0][-1]:.0f} B against "
                  f"{figures['idle'][1][-1]:.0f}", flush=True)
    finally:
        for process in list(PROCESSES):
            stop(process)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; least of {args.rounds} rounds "
          "(median in brackets)\n")
    print("| figure | friendlyhello | websockets (asyncio) | ratio | target |\n| --- | ---: | ---: | ---: | ---: |")
    for name, key, unit, target in (("server CPU per echoed message", "cpu", "µs", "≤ 0.67x"),
                                    (f"memory per idle WebSocket ({args.idle} open)", "idle", "B", "≤ 8 KiB")):
        a, b = figures[key]
        print(f"| {name} ({unit}) | {min(a):.1f} ({statistics.median(a):.1f}) | {min(b):.1f} "
              f"({statistics.median(b):.1f}) | {min(a) / min(b):.2f}x | {target} |")


if __name__ == "__main__":
    main()
