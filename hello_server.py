"""friendlyhello: the "Hello World! + visit counter" page of Docker's Get Started tutorial.

Standard library only. Each visit to ``/`` counts in Redis (through ``resp_client``) and
shows the number; when Redis cannot be reached the page says the counter is disabled, at
once, instead of hanging. Also serves ``/healthz`` and ``/livez`` (liveness), ``/readyz``
(readiness: "send me traffic"), ``/metrics`` (Prometheus), ``/replicas`` (who served how
many, by version), ``/echo`` (what arrived, and from whom), ``/status/CODE`` and
``/delay/SECONDS`` (to test clients and proxies), streams (``/bytes/N``, ``/stream/N``,
``/drip``, ``/sse``: what a proxy buffers and cuts), and JSON for clients that ask for it.
``python3 hello_server.py watch URL`` is a client that counts a rolling update.

It is built on ``http.server``'s request handler, which parses each request head, with one
change to how connections are served: one thread serves all connections, non-blocking, with
a selector, and one more thread talks to Redis, sending the commands of all waiting requests
in one round trip. It serves small pages to demo, learning and probe traffic; it is not a
general web server (no static files; request bodies only at ``/echo``, summed up). With
TLS_PORT it serves HTTPS too, from the same loop (``friendlyhello.tls``).

This module is what runs (``python3 hello_server.py``, ``python3 -m hello_server``): the
routes, how one serving process is wired, and ``main``. The machinery is in the package
``friendlyhello``, a module per job; its docstring lists them in the order they import.

Run ``python3 hello_server.py --help`` for the settings.
"""

import os
import signal
import socket
import sys

import resp_client
from friendlyhello.connection import Port
from friendlyhello.echo import Echo
from friendlyhello.faults import Faults
from friendlyhello.healthcheck import healthcheck
from friendlyhello.lifecycle import Lifecycle
from friendlyhello.listening import ListenError, listen, raise_file_limit
from friendlyhello.logs import Log, printable
from friendlyhello.metrics import Metrics
from friendlyhello.network_tools import NetworkTools
from friendlyhello.redis_state import RedisStatus
from friendlyhello.redis_thread import RedisThread, describe_redis, redis_client
from friendlyhello.replicas import identity, placement, replica_commands
from friendlyhello.responses import CommonHeaders
from friendlyhello.routes import Route, RouteTable
from friendlyhello.server import HelloServer, Waker
from friendlyhello.settings import ConfigError, load_config, parse_arguments, secrets_in_flags
from friendlyhello.site import Site
from friendlyhello.streams import StreamRoutes
from friendlyhello.tls import TLSFiles, TLSSetupError
from friendlyhello.websocket import Upgrade
from friendlyhello.workers import HELD_SIGNALS, Supervisor

PING = resp_client.encode_command(("PING",))


def route_table(config, site, echo, commands, upgrade, streams, tools=None):
    """Every path the server answers: the Site's answer, the Redis command sent first (none
    when unset), whether a GET counts a visit (a HEAD never does), and whether it is a probe
    (left out of the access log by default). A path ending in "/" takes the rest of the path
    as its argument. Anything else is 404; methods but GET and HEAD, 405 (but POST, PUT and
    PATCH where a route takes a body). /dns and /dial are there only with ``tools``
    (NETWORK_TOOLS=on), their work done off the loop."""
    ready_command = PING if config.ready_needs_redis == "on" else None
    rows = {
        "/":         Route(site.page, commands.one_visit, counts_visit=True, gate=site.page_gate),
        "/healthz":  Route(site.livez, probe=True),
        "/livez":    Route(site.livez, probe=True),
        "/readyz":   Route(site.readyz, ready_command, probe=True),
        "/metrics":  Route(site.metrics_page, probe=True),
        "/replicas": Route(site.replicas, commands.view),
        "/echo":     Route(echo.answer, takes_body=True),  # POST, PUT, PATCH: what the body was
        "/status/":  Route(site.status),  # /status/418
        "/delay/":   Route(site.delay),   # /delay/1.5
        "/ws":       Route(upgrade.answer),  # WebSocket: greets, echoes, ?ticks=S
        "/bytes/":   Route(streams.bytes),   # /bytes/1048576: exactly that many; a Range too
        "/stream/":  Route(streams.lines),   # /stream/20: JSON lines, a chunk each
        "/drip":     Route(streams.drip),    # ?bytes=N&duration=S&delay=D
        "/sse":      Route(streams.events),  # server-sent events: ?count=N&interval=S
    }
    if tools is not None:
        rows["/dns"] = Route(tools.dns_answer, gate=tools.dns_gate, work=tools.dns_work)
        rows["/dial"] = Route(tools.dial_answer, gate=tools.dial_gate, work=tools.dial_work)
    return RouteTable(rows, config.path_prefix)  # under PATH_PREFIX; the probes at the root too


def wire(config, ports, log, hostname, shared=None, slot=0, supervisor_pid=None, faults=None):
    """One serving process on its ``ports`` (connection.Ports, from open_ports()), built from
    the settings: its identity and Redis commands, Redis client and state, metrics (a slot of
    ``shared``, in a worker), faults (in a worker, the supervisor's, shared), the site and its
    routes, the Redis thread and the server loop. Used by main, by each worker and by the
    tests."""
    me = identity(config, hostname)
    faults = faults or Faults(config)
    if faults.state.words():
        log.warning("faults", f"on from the start: {faults.state.words()}")
    commands = replica_commands(me)
    client = redis_client(config)
    status = RedisStatus(client.address, log)
    metrics = Metrics(shared, slot, log, config.version)
    metrics.tls_files = next((port.tls for port in ports if port.tls), None)
    lifecycle = Lifecycle()
    site = Site(config, me, status, metrics, lifecycle, faults)
    waker = Waker()

    def heartbeat():
        return commands.heartbeat(faults.state.words())

    redis_thread = RedisThread(client, status, metrics, heartbeat, waker.wake, log,
                               commands.visit_commands, config.redis_wait_replicas)
    lifecycle.needs("redis", redis_thread.is_alive)
    tools = None
    if config.network_tools == "on":
        tools = NetworkTools(me, config.dial_allow, waker.wake, metrics)
    routes = route_table(config, site, Echo(config, me), commands, Upgrade(config, me),
                         StreamRoutes(me), tools)
    headers = CommonHeaders(me.replica_id, config.version)
    return HelloServer(config, routes, redis_thread, waker, metrics, lifecycle, ports, log,
                       headers, faults, supervisor_pid, tools)


def open_admin(config, listener, faults, log, changed=lambda: None, crash=os._exit, tls=None):
    """The admin port, on ``listener``: a thread of its own that sets ``faults`` (then calls
    ``changed``, to wake the serving loop) and, asked to crash, calls ``crash(code)``: in a
    single process, the process exits; with workers, the supervisor ends them all and exits.
    With ``tls`` (TLSFiles) it serves HTTPS alone: its token must not cross a network in clear."""
    from friendlyhello.admin import AdminPort  # hashlib, hmac: only where there is an admin port

    admin = AdminPort(listener, config.admin_token, faults, log, changed, crash, tls)
    admin.start()
    return admin


def serve(server, log, started=None, worker=False):
    """Serve until a signal ends it: a process on its own (saying ``started`` once its signals
    are set), or a worker of a Supervisor. A second signal ends it at once."""
    stops = []

    def on_signal(signum, frame):
        stops.append(signum)
        if len(stops) > 1:  # asked twice: stop waiting for the delay or in-flight requests
            os._exit(1)
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    # A worker leaves Ctrl-C to the supervisor, which passes it on once, as SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN if worker else on_signal)
    if server.tls is not None:  # SIGHUP: read the certificate and key again
        signal.signal(signal.SIGHUP, lambda signum, frame: reload_asked(server.tls, server.waker))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)  # blocked in a worker until now
    if started:
        log.started(started)
    server.serve()
    log.close()
    return 0


def reload_asked(tls, waker=None):
    tls.asked = True
    if waker is not None:
        waker.wake()


def start_line(config, ports, admin, where):
    """The line that says the server listens: where, Redis, where it runs, workers, admin."""
    host = f"[{config.bind}]" if ":" in config.bind else config.bind
    urls = " and ".join(f"{'https' if port.tls else 'http'}://{host}:{port.sock.getsockname()[1]}"
                        for port in ports)
    details = [f"redis {describe_redis(config)}"]
    details += [f"{key} {printable(value)}" for key, value in where.items()]
    if config.workers > 1:
        details.append(f"{config.workers} workers")
    if admin is not None:
        details.append(f"admin port {admin.getsockname()[1]}")
    return f"friendlyhello listening on {urls} ({', '.join(details)})"


def main(argv=None, environ=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["watch"]:  # the client, not the server
        from friendlyhello import watch
        return watch.main(argv[1:])
    args = parse_arguments(argv)
    try:
        config = load_config(environ=environ, args=args)
    except ConfigError as exc:
        print(f"friendlyhello: {exc}", file=sys.stderr)
        return 2
    if args.healthcheck:
        return healthcheck(config)
    try:
        tls = TLSFiles(config) if config.tls_port is not None else None
    except TLSSetupError as exc:
        print(f"friendlyhello: {exc}", file=sys.stderr)
        return 2
    raise_file_limit(config.max_connections + 64)
    workers = config.workers > 1
    try:
        ports = open_ports(config, tls, shared_port=workers, only_bind=workers)
        admin = None
        if config.admin_port is not None:
            admin = listen(config._replace(port=config.admin_port), "ADMIN_PORT")
    except ListenError as exc:
        print(f"friendlyhello: {exc}", file=sys.stderr)
        return 1
    hostname = socket.gethostname()
    where = placement(config)
    log = Log(config.access_log, config.log_format, {"hostname": hostname, **where})
    for flag in secrets_in_flags(args):
        env = flag[2:].upper().replace("-", "_")
        log.warning("settings", f"{flag} is seen by every user of this machine in ps: "
                                f"set {env} or {env}_FILE instead")
    if tls is not None:
        tls.log = log
        if tls.expired():  # served all the same, as nginx does: a demo may show what a client says
            log.warning("tls", f"the certificate has expired: {tls.describe()}")
    started = start_line(config, ports, admin, where)
    if workers:
        return serve_workers(config, ports, admin, log, hostname, started, tls)
    server = wire(config, ports, log, hostname)
    if admin is not None:
        open_admin(config, admin, server.faults, log, server.waker.wake, tls=tls)
    return serve(server, log, started)


def open_ports(config, tls, shared_port=False, only_bind=False):
    """PORT (unless off) and TLS_PORT (with ``tls``, its TLSFiles), listening: Ports."""
    ports = []
    if config.port is not None:
        ports.append(Port(listen(config, shared_port=shared_port, only_bind=only_bind)))
    if tls is not None:
        tls_config = config._replace(port=config.tls_port)
        ports.append(Port(listen(tls_config, "TLS_PORT", shared_port, only_bind), tls))
    return ports


def serve_workers(config, ports, admin, log, hostname, started, tls):
    """WORKERS processes on the port, under a supervisor (this process), which serves the
    admin port: the faults it sets are shared with every worker."""
    from friendlyhello.shared_memory import SharedSlots  # mmap: only where there are workers

    shared = SharedSlots(config.workers)
    supervisor_pid = os.getpid()
    bound = [port.sock.getsockname()[1] for port in ports]  # PORT=0: the port picked
    numbers = config._replace(port=None if config.port is None else bound[0],
                              tls_port=None if tls is None else bound[-1])
    faults = Faults(config, shared=SharedSlots(1))  # the supervisor's: it writes, workers read
    faults.set(faults.state)

    def start_worker(slot, listening):
        for port in ports:
            port.sock.close()  # the supervisor's: this worker listens on sockets of its own
        if admin is not None:
            admin.close()  # the supervisor serves it
        try:
            own = open_ports(numbers, tls, shared_port=True)
        except ListenError as exc:
            log.error("worker", str(exc))
            return 1
        listening()
        worker_faults = Faults(config, shared=faults.shared)
        server = wire(config, own, log, hostname, shared, slot, supervisor_pid, worker_faults)
        return serve(server, log, worker=True)

    supervisor = Supervisor(config, log, start_worker)
    if tls is not None:  # SIGHUP: the supervisor's admin port reloads, and every worker
        signal.signal(signal.SIGHUP, lambda signum, frame: (reload_asked(tls),
                                                            supervisor.pass_on(signal.SIGHUP)))
    if admin is not None:
        open_admin(config, admin, faults, log, crash=supervisor.crash, tls=tls)
    code = supervisor.run(started)
    log.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
