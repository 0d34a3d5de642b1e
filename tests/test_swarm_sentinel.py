"""stack.yaml with stack.sentinel.yaml on a real single-node Swarm: the counter behind a primary,
two replicas and three sentinels, each a service of one task. The primary's container killed
under steady load and kept away: pages go on, counted on the replica the sentinels promote, no
number shown twice, none failed; and the redis task started again comes back a replica, never a
second primary. Deployed as a user would (`docker stack deploy`), with the tests' overlays on top
(tests/stack.test.yaml, tests/stack.sentinel.test.yaml: DNS round robin, as there is no IPVS).
"""

import os
import time
import uuid

import pytest

from helpers import ROOT
from sentinel import known
from test_swarm import Stack, docker, require_swarm_and_image, swarm_wait

pytestmark = pytest.mark.container

FILES = ["stack.yaml", "stack.sentinel.yaml", "tests/stack.test.yaml", "tests/stack.sentinel.test.yaml"]


def redis_cli(stack, host, *args, port=6379):
    """A redis-cli command from a container on the stack's network."""
    return docker("run", "--rm", "--network", stack.network, "redis:7", "redis-cli", "-h", host, "-p", str(port),
                  *args, timeout=60)


def address(stack, service):
    """The address of a service's one task on the stack's network."""
    found = docker("run", "--rm", "--network", stack.network, "redis:7", "getent", "hosts", f"tasks.{service}",
                   timeout=60, check=False).split()
    return found[0] if found else None


def asked_each(stack):
    return known(docker("run", "--rm", "--network", stack.network, "redis:7", "sh", "-c",
                        "for n in 1 2 3; do redis-cli -h sentinel-$n -p 26379 SENTINEL master mymaster; done",
                        timeout=60, check=False).split())


def everyone_known(stack):
    """Every sentinel knows both replicas and the two other sentinels. It learns a replica from
    the primary's INFO, asked every 10 s: a primary killed before that leaves it none to promote."""
    return asked_each(stack) == [(2, 2)] * 3


def others_known(stack):
    return [others for _, others in asked_each(stack)]


def primary(stack):
    return redis_cli(stack, "sentinel-1", "SENTINEL", "get-master-addr-by-name", "mymaster", port=26379).split()[0]


def test_the_primary_killed_on_the_swarm_the_pages_go_on_and_none_is_shown_twice():
    require_swarm_and_image()
    stack = Stack(f"fhsent{uuid.uuid4().hex[:6]}")
    try:
        docker("stack", "deploy", *(part for f in FILES for part in ("-c", os.path.join(ROOT, f))), stack.name)
        swarm_wait(lambda: stack.healthy(2) and len(stack.tasks(f"{stack.name}_sentinel-3")) == 1, 120,
                   "the stack up")
        client = stack.load(threads=2)
        swarm_wait(lambda: stack.counter() > 20, 30, "counting under load")
        swarm_wait(lambda: everyone_known(stack), 60, "every sentinel to know both replicas and each other")
        first = primary(stack)
        (old, _), = stack.tasks(stack.redis)
        # Killed, and kept away past down-after (its node gone, say): Swarm would start it again
        # within seconds, and the sentinels, still naming it, would keep it the primary.
        docker("kill", old)
        killed = time.monotonic()
        docker("service", "scale", "--detach", f"{stack.redis}=0")
        try:
            swarm_wait(lambda: primary(stack) != first, 150, "the sentinels to promote a replica")
        except AssertionError as exc:  # what the sentinels said, to tell why
            logged = ["\n".join([line for line in docker("service", "logs", "--raw", f"{stack.name}_sentinel-{n}",
                                                           check=False).splitlines()
                                  if "Failed to resolve" not in line][-40:]) for n in (1, 2, 3)]
            logged.append(" ".join(redis_cli(stack, "sentinel-1", "SENTINEL", "replicas", "mymaster",
                                             port=26379).split()))
            raise AssertionError(f"{exc}\n" + "\n---\n".join(logged)) from None
        promoted = time.monotonic() - killed
        new = primary(stack)
        replicas = [address(stack, f"redis-replica-{n}") for n in (1, 2)]
        docker("service", "scale", "--detach", f"{stack.redis}=1")
        swarm_wait(lambda: stack.tasks(stack.redis), 120, "the redis task back")
        swarm_wait(lambda: redis_cli(stack, "redis", "ROLE").split()[:2] == ["slave", new], 60,
                   "the redis task started again to follow the new primary")
        final_before = int(redis_cli(stack, new, "GET", "counter") or 0)
        swarm_wait(lambda: int(redis_cli(stack, new, "GET", "counter") or 0) > final_before, 30, "counting again")
        seen = stack.finish(client)
        # A sentinel started again elsewhere (a new task, a new address) is the same one to the
        # others: its id is made from its name, so none is left counting a voter that is gone.
        before = address(stack, "sentinel-3")
        docker("service", "update", "--force", "--detach", f"{stack.name}_sentinel-3")
        swarm_wait(lambda: address(stack, "sentinel-3") not in (before, None) and others_known(stack) == [2, 2, 2], 90,
                   "sentinel-3 back at a new address, and every sentinel counting two others")
        final = int(redis_cli(stack, new, "GET", "counter"))
    finally:
        for client_container in stack.clients:
            docker("rm", "-f", client_container, check=False)
        docker("stack", "rm", stack.name, check=False)
        swarm_wait(lambda: not docker("network", "ls", "-q", "--filter", f"name={stack.network}"), 120,
                   "the stack's removal")
        for volume in ("redis-data", "redis-replica-1", "redis-replica-2"):
            docker("volume", "rm", f"{stack.name}_{volume}", check=False)
    numbers = seen["numbers"]
    print(f"\nsentinel stack: the primary {first} killed, {new} promoted after {promoted:.1f} s; {seen['requests']} "
          f"requests, {len(numbers)} numbers shown, {seen['disabled']} pages disabled, the counter {final}")
    assert seen["failed"] == 0 and set(seen["statuses"]) == {"200"}, seen
    assert len(numbers) == len(set(numbers)), "a visit number was shown twice"
    assert max(numbers) <= final  # none shown, then lost
    assert new != first and new in replicas
