"""The Redis client behind Sentinel: it asks the sentinels which server is the primary, checks
its ROLE, and follows a failover, whether asked for (SENTINEL FAILOVER) or forced by the
primary's death; with real redis-servers and sentinels on loopback."""

import time

import pytest

import resp_client
from sentinel import MASTER, Replicated, call


@pytest.fixture(scope="module")
def replicated():
    with Replicated() as servers:
        yield servers


def client_of(servers, sentinels=None, **options):
    return resp_client.RespClient(sentinels=sentinels or servers.addresses, master_name=MASTER,
                                  connect_timeout=0.5, timeout=0.5, max_connections=2, **options)


def test_the_client_finds_the_primary_through_the_first_sentinel_that_answers(replicated):
    dead = ("127.0.0.1", 1)  # nothing listens: skipped, asked last next time
    with client_of(replicated, [dead, *replicated.addresses]) as client:
        value = client.incr("sentinel-test")
        host, port, since = client.primary
        order = list(client._connector.sentinels)
    assert value >= 1 and (host, port) == ("127.0.0.1", replicated.primary())
    assert time.time() - since < 60 and order[0] != dead
    assert "the primary of mymaster" in repr(client)


def test_a_master_name_no_sentinel_knows_is_a_connection_error_naming_it(replicated):
    with resp_client.RespClient(sentinels=replicated.addresses, master_name="nosuch", connect_timeout=0.5,
                                timeout=0.5) as client, pytest.raises(resp_client.RedisConnectionError) as refused:
        client.incr("x")
    assert "no sentinel named the primary of nosuch" in str(refused.value)
    assert "knows no primary named nosuch" in str(refused.value)


def test_after_a_failover_the_client_writes_to_the_new_primary_never_the_demoted_one(replicated):
    with client_of(replicated) as client:
        before = client.incr("followed")
        old = client.primary[1]
        new = replicated.failover()
        deadline, errors, value = time.monotonic() + 15, [], None
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                value = client.incr("followed")
                if client.primary[1] == new:
                    break
            except resp_client.RedisError as exc:
                errors.append(type(exc).__name__)
            assert time.monotonic() - started < 1.2  # never past the timeouts
            time.sleep(0.05)
        primary = client.primary
    assert new != old and primary[1] == new and value > before
    assert int(call(new, "GET", "followed")) == value  # written to the new primary
    assert call(old, "ROLE")[0] in ("slave", b"slave")  # the old one, a replica now
