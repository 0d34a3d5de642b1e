#!/usr/bin/env bash
# Make the container engines usable on this machine for the container tests, offline.
#
# On Debian, as root (as CI runs it), this:
#  1. installs rootful podman, runc and debootstrap from Debian's packages;
#  2. writes /etc/containers/containers.conf so podman runs inside a sandbox without systemd
#     (cgroupfs, runc, file events, rlimits it may set) and, like Docker 20.10+, lets non-root
#     users in a container bind ports below 1024;
#  3. builds stand-ins for the two base images when no registry can be reached: a minimal
#     Debian root with python3 for amd64 and one for arm64 (debootstrap runs the arm64 one's
#     second stage under Debian's qemu-user-static, registered with binfmt_misc, which then
#     runs the arm64 build's RUN steps too), the two under the Dockerfile's FROM tag as one
#     manifest list, as the official multi-platform image is; and one with redis-server,
#     tagged as compose.yaml's Redis image. Existing images are reused;
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

native=$(dpkg --print-architecture)
base_root() {  # a minimal Debian root with Python for an architecture (default: this one), made once
  local arch=${1:-$native} dir=$ROOTS/python
  [ "$arch" = "$native" ] || dir=$ROOTS/python-$arch
  if [ ! -x "$dir/usr/bin/python3" ]; then
    rm -rf "$dir"
    mkdir -p "$ROOTS"
    debootstrap --arch="$arch" --variant=minbase --include=python3,python-is-python3,ca-certificates \
      bookworm "$dir" "$mirror" >/dev/null
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  fi
  echo "$dir"
}

emulate_arm64() {  # arm64 binaries run here through qemu, in chroots and containers alike
  if ! command -v qemu-aarch64-static >/dev/null || ! command -v update-binfmts >/dev/null; then
    apt-get install -y -qq qemu-user-static binfmt-support >/dev/null
  fi
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || { echo "container-engine: no arm64 emulation"; exit 1; }
}

# The Dockerfile's base, for both architectures: each stand-in under a tag of its own, and the
# official tag a manifest list of the two (podman build --platform picks from it). This
# machine's own architecture is debootstrapped natively, the other (arm64 on amd64) emulated.
instance() { echo "localhost/friendlyhello-standin/python:3.12-slim-$1"; }
if ! podman manifest inspect "$PYTHON_IMAGE" 2>/dev/null | grep -q '"architecture": "arm64"'; then
  emulate_arm64
  if ! podman image exists "$(instance "$native")"; then
    if podman image exists "$PYTHON_IMAGE"; then  # an earlier run's single-platform stand-in
      podman tag "$PYTHON_IMAGE" "$(instance "$native")"
    else
      tar -C "$(base_root)" -c . | podman import --arch "$native" --change 'CMD ["python3"]' - "$(instance "$native")" >/dev/null
    fi
  fi
  for arch in amd64 arm64; do
    if ! podman image exists "$(instance $arch)"; then
      tar -C "$(base_root $arch)" -c . | podman import --arch $arch --change 'CMD ["python3"]' - "$(instance $arch)" >/dev/null
    fi
  done
  podman untag "$PYTHON_IMAGE" >/dev/null 2>&1 || true
  podman manifest rm "$PYTHON_IMAGE" >/dev/null 2>&1 || true
  podman manifest create "$PYTHON_IMAGE" >/dev/null
  for arch in amd64 arm64; do
    podman manifest add "$PYTHON_IMAGE" "containers-storage:$(instance $arch)" >/dev/null
  done
  echo "container-engine: built stand-in $PYTHON_IMAGE for linux/amd64 and linux/arm64"
fi
emulate_arm64

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
if ! docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then  # this machine's architecture, for the Swarm
  podman save "$(instance "$native")" | docker load >/dev/null
  docker tag "$(instance "$native")" "$PYTHON_IMAGE"
fi
if ! docker image inspect "$REDIS_IMAGE" >/dev/null 2>&1; then
  podman save "$REDIS_IMAGE" | docker load >/dev/null
fi
swarm
