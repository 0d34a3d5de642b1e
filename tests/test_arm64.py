"""The images on arm64, built and run here under emulation (Debian's qemu-user-static through
binfmt_misc, which scripts/container-engine.sh sets up with an arm64 stand-in of the base
image), and one command building both platforms into one manifest list.

Emulation is slow, so this proves what differs between architectures and no more: that the
collector finds arm64's loader and libraries, and that the arm64 tiny image serves, counts,
checks its health, runs locked down and stops at once. Everything else is the same code,
tested natively in test_container.py.
"""

import http.client
import json
import time

import pytest

from helpers import ROOT, free_port, unavailable
from test_container import IMAGE, build, containers, engine, get, image, network, run, wait_for_count

pytestmark = pytest.mark.container
__all__ = ["containers", "engine", "image", "network"]  # fixtures, used by name

ARM64_IMAGE, ARM64_SLIM = "friendlyhello:arm64", "friendlyhello:arm64-slim"
EMULATED = 40  # how much longer things take under emulation, at most, for the timeouts here


def emulating_arm64():
    try:
        with open("/proc/sys/fs/binfmt_misc/qemu-aarch64") as registered:
            return registered.readline().strip() == "enabled"
    except OSError:
        return False


@pytest.fixture(scope="module")
def arm64_images(engine):
    if not emulating_arm64():
        unavailable("arm64 binaries cannot run here (scripts/container-engine.sh registers qemu-user-static)")
    if not engine.endswith("podman"):
        unavailable("the arm64 build runs on podman here (with Docker: docker buildx build --platform linux/arm64)")
    took = {}
    for tag, target in ((ARM64_IMAGE, ()), (ARM64_SLIM, ("--target", "slim"))):
        started = time.monotonic()
        build(engine, tag, "--platform", "linux/arm64", *target)
        took[tag] = time.monotonic() - started
    print(f"\narm64 builds under emulation: tiny {took[ARM64_IMAGE]:.0f}s, slim {took[ARM64_SLIM]:.0f}s")
    return took


def size_of(engine, tag):
    return int(run(engine, "image", "inspect", "--format", "{{.Size}}", tag))


def test_both_arm64_images_are_arm64_and_the_tiny_one_is_as_tiny_as_on_amd64(engine, image, arm64_images):
    for tag in (ARM64_IMAGE, ARM64_SLIM):
        assert run(engine, "image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", tag) == "linux/arm64"
    assert run(engine, "image", "inspect", "--format", "{{.Architecture}}", IMAGE) == "amd64"
    amd64, arm64 = size_of(engine, IMAGE), size_of(engine, ARM64_IMAGE)
    print(f"\ntiny image: amd64 {amd64 / 1e6:.1f} MB, arm64 {arm64 / 1e6:.1f} MB")
    assert arm64 < 25_000_000 and abs(arm64 - amd64) < 0.2 * amd64


def test_the_arm64_tiny_image_serves_counts_checks_its_health_runs_locked_down_and_stops_at_once(
        engine, arm64_images, containers, network):
    containers("--network", network, "--network-alias", "redis", "redis:7")
    port = free_port()
    container = containers("--network", network, "-p", f"127.0.0.1:{port}:80", "--read-only", "--cap-drop", "ALL",
                           "--security-opt", "no-new-privileges", "--user", "4242:4343", "--passwd=false",
                           "--read-only-tmpfs=false", ARM64_IMAGE)
    first = wait_for_count(port, within=30 * EMULATED // 10)
    status, body = get(port, timeout=30)
    page = json.loads(get_json(port))
    run(engine, "healthcheck", "run", container, timeout=60)
    health = run(engine, "inspect", "--format", "{{.State.Health.Status}}", container)
    started = time.monotonic()
    run(engine, "stop", "-t", "10", container, timeout=60)
    took = time.monotonic() - started
    print(f"\narm64 under emulation: first count {first}, stop took {took:.2f}s")
    assert status == 200 and body.startswith("<h3>Hello World!</h3><b>Hostname:</b> " + container[:12])
    assert page["visits"] == first + 2 and page["hostname"] == container[:12]
    assert health == "healthy"
    assert took < 5 and run(engine, "inspect", "--format", "{{.State.ExitCode}}", container) == "0"
    assert set(run(engine, "diff", container).splitlines()) - {"C /etc"} == set()  # wrote nothing


def get_json(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/", headers={"Accept": "application/json"})
        return conn.getresponse().read()
    finally:
        conn.close()


def test_one_command_builds_both_platforms_into_one_manifest_list(engine, image, arm64_images):
    name = "localhost/friendlyhello:multi"
    run(engine, "manifest", "rm", name, check=False)
    try:
        run(engine, "build", "--pull=never", "--format", "docker", "--platform", "linux/amd64,linux/arm64",
            "--manifest", name, ROOT, timeout=900)
        platforms = {(m["platform"]["os"], m["platform"]["architecture"])
                     for m in json.loads(run(engine, "manifest", "inspect", name))["manifests"]}
    finally:
        run(engine, "manifest", "rm", name, check=False)
    assert platforms == {("linux", "amd64"), ("linux", "arm64")}
