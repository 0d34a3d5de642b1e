"""The real Dockerfile and compose.yaml, built and run with a real container engine.

podman here (set up by scripts/container-engine.sh), docker elsewhere. Locally without an
engine these skip with the reason; in CI they fail instead. `image` is the default target,
the tiny FROM-scratch image; `slim_image` is the tutorial-shaped one (--target slim).
"""

import http.client
import io
import json
import os
import pathlib
import shutil
import socket
import ssl
import subprocess
import tarfile
import time
import uuid

import pytest

from certificates import certificates
from helpers import DISABLED, ROOT, free_port, unavailable, wait_until
from sentinel import known

pytestmark = pytest.mark.container

IMAGE = "friendlyhello"
SLIM_IMAGE = "friendlyhello:slim"
TINY_MAX_BYTES = 20_000_000
# What the Dockerfile copies of ours: the two modules and the package.
RUNTIME_FILES = ["hello_server.py", "resp_client.py"] + [
    os.path.join("friendlyhello", f) for f in os.listdir(os.path.join(ROOT, "friendlyhello")) if f.endswith(".py")]


def _find_engine():
    for name in ("podman", "docker"):
        path = shutil.which(name)
        if path and subprocess.run([path, "info"], capture_output=True, timeout=60).returncode == 0:
            return path
    return None


@pytest.fixture(scope="module")
def engine():
    path = _find_engine()
    if path is None:
        unavailable("no container engine answers (run scripts/container-engine.sh as root, or start Docker)")
    return path


# Docker 20.10+ lets a non-root user in a container bind ports below 1024; podman does only
# where containers.conf says so (scripts/container-engine.sh writes that). The tests ask for it
# themselves, so they pass on a stock podman too.
LOW_PORTS = "net.ipv4.ip_unprivileged_port_start=0"


def run_options(engine):
    return ["--sysctl", LOW_PORTS] if engine.endswith("podman") else []


def run(engine, *args, check=True, timeout=120):
    result = subprocess.run([engine, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout.strip()


def build(engine, tag, *options):
    command = ["build", *options, "-t", tag, ROOT]
    if engine.endswith("podman"):
        command[1:1] = ["--pull=never", "--format", "docker"]  # docker format keeps HEALTHCHECK
    return run(engine, *command, timeout=600)


@pytest.fixture(scope="module")
def image(engine):
    build(engine, IMAGE)
    yield IMAGE
    run(engine, "image", "prune", "-f", check=False)  # the images earlier builds left untagged


@pytest.fixture(scope="module")
def slim_image(engine):
    build(engine, SLIM_IMAGE, "--target", "slim")
    return SLIM_IMAGE


@pytest.fixture
def containers(engine):
    """Start containers with cleanup; each call returns the container id."""
    started = []

    def start(*args):
        container = run(engine, "run", "-d", *run_options(engine), *args)
        started.append(container)
        return container

    yield start
    for container in started:
        run(engine, "rm", "-f", "-t", "0", container, check=False)


@pytest.fixture
def network(engine):
    name = f"fh-test-{uuid.uuid4().hex[:8]}"
    run(engine, "network", "create", name)
    yield name
    run(engine, "network", "rm", "-f", name, check=False)


def get(port, path="/", timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def wait_for_200(port, path="/healthz", within=15):
    """Poll until the container answers; return seconds waited (the container is the event)."""
    def answered():
        try:
            return get(port, path, timeout=1)[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    started = time.monotonic()
    wait_until(answered, within, f"a 200 on port {port}", pace=0.02)
    return time.monotonic() - started


def wait_for_count(port, within=30):
    """Ask for the page until it shows a number (Redis ready too); return that number. Pages that
    said the counter is disabled counted nothing, so the first number is the first visit."""
    def count():
        try:
            status, body = get(port, timeout=3)
        except (OSError, http.client.HTTPException):
            return None
        if status == 200 and not body.endswith(DISABLED):
            return int(body.rsplit(" ", 1)[1])
        return None

    return wait_until(count, within, f"a count on port {port}", pace=0.05,
                      accept=lambda number: number is not None)


def test_the_slim_target_adds_only_our_code_to_its_base(engine, slim_image):
    base = run(engine, "image", "inspect", "--format", "{{.Size}}", "python:3.12-slim")
    ours = run(engine, "image", "inspect", "--format", "{{.Size}}", slim_image)
    added = int(ours) - int(base)
    code = sum(os.path.getsize(os.path.join(ROOT, path)) for path in RUNTIME_FILES)
    print(f"\nslim image adds {added:,} bytes over python:3.12-slim; our code is {code:,}")
    assert code < added < code + 64 * 1024  # the files, and a little for their layers' tar headers


def test_the_default_image_is_tiny(engine, image):
    size = int(run(engine, "image", "inspect", "--format", "{{.Size}}", image))
    print(f"\ntiny image: {size:,} bytes")
    assert size <= TINY_MAX_BYTES


def test_container_serves_the_tutorial_page_with_its_id_as_hostname(engine, image, containers):
    port = free_port()
    started = time.monotonic()
    container = containers("-p", f"127.0.0.1:{port}:80", image)
    wait_for_200(port)
    print(f"\nrun to first 200: {time.monotonic() - started:.2f}s")
    status, body = get(port)
    assert status == 200
    assert body == f"<h3>Hello World!</h3><b>Hostname:</b> {container[:12]}<br/><b>Visits:</b> {DISABLED}"


def test_visits_count_beside_a_redis_container(engine, image, containers, network):
    containers("--network", network, "--network-alias", "redis", "redis:7")
    port = free_port()
    containers("--network", network, "-p", f"127.0.0.1:{port}:80", image)
    assert [wait_for_count(port)] + [int(get(port)[1].rsplit(" ", 1)[1]) for _ in range(2)] == [1, 2, 3]


def test_watch_runs_in_the_tiny_image_and_names_the_replica_and_version_of_each_answer(engine, image, containers,
                                                                                        network):
    containers("--network", network, "--network-alias", "redis", "redis:7")
    ids = {containers("--network", network, "--network-alias", "web", "-e", f"VERSION=v{n}", "-p",
                      f"127.0.0.1:{port}:80", image)[:12]: f"v{n}" for n, port in ((1, free_port()), (2, free_port()))}
    for container in ids:
        wait_for_count(int(run(engine, "port", container, "80/tcp").rsplit(":", 1)[1]))
    out = run(engine, "run", "--rm", *run_options(engine), "--network", network, image,
              "watch", "http://web/", "--duration", "2", "--rate", "40", "--new-connection", "--json", timeout=60)
    seen = json.loads(out)
    assert seen["failed"] == 0 and seen["requests"] >= 60
    assert seen["by_replica"] and {r: row["version"] for r, row in seen["by_replica"].items()}.items() <= ids.items()
    assert sum(row["requests"] for row in seen["by_version"].values()) == seen["requests"]
    assert seen["visits"]["shown"] == seen["visits"]["distinct"] == seen["requests"]


def test_replicas_show_their_own_hostnames_and_share_one_count(engine, image, containers, network):
    containers("--network", network, "--network-alias", "redis", "redis:7")
    ports = [free_port() for _ in range(3)]
    ids = [containers("--network", network, "-p", f"127.0.0.1:{port}:80", image) for port in ports]
    first = [wait_for_count(port) for port in ports]
    pages = [get(port)[1] for port in ports * 2]
    hostnames = [page.split("<b>Hostname:</b> ")[1].split("<br/>")[0] for page in pages]
    counts = [int(page.rsplit(" ", 1)[1]) for page in pages]
    assert first == [1, 2, 3]
    assert hostnames == [container[:12] for container in ids] * 2
    assert counts == [4, 5, 6, 7, 8, 9]


def test_process_runs_as_non_root_with_no_capabilities(engine, image, containers):
    port = free_port()
    container = containers("-p", f"127.0.0.1:{port}:80", image)
    wait_for_200(port)
    pid = run(engine, "inspect", "--format", "{{.State.Pid}}", container)  # no cat in the image: read it here
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":\t", 1) for line in status.read().splitlines() if ":\t" in line)
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        command = cmdline.read().split(b"\0")
    assert fields["Uid"].split()[0] == "10001"
    assert int(fields["CapEff"], 16) == 0
    assert b"hello_server" in command


def test_health_check_reports_healthy(engine, image, containers):
    port = free_port()
    container = containers("-p", f"127.0.0.1:{port}:80", image)
    wait_for_200(port)
    if engine.endswith("podman"):
        run(engine, "healthcheck", "run", container)
        state = run(engine, "inspect", "--format", "{{.State.Health.Status}}", container)
    else:
        state = wait_until(lambda: health(engine, container), within=30, what="a health state", pace=0.5,
                           accept=lambda state: state != "starting")
    assert state == "healthy"


def wait_unhealthy(engine, container, within=60):
    """Until the engine says the container is unhealthy: past the image's start period (5 s),
    three failed checks in a row."""
    def unhealthy():
        if health(engine, container) == "unhealthy":
            return True
        if engine.endswith("podman"):  # without systemd, podman runs the check when asked
            run(engine, "healthcheck", "run", container, check=False)
        return False

    wait_until(unhealthy, within=within, what="an unhealthy container", pace=1)


def health(engine, container):
    return run(engine, "inspect", "--format", "{{.State.Health.Status}}", container)


def test_a_container_started_with_failing_liveness_turns_unhealthy_and_one_failing_readiness_still_serves(
        engine, image, containers):
    live_port, ready_port = free_port(), free_port()
    failing = containers("-e", "FAULT_LIVE=fail", "-p", f"127.0.0.1:{live_port}:80", image)
    containers("-e", "FAULT_READY=fail", "-p", f"127.0.0.1:{ready_port}:80", image)
    wait_for_200(live_port, "/")
    wait_for_200(ready_port, "/")
    wait_unhealthy(engine, failing)
    assert get(live_port, "/healthz")[0] == 503 and get(live_port)[0] == 200
    assert get(ready_port, "/readyz") == (503, "not ready: the ready fault is on\n") and get(ready_port)[0] == 200


def admin(port, path, token="container-test-token-0123"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_the_admin_port_turns_a_running_container_unhealthy_and_crashes_it_with_the_code_asked(
        engine, image, containers):
    port, admin_port = free_port(), free_port()
    container = containers("-e", "ADMIN_PORT=8081", "-e", "ADMIN_TOKEN=container-test-token-0123",
                           "-p", f"127.0.0.1:{port}:80", "-p", f"127.0.0.1:{admin_port}:8081", image)
    wait_for_200(port)
    turned = admin(admin_port, "/faults/live?state=fail")
    wait_unhealthy(engine, container)
    crashed = admin(admin_port, "/faults/crash?code=3")
    code = run(engine, "wait", container)
    logs = subprocess.run([engine, "logs", container], capture_output=True, text=True, timeout=30).stderr
    assert turned[0] == 200 and '"live": "fail"' in turned[1]
    assert crashed == (200, '{"crash": {"code": 3}}\n') and code == "3"
    assert "friendlyhello: faults: liveness fails (set on the admin port by" in logs
    assert "container-test-token" not in logs


def test_stop_is_prompt_and_exits_0(engine, image, containers):
    port = free_port()
    container = containers("-p", f"127.0.0.1:{port}:80", image)
    wait_for_200(port)
    started = time.monotonic()
    run(engine, "stop", "-t", "10", container)
    took = time.monotonic() - started
    print(f"\nstop took {took:.2f}s")
    assert took < 2
    assert run(engine, "inspect", "--format", "{{.State.ExitCode}}", container) == "0"


def _readme_docker_commands():
    """The two commands under "With Docker, as in the tutorial" in the README."""
    with open(os.path.join(ROOT, "README.md")) as readme:
        text = readme.read()
    block = text.split("## With Docker, as in the tutorial", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split() for line in block.strip().splitlines()]


def _low_ports_conf(folder):
    """This machine's containers.conf, with low ports allowed in containers: the README's docker
    commands go through podman's Docker API verbatim, so the setting goes in the engine's file."""
    system = pathlib.Path("/etc/containers/containers.conf")
    text = system.read_text() if system.exists() else ""
    if "ip_unprivileged_port_start" not in text:
        line = f'default_sysctls = ["{LOW_PORTS}"]\n'
        text = text.replace("[containers]\n", "[containers]\n" + line, 1) if "[containers]\n" in text \
            else f"[containers]\n{line}" + text
    conf = folder / "containers.conf"
    conf.write_text(text)
    return str(conf)


@pytest.fixture
def docker_cli(engine, tmp_path):
    """The docker command line, talking to docker or, here, to podman's Docker-compatible API."""
    docker = shutil.which("docker")
    if docker is None:
        unavailable("the docker command line is not installed")
    if not engine.endswith("podman"):
        yield docker, dict(os.environ)
        return
    sock = tmp_path / "podman.sock"
    service = subprocess.Popen([engine, "system", "service", "--time=0", f"unix://{sock}"],
                               env={**os.environ, "CONTAINERS_CONF": _low_ports_conf(tmp_path)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    try:
        wait_until(lambda: subprocess.run([docker, "version"], env=env, capture_output=True).returncode == 0,
                   within=15, what="podman's API service", pace=0.1)
        yield docker, env
    finally:
        service.terminate()
        service.wait(10)


def test_readme_docker_commands_work_verbatim(docker_cli):
    docker, env = docker_cli
    build, run_ = _readme_docker_commands()
    assert build[:2] == ["docker", "build"] and run_[:2] == ["docker", "run"]
    result = subprocess.run([docker, *build[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    port = int(run_[run_.index("-p") + 1].split(":")[0])
    foreground = subprocess.Popen([docker, *run_[1:]], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    container = None
    try:
        wait_for_200(port, within=30)
        status, body = get(port)
        container = body.split("<b>Hostname:</b> ")[1].split("<br/>")[0]  # the container id
        # -t spelled out: podman 4.3's Docker API takes a bare "docker stop" as a 0 s grace (137)
        stopped = subprocess.run([docker, "stop", "-t", "10", container], env=env, capture_output=True,
                                 timeout=30)
        assert foreground.wait(15) == 0
    finally:
        if foreground.poll() is None:
            foreground.kill()
            foreground.wait()
        if container:
            subprocess.run([docker, "rm", "-f", container], env=env, capture_output=True, timeout=30)
    assert stopped.returncode == 0
    assert status == 200 and body.startswith("<h3>Hello World!</h3><b>Hostname:</b> ")
    assert body.endswith(DISABLED)
    assert "friendlyhello listening on http://0.0.0.0:80" in foreground.stdout.read()


def _compose(engine):
    if engine.endswith("podman"):
        path = shutil.which("podman-compose")
        if path is None:
            unavailable("podman-compose is not installed (pip install -r requirements-dev.txt)")
        return [path]
    return [engine, "compose"]


def compose_runner(engine, project, files, env):
    """``compose_run(*args)``: the engine's compose on these files of the checkout, as a project
    of the test's own, with these variables set; it must succeed."""
    command = [*_compose(engine), "-p", project, *(part for f in files for part in ("-f", os.path.join(ROOT, f)))]

    def compose_run(*args):
        result = subprocess.run([*command, *args], capture_output=True, text=True, env={**os.environ, **env},
                                cwd=ROOT, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr

    return compose_run


def test_compose_count_survives_down_and_up_and_down_leaves_nothing_running(engine, image):
    project = f"fhtest{uuid.uuid4().hex[:8]}"
    port = free_port()
    compose_run = compose_runner(engine, project, ["compose.yaml"], {"WEB_PORT": str(port)})

    def running():
        return run(engine, "ps", "-q", "--filter", f"label=com.docker.compose.project={project}")

    try:
        compose_run("up", "-d")
        assert [wait_for_count(port), int(get(port)[1].rsplit(" ", 1)[1])] == [1, 2]
        compose_run("down")
        assert running() == ""
        compose_run("up", "-d")
        assert wait_for_count(port) == 3
    finally:
        compose_run("down", "-v")
    assert running() == ""


def test_dockerfile_is_lint_clean():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        unavailable("hadolint is not installed (pip install -r requirements-dev.txt)")
    result = subprocess.run([hadolint, "--failure-threshold", "warning", os.path.join(ROOT, "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_the_way_the_kubernetes_deployment_runs_it(engine, image, containers):
    from test_k8s import pod_environment, web_container  # the Deployment, read from k8s/

    container = web_container()
    context = container["securityContext"]
    env = pod_environment(container, pod="friendlyhello-abc", namespace="demo", node="node-7", ip="10.9.8.7")
    port = free_port()
    settings = [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]
    containers("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
               "--user", f"{context['runAsUser']}:{context['runAsGroup']}", *settings,
               "-p", f"127.0.0.1:{port}:{container['ports'][0]['containerPort']}", image)
    wait_for_200(port, container["readinessProbe"]["httpGet"]["path"])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/", headers={"Accept": "application/json"})
    page = json.loads(conn.getresponse().read())
    conn.close()
    assert (page["pod"], page["namespace"], page["node"], page["pod_ip"]) == \
        ("friendlyhello-abc", "demo", "node-7", "10.9.8.7")
    assert page["visits"] is None  # no Redis named redis here: the page still serves


# -- the tiny image: all that the slim one does, with nothing else in it --------------------------

def exit_status_and_output(engine, *args):
    """Run a container to its end; its exit status and what it printed (not the engine's own noise)."""
    container = run(engine, "run", "-d", *run_options(engine), *args)
    try:
        code = int(run(engine, "wait", container, timeout=60).splitlines()[-1])
        logs = subprocess.run([engine, "logs", container], capture_output=True, text=True, timeout=60)
        return code, (logs.stdout + logs.stderr).strip()  # the container's stdout, then its stderr
    finally:
        run(engine, "rm", "-f", container, check=False)


def test_the_tiny_image_answers_help_and_refuses_a_bad_setting_with_one_line(engine, image, slim_image):
    code, out = exit_status_and_output(engine, image, "--help")
    assert code == 0 and "--redis-url" in out and "--shutdown-delay" in out
    code, out = exit_status_and_output(engine, "-e", "REDIS_URL=redis://:pw/x?y@h:99999", image)
    assert code == 2 and out.count("\n") == 0 and out.startswith("friendlyhello: REDIS_URL is not valid")
    assert "pw" not in out
    code, out = exit_status_and_output(engine, slim_image, "python", "hello_server.py", "--help")
    assert code == 0 and "--redis-url" in out


@pytest.mark.parametrize("which", ["tiny", "slim"])
def test_json_and_every_probe_answer_in_both_images(engine, image, slim_image, containers, which):
    port = free_port()
    containers("-p", f"127.0.0.1:{port}:80", image if which == "tiny" else slim_image)
    wait_for_200(port)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/", headers={"Accept": "application/json"})
    page = json.loads(conn.getresponse().read())
    conn.close()
    assert page["name"] == "World" and page["visits"] is None and page["redis"] == "cannot connect"
    assert [get(port, path)[0] for path in ("/healthz", "/livez", "/readyz", "/nope")] == [200, 200, 200, 404]


@pytest.fixture
def tls_files(tmp_path):
    """A test CA and a certificate it signed for the host name redis-tls."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl is not installed (apt-get install openssl)")

    def sh(*args):
        subprocess.run([openssl, *args], cwd=tmp_path, check=True, capture_output=True)

    sh("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout", "ca.key", "-out", "ca.pem",
       "-subj", "/CN=friendlyhello test CA")
    sh("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "redis.key", "-out", "redis.csr", "-subj", "/CN=redis-tls")
    (tmp_path / "san.cnf").write_text("subjectAltName=DNS:redis-tls\n")
    sh("x509", "-req", "-in", "redis.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
       "-out", "redis.pem", "-extfile", "san.cnf")
    for name in ("ca.pem", "redis.pem", "redis.key"):
        (tmp_path / name).chmod(0o644)
    tmp_path.chmod(0o755)  # the server's user 10001 reads the CA here
    return tmp_path


def test_the_tiny_image_talks_tls_to_redis_verified_by_a_mounted_ca(engine, image, containers, network, tls_files):
    containers("--network", network, "--network-alias", "redis-tls", "-v", f"{tls_files}:/tls:ro", "redis:7",
               "redis-server", "--port", "0", "--tls-port", "6380", "--tls-cert-file", "/tls/redis.pem",
               "--tls-key-file", "/tls/redis.key", "--tls-ca-cert-file", "/tls/ca.pem", "--tls-auth-clients", "no")
    port = free_port()
    containers("--network", network, "-v", f"{tls_files}:/certs:ro", "-e", "SSL_CERT_FILE=/certs/ca.pem",
               "-e", "REDIS_URL=rediss://redis-tls:6380", "-p", f"127.0.0.1:{port}:80", image)
    assert wait_for_count(port) == 1


def test_the_tiny_image_reaches_redis_over_a_unix_socket_on_a_mounted_volume(engine, image, containers, tmp_path):
    tmp_path.chmod(0o777)
    containers("-v", f"{tmp_path}:/sock", "redis:7", "redis-server", "--port", "0",
               "--unixsocket", "/sock/redis.sock", "--unixsocketperm", "777")
    port = free_port()
    containers("-v", f"{tmp_path}:/sock", "-e", "REDIS_URL=unix:///sock/redis.sock",
               "-p", f"127.0.0.1:{port}:80", image)
    assert wait_for_count(port) == 1


def test_the_tiny_image_runs_locked_down_as_any_user_and_writes_nothing(engine, image, containers):
    port = free_port()
    # podman's own additions, which are no writes of ours: the user in /etc/passwd, and tmpfs mounts
    # on /tmp and /var/tmp of a read-only container.
    podman = ["--passwd=false", "--read-only-tmpfs=false"] if engine.endswith("podman") else []
    container = containers("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                           "--user", "4242:4343", *podman, "-p", f"127.0.0.1:{port}:80", image)
    wait_for_200(port)
    assert get(port)[0] == 200 and get(port, "/readyz")[0] == 200
    changes = set(run(engine, "diff", container).splitlines())
    assert changes - {"C /etc"} == set()  # /etc holds the engine's mount points for hosts and resolv.conf


def image_files(engine, image):
    """Every file and link in the image (directories left out), as /path."""
    container = run(engine, "create", image)
    try:
        tar = subprocess.run([engine, "export", container], capture_output=True, check=True, timeout=120).stdout
    finally:
        run(engine, "rm", "-f", container, check=False)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return {"/" + m.name.lstrip("./") for m in archive.getmembers() if not m.isdir()}


def test_the_tiny_image_holds_what_the_collector_asked_for_and_nothing_else(engine, image):
    build(engine, "friendlyhello:collect", "--target", "collect")
    asked = set(run(engine, "run", "--rm", "friendlyhello:collect", "cat", "/runtime-files.txt").splitlines())
    made_by_the_engine = {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/.dockerenv", "/run/.containerenv",
                          "/etc/passwd", "/etc/group"}
    files = image_files(engine, image)
    assert files - made_by_the_engine == asked
    for absent in ("/bin/sh", "/usr/bin/sh", "/usr/bin/pip", "/usr/local/bin/pip", "/usr/bin/apt-get",
                   "/var/lib/dpkg/status"):
        assert absent not in files
    assert not [f for f in files if "/site-packages/" in f or "/dist-packages/" in f or f.endswith(".py")]


def test_the_tiny_image_runs_two_workers_and_stops_them_promptly(engine, image, containers):
    port = free_port()
    container = containers("-e", "WORKERS=2", "-p", f"127.0.0.1:{port}:80", image)
    wait_for_200(port)
    assert get(port)[0] == 200 and get(port, "/metrics")[0] == 200
    pid = run(engine, "inspect", "--format", "{{.State.Pid}}", container)
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        assert len(listing.read().split()) == 2  # PID 1 is the supervisor
    started = time.monotonic()
    run(engine, "stop", "-t", "10", container)
    assert time.monotonic() - started < 2
    assert run(engine, "inspect", "--format", "{{.State.ExitCode}}", container) == "0"


def https_page(port, ca, timeout=3):
    context = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock, \
            context.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        response = http.client.HTTPResponse(tls)
        response.begin()
        return response.status, response.read().decode(), tls.version()


def tls_folder(tmp_path):
    """A folder holding what a kubernetes.io/tls Secret holds (tls.crt, tls.key), readable by
    the server's user, as a Secret volume's defaultMode makes them."""
    certs = certificates()
    folder = tmp_path / "tls"
    folder.mkdir()
    for source, name in ((certs.pem("ecdsa"), "tls.crt"), (certs.key("ecdsa"), "tls.key")):
        shutil.copy(source, folder / name)
        (folder / name).chmod(0o644)
    for path in (folder, tmp_path):
        path.chmod(0o755)
    return folder


def wait_for_https_page(port, within=15, pace=0.05):
    """Ask for the page over TLS, the test CA trusted, until it answers: (status, body, version)."""
    def served():
        try:
            return https_page(port, certificates().ca)
        except (OSError, http.client.HTTPException):
            return None

    return wait_until(served, within, "an HTTPS answer", pace=pace, accept=lambda got: got is not None)


def test_the_tiny_image_serves_https_alone_from_files_mounted_read_only_and_checks_its_health_so(
        engine, image, containers, tmp_path):
    folder = tls_folder(tmp_path)
    port = free_port()
    container = containers("-p", f"127.0.0.1:{port}:8443", "-v", f"{folder}:/tls:ro", "-e", "PORT=off",
                           "-e", "TLS_PORT=8443", "-e", "TLS_CERT=/tls/tls.crt", "-e", "TLS_KEY=/tls/tls.key",
                           "--read-only", "--cap-drop", "ALL", image)
    status, body, version = wait_for_https_page(port)
    if engine.endswith("podman"):
        run(engine, "healthcheck", "run", container)
    health_state = wait_until(lambda: health(engine, container), 30, "a health state", pace=0.5,
                              accept=lambda state: state != "starting")
    started = time.monotonic()
    run(engine, "stop", "-t", "10", container)
    took = time.monotonic() - started
    logs = run(engine, "logs", container)
    assert status == 200 and body.startswith(f"<h3>Hello World!</h3><b>Hostname:</b> {container[:12]}")
    assert version == "TLSv1.3" and health_state == "healthy"
    assert took < 3 and run(engine, "inspect", "--format", "{{.State.ExitCode}}", container) == "0"
    assert "listening on https://0.0.0.0:8443 " in logs and '"GET /" 200' in logs


def test_compose_with_its_tls_file_serves_https_beside_the_page_from_mounted_secrets(engine, image, tmp_path):
    folder = tls_folder(tmp_path)
    project = f"fhtest{uuid.uuid4().hex[:8]}"
    port, tls_port = free_port(), free_port()
    compose_run = compose_runner(engine, project, ["compose.yaml", "compose.tls.yaml"],
                                 {"WEB_PORT": str(port), "WEB_TLS_PORT": str(tls_port), "TLS_DIR": str(folder)})
    try:
        compose_run("up", "-d")
        first = wait_for_count(port)
        status, body, version = wait_for_https_page(tls_port, pace=0.1)
    finally:
        compose_run("down", "-v")
    assert status == 200 and version == "TLSv1.3"
    assert body.startswith("<h3>Hello World!</h3>") and body.endswith(f"<b>Visits:</b> {first + 1}")


def page_json(port):
    """The page's JSON, or None while the web container does not answer."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        conn.request("GET", "/", headers={"Accept": "application/json"})
        return json.loads(conn.getresponse().read())
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def _logs_of(engine, project, services, lines=40):
    """The last lines each of these services of a compose project logged, without a sentinel's
    every-second "Failed to resolve" for a server that is gone, and what the first sentinel
    thinks of the replicas (the flags and times its choice of one to promote reads)."""
    found = []
    for service in services:
        names = run(engine, "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={project}",
                    "--filter", f"label=com.docker.compose.service={service}", check=False).split()
        for name in names:
            result = subprocess.run([engine, "logs", name], capture_output=True, text=True, timeout=30)
            kept = [line for line in (result.stdout + result.stderr).splitlines() if "Failed to resolve" not in line]
            found.append(f"--- {service}:\n" + "\n".join(kept[-lines:]))
            if service == "sentinel-1":
                asked = subprocess.run([engine, "exec", name, "redis-cli", "-p", "26379", "SENTINEL", "replicas",
                                        "mymaster"], capture_output=True, text=True, timeout=30)
                found.append("--- SENTINEL replicas mymaster:\n" + " ".join((asked.stdout + asked.stderr).split()))
    return "\n".join(found)


def test_compose_behind_sentinel_goes_on_counting_when_the_primary_is_killed_and_shows_no_number_twice(engine,
                                                                                                     image):
    project = f"fhtest{uuid.uuid4().hex[:8]}"
    port = free_port()
    compose_run = compose_runner(engine, project, ["compose.yaml", "compose.sentinel.yaml"], {"WEB_PORT": str(port)})
    shown = []

    def counted():
        seen = page_json(port)
        if seen and seen["visits"] is not None:
            shown.append(seen["visits"])
            return True
        return False

    try:
        compose_run("up", "-d")
        wait_until(counted, 90, "a page counted behind the sentinels", pace=0.2)
        for _ in range(5):
            counted()
        wait_until(lambda: _everyone_known(engine, project), 60, "every sentinel to know both replicas and each other",
                   pace=0.5)
        first = _primary_in(get(port, "/readyz")[1])
        compose_run("kill", "redis")  # the primary, as docs/sentinel.md says to try it
        killed = time.monotonic()
        before = len(shown)
        try:
            wait_until(lambda: counted() and len(shown) > before, 90, "pages counted on the new primary", pace=0.2)
        except AssertionError as exc:  # what the sentinels and the page saw, to tell why
            logged = _logs_of(engine, project, ["sentinel-1", "sentinel-2", "sentinel-3", "web"])
            raise AssertionError(f"{exc}\n{logged}") from None
        took = time.monotonic() - killed
        for _ in range(5):
            counted()
        promoted = _primary_in(get(port, "/readyz")[1])
        replicas = [_address_of(engine, project, f"redis-replica-{n}") for n in (1, 2)]
    finally:
        compose_run("down", "-v")
    print(f"\ncompose behind sentinel: the primary {first} killed, pages counted again after {took:.1f} s "
          f"on {promoted}, of the replicas {replicas}")
    assert len(shown) == len(set(shown)) and shown == sorted(shown)  # no number twice
    assert first != promoted and promoted.rsplit(":", 1) in [[address, "6379"] for address in replicas]


def _everyone_known(engine, project):
    """Every sentinel knows both replicas and the two other sentinels. It learns a replica from
    the primary's INFO, asked every 10 s: a primary killed before that leaves it none to promote."""
    lines = []
    for n in (1, 2, 3):
        (name,) = run(engine, "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                      "--filter", f"label=com.docker.compose.service=sentinel-{n}").split()
        lines += run(engine, "exec", name, "redis-cli", "-p", "26379", "SENTINEL", "master", "mymaster",
                     check=False).split()
    return known(lines) == [(2, 2)] * 3


def _primary_in(readyz):
    """The host:port a /readyz names as the primary in use."""
    return readyz.split("primary: ", 1)[1].split()[0]


def _address_of(engine, project, service):
    """The address of a compose service's one container on the project's network."""
    (name,) = run(engine, "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                  "--filter", f"label=com.docker.compose.service={service}").split()
    return run(engine, "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
