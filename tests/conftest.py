import sys

import pytest

import helpers
from fake_redis import FakeRedis
from friendlyhello import http11
from helpers import Process
from redis_server import RedisServer

# Bytecode, ours and the rewritten tests', is kept where the servers the tests start keep
# theirs (outside the checkout), even on a machine that sets PYTHONDONTWRITEBYTECODE.
sys.pycache_prefix, sys.dont_write_bytecode = helpers.PYCACHE, False


@pytest.fixture(autouse=True)
def cold_accept_cache():
    """Each test ranks Accept fields anew: a cache filled by an earlier test (or, under mutation
    testing, by the unmutated code) must not answer for this one."""
    http11._remembered_ranking.cache_clear()


@pytest.fixture(autouse=True)
def no_server_outlives_its_test():
    """Whatever a test did, each server it started (and its workers) is ended after it."""
    yield
    for proc in list(Process.running):
        proc.finish()


@pytest.fixture
def fake_redis():
    with FakeRedis() as fake:
        yield fake


@pytest.fixture
def redis_server():
    with RedisServer() as server:
        yield server
