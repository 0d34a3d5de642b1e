#!/bin/sh
# How a Redis server or a sentinel starts behind Sentinel, on Kubernetes (k8s/sentinel/, a
# ConfigMap) and on a Swarm (stack.sentinel.yaml, a config):  start.sh redis | start.sh sentinel
#
# The primary of $MASTER is the server the first of $SENTINELS ("host:port ...") that answers
# names, each asked for 2 s at most; only when none answers (the first start of all) is it
# $FIRST_PRIMARY. A server then is that primary (when it is $ME, its own announced name) or a
# replica of it, so one restarted after a failover comes back a replica of the server promoted,
# never a second primary; a sentinel monitors it. $DATA is where each writes (/data).
set -eu
# A sentinel looks names up in its event loop: a lost DNS answer (glibc waits 5 s a try) can
# stall it into TILT and then into never promoting a replica (docs/sentinel.md). One question
# at a time, 1 s for each; glibc reads RES_OPTIONS over the container's resolv.conf.
export RES_OPTIONS="single-request timeout:1 attempts:1"
host="" port=""
for sentinel in $SENTINELS; do
  answer=$(timeout 2 redis-cli -h "${sentinel%:*}" -p "${sentinel##*:}" --raw \
           SENTINEL get-master-addr-by-name "$MASTER" 2>/dev/null) || answer=""
  host=$(printf '%s\n' "$answer" | sed -n 1p)
  port=$(printf '%s\n' "$answer" | sed -n 2p)
  case "$port" in ''|*[!0-9]*) host="" port="" ;; *) break ;; esac
done
if [ -z "$host" ]; then
  host="$FIRST_PRIMARY" port=6379
fi
data="${DATA:-/data}"
echo "start.sh: the primary of $MASTER is $host:$port; this is $ME ($1)" >&2
if [ "$1" = sentinel ]; then
  printf '%s\n' "port 26379" "dir $data" "sentinel resolve-hostnames yes" \
    "sentinel announce-hostnames yes" "sentinel announce-ip $ME" \
    "sentinel monitor $MASTER $host $port 2" "sentinel down-after-milliseconds $MASTER 5000" \
    "sentinel failover-timeout $MASTER 10000" > "$data/sentinel.conf"
  exec redis-server "$data/sentinel.conf" --sentinel
fi
# No password here, as in the base: the network policies (or the overlay network) say who reaches
# it, so protected mode, which refuses every address but loopback then, is off.
set -- --port 6379 --protected-mode no --dir "$data" --appendonly yes --appendfsync always \
  --replica-announce-ip "$ME" --min-replicas-to-write 1 --min-replicas-max-lag 5 \
  --repl-diskless-sync-delay 0
if [ "$host" != "$ME" ]; then
  set -- "$@" --replicaof "$host" "$port"
fi
exec redis-server "$@"
