"""friendlyhello: the "Hello World! + visit counter" page of Docker's Get Started tutorial.

Standard library only. Each visit to ``/`` runs ``INCR counter`` on Redis (through
``resp_client``) and shows the number; when Redis cannot be reached the page says the
counter is disabled, at once, instead of hanging. Also serves ``/healthz`` and ``/livez``
(liveness), ``/readyz`` (readiness: "send me traffic"), ``/metrics`` (Prometheus),
``/replicas`` (who served how many) and JSON for clients that ask for it.

It is built on ``http.server``'s request handler, which parses each request head, with
one change to how connections are served: one thread serves all connections,
non-blocking, with a selector, and one more thread talks to Redis, sending the commands
of all waiting requests in one pipeline. Idle keep-alive connections and slow clients
therefore cost no thread, no flood of connections creates threads, and threads do not
take turns at the interpreter lock on every request. It serves small pages to demo,
learning and probe traffic; it is not a general web server (no request bodies, no TLS,
no static files).

Read top to bottom: the page and its limits; settings; the site (one route table, and
what replicas keep in Redis); the request handler (http.server's hooks); the response
bytes; a connection and its state; the Redis side; the server loop; metrics; the logs;
listening; the health check; several workers under a supervisor; main.

Run ``python3 hello_server.py --help`` for the settings.
"""

import os
import socket
import sys

from friendlyhello.healthcheck import healthcheck
from friendlyhello.listening import ListenError, _raise_file_limit, listen
from friendlyhello.logs import Log, printable
from friendlyhello.metrics import Metrics
from friendlyhello.redis_pipeline import RedisStatus, redis_client
from friendlyhello.replicas import placement
from friendlyhello.server import serve
from friendlyhello.settings import ConfigError, argument_parser, load_config
from friendlyhello.shared_memory import SharedSlots
from friendlyhello.site import Site
from friendlyhello.workers import Supervisor

# -- main --------------------------------------------------------------------------------------

def main(argv=None, environ=None):
    args = argument_parser().parse_args(argv)
    try:
        config = load_config(environ=environ, args=args)
    except ConfigError as exc:
        print(f"friendlyhello: {exc}", file=sys.stderr)
        return 2
    if args.healthcheck:
        return healthcheck(config)
    _raise_file_limit(config.max_connections + 64)
    try:
        listener = listen(config, shared_port=config.workers > 1, only_bind=config.workers > 1)
    except ListenError as exc:
        print(f"friendlyhello: {exc}", file=sys.stderr)
        return 1
    hostname = socket.gethostname()
    log = Log(config.access_log, config.log_format, {"hostname": hostname, **placement(config)})
    redis = redis_client(config)  # for its address; each worker makes its own, which connects
    shared = SharedSlots(config.workers) if config.workers > 1 else None
    # Everything that can be shared is built before any fork: the page's fixed part, the
    # encoded Redis commands, the settings. Each worker then gets its own numbers and Redis state.
    site = Site(config, RedisStatus(redis.address, log), Metrics(shared), hostname)
    host = f"[{config.bind}]" if ":" in config.bind else config.bind
    where = "".join(f", {key} {printable(value)}" for key, value in site.placement.items())
    port = listener.getsockname()[1]
    started = (f"friendlyhello listening on http://{host}:{port} "
               f"(redis {redis.address} db {redis.db}{where}{f', {config.workers} workers' if shared else ''})")
    if shared is None:
        return serve(config, site, listener, log, started=started)
    supervisor = os.getpid()

    def start_worker(slot):
        site.metrics, site.redis_status = Metrics(shared, slot), RedisStatus(redis.address, log)
        listener.close()  # the supervisor's: this worker listens on a socket of its own
        try:
            own = listen(config._replace(port=port), shared_port=True)
        except ListenError as exc:
            log.error("worker", str(exc))
            return 1
        workers.listening()
        return serve(config, site, own, log, supervisor)

    workers = Supervisor(config, log, start_worker)
    return workers.run(started)


if __name__ == "__main__":
    sys.exit(main())
