"""TLS's cost: server CPU per full handshake against nginx serving the same certificate, and
CPU per request over TLS keep-alive against plain HTTP keep-alive, from /proc.

    python3 bench/tls.py [--rounds 3] [--seconds 4]

Handshakes: `openssl s_time -new` (one full handshake per connection, TLS 1.3, then close) for
the same seconds against friendlyhello's TLS port and against nginx (one process:
`master_process off`, its page a `return 200`), alternating, RSA 2048 and ECDSA P-256
certificates made here with openssl. Requests: wrk -t1 -c10 keep-alive to friendlyhello's
plain port and to its TLS port, alternating, on one server process (its /healthz, so that no
Redis is asked). Each figure is the least of the rounds (noise only adds CPU time), and the
median beside it. Targets: a handshake at most 1.7x nginx's CPU; TLS keep-alive at most 1.3x
plain. Every process it starts is stopped by its pid; all traffic stays on 127.0.0.1.
"""

import argparse
import functools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from cpu import cpu_per
from run import PROCESSES, free_port, listening, nginx, start, stop, wait_until

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
SERVER = """        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ return 200 "ok\\n"; }}"""


def certificate(scratch, kind):
    cert, key = os.path.join(scratch, f"{kind}.pem"), os.path.join(scratch, f"{kind}.key")
    algorithm = ["-newkey", "rsa:2048"] if kind == "rsa" else ["-newkey", "ec", "-pkeyopt",
                                                                "ec_paramgen_curve:P-256"]
    subprocess.run(["openssl", "req", "-x509", *algorithm, "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def s_time(port, seconds):
    """Full handshakes (TLS 1.3) in ``seconds``: how many."""
    result = subprocess.run(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time",
                             str(round(seconds))], capture_output=True, text=True, timeout=seconds + 30)
    found = re.search(r"(\d+) connections in [\d.]+s", result.stdout + result.stderr)
    if found is None:
        raise SystemExit(f"openssl s_time found no server on {port}: {result.stderr[-500:]}")
    return int(found.group(1))


def wrk(url, seconds):
    out = subprocess.run(["wrk", "-t1", "-c10", f"-d{round(seconds)}s", url], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    return int(re.search(r"(\d+) requests in", out).group(1))


def friendlyhello(cert, key):
    port, tls_port = free_port(), free_port()
    env = {"PORT": str(port), "TLS_PORT": str(tls_port), "TLS_CERT": cert, "TLS_KEY": key, "BIND": "127.0.0.1",
           "ACCESS_LOG": "off", "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(free_port()), "REDIS_TIMEOUT": "0.2"}
    process = start([sys.executable, os.path.join(ROOT, "hello_server.py")], env=env)
    wait_until(lambda: listening(tls_port) and listening(port), 10, "friendlyhello listening")
    return process, port, tls_port


def summary(values):
    return min(values), statistics.median(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4)
    args = parser.parse_args()
    seconds = args.seconds
    rows = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for kind in ("ecdsa", "rsa"):
                cert, key = certificate(scratch, kind)
                ours, theirs = [], []
                server, _, tls_port = friendlyhello(cert, key)
                web, web_port = nginx(scratch, SERVER.format(cert=cert, key=key), listen=" ssl")
                for n in range(args.rounds):
                    ours.append(cpu_per(server.pid, functools.partial(s_time, tls_port), seconds))
                    theirs.append(cpu_per(web.pid, functools.partial(s_time, web_port), seconds))
                    print(f"{kind} round {n + 1}: friendlyhello {ours[-1]:.0f} µs, nginx {theirs[-1]:.0f} µs "
                          f"per handshake", flush=True)
                stop(web)
                stop(server)
                rows.append((f"server CPU per full handshake, {kind.upper()} (µs): friendlyhello / nginx",
                             summary(ours), summary(theirs), 1.7))
            cert, key = certificate(scratch, "ecdsa")
            server, port, tls_port = friendlyhello(cert, key)
            tls, plain = [], []
            for n in range(args.rounds):
                plain.append(cpu_per(server.pid, functools.partial(wrk, f"http://127.0.0.1:{port}/healthz"), seconds))
                tls.append(cpu_per(server.pid, functools.partial(wrk, f"https://127.0.0.1:{tls_port}/healthz"),
                                   seconds))
                print(f"keep-alive round {n + 1}: TLS {tls[-1]:.1f} µs, plain {plain[-1]:.1f} µs per request",
                      flush=True)
            stop(server)
            rows.append(("server CPU per keep-alive request (µs): TLS (ECDSA) / plain", summary(tls),
                         summary(plain), 1.3))
    finally:
        for process in list(PROCESSES):
            stop(process)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; least of {args.rounds} rounds "
          "(median in brackets)\n")
    print("| figure | A | B | A/B | target |\n| --- | ---: | ---: | ---: | ---: |")
    for name, (a_least, a_median), (b_least, b_median), target in rows:
        print(f"| {name} | {a_least:.1f} ({a_median:.1f}) | {b_least:.1f} ({b_median:.1f}) | "
              f"{a_least / b_least:.2f}x ({a_median / b_median:.2f}x) | ≤ {target}x |")


if __name__ == "__main__":
    main()
