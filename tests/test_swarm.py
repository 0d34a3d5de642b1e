"""stack.yaml on a real single-node Swarm (Docker Engine): replicas, scaling and rolling
updates under steady load with no failed request, a bad release rolled back, replicas broken at
run time (the admin port) replaced, and a Redis that Swarm replaces.

Deployed as a user would (`docker stack deploy`), with tests/stack.test.yaml on top (read it:
this kernel has no IPVS, so the test client reaches the replicas by DNS round robin from a
container on the stack's network). Skips locally without a Swarm; fails in CI, whose setup
(scripts/container-engine.sh) makes one.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest

from certificates import certificates
from friendlyhello import watch_tally
from helpers import ROOT, unavailable, wait_until
from registry import Docker, Registry

pytestmark = pytest.mark.container

IMAGE = "friendlyhello"
CLIENT_IMAGE = "python:3.12-slim"  # the client needs a whole standard library, not the server's


def docker(*args, check=True, timeout=180):
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout.strip()


def swarm_wait(check, within, what):
    """helpers.wait_until at the pace of docker commands; returns the seconds it took."""
    started = time.monotonic()
    wait_until(check, within, what, pace=0.5)
    return time.monotonic() - started


class Stack:
    def __init__(self, name):
        self.name = name
        self.web, self.redis, self.network = f"{name}_web", f"{name}_redis", f"{name}_webnet"
        self.clients = []  # load containers not yet finished: removed with the stack whatever happens

    def tasks(self, service):
        """Containers of the service's running tasks: (id, health)."""
        ids = docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service}").split()
        return [(c, docker("inspect", "--format", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", c))
                for c in ids]

    def healthy(self, replicas):
        """True when exactly this many web tasks run, all healthy, and Redis runs."""
        tasks = self.tasks(self.web)
        return len(tasks) == replicas and all(h == "healthy" for _, h in tasks) and self.tasks(self.redis)

    def counter(self):
        (redis, _), = self.tasks(self.redis)
        reply = docker("exec", redis, "redis-cli", "GET", "counter")
        return int(reply) if reply else 0

    def load(self, threads=4, max_seconds=120):
        """Start steady load from a container on the stack's network; stop it with finish()."""
        client = docker("run", "-d", "--network", self.network, "-v", f"{ROOT}/tests:/t:ro", CLIENT_IMAGE,
                        "python", "/t/swarm_client.py", "tasks.web", str(threads), str(max_seconds))
        self.clients.append(client)
        return client

    def watch(self, *options, url="http://tasks.web/"):
        """Start `watch` (the tiny image itself) on the stack's network; stop it with finish()."""
        client = docker("run", "-d", "--network", self.network, IMAGE, "watch", url, "--json",
                        "--rate", "25", "--timeout", "5", *options)
        self.clients.append(client)
        return client

    def finish(self, client, stop=True):
        """Stop the load (or let it end at its own time limit) and return what it saw."""
        if stop:
            docker("kill", "-s", "TERM", client)
        docker("wait", client, timeout=180)
        seen = json.loads(docker("logs", client).splitlines()[-1])
        docker("rm", "-f", client)
        self.clients.remove(client)
        return seen


def require_swarm_and_image():
    """An active Swarm (else the test is unavailable: a skip, or in CI a failure), and the
    image built from this checkout."""
    if shutil.which("docker") is None or subprocess.run(
            ["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"],
            capture_output=True, text=True).stdout.strip() != "active":
        unavailable("no Docker engine in an active Swarm (run scripts/container-engine.sh as root)")
    docker("build", "-q", "-t", IMAGE, ROOT, timeout=600)


@pytest.fixture(scope="module")
def stack():
    require_swarm_and_image()
    deployed = Stack(f"fhtest{uuid.uuid4().hex[:6]}")
    with Registry() as registry, tempfile.TemporaryDirectory() as config:
        # As the tutorial's Part 3 does: the image pushed to a registry, and the stack naming it
        # there; the replicas pull it with the login passed on (--with-registry-auth).
        name = f"{registry.address}/learner/friendlyhello:swarm"
        client = Docker(config, FRIENDLYHELLO_IMAGE=name)  # stack.yaml's image: ${FRIENDLYHELLO_IMAGE:-...}
        assert client.login(registry).returncode == 0
        client("tag", IMAGE, name)
        client("push", name)
        client("image", "rm", name)
        certs = certificates()  # HTTPS too (stack.tls.yaml), its pair kept as Swarm secrets
        for secret, path in TLS_SECRETS.items():
            docker("secret", "rm", secret, check=False)
            docker("secret", "create", secret, path(certs))
        try:
            client("stack", "deploy", "--with-registry-auth", "-c", os.path.join(ROOT, "stack.yaml"),
                   "-c", os.path.join(ROOT, "stack.tls.yaml"), "-c", os.path.join(ROOT, "tests", "stack.test.yaml"),
                   deployed.name)
            took = swarm_wait(lambda: deployed.healthy(5), 120, "five healthy replicas")
            image = docker("service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", deployed.web)
            print(f"\nstack deployed from {image}, five replicas healthy after {took:.1f}s")
            assert image.startswith(name + "@sha256:")
            yield deployed
        finally:
            for client_container in deployed.clients:
                docker("rm", "-f", client_container, check=False)
            docker("stack", "rm", deployed.name, check=False)
            swarm_wait(lambda: not docker("network", "ls", "-q", "--filter", f"name={deployed.network}"),
                       120, "the stack's removal")  # its tasks stop in their own time: up to the grace period each
            docker("volume", "rm", f"{deployed.name}_redis-data", check=False)
            for secret in TLS_SECRETS:
                docker("secret", "rm", secret, check=False)


TLS_SECRETS = {"friendlyhello_tls_cert": lambda certs: certs.pem("ecdsa"),
               "friendlyhello_tls_key": lambda certs: certs.key("ecdsa")}
HTTPS_CLIENT = """
import collections, http.client, json, socket, ssl
context = ssl.create_default_context(cafile="/certs/ca.pem")
seen = collections.Counter()
for _ in range(40):  # a new connection each time: tasks.web names each replica in turn
    with socket.create_connection(("tasks.web", 8443), timeout=5) as sock, \\
            context.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(b"GET / HTTP/1.1\\r\\nHost: web\\r\\nAccept: application/json\\r\\nConnection: close\\r\\n\\r\\n")
        response = http.client.HTTPResponse(tls)
        response.begin()
        seen[f"{response.status} {tls.version()} {json.loads(response.read())['hostname']}"] += 1
print(json.dumps(seen))
"""
KEY_MODE = ("import os; st = os.stat('/run/secrets/tls.key'); "
            "print(st.st_uid, st.st_gid, oct(st.st_mode & 0o777))")


def test_https_is_served_by_every_replica_from_the_swarm_s_secrets_readable_by_its_user_alone(stack):
    certs = certificates()
    out = docker("run", "--rm", "--network", stack.network, "-v", f"{certs.folder}:/certs:ro", CLIENT_IMAGE,
                 "python", "-c", HTTPS_CLIENT, timeout=120)
    seen = json.loads(out.splitlines()[-1])
    (replica, _), *_ = stack.tasks(stack.web)
    mode = docker("exec", replica, "/usr/local/bin/python3", "-S", "-c", KEY_MODE)
    print(f"\nHTTPS through tasks.web: {seen}")
    assert sum(seen.values()) == 40 and all(answer.startswith("200 TLSv1.3 ") for answer in seen)
    assert len(seen) == 5  # every replica answered
    assert mode == "10001 10001 0o400"


TOOLS_CLIENT = """
import json, socket, urllib.request
def ask(path):
    try:
        with urllib.request.urlopen(urllib.request.Request("http://tasks.web" + path,
                                    headers={"Accept": "application/json"}), timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())
seen = sorted({info[4][0] for info in socket.getaddrinfo("tasks.web", 80, type=socket.SOCK_STREAM)})
print(json.dumps({"client": seen, "dns": ask("/dns?name=tasks.web"), "redis": ask("/dial?host=redis&port=6379"),
                  "itself": ask("/dial?host=127.0.0.1&port=80")}))
"""


def test_a_replica_says_what_tasks_web_resolves_to_there_and_that_it_reaches_redis_on_the_network(stack):
    out = docker("run", "--rm", "--network", stack.network, CLIENT_IMAGE, "python", "-c", TOOLS_CLIENT, timeout=60)
    seen = json.loads(out.splitlines()[-1])
    (dns_status, dns), (dial_status, dial), (outside_status, outside) = seen["dns"], seen["redis"], seen["itself"]
    print(f"\n/dns?name=tasks.web on {dns['hostname']}: {dns['addresses']} in {dns['seconds'] * 1000:.1f} ms; "
          f"/dial redis:6379: {dial['outcome']} ({dial['address']}) in {dial['seconds'] * 1000:.1f} ms")
    assert dns_status == 200 and dns["outcome"] == "resolved"
    assert sorted(dns["addresses"]) == seen["client"] and len(seen["client"]) == 5  # every replica, as a client sees
    assert dial_status == 200 and dial["outcome"] == "connected" and dial["address"].startswith("10.")
    assert outside_status == 403 and outside["error"] == "127.0.0.1 is not within DIAL_ALLOW"


def assert_every_request_answered_and_counted_once(seen, rise):
    assert seen["failed"] == 0, seen["errors"]
    assert set(seen["statuses"]) == {"200"}, seen["statuses"]
    numbers = seen["numbers"]
    assert len(numbers) == len(set(numbers)), "a visit number was shown twice"
    assert len(numbers) <= rise <= len(numbers) + seen["no_reply"]


def test_five_healthy_replicas_answer_in_turn_and_share_one_count(stack):
    before = stack.counter()
    seen = stack.finish(stack.load(threads=2, max_seconds=3), stop=False)
    rise = stack.counter() - before
    print(f"\n{seen['requests']} requests over {len(seen['hostnames'])} replicas: {dict(seen['hostnames'])}")
    assert len(seen["hostnames"]) >= 5
    assert seen["disabled"] == 0 and rise == len(seen["numbers"]) == seen["requests"]
    assert_every_request_answered_and_counted_once(seen, rise)


def test_scaling_up_to_8_and_down_to_2_under_load_fails_no_request(stack):
    before = stack.counter()
    client = stack.load()
    started = time.monotonic()
    docker("service", "scale", "--detach=false", f"{stack.web}=8", timeout=300)
    up = time.monotonic() - started
    docker("service", "scale", "--detach=false", f"{stack.web}=2", timeout=300)
    down = time.monotonic() - started - up
    seen = stack.finish(client)
    rise = stack.counter() - before
    print(f"\nscale 5->8 in {up:.1f}s, 8->2 in {down:.1f}s: {seen['requests']} requests, "
          f"{seen['failed']} failed, statuses {dict(seen['statuses'])}, rise {rise}")
    assert_every_request_answered_and_counted_once(seen, rise)
    swarm_wait(lambda: len(stack.tasks(stack.web)) == 2, 30, "the stopped replicas' exit")


def roll_to(stack, version, *watch_options, url="http://tasks.web/"):
    """A rolling update to this VERSION with `watch` running throughout; what watch saw, the
    counter's rise, and how long the update took."""
    docker("service", "scale", "--detach=false", f"{stack.web}=5", timeout=300)
    swarm_wait(lambda: stack.healthy(5), 60, "five healthy replicas")
    old = {c for c, _ in stack.tasks(stack.web)}
    before = stack.counter()
    client = stack.watch(*watch_options, url=url)
    time.sleep(3)  # the old version alone, first
    started = time.monotonic()
    docker("service", "update", "--detach=false", "--env-add", f"VERSION={version}", stack.web, timeout=600)
    took = time.monotonic() - started
    time.sleep(3)  # and the new one alone, last
    seen = stack.finish(client)
    assert not old & {c for c, _ in stack.tasks(stack.web)}, "some replica was not replaced"
    return seen, stack.counter() - before, took


@pytest.mark.parametrize("mode, options, old, new", [
    ("connections kept alive", (), "1", "2"),
    ("a new connection per request", ("--new-connection",), "2", "3"),
])
def test_a_rolling_update_from_one_version_to_the_next_fails_no_request_watched_by_watch(stack, mode, options,
                                                                                         old, new):
    if old != "1":  # the second rollout starts where the first one ended
        docker("service", "update", "--detach=false", "--env-add", f"VERSION={old}", stack.web, timeout=600)
    seen, rise, took = roll_to(stack, new, *options)
    versions = seen["by_version"]
    moved = versions[new]["first_s"], versions[old]["last_s"]
    print(f"\nrolling update {old} -> {new} ({mode}) in {took:.1f}s: {seen['requests']} requests, "
          f"{seen['failed']} failed {seen['failures']}, {seen['retried']} retried, p99 {seen['p99_ms']} ms, "
          f"longest gap {seen['longest_gap_ms']} ms; {new} first answered at {moved[0]:.1f}s, {old} last at "
          f"{moved[1]:.1f}s; {len(seen['by_replica'])} replicas answered; counter rise {rise}\n"
          + watch_tally.table(seen))
    assert seen["failed"] == 0, seen["failures"]
    assert set(versions) == {old, new} and seen["keep_alive"] == (not options)
    timeline = seen["timeline"]
    assert set(timeline[0]["answers"]) == {old} and set(timeline[-1]["answers"]) == {new}  # 0% to 100%
    shown = seen["visits"]
    assert shown["distinct"] == shown["shown"] == seen["requests"]  # each a visit, no number twice
    assert shown["shown"] <= rise <= shown["shown"] + shown["no_reply"] + seen["retried"]


def test_a_rolling_update_closes_each_websocket_of_the_old_version_with_1001_and_cuts_none(stack):
    old, new = "3", "4"
    docker("service", "update", "--detach=false", "--env-add", f"VERSION={old}", stack.web, timeout=600)
    seen, _, took = roll_to(stack, new, url="ws://tasks.web/ws")
    held, versions = seen["websocket"], seen["by_version"]
    before, after = versions[old]["connections"], versions[new]["connections"]
    print(f"\nrolling update {old} -> {new} with `watch ws://` in {took:.1f}s: {seen['requests']} messages, "
          f"{seen['failed']} failed {seen['failures']}, {seen['retried']} sent again, echo p99 {seen['p99_ms']} ms; "
          f"connections: {json.dumps(held)}\n" + watch_tally.table(seen))
    assert seen["failed"] == 0, seen["failures"]
    assert held["cut"] == 0 and held["failed_to_open"] == {}, held
    assert before["closed"] == {"1001": before["opened"]} and before["open_at_end"] == 0  # each closed properly
    assert after["open_at_end"] == 4 and after["cut"] == 0 and set(versions) == {old, new}
    assert held["reconnects"] == sum(held["closed"].values()) >= 4  # each opened again, at once


def test_a_release_whose_liveness_fails_is_rolled_back_by_the_stack_s_own_update_config(stack):
    """stack.yaml's update_config (start-first, failure_action: rollback, monitor 5s): a new
    task that never becomes healthy fails the update, and Swarm puts the old spec back."""
    docker("service", "scale", "--detach=false", f"{stack.web}=5", timeout=300)
    swarm_wait(lambda: stack.healthy(5), 60, "five healthy replicas")
    before = stack.counter()
    client = stack.watch("--new-connection")
    started = time.monotonic()
    docker("service", "update", "--detach=false", "--env-add", "FAULT_LIVE=fail", stack.web, check=False,
           timeout=600)
    took = time.monotonic() - started
    swarm_wait(lambda: docker("service", "inspect", "--format", "{{.UpdateStatus.State}}", stack.web)
               in ("rollback_completed", "rollback_paused"), 180, "the rollback")
    swarm_wait(lambda: stack.healthy(5), 120, "five healthy replicas again")
    seen = stack.finish(client)
    rise = stack.counter() - before
    state = docker("service", "inspect", "--format", "{{.UpdateStatus.State}}", stack.web)
    env = docker("service", "inspect", "--format", "{{json .Spec.TaskTemplate.ContainerSpec.Env}}", stack.web)
    print(f"\nFAULT_LIVE=fail release: update gave up and rolled back in {took:.1f}s ({state}); "
          f"{seen['requests']} requests, {seen['failed']} failed {seen['failures']}, p99 {seen['p99_ms']} ms")
    assert state == "rollback_completed" and "FAULT_LIVE" not in env
    assert seen["failed"] == 0, seen["failures"]
    shown = seen["visits"]
    assert shown["distinct"] == shown["shown"] == seen["requests"]
    assert shown["shown"] <= rise <= shown["shown"] + shown["no_reply"] + seen["retried"]


# The admin port speaks HTTPS alone here (stack.tls.yaml gives the replicas a certificate): asked
# from inside the replica, its own certificate is not checked.
ADMIN = ("import http.client, ssl, sys; t = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); t.check_hostname = False; "
         "t.verify_mode = ssl.CERT_NONE; c = http.client.HTTPSConnection('127.0.0.1', 8081, timeout=5, context=t); "
         "c.request('POST', sys.argv[1], headers={'Authorization': 'Bearer swarm-test-token-0123456789'}); "
         "r = c.getresponse(); print(r.status, r.read().decode().strip())")


def admin(container, path):
    """POST to a replica's own admin port, from inside its container (the tiny image's Python)."""
    return docker("exec", container, "/usr/local/bin/python3", "-S", "-c", ADMIN, path)


def break_one_replica(stack, path):
    """Turn a fault on in one replica at run time, with `watch` running: how long until its
    container was unhealthy, and until Swarm had replaced it with a healthy task; what watch saw."""
    docker("service", "scale", "--detach=false", f"{stack.web}=5", timeout=300)
    swarm_wait(lambda: stack.healthy(5), 60, "five healthy replicas")
    (victim, _), *_ = stack.tasks(stack.web)
    client = stack.watch("--new-connection")
    time.sleep(2)
    started = time.monotonic()
    answer = admin(victim, path)
    unhealthy = swarm_wait(lambda: docker("inspect", "--format", "{{.State.Health.Status}}", victim, check=False)
                           in ("unhealthy", ""), 60, "the replica unhealthy")
    health = docker("inspect", "--format", "{{.State.Health.Status}}", victim, check=False)
    swarm_wait(lambda: stack.healthy(5) and victim not in {c for c, _ in stack.tasks(stack.web)}, 120,
               "a healthy task in its place")
    replaced = time.monotonic() - started
    time.sleep(2)
    return answer, health, unhealthy, replaced, stack.finish(client)


@pytest.mark.parametrize("fault, path, lost", [
    ("liveness failing", "/faults/live?state=fail", set()),  # pages answer until Swarm stops it: none lost
    # A hung replica answers nothing: a request that reaches it before Swarm ends it waits for
    # the client's timeout, or is reset when the replica is ended.
    ("a hang", "/faults/hang?state=on", {"timeout", "reset"}),
])
def test_a_replica_broken_at_run_time_is_caught_by_its_health_check_and_replaced_by_swarm(stack, fault, path, lost):
    answer, health, unhealthy, replaced, seen = break_one_replica(stack, path)
    print(f"\n{fault} turned on at run time: unhealthy at {unhealthy:.1f}s, replaced by a healthy task at "
          f"{replaced:.1f}s; {seen['requests']} requests, {seen['failed']} failed {seen['failures']}, "
          f"p99 {seen['p99_ms']} ms")
    assert answer.startswith("200 ") and health in ("unhealthy", "")  # "": already gone when looked at
    assert {kind for kind, n in seen["failures"].items() if n} <= lost, seen["failures"]
    assert seen["requests"] > seen["failed"] and set(seen["statuses"]) == {"200"}


def test_redis_killed_is_replaced_and_the_count_goes_on_from_its_volume(stack):
    (redis, _), = stack.tasks(stack.redis)
    before = stack.counter()
    client = stack.load()
    swarm_wait(lambda: stack.counter() > before, 30, "counting under load")
    docker("kill", redis)
    started = time.monotonic()
    swarm_wait(lambda: [c for c, _ in stack.tasks(stack.redis) if c != redis], 120, "a new Redis task")
    replaced = time.monotonic() - started
    after_restart = stack.counter()
    swarm_wait(lambda: stack.counter() > after_restart, 60, "counting again")
    seen = stack.finish(client)
    rise = stack.counter() - before
    print(f"\nRedis replaced in {replaced:.1f}s: {seen['requests']} requests, {seen['disabled']} pages "
          f"said the counter is disabled, {seen['failed']} failed, rise {rise}")
    assert after_restart >= before  # the count went on from the volume, not from zero
    assert seen["disabled"] > 0
    assert_every_request_answered_and_counted_once(seen, rise)
