"""What replicas keep in Redis, and the view of it: the visit counter, a record per replica
(who it is, when it was last seen, how many visits it served), and /replicas.

The visits are a MULTI/EXEC transaction, the heartbeat and the view Lua scripts, so that
each runs whole or not at all; their arguments are fixed per process, so each command is
encoded once, at start-up. The view trusts nothing it reads: Redis is shared, and people
poke at it with redis-cli. A record it cannot read is shown flagged, never a reason to fail
the page, and the view reads a bounded number of them.
"""

import collections
import functools
import html
import re

import resp_client

from .redis_state import why_unavailable

COUNTER_KEY = "counter"
REPLICA_TTL = 10        # seconds after its last heartbeat that a replica drops out of the view
VIEW_LIMIT = 1000       # replicas the view reads at most, the most recently seen first
REPLICA_INDEX = "friendlyhello:replicas"   # sorted set: replica id -> time of its last heartbeat
REPLICA_PREFIX = "friendlyhello:replica:"  # hash per replica: hostname, pod, node, version, started, seen,
                                          # served, and served as it was at each recent "at:<slot>"
SLOT_SECONDS = 10       # the recent visit counts' slots: "the last minute" is the last 5 whole ones and this one

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
  if not string.match(value, '^-?[0-9]+$') or #value > 19 then out[2] = 'a string that is not a whole number' end
elseif counter ~= 'none' then
  out[2] = 'a ' .. counter
end
redis.call('HSET', KEYS[2], 'hostname', ARGV[2], 'pod', ARGV[3], 'node', ARGV[4], 'version', ARGV[6],
           'faults', ARGV[8], 'seen', now)
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
for _, id in ipairs(redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', since, 'LIMIT', 0, tonumber(ARGV[3]))) do
  local record = redis.pcall('HGETALL', ARGV[2] .. id)
  if record.err or #record > 0 then
    out[#out + 1] = id
    out[#out + 1] = record
  end
end
return out
"""

Identity = collections.namedtuple("Identity", "replica_id hostname placement version")
Identity.__doc__ = """Who this replica is: its id in /replicas, its host name, where it runs
(``placement``: pod, namespace, node and pod_ip, as far as the Downward API said), and the
VERSION it was started with."""

class Commands(collections.namedtuple("Commands", "one_visit heartbeat view visit_commands")):
    """A replica's Redis commands, encoded: one visit, ``heartbeat(faults)`` (the faults on, in
    words: made again only when they change), the view, and ``visit_commands``: its VisitCommands."""

    __slots__ = ()


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
        self.of = functools.lru_cache(maxsize=None)(self._transaction)  # n is at most redis_thread.MAX_COMMANDS
        self.one = self.of(1)

    def _transaction(self, n):
        return resp_client.encode_transaction(
            [("HINCRBY", self._key, "served", n), ("INCRBY", COUNTER_KEY, n), ("EXPIRE", self._key, REPLICA_TTL)])

    def take_back(self, n):
        return resp_client.encode_command(("HINCRBY", self._key, "served", -n))

    def read(self, reply, n):
        """The counter's new value after n visits (or the error that kept them from counting,
        or a reply that is no transaction's, which the page cannot read), and the command that
        takes the replica's count back when only it rose (else None)."""
        if not (isinstance(reply, list) and len(reply) == 3):
            return reply, None  # an error that refused the block (nothing ran), or nonsense
        served, counter, _ = reply
        if isinstance(counter, resp_client.ResponseError) and not isinstance(served, resp_client.ResponseError):
            return counter, self.take_back(n)
        return counter, None


def placement(config):
    """Where this replica runs, as far as the Downward API said: only what is known."""
    known = {"pod": config.pod_name, "namespace": config.pod_namespace, "node": config.node_name,
             "pod_ip": config.pod_ip}
    return {key: value for key, value in known.items() if value}


def identity(config, hostname):
    where = placement(config)
    return Identity(config.replica_id or where.get("pod") or hostname, hostname, where, config.version)


def replica_commands(me):
    """This replica's Redis commands, encoded once: a visit (and n of them), a heartbeat (for
    the faults on, in words), the view."""
    key = REPLICA_PREFIX + me.replica_id
    encode = resp_client.encode_command
    visit_commands = VisitCommands(key)
    heartbeat = functools.lru_cache(maxsize=4)(
        lambda faults: encode(("EVAL", HEARTBEAT_SCRIPT, 3, REPLICA_INDEX, key, COUNTER_KEY, REPLICA_TTL, me.hostname,
                               me.placement.get("pod", ""), me.placement.get("node", ""), me.replica_id,
                               me.version, SLOT_SECONDS, faults)))
    return Commands(
        one_visit=visit_commands.one, visit_commands=visit_commands, heartbeat=heartbeat,
        view=encode(("EVAL", VIEW_SCRIPT, 2, REPLICA_INDEX, COUNTER_KEY, REPLICA_TTL, REPLICA_PREFIX, VIEW_LIMIT)))


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _count(value):
    """A whole number >= 0 as Redis holds it, or None."""
    text = _text(value)
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def _natural(text):
    """A sort key: "v2" before "v10"."""
    return [int(part) if n % 2 else part for n, part in enumerate(re.split(r"([0-9]+)", text))]


def read_record(replica_id, fields, now):
    """One replica's row; ``problem`` says what in its record could not be read (else "")."""
    row = {"id": _text(replica_id), "hostname": "", "pod": "", "node": "", "version": "", "faults": "",
           "served": 0, "last_minute": 0, "seconds_since_seen": 0, "problem": ""}
    if isinstance(fields, resp_client.ResponseError) or not isinstance(fields, list) or len(fields) % 2:
        return {**row, "problem": "its record is not a hash"}
    record = {_text(k): v for k, v in zip(fields[::2], fields[1::2], strict=True)}
    row.update({key: _text(record.get(key, b"")) for key in ("hostname", "pod", "node", "version", "faults")})
    served, seen = _count(record.get("served", b"0")), _count(record.get("seen", b"%d" % now))
    if served is None:
        row["problem"] = "its visit count is not a whole number"
    else:
        row["served"] = row["last_minute"] = served
        marks = sorted((int(k[3:]), _count(v)) for k, v in record.items() if k[:3] == "at:" and k[3:].isdigit())
        recent = [count for slot, count in marks if slot >= now // SLOT_SECONDS - 5 and count is not None]
        if marks:  # else the record is younger than its first heartbeat: every visit is recent
            row["last_minute"] = max(served - recent[0], 0) if recent else 0
    if seen is None:
        row["problem"] = row["problem"] or "its last-seen time is not a whole number"
    else:
        row["seconds_since_seen"] = max(now - seen, 0)
    return row


# The replica view's page: plain HTML, its style inline; nothing loaded from elsewhere.
REPLICAS_HEAD = """<!doctype html>
<html><head><meta charset="utf-8"><title>friendlyhello replicas</title>{refresh}
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}
th,td{{padding:.35em .9em;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}}td.n{{text-align:right}}
.bar{{display:inline-block;height:.8em;background:#3b7dd8;margin-right:.5em}}.bad{{color:#b00}}</style></head>
<body><h3>Replicas</h3>
"""
REPLICAS_TABLE = """<p>{count} live replicas{more}; {total} visits counted in all.</p>
<table><tr><th>version</th><th>replicas</th><th>visits served</th><th>share of the last minute</th></tr>
{versions}</table>
<p></p>
<table><tr><th>replica</th><th>version</th><th>host</th><th>pod</th><th>node</th><th>visits served</th><th>share</th>
<th>last minute</th><th>last seen</th></tr>
{rows}</table>
<p>Visits counted by replicas gone from this view (stopped, or not seen for a while): {elsewhere}.</p>
"""
REPLICA_ROW = ('<tr><td>{id}{flag}</td><td>{version}</td><td>{hostname}</td><td>{pod}</td><td>{node}</td>'
               '<td class="n">{served}</td><td><span class="bar" style="width:{bar}px"></span>{share}</td>'
               '<td class="n">{last_minute}</td><td>{seconds_since_seen} s ago</td></tr>\n')
VERSION_ROW = ('<tr><td>{version}</td><td class="n">{replicas}</td><td class="n">{visits}</td>'
               '<td><span class="bar" style="width:{bar}px"></span>{share}</td></tr>\n')
REPLICAS_FOOT = "<p>This page was served by {hostname}.</p></body></html>\n"


class ReplicaView(collections.namedtuple("ReplicaView", "replicas total live reason")):
    """The live replicas (rows of their records, at most VIEW_LIMIT), the counter (None when
    it is not a number), how many replicas are live in all, and why the view is empty when
    Redis could not be asked (else None)."""

    __slots__ = ()

    @classmethod
    def read(cls, reply):
        if reply.error is not None:
            return cls([], None, 0, why_unavailable(reply.error))
        now, counter, live, *pairs = reply.value
        replicas = [read_record(replica_id, fields, now)
                    for replica_id, fields in zip(pairs[::2], pairs[1::2], strict=True)]
        replicas.sort(key=lambda r: (-r["served"], r["id"]))
        total = 0 if counter is None else _count(counter)
        return cls(replicas, total, live, None)

    @property
    def more(self):
        """Live replicas beyond the ones read."""
        return max(self.live - len(self.replicas), 0)

    def _share(self, row):
        return row["served"] / self.total if self.total else 0.0

    def by_version(self):
        """Per version (the rows read): replicas, visits served, visits in about the last
        minute and their share of all the last minute's; in order of their names, numbers by value."""
        versions = {}
        for r in self.replicas:
            v = versions.setdefault(r["version"], {"replicas": 0, "visits": 0, "last_minute": 0})
            v["replicas"] += 1
            v["visits"] += r["served"]
            v["last_minute"] += r["last_minute"]
        recent = sum(v["last_minute"] for v in versions.values())
        for v in versions.values():
            v["share_last_minute"] = round(v["last_minute"] / recent, 4) if recent else 0.0
        return dict(sorted(versions.items(), key=lambda item: _natural(item[0])))

    def as_json(self, hostname):
        rows = [{**r, "share": round(self._share(r), 4)} for r in self.replicas]
        return {"replicas": rows, "by_version": self.by_version(), "total": self.total, "live": self.live,
                "more": self.more, "served_by": hostname, "redis": "ok" if self.reason is None else self.reason}

    def as_html(self, hostname, refresh):
        head = REPLICAS_HEAD.format(refresh=f'<meta http-equiv="refresh" content="{refresh}">' if refresh else "")
        foot = REPLICAS_FOOT.format(hostname=html.escape(hostname))
        if self.reason is not None:
            return head + (f"<p>Redis is unavailable ({html.escape(self.reason)}): no replica view until it "
                           f"answers again.</p>{foot}")
        rows = []
        for r in self.replicas:
            share = min(self._share(r), 1.0)
            flag = f' <span class="bad">(skipped: {html.escape(r["problem"])})</span>' if r["problem"] else ""
            flag += f' <span class="bad">(faults on: {html.escape(r["faults"])})</span>' if r["faults"] else ""
            rows.append(REPLICA_ROW.format(**{k: html.escape(str(v)) for k, v in r.items()}, flag=flag,
                                           share=f"{share:.0%}", bar=round(share * 200)))
        versions = [VERSION_ROW.format(version=html.escape(name), replicas=v["replicas"], visits=v["visits"],
                                       share=f"{v['share_last_minute']:.0%}", bar=round(v["share_last_minute"] * 200))
                    for name, v in self.by_version().items()]
        total = "?" if self.total is None else self.total
        counted = sum(r["served"] for r in self.replicas)
        elsewhere = "?" if self.total is None or self.more else self.total - counted
        more = f" (the {len(self.replicas)} most recently seen shown, and {self.more} more)" if self.more else ""
        return head + REPLICAS_TABLE.format(count=self.live, more=more, total=total, rows="".join(rows),
                                            versions="".join(versions), elsewhere=elsewhere) + foot
