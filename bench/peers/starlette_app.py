"""The tutorial's page on Starlette + redis.asyncio, for uvicorn: a peer in bench/workers.py only."""
import os
import socket

from redis.asyncio import Redis, RedisError
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

redis = Redis(host=os.getenv("REDIS_HOST", "redis"), port=int(os.getenv("REDIS_PORT", "6379")),
              socket_connect_timeout=2, socket_timeout=2)
PAGE = "<h3>Hello {name}!</h3><b>Hostname:</b> {hostname}<br/><b>Visits:</b> {visits}"


async def hello(request):
    try:
        visits = await redis.incr("counter")
    except RedisError:
        visits = "<i>cannot connect to Redis, counter disabled</i>"
    return HTMLResponse(PAGE.format(name=os.getenv("NAME", "world"), hostname=socket.gethostname(), visits=visits))


app = Starlette(routes=[Route("/", hello)])
