import pytest

from fake_redis import FakeRedis
from redis_server import RedisServer


@pytest.fixture
def fake_redis():
    with FakeRedis() as fake:
        yield fake


@pytest.fixture
def redis_server():
    with RedisServer() as server:
        yield server
