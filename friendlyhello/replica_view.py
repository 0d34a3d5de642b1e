"""/replicas: the view of what the replicas keep in Redis, as a table or as JSON.

The view trusts nothing it reads: Redis is shared, and people poke at it with redis-cli. A
record it cannot read is shown flagged, never a reason to fail the page, and the view reads a
bounded number of them (replicas.VIEW_LIMIT).
"""

import html
import re
import typing

import resp_client

from .redis_state import why_unavailable
from .replicas import SLOT_SECONDS

_SHOWN_FIELDS = ("hostname", "pod", "node", "version", "faults")


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _count(value):
    """A whole number >= 0 as Redis holds it, or None."""
    text = _text(value)
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None


def _natural(text):
    """A sort key: "v2" before "v10"."""
    parts = re.split(r"([0-9]+)", text)
    return [int(part) if n % 2 else part for n, part in enumerate(parts)]


def read_record(replica_id, fields, now):
    """One replica's row; ``problem`` says what in its record could not be read (else "")."""
    row = {"id": _text(replica_id), "hostname": "", "pod": "", "node": "", "version": "",
           "faults": "", "served": 0, "last_minute": 0, "seconds_since_seen": 0, "problem": ""}
    not_a_hash = isinstance(fields, resp_client.ResponseError) or not isinstance(fields, list)
    if not_a_hash or len(fields) % 2:
        return {**row, "problem": "its record is not a hash"}
    record = {_text(k): v for k, v in zip(fields[::2], fields[1::2], strict=True)}
    row.update({key: _text(record.get(key, b"")) for key in _SHOWN_FIELDS})
    served = _count(record.get("served", b"0"))
    seen = _count(record.get("seen", b"%d" % now))
    if served is None:
        row["problem"] = "its visit count is not a whole number"
    else:
        row["served"] = served
        row["last_minute"] = _last_minute(record, served, now)
    if seen is None:
        row["problem"] = row["problem"] or "its last-seen time is not a whole number"
    else:
        row["seconds_since_seen"] = max(now - seen, 0)
    return row


def _last_minute(record, served, now):
    """The visits of about the last minute: ``served`` less its count when the oldest recent
    slot began ("at:<slot>" marks)."""
    marks = []
    for key, value in record.items():
        if key[:3] == "at:" and key[3:].isdigit():
            marks.append((int(key[3:]), _count(value)))
    if not marks:  # the record is younger than its first heartbeat: every visit is recent
        return served
    marks.sort()
    first_recent_slot = now // SLOT_SECONDS - 5
    recent = [count for slot, count in marks if slot >= first_recent_slot and count is not None]
    return max(served - recent[0], 0) if recent else 0


# The replica view's page: plain HTML, its style inline; nothing loaded from elsewhere. (A
# backslash at a line's end joins it to the next: the page's lines are longer than ours.)
REPLICAS_HEAD = """<!doctype html>
<html><head><meta charset="utf-8"><title>friendlyhello replicas</title>{refresh}
<style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}
th,td{{padding:.35em .9em;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}}\
td.n{{text-align:right}}
.bar{{display:inline-block;height:.8em;background:#3b7dd8;margin-right:.5em}}.bad{{color:#b00}}\
</style></head>
<body><h3>Replicas</h3>
"""
REPLICAS_TABLE = """<p>{count} live replicas{more}; {total} visits counted in all.</p>
<table><tr><th>version</th><th>replicas</th><th>visits served</th>\
<th>share of the last minute</th></tr>
{versions}</table>
<p></p>
<table><tr><th>replica</th><th>version</th><th>host</th><th>pod</th><th>node</th>\
<th>visits served</th><th>share</th>
<th>last minute</th><th>last seen</th></tr>
{rows}</table>
<p>Visits counted by replicas gone from this view (stopped, or not seen for a while): \
{elsewhere}.</p>
"""
REPLICA_ROW = ('<tr><td>{id}{flag}</td><td>{version}</td><td>{hostname}</td><td>{pod}</td>'
               '<td>{node}</td><td class="n">{served}</td>'
               '<td><span class="bar" style="width:{bar}px"></span>{share}</td>'
               '<td class="n">{last_minute}</td><td>{seconds_since_seen} s ago</td></tr>\n')
VERSION_ROW = ('<tr><td>{version}</td><td class="n">{replicas}</td><td class="n">{visits}</td>'
               '<td><span class="bar" style="width:{bar}px"></span>{share}</td></tr>\n')
REPLICAS_FOOT = "<p>This page was served by {hostname}.</p></body></html>\n"


class ReplicaView(typing.NamedTuple):
    """What /replicas shows."""

    replicas: list        # rows of the live replicas' records, at most VIEW_LIMIT
    total: int | None     # the counter; None when it is not a number
    live: int             # how many replicas are live in all
    reason: str | None    # why the view is empty when Redis could not be asked; else None

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
        minute and their share of all the last minute's; in order of their names, numbers by
        value."""
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
        return {"replicas": rows, "by_version": self.by_version(), "total": self.total,
                "live": self.live, "more": self.more, "served_by": hostname,
                "redis": "ok" if self.reason is None else self.reason}

    def as_html(self, hostname, refresh):
        meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
        head = REPLICAS_HEAD.format(refresh=meta)
        foot = REPLICAS_FOOT.format(hostname=html.escape(hostname))
        if self.reason is not None:
            return head + (f"<p>Redis is unavailable ({html.escape(self.reason)}): no replica view "
                           f"until it answers again.</p>{foot}")
        rows = [self._row(r) for r in self.replicas]
        versions = [_version_row(name, v) for name, v in self.by_version().items()]
        total = "?" if self.total is None else self.total
        counted = sum(r["served"] for r in self.replicas)
        elsewhere = "?" if self.total is None or self.more else self.total - counted
        more = ""
        if self.more:
            more = f" (the {len(self.replicas)} most recently seen shown, and {self.more} more)"
        table = REPLICAS_TABLE.format(count=self.live, more=more, total=total, rows="".join(rows),
                                      versions="".join(versions), elsewhere=elsewhere)
        return head + table + foot

    def _row(self, r):
        share = min(self._share(r), 1.0)
        flag = ""
        if r["problem"]:
            flag += f' <span class="bad">(skipped: {html.escape(r["problem"])})</span>'
        if r["faults"]:
            flag += f' <span class="bad">(faults on: {html.escape(r["faults"])})</span>'
        escaped = {k: html.escape(str(v)) for k, v in r.items()}
        return REPLICA_ROW.format(**escaped, flag=flag, share=f"{share:.0%}",
                                  bar=round(share * 200))


def _version_row(name, v):
    share = v["share_last_minute"]
    return VERSION_ROW.format(version=html.escape(name), replicas=v["replicas"], visits=v["visits"],
                              share=f"{share:.0%}", bar=round(share * 200))
