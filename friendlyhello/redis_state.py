"""What Redis's answers mean: one vocabulary for how a call for a request ended (in
/metrics, on the page, in the log and in /readyz alike), and Redis's state, logged once per
change. Nothing here talks to Redis.
"""

import time

import resp_client

# -- how a Redis call for a request ended: the one vocabulary ---------------------------------

# The outcomes, as friendlyhello_redis_replies_total labels them: "ok", "no_reply", or the words
# of why_unavailable() as a label ("error_reply" for every error reply, whatever its code).
OUTCOMES = ("ok", "timeout", "cannot_connect", "no_reply", "error_reply", "authentication_failed",
            "protocol_error", "not_replicated")
NO_REPLY = "no reply (the visit may have counted)"
NOT_REPLICATED = "not replicated"


class NotReplicated(resp_client.RedisError):
    """The primary counted the visit, but fewer replicas than REDIS_WAIT_REPLICAS said they hold
    it: its number is not shown (a failover could lose it, and show it again). An answer, not
    Redis unavailable."""

    command_sent = True


def outcome(error):
    """One of OUTCOMES: how a call ended (``error`` None when it was answered). A call refused
    at once while Redis is unavailable is named by what made it so, as the page names it."""
    if error is None:
        return "ok"
    if isinstance(error, NotReplicated):
        return "not_replicated"
    if error.command_sent and resp_client.means_unavailable(error):
        return "no_reply"  # the command left: Redis may have run it
    reason = why_unavailable(error)
    return "error_reply" if reason.startswith("error ") else reason.replace(" ", "_")


def why_unavailable(error):
    """Why Redis cannot be used, in a few words: the error that made it unavailable, if any, and
    what that one says it came from (a setup command's error reply)."""
    while error.cause is not None:
        error = error.cause
    if isinstance(error, resp_client.RedisTimeoutError):
        return "timeout"
    if isinstance(error, resp_client.AuthenticationError):
        return "authentication failed"
    if isinstance(error, resp_client.ResponseError):
        return f"error {error.code}"
    if isinstance(error, resp_client.ProtocolError):
        return "protocol error"
    return "cannot connect"


def visit_words(error):
    """What a page says of Redis for one visit: ok, no reply, or why it could not count."""
    kind = outcome(error)
    if kind == "ok":
        return "ok"
    if kind == "not_replicated":
        return NOT_REPLICATED
    return NO_REPLY if kind == "no_reply" else why_unavailable(error)


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _address(primary):
    return resp_client.address_of(primary[0], primary[1])


class RedisStatus:
    """Whether Redis answers, logged once at each change: up, unavailable with the reason, back.

    Being unavailable logs one line however many pages it touches; a new reason while it lasts
    (refused, then a wrong password) logs one more. Changed from the Redis thread only.
    """

    def __init__(self, address, log):
        self.address, self._log = address, log
        self.reason = None  # why Redis is unavailable; None while it answers (or is not tried yet)
        self._unavailable_since = None
        self._seen_up = False
        self.counter_problem = ""  # what the counter holds when it is no count (heartbeat's word)
        self._heartbeat_error = None  # the error reply the heartbeat got, while it gets one
        self.primary = None  # with sentinels, (host, port, since) of the primary in use

    @property
    def up(self):
        return self.reason is None

    def describe(self):
        """How Redis is, in a few words and no address (for /readyz, which anyone may ask)."""
        reason, since = self.reason, self._unavailable_since
        if reason is not None and since is not None:
            return f"unavailable ({reason}) for {time.monotonic() - since:.1f}s"
        if not self._seen_up:
            return "not asked yet"
        if self.counter_problem:
            return f"up, but the counter holds {self.counter_problem}: no visit counts"
        return "up"

    def primary_words(self):
        """With sentinels, the primary in use and since when (for /readyz), else None."""
        if self.primary is None:
            return None
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.primary[2]))
        return f"{_address(self.primary)} since {since}"

    def heartbeat(self, reply):
        """What the heartbeat found of the keys we keep (its reply: replicas.HEARTBEAT_SCRIPT's),
        or the error reply it got: each change logged once, each key made anew logged."""
        if isinstance(reply, resp_client.ResponseError):
            if str(reply) != self._heartbeat_error:
                self._log.warning("redis", f"the heartbeat failed ({reply}): this replica may drop "
                                           "out of /replicas")
            self._heartbeat_error = str(reply)
            return
        if self._heartbeat_error is not None:
            self._log.info("redis", "the heartbeat works again")
            self._heartbeat_error = None
        if not (isinstance(reply, list) and len(reply) >= 2):
            return
        for repaired in reply[2:]:
            self._log.warning("redis", f"{_text(repaired)}, not what friendlyhello keeps there: "
                                       "made anew")
        problem = _text(reply[1])
        if problem == self.counter_problem:
            return
        if problem:
            self._log.warning("redis", f"the counter holds {problem}: pages say the counter is "
                                       "disabled until it is a whole number again (or is deleted, "
                                       "to count from 1)")
        else:
            self._log.info("redis", "the counter is a whole number again: visits are counted")
        self.counter_problem = problem

    def answered(self):
        if self.reason is None and self._seen_up:
            return
        if self.reason is not None:
            lasted = time.monotonic() - self._unavailable_since
            self._log.info("redis", f"{self.address} is back after {lasted:.1f}s")
        else:
            self._log.info("redis", f"{self.address} is up: visits are counted")
        self.reason = None
        self._unavailable_since = None
        self._seen_up = True

    def primary_in_use(self, primary):
        """The primary the sentinels named, (host, port, since) or None: each change logged
        once; True when it is a failover (another primary than the one before)."""
        if primary is None or primary[:2] == (self.primary or (None, None))[:2]:
            return False
        before, self.primary = self.primary, primary
        if before is None:
            self._log.info("redis", f"the primary is {_address(primary)}")
            return False
        self._log.warning("redis", f"the primary is now {_address(primary)} (it was "
                                   f"{_address(before)}): a failover")
        return True

    def failed(self, error):
        if isinstance(error, NotReplicated) or not resp_client.means_unavailable(error):
            self.answered()  # an error reply is still an answer
            return
        reason = why_unavailable(error)
        if reason == self.reason:
            return
        if self._unavailable_since is None:
            self._unavailable_since = time.monotonic()
        self.reason = reason
        self._log.warning("redis", f"{self.address} is unavailable ({reason}): "
                                   f"{error.cause or error} - pages say the counter is disabled "
                                   "until it answers again")
