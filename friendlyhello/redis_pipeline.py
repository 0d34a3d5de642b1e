
import collections
import threading
import time

import resp_client

MAX_PIPELINE = 256           # Redis commands sent in one round trip at most
HEARTBEAT_INTERVAL = 3.0     # how often a replica tells Redis it is alive


def redis_client(config):
    timeouts = dict(connect_timeout=config.redis_timeout, timeout=config.redis_timeout,
                    max_connections=1)  # one Redis thread, one connection
    if config.redis_url is not None:
        return resp_client.RespClient.from_url(config.redis_url, **timeouts)
    return resp_client.RespClient(config.redis_host, config.redis_port, db=config.redis_db,
                                  password=config.redis_password, **timeouts)


def outage_reason(error):
    """Why Redis cannot be used, in a few words; the error that opened an outage, if any."""
    error = error.cause or error
    if isinstance(error, resp_client.RedisTimeoutError):
        return "timeout"
    if isinstance(error, resp_client.AuthenticationError):
        return "authentication failed"
    if isinstance(error, resp_client.ResponseError):
        return f"error {error.code}"
    if isinstance(error, resp_client.ProtocolError):
        return "protocol error"
    return "cannot connect"


def short_reason(error):
    """What the JSON answer says of Redis for one visit."""
    if error is None:
        return "ok"
    if error.command_sent and not isinstance(error, resp_client.ResponseError):
        return "no reply (the visit may have counted)"
    return outage_reason(error)


# -- the Redis side ----------------------------------------------------------------------------

class RedisPipeline:
    """One thread sends the commands of all waiting requests to Redis in one pipeline (one
    round trip for many pages) and hands each reply back to the serving thread, which it
    wakes with ``wake()``. Redis's timeout bounds each trip. Every HEARTBEAT_INTERVAL it
    sends this replica's heartbeat too (with a batch, or alone). It notes Redis's state, and
    counts replies by outcome and batch sizes for /metrics."""

    def __init__(self, client, site, wake):
        self.client, self.status, self.metrics, self._wake = client, site.redis_status, site.metrics, wake
        self._heartbeat = site.heartbeat
        self._waiting = []                   # (connection, command) to send
        self._changed = threading.Condition()
        self._replies = collections.deque()  # (connection, reply, error) to hand back
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="redis", daemon=True)

    def start(self):
        self._thread.start()

    def submit(self, conn, command):
        with self._changed:
            self._waiting.append((conn, command))
            self._changed.notify()

    def replies(self):
        """The replies that came back since the last call, oldest first (serving thread)."""
        while self._replies:
            yield self._replies.popleft()

    def stop(self):
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._thread.join(self.client.timeout * 2 + 1)

    def _run(self):
        next_heartbeat = time.monotonic()
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting or self._stopping,
                                       max(next_heartbeat - time.monotonic(), 0))
                if self._stopping:
                    return
                batch, self._waiting = self._waiting[:MAX_PIPELINE], self._waiting[MAX_PIPELINE:]
            beat = time.monotonic() >= next_heartbeat
            if beat:
                next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL
            commands = [self._heartbeat] * beat + [command for _, command in batch]
            try:
                replies = self.client.pipeline(commands)[beat:]  # the heartbeat's own reply: not needed
                errors = [r if isinstance(r, resp_client.ResponseError) else None for r in replies]
                self.status.answered()
            except resp_client.RedisError as exc:
                replies, errors = [None] * len(batch), [exc] * len(batch)
                self.status.failed(exc)
            except Exception as exc:  # noqa: BLE001 - a bug of ours: each request answers 500, the thread lives on
                replies, errors = [None] * len(batch), [exc] * len(batch)
            if not batch:
                continue
            self.metrics.pipeline_sizes.observe((), len(batch))
            for error in errors:
                self.metrics.redis_replies[reply_outcome(error)] += 1
            self._replies.extend((conn, reply, error) for (conn, _), reply, error
                                 in zip(batch, replies, errors, strict=True))
            self._wake()


def reply_outcome(error):
    """How a Redis call ended, in the words of friendlyhello_redis_replies_total."""
    if error is None:
        return "ok"
    if isinstance(error, resp_client.ResponseError):
        return "error_reply"
    if error.command_sent:
        return "no_reply"
    return "timeout" if isinstance(error, resp_client.RedisTimeoutError) else "cannot_connect"


class RedisStatus:
    """Whether Redis answers, logged once at each change: up, down with the reason, back.

    An outage logs one line however many pages it touches; a new reason while it lasts
    (refused, then a wrong password) logs one more. Called from the Redis thread only.
    """

    def __init__(self, address, log):
        self.address, self._log = address, log
        self.reason = None       # why Redis is down; None while it answers (or before it is tried)
        self._down_since = None
        self._seen_up = False

    def describe(self):
        """How Redis is, in a few words (for /readyz; any thread)."""
        reason, since = self.reason, self._down_since
        if reason is not None:
            return f"unavailable ({reason}) for {time.monotonic() - since:.1f}s"
        return "up" if self._seen_up else "not asked yet"

    def answered(self):
        if self.reason is None and self._seen_up:
            return
        if self.reason is not None:
            self._log.error("redis", f"{self.address} is back after "
                                     f"{time.monotonic() - self._down_since:.1f}s")
        else:
            self._log.error("redis", f"{self.address} is up: visits are counted")
        self.reason, self._down_since, self._seen_up = None, None, True

    def failed(self, error):
        if isinstance(error, resp_client.ResponseError) and not isinstance(error, resp_client.AuthenticationError):
            self.answered()  # an error reply is still an answer
            return
        reason = outage_reason(error)
        if reason == self.reason:
            return
        if self._down_since is None:
            self._down_since = time.monotonic()
        self.reason = reason
        self._log.error("redis", f"{self.address} is unavailable ({reason}): {error.cause or error}"
                                 " - pages say the counter is disabled until it answers again")
