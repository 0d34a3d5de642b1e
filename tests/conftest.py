import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_redis import FakeRedis  # noqa: E402
from redis_server import RedisServer  # noqa: E402


@pytest.fixture
def fake_redis():
    with FakeRedis() as fake:
        yield fake


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.cleanup()
