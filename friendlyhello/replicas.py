
import collections
import html

import resp_client

from .redis_pipeline import outage_reason

COUNTER_KEY = "counter"
REPLICA_TTL = 10             # seconds after its last heartbeat that a replica drops out of the view


# -- what replicas keep in Redis: Lua scripts, so that each runs whole or not at all -----------
# KEYS and ARGV are fixed per process: each command is encoded once, at start-up.
REPLICA_INDEX = "friendlyhello:replicas"   # sorted set: replica id -> time of its last heartbeat
REPLICA_PREFIX = "friendlyhello:replica:"  # hash per replica: hostname, pod, node, started, seen, served
VISIT_SCRIPT = """
local visits = redis.call('INCR', KEYS[1])
if redis.call('HINCRBY', KEYS[2], 'served', 1) == 1 then
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
return visits
"""  # a visit counts for the counter and for the replica that served it, together; a record
# it makes anew expires too (heartbeats keep an existing one's expiry fresh)
HEARTBEAT_SCRIPT = """
local now = tonumber(redis.call('TIME')[1])
redis.call('HSET', KEYS[2], 'hostname', ARGV[2], 'pod', ARGV[3], 'node', ARGV[4], 'seen', now)
redis.call('HSETNX', KEYS[2], 'started', now)
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
return now
"""  # alive: the record refreshed, and the index trimmed, so Redis holds only live replicas
VIEW_SCRIPT = """
local now = tonumber(redis.call('TIME')[1])
local out = {now, redis.call('GET', KEYS[2]) or false}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')) do
  local record = redis.call('HGETALL', ARGV[2] .. id)
  if #record > 0 then
    out[#out + 1] = id
    out[#out + 1] = record
  end
end
return out
"""  # the live replicas' records, the counter, and Redis's clock, in one round trip


def replica_commands(replica_id, hostname, placement_):
    """This replica's three Redis commands, encoded: a visit, a heartbeat, the view."""
    key = REPLICA_PREFIX + replica_id
    return (
        resp_client.encode_command(("EVAL", VISIT_SCRIPT, 2, COUNTER_KEY, key, REPLICA_TTL)),
        resp_client.encode_command(("EVAL", HEARTBEAT_SCRIPT, 2, REPLICA_INDEX, key, REPLICA_TTL, hostname,
                                    placement_.get("pod", ""), placement_.get("node", ""), replica_id)),
        resp_client.encode_command(("EVAL", VIEW_SCRIPT, 2, REPLICA_INDEX, COUNTER_KEY, REPLICA_TTL,
                                    REPLICA_PREFIX)))


class ReplicaView(collections.namedtuple("ReplicaView", "replicas total now reason")):
    """The live replicas (dicts of their records), the counter, Redis's clock, and why the
    view is empty when Redis could not be asked (else None)."""

    __slots__ = ()

    @classmethod
    def read(cls, redis):
        if redis.error is not None:
            return cls([], None, 0, outage_reason(redis.error))
        now, total, *pairs = redis.value
        replicas = []
        for replica_id, fields in zip(pairs[::2], pairs[1::2], strict=True):
            record = {k.decode(): v.decode("utf-8", "replace") for k, v in zip(fields[::2], fields[1::2], strict=True)}
            replicas.append({"id": replica_id.decode("utf-8", "replace"), "hostname": record.get("hostname", ""),
                             "pod": record.get("pod", ""), "node": record.get("node", ""),
                             "served": int(record.get("served", 0)),
                             "seconds_since_seen": max(now - int(record.get("seen", now)), 0)})
        replicas.sort(key=lambda r: (-r["served"], r["id"]))
        return cls(replicas, int(total or 0), now, None)

    def as_json(self, hostname):
        shares = [{**r, "share": round(r["served"] / self.total, 4) if self.total else 0.0} for r in self.replicas]
        return {"replicas": shares, "total": self.total, "served_by": hostname,
                "redis": "ok" if self.reason is None else self.reason}

    def as_html(self, hostname, refresh):
        head = REPLICAS_HEAD.format(refresh=f'<meta http-equiv="refresh" content="{refresh}">' if refresh else "")
        if self.reason is not None:
            return head + (f"<p>Redis is unavailable ({html.escape(self.reason)}): no replica view until it "
                           f"answers again.</p>{REPLICAS_FOOT.format(hostname=html.escape(hostname))}")
        rows = []
        for r in self.replicas:
            share = r["served"] / self.total if self.total else 0.0
            rows.append(REPLICA_ROW.format(**{k: html.escape(str(v)) for k, v in r.items()},
                                           share=f"{share:.0%}", bar=round(share * 200)))
        elsewhere = self.total - sum(r["served"] for r in self.replicas)
        return head + REPLICAS_TABLE.format(
            count=len(self.replicas), total=self.total, rows="".join(rows), elsewhere=elsewhere,
        ) + REPLICAS_FOOT.format(hostname=html.escape(hostname))


# The replica view's page: plain HTML, its style inline; nothing loaded from elsewhere.
REPLICAS_HEAD = """<!doctype html>
<html><head><meta charset="utf-8"><title>friendlyhello replicas</title>{refresh}
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}
th,td{{padding:.35em .9em;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}}td.n{{text-align:right}}
.bar{{display:inline-block;height:.8em;background:#3b7dd8;margin-right:.5em}}</style></head>
<body><h3>Replicas</h3>
"""
REPLICAS_TABLE = """<p>{count} live replicas; {total} visits counted in all.</p>
<table><tr><th>replica</th><th>pod</th><th>node</th><th>visits served</th><th>share</th><th>last seen</th></tr>
{rows}</table>
<p>Visits counted by replicas gone from this view (stopped, or not seen for a while): {elsewhere}.</p>
"""
REPLICA_ROW = ('<tr><td>{hostname}</td><td>{pod}</td><td>{node}</td><td class="n">{served}</td>'
               '<td><span class="bar" style="width:{bar}px"></span>{share}</td>'
               '<td>{seconds_since_seen} s ago</td></tr>\n')
REPLICAS_FOOT = "<p>This page was served by {hostname}.</p></body></html>\n"


def placement(config):
    """Where this replica runs, as far as the Downward API said: only what is known."""
    known = {"pod": config.pod_name, "namespace": config.pod_namespace, "node": config.node_name,
             "pod_ip": config.pod_ip}
    return {key: value for key, value in known.items() if value}
