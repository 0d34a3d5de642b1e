#!/bin/sh
# How a Redis server or a sentinel starts behind Sentinel, on Kubernetes (k8s/sentinel/, a
# ConfigMap), on a Swarm (stack.sentinel.yaml, a config) and under compose
# (compose.sentinel.yaml, mounted):  start.sh redis | start.sh sentinel
#
# The primary of $MASTER is the server the first of $SENTINELS ("host:port ...") that answers
# names, each asked for 2 s at most; only when none answers (the first start of all) is it
# $FIRST_PRIMARY. A server then is that primary (when the address is one of its own, or
# $FIRST_PRIMARY is $ME) or a replica of it, so one restarted after a failover comes back a
# replica of the server promoted, never a second primary; a sentinel monitors it. $DATA is where
# each writes (/data).
#
# Names are looked up here, once: the servers and sentinels are given addresses, and never look
# a name up themselves. A sentinel does it inside its event loop, for every server it knows,
# every second: once a server is gone, an answer that is slow to come stalls it (into TILT,
# where it does nothing), and a name that no longer resolves kept it from promoting a replica at
# all (docs/sentinel.md). A replica asks too, as it reconnects, and stalls the same way. Each
# announces the address the others see it connect from, Redis's default.
set -eu
address_of() {  # $1's first address (IPv4 where it has one), waiting up to a minute for it
  for _ in $(seq 60); do
    found=$({ getent ahostsv4 "$1" || getent hosts "$1"; } | awk 'NR == 1 {print $1}')
    if [ -n "$found" ]; then echo "$found"; return 0; fi
    sleep 1
  done
  echo "start.sh: $1 does not resolve" >&2
  return 1
}
mine() {  # is the address $1 one of this container's own?
  case " $(hostname -I 2>/dev/null || hostname -i) " in *" $1 "*) return 0 ;; *) return 1 ;; esac
}
host="" port=""
for sentinel in $SENTINELS; do
  answer=$(timeout 2 redis-cli -h "${sentinel%:*}" -p "${sentinel##*:}" --raw \
           SENTINEL get-master-addr-by-name "$MASTER" 2>/dev/null) || answer=""
  host=$(printf '%s\n' "$answer" | sed -n 1p)
  port=$(printf '%s\n' "$answer" | sed -n 2p)
  case "$port" in ''|*[!0-9]*) host="" port="" ;; *) break ;; esac
done
primary=no
if [ -n "$host" ]; then
  if mine "$host"; then primary=yes; fi
elif [ "$FIRST_PRIMARY" = "$ME" ]; then
  primary=yes port=6379
else
  host=$(address_of "$FIRST_PRIMARY") port=6379
  if mine "$host"; then primary=yes; fi
fi
data="${DATA:-/data}"
echo "start.sh: the primary of $MASTER is ${host:-this server}:$port; this is $ME ($1)" >&2
if [ "$1" = sentinel ]; then
  # Its id made from its name: restarted elsewhere, at another address, it is the same sentinel
  # to the others, who take its new address, instead of one more that never answers again and
  # still counts among the voters a failover needs a majority of.
  myid=$(printf '%s %s' "$MASTER" "$ME" | sha1sum | cut -c1-40)
  printf '%s\n' "port 26379" "dir $data" "sentinel myid $myid" \
    "sentinel monitor $MASTER $host $port 2" "sentinel down-after-milliseconds $MASTER 5000" \
    "sentinel failover-timeout $MASTER 10000" > "$data/sentinel.conf"
  exec redis-server "$data/sentinel.conf" --sentinel
fi
# No password here, as in the base: the network policies (or the overlay network) say who reaches
# it, so protected mode, which refuses every address but loopback then, is off.
set -- --port 6379 --protected-mode no --dir "$data" --appendonly yes --appendfsync always \
  --min-replicas-to-write 1 --min-replicas-max-lag 5 --repl-diskless-sync-delay 0
if [ "$primary" = no ]; then
  set -- "$@" --replicaof "$host" "$port"
fi
exec redis-server "$@"
