"""The tutorial's page on aiohttp + redis.asyncio: a peer in bench/workers.py only."""
import os
import socket

from aiohttp import web
from redis.asyncio import Redis, RedisError

PAGE = "<h3>Hello {name}!</h3><b>Hostname:</b> {hostname}<br/><b>Visits:</b> {visits}"


async def hello(request):
    try:
        visits = await request.app["redis"].incr("counter")
    except RedisError:
        visits = "<i>cannot connect to Redis, counter disabled</i>"
    return web.Response(text=PAGE.format(name=os.getenv("NAME", "world"), hostname=socket.gethostname(),
                                         visits=visits), content_type="text/html")


async def connect(app):
    app["redis"] = Redis(host=os.getenv("REDIS_HOST", "redis"), port=int(os.getenv("REDIS_PORT", "6379")),
                         socket_connect_timeout=2, socket_timeout=2)
    yield
    await app["redis"].aclose()


app = web.Application()
app.router.add_get("/", hello)
app.cleanup_ctx.append(connect)

if __name__ == "__main__":
    web.run_app(app, host="127.0.0.1", port=int(os.getenv("PORT", "8080")), access_log=None, print=None)
