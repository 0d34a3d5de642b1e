"""scripts/collect_runtime.py against this machine's own Python (a third layout: pyenv, with a
shared libpython), started from the collected tree alone with chroot. The base image's layout
is the Dockerfile's business, tested by the container tests."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, free_port, redis_env, request, unavailable

pytestmark = pytest.mark.slow

COLLECTOR = os.path.join(ROOT, "scripts", "collect_runtime.py")
ENTRY = "/usr/local/bin/python3"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    if os.geteuid() != 0 or not os.access(chroot, os.X_OK):
        unavailable("needs root and chroot to start the collected tree")
    out = tmp_path_factory.mktemp("runtime")
    result = subprocess.run([sys.executable, COLLECTOR, "--app", ROOT, "--out", str(out / "root")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    print("\n" + result.stdout)
    return chroot, out / "root", (out / "runtime-files.txt").read_text().splitlines()


def in_tree(runtime, *args, env=None, **options):
    chroot, root, _ = runtime
    return subprocess.Popen([chroot, str(root), ENTRY, "-S", "-m", "hello_server", *args],
                            env={"PYTHONPATH": "/app", **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **options)


def test_the_tree_holds_compiled_modules_and_no_source(runtime):
    _, root, files = runtime
    assert "/app/hello_server.pyc" in files and "/app/resp_client.pyc" in files
    assert not [f for f in files if f.endswith(".py") or "site-packages" in f]
    assert os.path.realpath(sys.executable) in files
    assert sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs) == \
        sorted(f.lstrip("/") for f in files if not os.path.isdir(os.path.join(root, f.lstrip("/"))))


def test_the_collected_tree_answers_help_and_refuses_a_bad_setting(runtime):
    out, err = in_tree(runtime, "--help").communicate(timeout=30)
    assert "--redis-url" in out and err == ""
    out, err = in_tree(runtime, "watch", "--help").communicate(timeout=30)  # docstrings are compiled out
    assert "--new-connection" in out and err == ""
    refused = in_tree(runtime, env={"PORT": "eighty"})
    _, err = refused.communicate(timeout=30)
    assert refused.returncode == 2 and err.startswith("friendlyhello: PORT='eighty' is not valid")


def test_the_collected_tree_serves_counts_and_checks_its_health(runtime, fake_redis):
    port = free_port()
    server = in_tree(runtime, env={**redis_env(fake_redis), "PORT": str(port), "BIND": "127.0.0.1"})
    try:
        assert "listening on" in server.stdout.readline()
        page = request(port, "/")
        data = json.loads(request(port, "/", headers={"Accept": "application/json"}).body)
        health = in_tree(runtime, "--healthcheck", env={"PORT": str(port), "BIND": "127.0.0.1"})
        health.communicate(timeout=30)
    finally:
        server.terminate()
        server.communicate(timeout=30)
    assert page.text.endswith("<b>Visits:</b> 1") and data["visits"] == 2
    assert health.returncode == 0 and server.returncode == 0
