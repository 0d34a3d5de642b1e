"""The tutorial's Part 2 to its end, for real: the image run detached, found and stopped, then
shared through a registry with a password (tests/registry.py) with the tutorial's own
commands (docker login, tag, push, run), and both architectures pushed under one name.

The Docker command line talks to Docker Engine (dockerd; scripts/container-engine.sh starts
one), as the tutorial's reader's does; the two-platform build is podman's (`podman build
--platform ... --manifest`), which needs no buildx. Every docker command here runs with a
DOCKER_CONFIG of the test's own, so a login never touches the user's ~/.docker.
"""

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error

import pytest

from helpers import DISABLED, ROOT, free_port, unavailable, wait_until
from registry import MANIFEST_LIST, Docker, Registry
from test_arm64 import EMULATED, emulating_arm64
from test_container import engine, get, wait_for_200

pytestmark = pytest.mark.container
__all__ = ["engine"]  # a fixture, used by name

HEALTHCHECK = ["CMD", "/usr/local/bin/python3", "-S", "-m", "hello_server", "--healthcheck"]  # the Dockerfile's
REPOSITORY = "learner/friendlyhello"  # the tutorial's username/repository


@pytest.fixture(scope="module")
def registry():
    with Registry() as running:
        yield running


@pytest.fixture
def docker(tmp_path):
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        unavailable("no Docker engine answers (scripts/container-engine.sh starts dockerd as root)")
    client = Docker(str(tmp_path / "docker-config"))
    started = []
    yield client, started
    for container in started:
        client("rm", "-f", container, check=False)


def run_detached(docker, started, *args):
    result = docker("run", "-d", *args)
    started.append(result.stdout.strip())
    return result.stdout.strip(), result.stderr


def stop(docker, container):
    """docker container stop, timed; the exit status it left."""
    began = time.monotonic()
    docker("container", "stop", container)
    return time.monotonic() - began, docker.out("inspect", "--format", "{{.State.ExitCode}}", container)


def test_a_registry_with_a_password_takes_no_push_before_the_login_and_no_wrong_password(docker, registry):
    docker, _ = docker
    docker("build", "-q", "-t", "friendlyhello", ROOT, timeout=600)
    name = f"{registry.address}/{REPOSITORY}:refused"
    docker("tag", "friendlyhello", name)
    try:
        refused = docker("push", name, check=False)
        wrong = docker.login(registry, password="not-the-password")
    finally:
        docker("image", "rm", name, check=False)
    assert refused.returncode != 0 and "no basic auth credentials" in refused.stderr
    assert wrong.returncode != 0 and "401 Unauthorized" in wrong.stderr
    assert docker.logins() == {}
    with pytest.raises(urllib.error.HTTPError) as nothing:
        registry.tags(REPOSITORY)
    assert nothing.value.code == 404  # nothing was pushed


def test_part_2_to_its_end_detached_then_login_tag_push_and_run_from_the_registry_alone(docker, registry):
    docker, started = docker
    docker("build", "-q", "-t", "friendlyhello", ROOT, timeout=600)
    # "Run the app in the background, in detached mode", find it, stop it.
    port = free_port()
    container, _ = run_detached(docker, started, "-p", f"127.0.0.1:{port}:80", "friendlyhello")
    wait_for_200(port)
    listed = docker.out("container", "ls", "--no-trunc", "--format", "{{.ID}} {{.Image}} {{.Ports}}")
    assert f"{container} friendlyhello 127.0.0.1:{port}->80/tcp" in listed.splitlines()
    detached_stop = stop(docker, container)

    # "Share your image": log in, tag, push.
    login = docker.login(registry)
    entry = docker.logins()[registry.address]
    name = f"{registry.address}/{REPOSITORY}:part2"
    docker("tag", "friendlyhello", name)
    began = time.monotonic()
    pushed = docker.out("push", name)
    push_took = time.monotonic() - began
    digest = pushed.rsplit("digest: ", 1)[1].split()[0]

    # "Pull and run the image from the remote repository": the name is not here any more.
    docker("image", "rm", name)
    assert docker("image", "inspect", name, check=False).returncode != 0
    port = free_port()
    began = time.monotonic()
    container, pulling = run_detached(docker, started, "-p", f"127.0.0.1:{port}:80", "--health-interval", "1s", name)
    waited = wait_for_200(port)
    run_took = time.monotonic() - began
    status, body = get(port)
    health = wait_until(lambda: docker.out("inspect", "--format", "{{.State.Health.Status}}", container), 30,
                        "a health verdict", pace=0.2, accept=lambda status: status != "starting")
    image = json.loads(docker.out("image", "inspect", name))[0]
    took, exit_status = stop(docker, container)

    docker("logout", registry.address)
    print(f"\ndetached run stopped in {detached_stop[0]:.2f}s; push {push_took:.2f}s; run from the registry to "
          f"the first 200 {run_took:.2f}s (pull included, {waited:.2f}s of it waiting for the port); "
          f"stop {took:.2f}s")
    assert detached_stop == (pytest.approx(0, abs=2), "0")
    assert "Login Succeeded" in login.stdout
    # Where the password went: base64 in the config file (not encrypted: a credential helper
    # is what keeps it out of a file), and in no other file; gone from it after the logout.
    assert base64.b64decode(entry["auth"]).decode() == f"{registry.USER}:{registry.password}"
    assert registry.tags(REPOSITORY) == ["part2"]
    assert "Unable to find image" in pulling and f"{name.rsplit(':', 1)[0]}@{digest}" in image["RepoDigests"]
    assert status == 200 and body == f"<h3>Hello World!</h3><b>Hostname:</b> {container[:12]}<br/><b>Visits:</b> " \
                                     f"{DISABLED}"
    assert image["Config"]["Healthcheck"]["Test"] == HEALTHCHECK and health == "healthy"
    assert took < 2 and exit_status == "0"
    assert registry.address not in docker.logins() and docker.files_holding(entry["auth"]) == []
    docker("image", "rm", name, check=False)


def test_both_architectures_go_under_one_name_and_docker_run_pulls_each_machine_its_own(docker, registry, engine):
    docker, started = docker
    if not engine.endswith("podman"):
        unavailable("the two-platform build runs on podman here (with Docker: docker buildx build --push)")
    if not emulating_arm64():
        unavailable("arm64 binaries cannot run here (scripts/container-engine.sh registers qemu-user-static)")
    local, name = "localhost/friendlyhello:both", f"{registry.address}/{REPOSITORY}:both"
    subprocess.run([engine, "manifest", "rm", local], capture_output=True)
    assert docker.login(registry).returncode == 0
    try:
        began = time.monotonic()
        subprocess.run([engine, "build", "--pull=never", "--format", "docker", "--platform", "linux/amd64,linux/arm64",
                        "--manifest", local, ROOT], capture_output=True, check=True, timeout=900)
        built = time.monotonic() - began
        # podman reads the login docker wrote (the same file format); --format v2s2 keeps the
        # Docker manifest types that carry HEALTHCHECK.
        subprocess.run([engine, "manifest", "push", "--all", "--format", "v2s2", "--tls-verify=false",
                        "--authfile", os.path.join(docker.config, "config.json"), local, f"docker://{name}"],
                       capture_output=True, check=True, timeout=300)
    finally:
        subprocess.run([engine, "manifest", "rm", local], capture_output=True)
    media_type, configs = registry.platforms(REPOSITORY, "both")

    machines = {}
    for platform in (), ("--platform", "linux/arm64"):  # this machine's own, then an arm64 machine's
        port = free_port()
        container, pulling = run_detached(docker, started, *platform, "-p", f"127.0.0.1:{port}:80", name)
        wait_for_200(port, within=30 if platform else 15)
        status, body = get(port, timeout=30)
        arch = docker.out("image", "inspect", "--format", "{{.Architecture}}", name)
        machines[arch] = status, body == f"<h3>Hello World!</h3><b>Hostname:</b> {container[:12]}<br/><b>Visits:" \
                                         f"</b> {DISABLED}", "Unable to find image" in pulling, stop(docker, container)
        docker("rm", container)
        docker("image", "rm", name)
    docker("logout", registry.address)
    print(f"\ntwo-platform build {built:.0f}s; {machines}")
    assert media_type == MANIFEST_LIST
    assert {p: c["architecture"] for p, c in configs.items()} == {"linux/amd64": "amd64", "linux/arm64": "arm64"}
    assert all(c["config"]["Healthcheck"]["Test"] == HEALTHCHECK for c in configs.values())
    native = subprocess.run([engine, "info", "--format", "{{.Host.Arch}}"], capture_output=True, text=True).stdout
    assert set(machines) == {native.strip(), "arm64"} or native.strip() == "arm64"
    for arch, (status, page, pulled, (took, exit_status)) in machines.items():
        assert (status, page, pulled, exit_status) == (200, True, True, "0"), arch
        assert took < 2 * (EMULATED // 10 if arch == "arm64" else 1), arch
