"""Settings: every one declared in one table, read once from flags and the environment into
one immutable Config, validated before anything binds.

A bad value stops the program with one line that names the setting, shows the value (never a
secret one) and says what is allowed. A secret setting may also be read from a file named by
``NAME_FILE`` (the convention of the official database images, and how Swarm and Kubernetes
mount secrets): a flag is seen by every user of the machine in ``ps``, an environment variable
by anyone who may inspect the container. Nothing else in the package reads ``os.environ``.
"""

import collections
import os
import types
import typing

from . import values
from .faults import error_rate, latency_range
from .proxies import PROXY_MODES, Networks
from .tls import check_tls_settings


class ConfigError(Exception):
    """A setting has a value the program cannot use; the message is one line."""


class Setting(typing.NamedTuple):
    """One setting."""

    env: str                      # its environment variable
    default: object               # a text default is parsed as a value would be
    parse: typing.Callable        # text -> value; raises ValueError saying what is allowed
    help: str
    secret: bool = False          # never shown; may come from a file (NAME_FILE)
    aliases: tuple = ()           # other spellings of the variable, tried in turn

    @property
    def flag(self):
        return "--" + self.env.lower().replace("_", "-")

    @property
    def field(self):
        return self.env.lower()

    @property
    def file_env(self):
        """NAME_FILE: where a secret setting may be read from instead (None for others)."""
        return self.env + "_FILE" if self.secret else None

    @property
    def file_field(self):
        return self.file_env.lower()

    @property
    def file_flag(self):
        return self.flag + "-file"


MAX_SECRET_FILE = 64 * 1024  # bytes: a password, a token or a URL is far shorter


SETTINGS = [
    Setting("NAME", "world", values.text(256),
            "who the page greets"),
    Setting("VERSION", "1", values.version,
            "this release's name: in a header of every answer, the JSON answer, /replicas and "
            "/metrics, so a rolling update can be watched"),
    Setting("PATH_PREFIX", "", values.path_prefix,
            "a path every route is served under, such as /app (an ingress that passes it on): "
            "the probes answer at the root too, /app redirects to /app/, anything else is 404"),
    Setting("PORT", 80, values.port_or_off,
            "TCP port to serve plain HTTP on (0 picks a free one), or off to serve TLS_PORT alone"),
    Setting("BIND", "0.0.0.0", values.host,
            "address to listen on"),
    Setting("REDIS_URL", None, values.redis_url,
            "redis://[[user]:password@]host[:port][/db], rediss:// or unix:///path; replaces the "
            "four REDIS_* settings below", secret=True),
    Setting("REDIS_HOST", "redis", values.host,
            "Redis host name"),
    Setting("REDIS_PORT", 6379, values.whole(1, 65535),
            "Redis port"),
    Setting("REDIS_DB", 0, values.whole(0, 100000),
            "Redis database number"),
    Setting("REDIS_PASSWORD", None, values.secret,
            "Redis password", secret=True),
    Setting("REDIS_TIMEOUT", 2.0, values.seconds(0, 60),
            "seconds to wait for Redis to connect or reply"),
    Setting("REDIS_SENTINELS", None, values.sentinels,
            "host:port of Redis Sentinels, comma-separated: the primary is the one they name, "
            "followed through failovers (instead of REDIS_HOST and REDIS_PORT)"),
    Setting("REDIS_MASTER_NAME", "mymaster", values.text(200),
            "the name the sentinels know the primary by"),
    Setting("REDIS_SENTINEL_USERNAME", None, values.text(200),
            "the user to authenticate to the sentinels as (ACLs); needs REDIS_SENTINEL_PASSWORD"),
    Setting("REDIS_SENTINEL_PASSWORD", None, values.secret,
            "the sentinels' password (requirepass in sentinel.conf)", secret=True),
    Setting("REDIS_WAIT_REPLICAS", 0, values.wait_replicas,
            "replicas that must hold a visit (WAIT) before its page shows the number, or all "
            "(those connected); fewer: the counter disabled (not replicated); 0: no WAIT"),
    Setting("ACCESS_LOG", "on", values.choice("on", "off", "all"),
            "on: a line per request on stdout, health probes and /metrics left out; all: them too; "
            "off: none"),
    Setting("LOG_FORMAT", "text", values.choice("text", "json"),
            "text: one line of words per event; json: one JSON object per line, for log pipelines"),
    Setting("WORKERS", 1, values.workers,
            "processes serving the port, or auto: one per CPU this process may use (its affinity "
            "and cgroup quota); more than 1 adds a supervisor process"),
    Setting("MAX_CONNECTIONS", 4096, values.whole(1, 1000000),
            "open client connections at most; more wait in the listen backlog"),
    Setting("IDLE_TIMEOUT", 5.0, values.seconds(0, 3600),
            "seconds a keep-alive connection may idle, a request head may take to arrive (then "
            "408), and a client may take to read a response"),
    Setting("READY_NEEDS_REDIS", "off", values.choice("off", "on"),
            "on: /readyz answers 503 while Redis does not answer PING; off: /readyz only says how "
            "Redis is"),
    Setting("SHUTDOWN_DELAY", 0.0, values.seconds(0, 3600, low_allowed=True),
            "after SIGTERM, seconds to go on accepting and serving (with /readyz at 503) while "
            "load balancers and DNS learn that this replica is going"),
    Setting("DRAIN_TIMEOUT", 5.0, values.seconds(0, 3600),
            "then, with the port closed, seconds that requests in flight may take to finish"),
    # Where a replica runs, as Kubernetes' Downward API tells it, in the usual spellings.
    Setting("POD_NAME", None, values.text(253),
            "the pod's name, shown in the JSON answer and logs",
            aliases=("MY_POD_NAME", "KUBERNETES_POD_NAME")),
    Setting("POD_NAMESPACE", None, values.text(253),
            "the pod's namespace, shown likewise",
            aliases=("MY_POD_NAMESPACE", "KUBERNETES_NAMESPACE", "KUBERNETES_POD_NAMESPACE")),
    Setting("NODE_NAME", None, values.text(253),
            "the node's name, shown likewise", aliases=("MY_NODE_NAME", "KUBERNETES_NODE_NAME")),
    Setting("POD_IP", None, values.text(253),
            "the pod's IP address, shown likewise", aliases=("MY_POD_IP", "KUBERNETES_POD_IP")),
    Setting("TRUSTED_PROXIES", Networks(()), values.networks,
            "addresses and CIDR blocks of the proxies whose forwarded header (FORWARDED_HEADER) "
            "and PROXY headers are believed, comma-separated (default: none)"),
    Setting("FORWARDED_HEADER", "x-forwarded-for", values.forwarded_header,
            "the one header the trusted proxies write the client into: x-forwarded-for (nginx, "
            "HAProxy's option forwardfor), forwarded (RFC 7239: Envoy, Traefik, HAProxy's option "
            "forwarded), x-real-ip, or none; a proxy passes the others on as the client wrote "
            "them, so they are shown in /echo flagged, never believed"),
    Setting("PROXY_PROTOCOL", "off", values.choice(*PROXY_MODES),
            "v1, v2 or any: every connection must begin with a PROXY header (HAProxy's PROXY "
            "protocol) from one of TRUSTED_PROXIES; off: none is read"),
    Setting("TLS_PORT", None, values.whole(0, 65535),
            "a TCP port to serve HTTPS on, beside PORT; needs TLS_CERT and TLS_KEY; unset: no TLS"),
    Setting("TLS_CERT", None, values.path,
            "PEM file of the certificate, then its chain; read again within 5 s of changing, and "
            "on SIGHUP"),
    Setting("TLS_KEY", None, values.path,
            "PEM file of the certificate's private key, unencrypted (its bytes are never shown)"),
    Setting("TLS_CLIENT_CA", None, values.path,
            "PEM file of the CA certificates that client certificates must chain to"),
    Setting("TLS_CLIENT_AUTH", "off", values.choice("off", "optional", "require"),
            "client certificates: off (none asked for), optional (checked and shown in /echo if "
            "sent), require (a handshake without one fails); optional and require need "
            "TLS_CLIENT_CA"),
    Setting("MAX_BODY", 1024 * 1024, values.whole(0, 1 << 30),
            "bytes of a request body at most (POST, PUT or PATCH to /echo): a longer one is 413 "
            "and its connection closes, nothing more read"),
    Setting("BODY_TIMEOUT", 30.0, values.seconds(0, 3600),
            "seconds a request body may take to arrive whole (and IDLE_TIMEOUT between two of its "
            "reads); then 408"),
    Setting("WS_MAX_MESSAGE", 1024 * 1024, values.whole(125, 64 * 1024 * 1024),
            "bytes of one WebSocket message at most (its fragments together); more closes it "
            "with 1009"),
    Setting("WS_PING_INTERVAL", 20.0, values.seconds(0, 3600),
            "seconds between the pings each WebSocket is sent; one unanswered by the next closes "
            "it"),
    # Faults to break it on purpose (see faults.py); all off by default.
    Setting("FAULT_ERRORS", "0", error_rate,
            "a share of page requests, 0 to 1, answered with FAULT_ERROR_STATUS and counting no "
            "visit"),
    Setting("FAULT_ERROR_STATUS", 500, values.whole(400, 599),
            "the status those pages get"),
    Setting("FAULT_LATENCY", "0", latency_range,
            "seconds added to each page, or a range such as 0.1-0.5 (each page a random delay in "
            "it), at most 30"),
    Setting("FAULT_READY", "ok", values.choice("ok", "fail"),
            "fail: /readyz answers 503 from the start"),
    Setting("FAULT_LIVE", "ok", values.choice("ok", "fail"),
            "fail: /healthz and /livez answer 503 from the start, and so the image's HEALTHCHECK"),
    Setting("ADMIN_PORT", None, values.whole(0, 65535),
            "a second port, for turning faults on and off at run time (GET /faults, POST "
            "/faults/...; see the README); needs ADMIN_TOKEN; unset: no admin port"),
    Setting("ADMIN_TOKEN", None, values.token,
            "what admin requests must carry as Authorization: Bearer TOKEN", secret=True),
    Setting("NETWORK_TOOLS", "off", values.choice("off", "on"),
            "on: /dns?name=N (what a name resolves to here) and /dial?host=H&port=P (one TCP "
            "connection, 2 s at most), for looking into the network from inside; off: both 404"),
    Setting("DIAL_ALLOW", Networks(()), values.networks,
            "addresses and CIDR blocks /dial may connect to, comma-separated; every address a "
            "name resolves to must be within (default: none, so /dial answers 403)"),
    Setting("REPLICA_ID", None, values.text(253),
            "this replica's name in /replicas (default: the pod's name, else the host name; "
            "replicas that share it count as one)"),
]
_REDIS_PARTS = ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD")

# Every setting, validated; made once by load_config() and never changed.
Config = collections.namedtuple("Config", [s.field for s in SETTINGS])


def argument_parser():
    import argparse  # only for a command line with flags: see parse_arguments()

    parser = argparse.ArgumentParser(
        prog="hello_server.py",
        description="friendlyhello: Hello World! and a visit counter in Redis. Each setting is an "
                    "environment variable or the flag beside it (the flag wins).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    for s in SETTINGS:
        shown = "unset" if s.default is None else s.default
        also = f"; also read as {', '.join(s.aliases)}" if s.aliases else ""
        if s.secret:
            also += (f"; a flag is seen by every user of this machine in ps: prefer {s.env}, "
                     f"or {s.file_env} (or {s.file_flag}), a file holding it")
        parser.add_argument(s.flag, dest=s.field, metavar=s.env,
                            help=f"{s.help} (default: {shown}{also})")
        if s.secret:
            parser.add_argument(s.file_flag, dest=s.file_field, metavar=s.file_env,
                                help=f"a file that holds {s.env} (one trailing line ending "
                                     "is dropped)")
    parser.add_argument("--healthcheck", action="store_true",
                        help="ask the server at PORT for /healthz and exit 0 if healthy, else 1 "
                             "(for HEALTHCHECK in an image without curl)")
    return parser


def parse_arguments(argv):
    """The flags given. With none (as images and orchestrators start it: settings come from the
    environment) every flag is unset and argparse is never imported: importing it and building
    a parser of this many flags took a few milliseconds, a twentieth of the start."""
    if not argv:
        unset = {s.field: None for s in SETTINGS}
        unset.update({s.file_field: None for s in SETTINGS if s.secret})
        return types.SimpleNamespace(healthcheck=False, **unset)
    return argument_parser().parse_args(argv)


def secrets_in_flags(args):
    """The flags given that hold a secret (seen by every local user in ps), to warn of."""
    return [s.flag for s in SETTINGS if s.secret and vars(args)[s.field] is not None]


def _secret_from_file(setting, source, path):
    """A secret setting's text from the file ``path`` names (``source`` is the variable or
    flag that named it): its bytes as UTF-8, less one trailing line ending."""
    named = f"{source}={ascii(path)[:200]}"
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"{named}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_FILE:
        raise ConfigError(f"{named}: over {MAX_SECRET_FILE} bytes, too long for {setting.env}")
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{named} is not valid: {setting.env} must be UTF-8 text") from None


def _given(setting, args, environ):
    """Where a setting was given and its text: a flag, then the environment (its name, then
    its other spellings); for a secret, NAME_FILE's file too, never beside NAME itself.
    (None, None) when it was not given."""
    if args[setting.field] is not None:
        source, raw = setting.flag, args[setting.field]
    else:
        source = next((name for name in (setting.env, *setting.aliases) if name in environ), None)
        raw = None if source is None else environ[source]
    if not setting.secret:
        return source, raw
    if args[setting.file_field] is not None:
        file_source, path = setting.file_flag, args[setting.file_field]
    elif setting.file_env in environ:
        file_source, path = setting.file_env, environ[setting.file_env]
    else:
        return source, raw
    if source is not None:
        raise ConfigError(f"set {setting.env} or {setting.file_env}, not both")
    return file_source, _secret_from_file(setting, file_source, path)


def load_config(argv=None, environ=None, args=None):
    """Read flags (or parse_arguments()'s ``args``) and environment once; raise
    ConfigError naming the first bad value, and never showing a secret one."""
    environ = os.environ if environ is None else environ
    args = vars(args if args is not None else parse_arguments(argv))
    values, given = {}, set()
    for s in SETTINGS:
        source, raw = _given(s, args, environ)
        if source is None:  # a default given as text is read as a value would be
            values[s.field] = s.parse(s.default) if isinstance(s.default, str) else s.default
            continue
        given.add(s.env)
        try:
            values[s.field] = s.parse(raw)
        except ValueError as exc:
            shown = " is not valid:" if s.secret else f"={ascii(raw)[:80]} is not valid: expected"
            raise ConfigError(f"{source}{shown} {exc}") from None
    if "REDIS_URL" in given and given.intersection(_REDIS_PARTS):
        raise ConfigError("set REDIS_URL or REDIS_HOST/REDIS_PORT/REDIS_DB/REDIS_PASSWORD, "
                          "not both")
    if "REDIS_SENTINELS" in given and given.intersection({"REDIS_URL", "REDIS_HOST", "REDIS_PORT"}):
        raise ConfigError("set REDIS_SENTINELS or REDIS_URL/REDIS_HOST/REDIS_PORT, not both: the "
                          "sentinels say where the primary is")
    if values["redis_sentinel_username"] is not None and values["redis_sentinel_password"] is None:
        raise ConfigError("REDIS_SENTINEL_USERNAME needs REDIS_SENTINEL_PASSWORD")
    if values["proxy_protocol"] != "off" and not values["trusted_proxies"]:
        raise ConfigError("PROXY_PROTOCOL needs TRUSTED_PROXIES: the addresses of the proxies "
                          "that send it")
    if (values["admin_port"] is None) != (values["admin_token"] is None):
        raise ConfigError("ADMIN_PORT needs ADMIN_TOKEN, and ADMIN_TOKEN needs ADMIN_PORT: "
                          "set both, or neither")
    if values["dial_allow"] and values["network_tools"] != "on":
        raise ConfigError("DIAL_ALLOW needs NETWORK_TOOLS=on: /dial is off without it")
    if values["admin_port"] and values["admin_port"] == values["port"]:
        raise ConfigError(f"ADMIN_PORT={values['admin_port']} is PORT too: the admin port must "
                          "be another")
    try:
        check_tls_settings(values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return Config(**values)
