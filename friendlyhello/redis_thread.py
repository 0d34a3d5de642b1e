"""The Redis side's thread, and the client it talks through: the one the settings describe.

The serving thread never talks to Redis: it submits the commands of each turn of its loop
together, each with the request waiting for it, and takes the replies back when this thread
wakes it. This thread must outlive any error, ours included: a request waiting on it has a
deadline of its own in the server, and liveness reports a dead thread.
"""
import collections
import threading
import time

import resp_client

from .redis_state import NotReplicated, outcome

MAX_COMMANDS = 256        # Redis commands sent in one round trip at most
HEARTBEAT_INTERVAL = 3.0  # how often a replica tells Redis it is alive
REPLICA_GRACE = 10.0      # "all": how long a replica that left the primary is still waited for
ROLE_EVERY = 1.0          # "all": how often ROLE goes with a WAIT (at once after one fell short)
_ROLE = resp_client.encode_command(("ROLE",))
_UNKNOWN = 1 << 16  # replicas, when ROLE does not say: no visit is taken as replicated


def _connected(role):
    """How many replicas a primary's ROLE reply names connected, and at least one: a visit that
    no replica holds (an old primary left alone, say) is not replicated to "all" of them."""
    if isinstance(role, list) and len(role) > 2 and isinstance(role[2], list):
        return max(len(role[2]), 1)
    return _UNKNOWN


def redis_options(config):
    """Where Redis is and how to talk to it, as RespClient's keyword arguments: REDIS_URL's
    parts, or the REDIS_* settings; one Redis thread per process, so one connection."""
    if config.redis_url is not None:
        where = resp_client.parse_url(config.redis_url)
    else:
        where = dict(host=config.redis_host, port=config.redis_port, db=config.redis_db,
                     password=config.redis_password)
    timeouts = {"connect_timeout": config.redis_timeout, "timeout": config.redis_timeout}
    if config.redis_sentinels:  # the primary is the one they name, wherever that is
        where = {"db": config.redis_db, "password": config.redis_password,
                 "sentinels": config.redis_sentinels, "master_name": config.redis_master_name,
                 "sentinel_username": config.redis_sentinel_username,
                 "sentinel_password": config.redis_sentinel_password}
    return {**where, **timeouts, "max_connections": 1}


def redis_client(config):
    return resp_client.RespClient(**redis_options(config))


def describe_redis(config):
    """Redis's address and database, for the start-up line."""
    options = redis_options(config)
    if config.redis_sentinels:
        named = ",".join(resp_client.address_of(h, p) for h, p in config.redis_sentinels)
        return f"the primary of {config.redis_master_name} (sentinels {named}) db {options['db']}"
    address = resp_client.address_of(options.get("host", "redis"), options.get("port"),
                                     options.get("unix_socket"))
    return f"{address} db {options['db']}"


class RedisThread:
    """One thread sends the commands of all waiting requests to Redis in one round trip (many
    pages' commands together) and hands each reply back to the serving thread, which it
    wakes with ``wake()``. Redis's timeout bounds each round trip. Every HEARTBEAT_INTERVAL it
    sends this replica's heartbeat too (with other commands, or alone): the command ``heartbeat()``
    gives then. It notes Redis's state in ``status``, and counts replies by outcome and round
    trip sizes in ``metrics``.

    The visits of a round trip go as one command: ``visit_commands`` (a
    replicas.VisitCommands) makes the command
    of one visit and of n, and reads its reply: the counter's new value V, and the n pages
    take the numbers V-n+1 ... V in the order they came. One transaction, one write to the
    append-only file and one reply for them all: Redis's work per visit falls as load rises."""

    def __init__(self, client, status, metrics, heartbeat, wake, log, visit_commands=None,
                 wait_replicas=0):
        self.client = client
        self._replication = ReplicaWait(wait_replicas, max(1, int(client.timeout * 500)), metrics)
        self.status = status
        self.metrics = metrics
        self._heartbeat = heartbeat
        self._wake = wake
        self._log = log
        self._visit_commands = visit_commands
        self._one_visit = visit_commands.one if visit_commands is not None else None
        self._waiting = []                   # (request, command) to send
        self._changed = threading.Condition()
        self._replies = collections.deque()  # (request, reply, error) to hand back
        self._under_way = False              # a round trip (or a connect) is under way
        self._last_error = None              # what made Redis unavailable, while it is
        self._refused = collections.deque()  # outcomes of requests answered at once
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="redis", daemon=True)

    def start(self):
        self._thread.start()

    def is_alive(self):
        return self._thread.is_alive()

    def submit(self, requests):
        """Send the commands of these ``(request, command)`` pairs (a request is any object:
        it comes back with its reply). The serving thread submits a turn's requests at once:
        one wake-up of this thread for them all, and they share a round trip. While Redis is
        unavailable and a round trip is under way (a connect that may take its whole timeout),
        they are not held behind it: each is answered at once, Redis unavailable."""
        if self._under_way and not self.status.up:
            error = resp_client.RedisConnectionError(
                f"{self.status.address} is unavailable (its last error: {self._last_error})")
            error.cause = self._last_error
            self._refused.extend(outcome(error) for _ in requests)
            self._hand_back(requests, [None] * len(requests), [error] * len(requests))
            return
        with self._changed:
            self._waiting += requests
            self._changed.notify()

    def replies(self):
        """The replies that came back since the last call, oldest first (serving thread)."""
        while self._replies:
            yield self._replies.popleft()

    STOP_WAIT = 0.2  # how long stop() waits for a round trip under way; the thread is a daemon

    def stop(self):
        """Stop the thread and close the client. A round trip under way (a silent Redis, a request
        past the drain) is not waited for beyond STOP_WAIT: the process must stop at once."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self._thread.ident is not None:
            self._thread.join(self.STOP_WAIT)
        self.client.close()

    def _run(self):
        next_heartbeat = time.monotonic()
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting or self._stopping,
                                       max(next_heartbeat - time.monotonic(), 0))
                if self._stopping:
                    return
                requests, self._waiting = self._waiting[:MAX_COMMANDS], self._waiting[MAX_COMMANDS:]
                self._under_way = True
            heartbeat = []
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL
                heartbeat = [self._heartbeat()]
            # A bug of ours must not end the thread: it is logged, and the thread goes on.
            try:
                self._send(heartbeat, requests)
            except Exception as exc:  # noqa: BLE001
                self._log.error("redis", f"internal error in the Redis thread: {exc!r}")
                self._hand_back(requests, [None] * len(requests), [exc] * len(requests))
            finally:
                self._under_way = False
            while self._refused:  # counted here: the metrics are this thread's to change
                self.metrics.redis_reply(self._refused.popleft())

    def _send(self, heartbeat, requests):
        commands, merged = self._commands(requests)
        try:
            waits = self._replication.commands(self.client, requests, self._one_visit)
            replies = self.client.pipeline(heartbeat + commands + waits)
            if heartbeat:
                self.status.heartbeat(replies[0])
                replies = replies[1:]
            if waits:  # the replicas that acknowledged (and, at times, the primary's ROLE)
                replies, answers = replies[:-len(waits)], replies[-len(waits):]
                acked, role = answers[0], answers[1] if len(answers) > 1 else None
            replies = self._per_request(requests, replies, merged)
            if waits:
                replies = self._replication.replicated(requests, replies, acked, role,
                                                       self._one_visit)
            errors = [r if isinstance(r, resp_client.RedisError) else None for r in replies]
            self.status.answered()
        except resp_client.RedisError as exc:
            replies, errors = [None] * len(requests), [exc] * len(requests)
            self._last_error = exc.cause or exc  # first: submit() reads it once Redis is not up
            self.status.failed(exc)
            self._replication.forget()  # another primary, maybe
        if self.status.primary_in_use(self.client.primary):
            self.metrics.primary_changes += 1
            self._replication.forget()  # the new primary's replicas, asked anew
        if requests:
            self.metrics.round_trip_sizes.observe((), len(requests))
            for error in errors:
                self.metrics.redis_reply(outcome(error))
            self._hand_back(requests, replies, errors)

    def _commands(self, requests):
        """What to send for a round trip's requests: their commands in order, but two visits or
        more as one command, first. Also how many visits that one command counts (0: none was
        merged)."""
        merged = 0
        if self._one_visit is not None:
            merged = sum(1 for _, command in requests if command is self._one_visit)
        if merged < 2:
            return [command for _, command in requests], 0
        others = [command for _, command in requests if command is not self._one_visit]
        return [self._visit_commands.of(merged), *others], merged

    def _per_request(self, requests, replies, merged):
        """The replies in the requests' order, a visit's as the counter's value (or why it has
        none), the merged visits' numbers spread over their pages."""
        if not merged:
            return [self._counted(reply, 1) if command is self._one_visit else reply
                    for (_, command), reply in zip(requests, replies, strict=True)]
        total, rest = self._counted(replies[0], merged), iter(replies[1:])
        numbers = iter(range(total - merged + 1, total + 1)) if type(total) is int else None
        answers = []
        for _, command in requests:
            if command is not self._one_visit:
                answers.append(next(rest))
            else:  # its own number, or why there is none
                answers.append(total if numbers is None else next(numbers))
        return answers

    def _counted(self, reply, n):
        """The counter's value after these n visits, or why it has none; where only the replica's
        count rose, it is taken back at once (one more round trip, only then)."""
        counter, take_back = self._visit_commands.read(reply, n)
        if take_back is not None:
            try:
                answer = self.client.pipeline([take_back])[0]
                if isinstance(answer, resp_client.ResponseError):
                    raise answer
            except resp_client.RedisError as exc:
                self._log.warning("redis", f"this replica's count stays {n} too high: the "
                                           "counter refused its visits, and taking them back "
                                           f"failed: {exc}")
        return counter

    def _hand_back(self, requests, replies, errors):
        if requests:
            self._replies.extend((request, reply, error) for (request, _), reply, error
                                 in zip(requests, replies, errors, strict=True))
            self._wake()


class ReplicaWait:
    """REDIS_WAIT_REPLICAS: the WAIT sent after a round trip's visits, and what its reply says of
    them. ``wanted`` is a number, or "all": the replicas the primary's ROLE names connected, at
    least one, and one that left still waited for during REPLICA_GRACE; ROLE goes with a WAIT
    once every ROLE_EVERY (it costs the primary as much as the WAIT), and with the next one
    after a WAIT fell short. WAIT waits ``wait_ms`` at most."""

    def __init__(self, wanted, wait_ms, metrics):
        self._wanted, self._wait_ms, self._metrics = wanted, wait_ms, metrics
        self._known = self._fewer_since = None  # "all": how many; since when fewer
        self._role_at = 0.0  # when ROLE was last asked

    def forget(self):
        """Another primary, maybe: its replicas are asked anew."""
        self._known = self._fewer_since = None
        self._role_at = 0.0

    def commands(self, client, requests, one_visit):
        """WAIT (and, at times, ROLE) after a round trip that has visits (``one_visit`` is the
        command of one); else nothing."""
        if not self._wanted or not any(command is one_visit for _, command in requests):
            return []
        if self._wanted != "all":
            return [("WAIT", self._wanted, self._wait_ms)]
        now = time.monotonic()
        if self._known is None:  # ask, once
            self._known, self._role_at = _connected(client.pipeline([_ROLE])[0]), now
        wait = ("WAIT", self._known, self._wait_ms)
        if now - self._role_at < ROLE_EVERY:
            return [wait]
        self._role_at = now
        return [wait, _ROLE]

    def _needed(self):
        return self._known if self._wanted == "all" else self._wanted

    def replicated(self, requests, replies, acked, role, one_visit):
        """The visits' numbers, or NotReplicated where fewer replicas than needed hold them
        (``role`` is the primary's ROLE reply, where it was asked)."""
        if self._wanted == "all" and role is not None:
            self._known = self._all_of(_connected(role))
        needed = self._needed()
        if not isinstance(acked, int):  # an error reply to WAIT: nothing known of the replicas
            acked = -1
        self._metrics.replicas_acknowledged.observe((), max(acked, 0))
        if acked >= needed:
            return replies
        self._role_at = 0.0  # a replica gone, maybe: ROLE with the next WAIT
        error = NotReplicated(f"{max(acked, 0)} of {needed} replicas acknowledged the visits")
        return [error if command is one_visit and type(reply) is int else reply
                for (_, command), reply in zip(requests, replies, strict=True)]

    def _all_of(self, connected):
        """The replicas "all" is, the primary's ROLE saying ``connected``: one that left is
        still waited for during REPLICA_GRACE (an old primary just replaced, its replicas
        leaving one by one, shows no number they do not all hold); after it, those connected."""
        known = self._known
        if known is None or connected >= known:
            self._fewer_since = None
            return connected
        now = time.monotonic()
        if self._fewer_since is None:
            self._fewer_since = now
        return connected if now - self._fewer_since > REPLICA_GRACE else known
