"""What replicas keep in Redis: the visit counter, a record per replica (who it is, when it
was last seen, how many visits it served), and the commands that write and read them; the
view they make is replica_view.py's.

The visits are a MULTI/EXEC transaction, the heartbeat and the view Lua scripts, so that
each runs whole or not at all; their arguments are fixed per process, so each command is
encoded once, at start-up.
"""

import functools
import typing

import resp_client

COUNTER_KEY = "counter"
REPLICA_TTL = 10        # seconds after its last heartbeat that a replica drops out of the view
VIEW_LIMIT = 1000       # replicas the view reads at most, the most recently seen first
REPLICA_INDEX = "friendlyhello:replicas"   # sorted set: replica id -> time of its last heartbeat
# A hash per replica: hostname, pod, node, version, started, seen, served, and served as it was
# at each recent "at:<slot>".
REPLICA_PREFIX = "friendlyhello:replica:"
# The recent visit counts' slots: "the last minute" is the last 5 whole ones and this one.
SLOT_SECONDS = 10

# Alive: the record refreshed and the index trimmed, so Redis holds only live replicas. The
# record also keeps its visit count as it was when each 10-second slot began ("at:<slot>", the
# last 7 slots), so the view can tell how many it served in about the last minute. A key of
# ours that someone replaced with another type is checked first (a script's writes before an
# error stay written): the index and the record are made anew (their counts are lost; the view
# flagged them), and the replica says so. The counter is never replaced (its numbers were
# shown: counting again from 1 would show them twice); what it holds instead is said.
# Reply: Redis's clock, what the counter holds if it is no count ("" when it is one, or
# unset), then the keys made anew.
HEARTBEAT_SCRIPT = """
local now = tonumber(redis.call('TIME')[1])
local out = {now, ''}
for i, wanted in ipairs({'zset', 'hash'}) do
  local kind = redis.call('TYPE', KEYS[i]).ok
  if kind ~= wanted and kind ~= 'none' then
    redis.call('DEL', KEYS[i])
    out[#out + 1] = KEYS[i] .. ' was a ' .. kind
  end
end
local counter = redis.call('TYPE', KEYS[3]).ok
if counter == 'string' then
  local value = redis.call('GET', KEYS[3])
  if not string.match(value, '^-?[0-9]+$') or #value > 19 then
    out[2] = 'a string that is not a whole number'
  end
elseif counter ~= 'none' then
  out[2] = 'a ' .. counter
end
redis.call('HSET', KEYS[2], 'hostname', ARGV[2], 'pod', ARGV[3], 'node', ARGV[4],
           'version', ARGV[6], 'faults', ARGV[8], 'seen', now)
redis.call('HSETNX', KEYS[2], 'started', now)
local slot = math.floor(now / tonumber(ARGV[7]))
redis.call('HSETNX', KEYS[2], 'at:' .. slot, redis.call('HGET', KEYS[2], 'served') or '0')
for old = slot - 12, slot - 7 do redis.call('HDEL', KEYS[2], 'at:' .. old) end
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
return out
"""
# Redis's clock, the counter, how many replicas are live, and the records of the most
# recently seen of them (at most ARGV[3]), in one round trip. pcall: a key of the wrong type
# comes back as an error in its place, not as the failure of the whole view.
VIEW_SCRIPT = """
local now = tonumber(redis.call('TIME')[1])
local since = now - tonumber(ARGV[1])
local out = {now, redis.pcall('GET', KEYS[2]), redis.call('ZCOUNT', KEYS[1], since, '+inf')}
local recent = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', since, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(recent) do
  local record = redis.pcall('HGETALL', ARGV[2] .. id)
  if record.err or #record > 0 then
    out[#out + 1] = id
    out[#out + 1] = record
  end
end
return out
"""

class Identity(typing.NamedTuple):
    """Who this replica is."""

    replica_id: str     # its id in /replicas
    hostname: str
    placement: dict     # pod, namespace, node and pod_ip, as far as the Downward API said
    version: str        # the VERSION it was started with


class Commands(typing.NamedTuple):
    """A replica's Redis commands, encoded."""

    one_visit: bytes
    heartbeat: typing.Callable    # heartbeat(faults on, in words): made again when they change
    view: bytes
    visit_commands: "VisitCommands"


class VisitCommands:
    """The visits of one replica, as Redis counts them: n visits (the pages of one round trip)
    are one transaction that raises the replica's count and the counter by n and keeps the
    record's expiry fresh. Redis runs it whole or not at all (a kill, a lost connection), so
    each replica's count adds up to the counter's rise. ``of(n)`` is its command (made once
    for each n, when first asked; ``one`` is n = 1), ``read()`` what its reply says.

    Redis runs every command of a transaction even when one fails. Should the counter not be
    a number, the replica's count rose alone: ``read()`` gives the command that takes it back.
    Should the record not be ours to count in (not a hash, a "served" that is not a number),
    the counter still rose and the pages show their numbers; the view shows the record flagged
    (one that is not a hash until the next heartbeat makes it anew).
    A transaction needs no script: it costs Redis about two thirds of what the same as a Lua
    script does (bench/redis_visit.py)."""

    def __init__(self, key):
        self._key = key
        # n is at most redis_thread.MAX_COMMANDS: as many commands are cached at the most.
        self.of = functools.lru_cache(maxsize=None)(self._transaction)
        self.one = self.of(1)

    def _transaction(self, n):
        return resp_client.encode_transaction([("HINCRBY", self._key, "served", n),
                                               ("INCRBY", COUNTER_KEY, n),
                                               ("EXPIRE", self._key, REPLICA_TTL)])

    def take_back(self, n):
        return resp_client.encode_command(("HINCRBY", self._key, "served", -n))

    def read(self, reply, n):
        """The counter's new value after n visits (or the error that kept them from counting,
        or a reply that is no transaction's, which the page cannot read), and the command that
        takes the replica's count back when only it rose (else None)."""
        if not (isinstance(reply, list) and len(reply) == 3):
            return reply, None  # an error that refused the block (nothing ran), or nonsense
        served, counter, _ = reply
        only_served_rose = isinstance(counter, resp_client.ResponseError) and not isinstance(
            served, resp_client.ResponseError)
        if only_served_rose:
            return counter, self.take_back(n)
        return counter, None


def placement(config):
    """Where this replica runs, as far as the Downward API said: only what is known."""
    known = {"pod": config.pod_name, "namespace": config.pod_namespace, "node": config.node_name,
             "pod_ip": config.pod_ip}
    return {key: value for key, value in known.items() if value}


def identity(config, hostname):
    where = placement(config)
    replica_id = config.replica_id or where.get("pod") or hostname
    return Identity(replica_id, hostname, where, config.version)


def replica_commands(me):
    """This replica's Redis commands, encoded once: a visit (and n of them), a heartbeat (for
    the faults on, in words), the view."""
    key = REPLICA_PREFIX + me.replica_id
    encode = resp_client.encode_command
    visit_commands = VisitCommands(key)
    pod, node = me.placement.get("pod", ""), me.placement.get("node", "")

    @functools.lru_cache(maxsize=4)
    def heartbeat(faults):
        return encode(("EVAL", HEARTBEAT_SCRIPT, 3, REPLICA_INDEX, key, COUNTER_KEY, REPLICA_TTL,
                       me.hostname, pod, node, me.replica_id, me.version, SLOT_SECONDS, faults))

    view = encode(("EVAL", VIEW_SCRIPT, 2, REPLICA_INDEX, COUNTER_KEY, REPLICA_TTL, REPLICA_PREFIX,
                   VIEW_LIMIT))
    return Commands(one_visit=visit_commands.one, visit_commands=visit_commands,
                    heartbeat=heartbeat, view=view)
