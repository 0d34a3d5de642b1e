"""friendlyhello against the tutorial's original stack (Flask + redis-py), side by side.

    python3 bench/run.py [--rounds 3] [--seconds 5] [--out bench/out]
    python3 bench/run.py --versus DIR   # this tree against another checkout of friendlyhello

Needs wrk and redis-server (Debian: apt-get install wrk redis-server). Makes a throwaway
virtual environment in bench/.venv with bench/requirements.txt (Flask and redis-py for the
peer, matplotlib for the chart); the service itself never uses them. Runs A, B, A, B ...
for each figure, prints a table, writes latest.json, latest.md and ratios.png to --out
(bench/out, which git ignores; --out bench/results replaces the figures the README shows).
With --versus, the peer is friendlyhello as another checkout has it (say, an older commit in
a `git worktree`): throughput, p99 and memory, A/B, to show a change costs nothing.
Every process it starts is stopped by its pid at the end, also on Ctrl-C; every loop is
bounded in count and time. All traffic stays on 127.0.0.1.
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
VENV = os.path.join(BENCH, ".venv")
VENV_PYTHON = os.path.join(VENV, "bin", "python")
sys.path.insert(0, ROOT)

import resp_client  # noqa: E402

REDIS_TIMEOUT = 2.0
PROCESSES = []  # everything started, stopped by pid at the end


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command, env=None, **options):
    # Python as a user runs it: caching bytecode (the peer's packages come compiled by pip).
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    process = subprocess.Popen(command, env={**base, **(env or {})}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **options)
    PROCESSES.append(process)
    return process


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process in PROCESSES:
        PROCESSES.remove(process)


def wait_until(check, within, what):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.002)
    raise RuntimeError(f"{what} did not happen within {within}s")


NGINX = """daemon off;
master_process off;
pid {scratch}/nginx-{port}.pid;
error_log {scratch}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {scratch};
    proxy_temp_path {scratch};
    fastcgi_temp_path {scratch};
    uwsgi_temp_path {scratch};
    scgi_temp_path {scratch};
    server {{
        listen 127.0.0.1:{port}{listen};
{server}
    }}
}}
"""


def nginx(scratch, server, listen=""):
    """nginx, one process, on a free port of 127.0.0.1 (``listen``: more of its listen line, such
    as " ssl"), with ``server`` (the rest of its server block) and its scratch files in
    ``scratch``: (process, port)."""
    port = free_port()
    config = os.path.join(scratch, f"nginx-{port}.conf")
    with open(config, "w") as out:
        out.write(NGINX.format(scratch=scratch, port=port, listen=listen, server=server))
    process = start([shutil.which("nginx", path="/usr/sbin:/usr/bin") or "nginx", "-c", config])
    wait_until(lambda: listening(port), 10, "nginx listening")
    return process, port


def answers(port, path="/"):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REDIS_TIMEOUT + 1)
        conn.request("GET", path)
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except (OSError, http.client.HTTPException):
        return False


class Redis:
    """An empty redis-server on a free port."""

    def __enter__(self):
        self.port = free_port()
        self.process = start(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"])
        wait_until(lambda: _pings(self.port), 10, "redis-server start")
        return self

    def __exit__(self, *exc_info):
        stop(self.process)


def _pings(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Silent:
    """A 'Redis' that accepts connections and never answers."""

    def __enter__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self):
        while True:
            try:
                self.held.append(self.listener.accept()[0])
            except OSError:
                return

    def __exit__(self, *exc_info):
        self.listener.close()
        for sock in self.held:
            sock.close()


# -- the two apps -------------------------------------------------------------------------

def friendlyhello(root):
    return lambda port, redis_port: (
        [sys.executable, os.path.join(root, "hello_server.py")],
        {"PORT": str(port), "BIND": "127.0.0.1", "REDIS_HOST": "127.0.0.1",
         "REDIS_PORT": str(redis_port), "ACCESS_LOG": "off"})


APPS = {
    "friendlyhello": friendlyhello(ROOT),
    "flask+redis-py": lambda port, redis_port: (
        [VENV_PYTHON, os.path.join(BENCH, "peer_app.py")],
        {"PORT": str(port), "REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_port)}),
}


def launch(app, redis_port):
    port = free_port()
    command, env = APPS[app](port, redis_port)
    started = time.monotonic()
    process = start(command, env)
    wait_until(lambda: answers(port), 15, f"{app} start")
    return process, port, time.monotonic() - started


def wrk(port, connections, seconds, close=False):
    command = ["wrk", "-t", "2" if connections > 10 else "1", "-c", str(connections),
               "-d", f"{seconds}s", "--latency"]
    if close:
        command += ["-H", "Connection: close"]
    out = subprocess.run(command + [f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p99_ms, int(errors.group(1)) if errors else 0


def rss_kb(process):
    with open(f"/proc/{process.pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1))


# -- the figures ---------------------------------------------------------------------------------

def figure_load(app, seconds):
    """Throughput (keep-alive and close, 10 connections), p99 at 100, memory after."""
    with Redis() as redis:
        process, port, _ = launch(app, redis.port)
        try:
            keep_alive, _, e1 = wrk(port, 10, seconds)
            close, _, e2 = wrk(port, 10, seconds, close=True)
            _, p99, e3 = wrk(port, 100, seconds)
            memory = rss_kb(process)
        finally:
            stop(process)
    return {"keep_alive_rps": keep_alive, "close_rps": close, "p99_ms_at_100": p99,
            "rss_kb_after_load": memory, "non_2xx": e1 + e2 + e3}


def figure_starts(starts=9):
    """Exec to first 200 for each app, starts alternating A, B, A, B: start-up is the
    figure most thrown about by whatever else the machine is doing."""
    times = {app: [] for app in APPS}
    with Redis() as redis:
        for _ in range(starts):
            for app in APPS:
                process, _, took = launch(app, redis.port)
                stop(process)
                times[app].append(took * 1000)
    return {app: {"exec_to_first_200_ms": statistics.median(t)} for app, t in times.items()}


def figure_outage(app, pages):
    with Silent() as silent:
        port = free_port()
        command, env = APPS[app](port, silent.port)
        process = start(command, env)
        try:
            wait_until(lambda: listening(port), 15, f"{app} start")
            timings = []
            for _ in range(pages + 1):
                started = time.monotonic()
                answers(port)
                timings.append(time.monotonic() - started)
        finally:
            stop(process)
    rest = sorted(timings[1:])
    return {"outage_first_page_ms": timings[0] * 1000,
            "outage_p99_next_ms": rest[min(int(len(rest) * 0.99), len(rest) - 1)] * 1000,
            "outage_pages_after_first": pages}


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def figure_resp(calls):
    """Single-thread INCR calls per second: RespClient, redis-py, redis-benchmark -c 1."""
    with Redis() as redis:
        ours = resp_client.RespClient("127.0.0.1", redis.port)
        peer = subprocess.run(
            [VENV_PYTHON, "-c", _REDIS_PY_LOOP, str(redis.port), str(calls)],
            capture_output=True, text=True, timeout=300)
        ours_rps = _rate(lambda: ours.incr("counter"), calls)
        ours.close()
        out = subprocess.run(["redis-benchmark", "-p", str(redis.port), "-t", "incr", "-c", "1",
                              "-n", str(calls), "-q"], capture_output=True, text=True, timeout=300).stdout
        benchmark = float(re.findall(r"([\d.]+) requests per second", out)[-1])
    return {"resp_client_incr_per_s": ours_rps, "redis_py_incr_per_s": float(peer.stdout),
            "redis_benchmark_c1_per_s": benchmark}


def _rate(call, calls):
    for _ in range(min(1000, calls)):
        call()
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return calls / (time.perf_counter() - started)


_REDIS_PY_LOOP = """
import sys, time, redis
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
calls = int(sys.argv[2])
for _ in range(min(1000, calls)):
    r.incr("counter")
started = time.perf_counter()
for _ in range(calls):
    r.incr("counter")
print(calls / (time.perf_counter() - started))
"""


# -- running, reporting ----------------------------------------------------------------------------

def ensure_venv():
    if not os.path.exists(VENV_PYTHON):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([VENV_PYTHON, "-m", "pip", "install", "-q", "-r",
                    os.path.join(BENCH, "requirements.txt")], check=True)


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            model = re.search(r"model name\s*:\s*(.+)", info.read()).group(1)
    except (OSError, AttributeError):
        pass
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


ROWS = [  # (figure, key, unit, target ratio, "higher" or "lower" is better)
    ("keep-alive throughput, 10 connections", "keep_alive_rps", "req/s", 8.0, "higher"),
    ("Connection: close throughput, 10 connections", "close_rps", "req/s", 1.2, "higher"),
    ("p99 latency at 100 connections", "p99_ms_at_100", "ms", 0.5, "lower"),
    ("resident memory after the load", "rss_kb_after_load", "kB", 0.7, "lower"),
    ("exec to first 200", "exec_to_first_200_ms", "ms", 0.4, "lower"),
    ("outage: first page (Redis silent)", "outage_first_page_ms", "ms", None, "lower"),
    ("outage: p99 of the next pages", "outage_p99_next_ms", "ms", None, "lower"),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds per figure (default 3)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--outage-pages", type=int, default=100,
                        help="pages after the first during the outage, for friendlyhello (default 100); "
                             "the peer gets 5, since each of its pages waits the whole timeout")
    parser.add_argument("--out", default=os.path.join(BENCH, "out"),
                        help="where the results go (default bench/out; bench/results is what the README shows)")
    parser.add_argument("--versus", metavar="DIR",
                        help="compare with friendlyhello in another checkout instead of Flask + redis-py")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if args.versus:
        return versus(os.path.abspath(args.versus), args.rounds, args.seconds)
    ensure_venv()
    runs = {app: [] for app in APPS}
    try:
        for round_number in range(args.rounds):
            for app in APPS:  # A, B, A, B ...
                print(f"round {round_number + 1}/{args.rounds}: {app}", flush=True)
                figures = figure_load(app, args.seconds)
                figures.update(figure_outage(app, args.outage_pages if app == "friendlyhello" else 5))
                runs[app].append(figures)
            for app, figures in figure_starts().items():
                runs[app][-1].update(figures)
        resp_runs = [figure_resp(20000) for _ in range(args.rounds)]
    finally:
        for process in list(PROCESSES):
            stop(process)
    report(runs, resp_runs, machine(), args.out)


def versus(other, rounds, seconds):
    """This tree (A) against another checkout (B): load figures only, alternating A, B."""
    APPS.clear()
    APPS.update({"this tree": friendlyhello(ROOT), os.path.basename(other): friendlyhello(other)})
    runs = {app: [] for app in APPS}
    try:
        for round_number in range(rounds):
            for app in APPS:
                print(f"round {round_number + 1}/{rounds}: {app}", flush=True)
                runs[app].append(figure_load(app, seconds))
    finally:
        for process in list(PROCESSES):
            stop(process)
    (a, b), where = APPS, machine()
    print(f"\nmachine: {where['cpu']}, {where['cores']} cores, Python {where['python']}, {where['date']}; "
          f"medians of {rounds} rounds\n\n| figure | {a} | {b} | ratio |\n| --- | ---: | ---: | ---: |")
    for title, key, unit, _, _ in ROWS[:4]:
        ma, mb = (statistics.median(run[key] for run in runs[app]) for app in (a, b))
        each = " / ".join(f"{run[key]:,.0f}" for run in runs[a]) + " vs " + " / ".join(
            f"{run[key]:,.0f}" for run in runs[b])
        print(f"| {title} ({unit}) | {ma:,.1f} | {mb:,.1f} | {ma / mb:.3f}x |   rounds: {each}")


def report(runs, resp_runs, where, out_dir):
    ours, peer = "friendlyhello", "flask+redis-py"
    medians = {app: {key: statistics.median(run[key] for run in runs[app]) for key in runs[app][0]}
               for app in runs}
    resp = {key: statistics.median(run[key] for run in resp_runs) for key in resp_runs[0]}
    rows = []
    for title, key, unit, target, better in ROWS:
        a, b = medians[ours][key], medians[peer][key]
        ratio = a / b if b else float("inf")
        rows.append({"figure": title, "unit": unit, ours: a, peer: b, "ratio": ratio,
                     "target": target, "better": better})
    resp_rows = [
        {"figure": "RESP INCR/s, one thread: RespClient / redis-py", "ratio":
         resp["resp_client_incr_per_s"] / resp["redis_py_incr_per_s"], "target": 1.2, "better": "higher"},
        {"figure": "RESP INCR/s, one thread: RespClient / redis-benchmark -c 1", "ratio":
         resp["resp_client_incr_per_s"] / resp["redis_benchmark_c1_per_s"], "target": 0.85, "better": "higher"},
    ]
    lines = [f"machine: {where['cpu']}, {where['cores']} cores, Linux {where['kernel']}, "
             f"Python {where['python']}, {where['date']}; medians of {len(resp_runs)} rounds", "",
             f"| figure | {ours} | {peer} | ratio | target |", "| --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        target = "" if row["target"] is None else ("≥ " if row["better"] == "higher" else "≤ ") + f"{row['target']:g}x"
        lines.append(f"| {row['figure']} ({row['unit']}) | {row[ours]:,.1f} | {row[peer]:,.1f} | "
                     f"{row['ratio']:.2f}x | {target} |")
    lines.append(f"| RESP INCR/s, one thread | {resp['resp_client_incr_per_s']:,.0f} | "
                 f"redis-py {resp['redis_py_incr_per_s']:,.0f}, redis-benchmark -c 1 "
                 f"{resp['redis_benchmark_c1_per_s']:,.0f} | "
                 f"{resp_rows[0]['ratio']:.2f}x / {resp_rows[1]['ratio']:.2f}x | ≥ 1.2x / ≥ 0.85x |")
    lines.append(f"\noutage pages after the first: {ours} {medians[ours]['outage_pages_after_first']:.0f}, "
                 f"{peer} {medians[peer]['outage_pages_after_first']:.0f}; Redis timeout {REDIS_TIMEOUT:g} s")
    table = "\n".join(lines)
    print("\n" + table)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "latest.json"), "w") as out:
        json.dump({"machine": where, "runs": runs, "resp_runs": resp_runs, "rows": rows + resp_rows},
                  out, indent=2)
    with open(os.path.join(out_dir, "latest.md"), "w") as out:
        out.write(table + "\n")
    subprocess.run([VENV_PYTHON, os.path.join(BENCH, "chart.py"), os.path.join(out_dir, "latest.json"),
                    os.path.join(out_dir, "ratios.png")], check=True, timeout=120)
    print(f"\nwrote {out_dir}/latest.json, latest.md and ratios.png")


if __name__ == "__main__":
    main()
