#!/usr/bin/env bash
# Make the container engines usable on this machine for the container tests, offline.
#
# On Debian, as root (as CI runs it), this:
#  1. installs rootful podman, runc and debootstrap from Debian's packages;
#  2. writes /etc/containers/containers.conf so podman runs inside a sandbox without systemd
#     (cgroupfs, runc, file events, rlimits it may set) and, like Docker 20.10+, lets non-root
#     users in a container bind ports below 1024;
#  3. builds stand-ins for the two base images when no registry can be reached: a minimal
#     Debian root with python3, tagged as the Dockerfile's FROM image, and one with
#     redis-server, tagged as compose.yaml's Redis image. Existing images are reused;
#  4. for the Swarm tests: installs Debian's docker.io, starts dockerd when none runs, loads
#     the two base images into it from podman, and makes this machine a single-node Swarm.
# Where Docker already runs and podman is missing (a developer's own machine), it only does 4's
# Swarm step: the tests use that Docker for everything.
set -euo pipefail

PYTHON_IMAGE=${PYTHON_IMAGE:-docker.io/library/python:3.12-slim}
REDIS_IMAGE=${REDIS_IMAGE:-docker.io/library/redis:7}
ROOTS=${ROOTS:-/var/tmp/friendlyhello-roots}

swarm() {
  if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    docker swarm init >/dev/null 2>&1 || docker swarm init --advertise-addr 127.0.0.1 >/dev/null
  fi
  echo "container-engine: docker $(docker info --format '{{.ServerVersion}}') ready, single-node Swarm active"
}

if ! command -v podman >/dev/null && docker info >/dev/null 2>&1; then
  swarm
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
  apt-get install -y -qq podman runc debootstrap >/dev/null
fi

mkdir -p /etc/containers
cat > /etc/containers/containers.conf <<CONF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
default_sysctls = ["net.ipv4.ip_unprivileged_port_start=0"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF

mirror=$( (sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null || true) | grep -v security | head -n1 || true)
mirror=${mirror:-$(awk '$1 == "deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}

base_root() {  # a minimal Debian root with Python, made once
  local dir=$ROOTS/python
  if [ ! -x "$dir/usr/bin/python3" ]; then
    rm -rf "$dir"
    mkdir -p "$ROOTS"
    debootstrap --variant=minbase --include=python3,python-is-python3,ca-certificates bookworm "$dir" "$mirror" >/dev/null
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  fi
  echo "$dir"
}

if ! podman image exists "$PYTHON_IMAGE"; then
  root=$(base_root)
  tar -C "$root" -c . | podman import --change 'CMD ["python3"]' - "$PYTHON_IMAGE" >/dev/null 2>&1
  echo "container-engine: built stand-in $PYTHON_IMAGE"
fi

if ! podman image exists "$REDIS_IMAGE"; then
  dir=$ROOTS/redis
  if [ ! -x "$dir/usr/bin/redis-server" ]; then
    rm -rf "$dir"
    cp -a "$(base_root)" "$dir"
    mount --bind /proc "$dir/proc"
    trap 'umount "$dir/proc" 2>/dev/null || true' EXIT
    cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
    chroot "$dir" apt-get update -qq
    chroot "$dir" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
    umount "$dir/proc"
    trap - EXIT
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    mkdir -p "$dir/data"
    chroot "$dir" chown redis:redis /data
    # Like the official image's entry point: no config file, so no protected mode.
    printf '%s\n' '#!/bin/sh' 'set -e' \
      'if [ "$1" = redis-server ]; then shift; set -- redis-server --protected-mode no "$@"; fi' \
      'exec "$@"' > "$dir/usr/local/bin/docker-entrypoint.sh"
    chmod 755 "$dir/usr/local/bin/docker-entrypoint.sh"
  fi
  tar -C "$dir" -c . | podman import --change 'WORKDIR /data' --change 'EXPOSE 6379' \
    --change 'ENTRYPOINT ["docker-entrypoint.sh"]' --change 'CMD ["redis-server"]' \
    - "$REDIS_IMAGE" >/dev/null 2>&1
  echo "container-engine: built stand-in $REDIS_IMAGE"
fi

podman info --format '{{.Host.OCIRuntime.Name}} {{.Version.Version}}' | sed 's/^/container-engine: podman ready, runtime /'

# 4. Docker Engine and a Swarm, with the same base images.
if ! command -v dockerd >/dev/null; then
  apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  nohup dockerd >/var/log/friendlyhello-dockerd.log 2>&1 &
  for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null || { echo "container-engine: dockerd did not start:"; tail -n 20 /var/log/friendlyhello-dockerd.log; exit 1; }
fi
for image in "$PYTHON_IMAGE" "$REDIS_IMAGE"; do
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    podman save "$image" | docker load >/dev/null
  fi
done
swarm
