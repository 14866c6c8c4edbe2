#!/usr/bin/env bash
# Bring up (or down) a Docker daemon and a Podman API service on a bare Debian 12 machine (root), and for the
# swarm backend a single-node swarm on dockerd plus a local registry (Debian docker-registry) on 127.0.0.1:5000.
#
#   bash .ci/daemons.sh up     # install if needed, start both, wait for GET /_ping on both sockets
#   bash .ci/daemons.sh down [docker|podman]   # stop both (or one) by recorded PID
#   bash .ci/daemons.sh status
#   bash .ci/daemons.sh registry ADDR NAME   # one more registry serving the same storage on ADDR
#
# Idempotent and quick when already done. Nothing is ever pulled from a registry.
# Notes for this kind of VM: raising rlimits is forbidden and crun rejects the hybrid cgroup
# layout, so podman is pinned to runc and to ulimits at or below the current hard limits.
set -euo pipefail

STATE_DIR=${LAZY_PROXY_DAEMONS_DIR:-/tmp/lazy-proxy-daemons}
DOCKER_SOCK=/var/run/docker.sock
PODMAN_SOCK=/run/podman/podman.sock
WAIT_SECONDS=${DAEMONS_WAIT_SECONDS:-60}
REGISTRY_ADDR=${LAZY_PROXY_REGISTRY:-127.0.0.1:5000}

mkdir -p "$STATE_DIR"

log() { printf '[daemons] %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then log "must run as root"; exit 2; fi
}

retry() {  # retry <cmd...>: a flaky mirror should not fail CI
  local n
  for n in 1 2 3; do
    "$@" && return 0
    log "attempt $n failed: $*"; sleep $((n * 5))
  done
  return 1
}

install_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  # podman's Init=true (HostConfig.Init) needs catatonit; Debian's podman only recommends it.
  [ -x /usr/libexec/podman/catatonit ] || missing+=(catatonit)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
  [ ${#missing[@]} -eq 0 ] && return 0
  export DEBIAN_FRONTEND=noninteractive
  if [ ! -f "$STATE_DIR/apt-updated" ]; then
    log "apt-get update"
    retry apt-get update -qq
    touch "$STATE_DIR/apt-updated"
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    log "installing docker.io"
    retry apt-get install -y -qq --no-install-recommends docker.io >/dev/null
  fi
  if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 \
      || [ ! -x /usr/libexec/podman/catatonit ]; then
    log "installing podman runc catatonit"
    retry apt-get install -y -qq podman runc catatonit >/dev/null
  fi
  command -v curl >/dev/null 2>&1 || retry apt-get install -y -qq --no-install-recommends curl >/dev/null
  if ! command -v docker-registry >/dev/null 2>&1; then
    log "installing docker-registry"
    retry apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
  fi
}

write_containers_conf() {
  local want
  want=$(cat <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF
)
  mkdir -p /etc/containers
  if [ ! -f /etc/containers/containers.conf ] || [ "$(cat /etc/containers/containers.conf)" != "$want" ]; then
    log "writing /etc/containers/containers.conf"
    printf '%s\n' "$want" > /etc/containers/containers.conf
  fi
}

ping() {  # ping <socket>
  curl -fsS --max-time 2 --unix-socket "$1" http://d/_ping >/dev/null 2>&1
}

pid_alive() {  # pid_alive <pidfile>
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

start_dockerd() {
  if ping "$DOCKER_SOCK"; then log "dockerd already answering"; return 0; fi
  if pid_alive "$STATE_DIR/dockerd.pid"; then log "dockerd running (pid $(cat "$STATE_DIR/dockerd.pid")), waiting"; return 0; fi
  log "starting dockerd (log: $STATE_DIR/dockerd.log)"
  (cd / && exec setsid nohup dockerd --host "unix://$DOCKER_SOCK") >"$STATE_DIR/dockerd.log" 2>&1 </dev/null &  # cwd /: a deleted directory breaks conmon
  echo $! >"$STATE_DIR/dockerd.pid"
}

start_podman() {
  if ping "$PODMAN_SOCK"; then log "podman service already answering"; return 0; fi
  if pid_alive "$STATE_DIR/podman.pid"; then log "podman service running (pid $(cat "$STATE_DIR/podman.pid")), waiting"; return 0; fi
  mkdir -p "$(dirname "$PODMAN_SOCK")"
  rm -f "$PODMAN_SOCK"
  log "starting podman system service (log: $STATE_DIR/podman.log)"
  (cd / && exec setsid nohup podman system service --time=0 "unix://$PODMAN_SOCK") >"$STATE_DIR/podman.log" 2>&1 </dev/null &  # cwd /: a deleted directory breaks conmon
  echo $! >"$STATE_DIR/podman.pid"
}

start_registry() {  # start_registry <addr> <name>: swarm resolves every image in a registry; no auth, the one storage
  local addr=$1 name=$2
  if curl -fs --max-time 2 "http://$addr/v2/" >/dev/null 2>&1; then log "$name already answering on $addr"; return 0; fi
  mkdir -p "$STATE_DIR/registry"
  cat >"$STATE_DIR/$name.yml" <<CONF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE_DIR/registry
  delete:
    enabled: true
http:
  addr: $addr
CONF
  log "starting docker-registry $name on $addr (log: $STATE_DIR/$name.log)"
  (cd / && exec setsid nohup docker-registry serve "$STATE_DIR/$name.yml") >"$STATE_DIR/$name.log" 2>&1 </dev/null &  # cwd /: a deleted directory breaks conmon
  echo $! >"$STATE_DIR/$name.pid"
  local deadline=$(( $(date +%s) + WAIT_SECONDS ))
  until curl -fs --max-time 2 "http://$addr/v2/" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then log "$name did not answer; log tail:"; tail -n 20 "$STATE_DIR/$name.log" >&2; return 1; fi
    sleep 0.2
  done
}

init_swarm() {  # a single-node swarm on dockerd, advertised on loopback (idempotent)
  local state
  state=$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown)
  if [ "$state" = active ]; then log "swarm already active"; return 0; fi
  log "docker swarm init (was $state)"
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null
}

wait_for() {  # wait_for <name> <socket> <logfile>
  local deadline=$(( $(date +%s) + WAIT_SECONDS ))
  until ping "$2"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "$1 did not answer GET /_ping on $2 within ${WAIT_SECONDS}s; log tail:"
      tail -n 40 "$3" >&2 2>/dev/null || true
      return 1
    fi
    sleep 0.3
  done
  log "$1 ready on $2"
}

stop_one() {  # stop_one <pidfile> <name>
  local pidfile=$1 name=$2 pid
  if ! pid_alive "$pidfile"; then rm -f "$pidfile"; log "$name not running (by recorded pid)"; return 0; fi
  pid=$(cat "$pidfile")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then log "$name did not exit, SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
}

case "${1:-up}" in
  up)
    need_root
    install_packages
    write_containers_conf
    start_dockerd
    start_podman
    rc=0
    wait_for dockerd "$DOCKER_SOCK" "$STATE_DIR/dockerd.log" || rc=1
    wait_for podman "$PODMAN_SOCK" "$STATE_DIR/podman.log" || rc=1
    start_registry "$REGISTRY_ADDR" registry || rc=1
    if [ $rc = 0 ]; then init_swarm || rc=1; fi
    exit $rc
    ;;
  down)  # down [docker|podman]: both (and the registry) by default
    if [ "${2:-all}" = all ]; then stop_one "$STATE_DIR/registry.pid" docker-registry; fi
    if [ "${2:-all}" != docker ]; then stop_one "$STATE_DIR/podman.pid" podman; fi
    if [ "${2:-all}" != podman ]; then stop_one "$STATE_DIR/dockerd.pid" dockerd; fi
    ;;
  registry)  # registry <addr> <name>: one more registry on the same storage (.ci/swarm_nodes.sh: on its bridge)
    start_registry "$2" "$3"
    ;;
  status)
    ping "$DOCKER_SOCK" && echo "docker: up ($DOCKER_SOCK)" || echo "docker: down"
    ping "$PODMAN_SOCK" && echo "podman: up ($PODMAN_SOCK)" || echo "podman: down"
    curl -fsS --max-time 2 "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1 && echo "registry: up ($REGISTRY_ADDR)" || echo "registry: down"
    echo "swarm: $(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown)"
    ;;
  *)
    echo "usage: $0 up|down|status|registry ADDR NAME" >&2; exit 2 ;;
esac
