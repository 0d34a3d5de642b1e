"""The images side by side: sizes, what the tiny one holds, and start-up, A/B.

    python3 bench/images.py [--engine podman|docker] [--starts 7]

Builds the tiny image (the Dockerfile's default target), the slim target, and the tutorial's
own image (its app.py with Flask and redis-py, pip-installed here into bench/out/tutorial and
copied onto the same base image). Prints each image's size as the engine reports it, the tiny
image's bytes by kind (from its exported files), and the time from `run` to the first 200,
tiny and slim alternating, medians. Every container is removed by id; traffic stays on 127.0.0.1.
"""

import argparse
import http.client
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
TUTORIAL = os.path.join(BENCH, "out", "tutorial")
TUTORIAL_DOCKERFILE = """FROM python:3.12-slim
WORKDIR /app
COPY packages /app/packages
COPY app.py /app/
ENV PYTHONPATH=/app/packages NAME=World
EXPOSE 80
CMD ["python", "app.py"]
"""


def engine_command(engine, *args, timeout=600):
    return subprocess.run([engine, *args], capture_output=True, text=True, check=True, timeout=timeout).stdout.strip()


def build(engine, tag, context, *options):
    extra = ["--pull=never", "--format", "docker"] if engine.endswith("podman") else []
    engine_command(engine, "build", *extra, *options, "-t", tag, context)
    return int(engine_command(engine, "image", "inspect", "--format", "{{.Size}}", tag))


def tutorial_context():
    """The tutorial's app.py, and Flask and redis-py installed beside it for the base's Python."""
    os.makedirs(TUTORIAL, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--target",
                    os.path.join(TUTORIAL, "packages"), "flask==3.1.3", "redis==8.1.0"], check=True)
    shutil.copy(os.path.join(BENCH, "peer_app.py"), os.path.join(TUTORIAL, "app.py"))
    with open(os.path.join(TUTORIAL, "Dockerfile"), "w") as dockerfile:
        dockerfile.write(TUTORIAL_DOCKERFILE)
    return TUTORIAL


def tiny_contents(engine, image):
    """The tiny image's bytes by kind, from its exported files."""
    container = engine_command(engine, "create", image)
    try:
        tar = subprocess.run([engine, "export", container], capture_output=True, check=True).stdout
    finally:
        engine_command(engine, "rm", "-f", container)
    kinds = {"interpreter": 0, "shared libraries": 0, "standard library (compiled)": 0,
             "standard library (extension modules)": 0, "CA certificates": 0, "our code (compiled)": 0}
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for member in archive.getmembers():
            if not member.isfile():
                continue
            name = "/" + member.name.lstrip("./")
            if name.startswith("/app/"):
                kind = "our code (compiled)"
            elif name.startswith("/etc/ssl/"):
                kind = "CA certificates"
            elif "/lib-dynload/" in name:
                kind = "standard library (extension modules)"
            elif name.endswith(".pyc"):
                kind = "standard library (compiled)"
            elif "/bin/python" in name:
                kind = "interpreter"
            else:
                kind = "shared libraries"
            kinds[kind] += member.size
    return kinds


def first_200(engine, image, *args):
    port = free_port()
    started = time.monotonic()
    container = engine_command(engine, "run", "-d", "-p", f"127.0.0.1:{port}:80", image, *args)
    try:
        while time.monotonic() - started < 30:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return time.monotonic() - started
            except (OSError, http.client.HTTPException):
                time.sleep(0.005)
        raise RuntimeError(f"{image} did not answer within 30 s")
    finally:
        engine_command(engine, "rm", "-f", "-t", "0", container)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default=shutil.which("podman") or shutil.which("docker"))
    parser.add_argument("--starts", type=int, default=7, help="starts of each image, alternating")
    args = parser.parse_args()
    sizes = {"tiny (default target)": build(args.engine, "friendlyhello", ROOT),
             "slim (--target slim)": build(args.engine, "friendlyhello:slim", ROOT, "--target", "slim"),
             "the tutorial's (Flask + redis-py)": build(args.engine, "friendlyhello-tutorial", tutorial_context())}
    base = engine_command(args.engine, "image", "inspect", "--format", "{{.Id}} {{.Size}}", "python:3.12-slim")
    print(f"\nbase image python:3.12-slim: {int(base.split()[1]):,} bytes\n")
    print("| image | size (bytes) | MB |\n| --- | ---: | ---: |")
    for name, size in sizes.items():
        print(f"| {name} | {size:,} | {size / 1e6:.1f} |")
    print("\n| in the tiny image | bytes |\n| --- | ---: |")
    for kind, size in tiny_contents(args.engine, "friendlyhello").items():
        print(f"| {kind} | {size:,} |")
    times = {"tiny": [], "slim": []}
    for _ in range(args.starts):
        times["tiny"].append(first_200(args.engine, "friendlyhello"))
        times["slim"].append(first_200(args.engine, "friendlyhello:slim"))
    tiny, slim = (statistics.median(times[k]) * 1000 for k in ("tiny", "slim"))
    print(f"\n`run` to first 200, medians of {args.starts}, alternating: tiny {tiny:.0f} ms, slim {slim:.0f} ms "
          f"({tiny / slim:.2f}x); every start: tiny {[round(t * 1000) for t in times['tiny']]}, "
          f"slim {[round(t * 1000) for t in times['slim']]}")


if __name__ == "__main__":
    main()
