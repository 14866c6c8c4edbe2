#!/usr/bin/env bash
# A two-node Docker Swarm on one machine, for the swarm backend's multi-host tests (tests/engines/test_swarm_nodes.py):
# two more dockerds, each in its own network namespace (the nodes 10.231.0.2 and 10.231.0.3) on a host bridge
# (10.231.0.1); the first is the swarm's manager, the second joins it as a worker. They pull images from a
# registry on the bridge address that serves the same storage as the loopback one of .ci/daemons.sh, so an
# image pushed there as 127.0.0.1:5000/NAME is 10.231.0.1:5000/NAME here.
#
#   bash .ci/swarm_nodes.sh up       # idempotent; needs root, dockerd and docker-registry (.ci/daemons.sh up)
#   bash .ci/swarm_nodes.sh down
#   bash .ci/swarm_nodes.sh status
#
# The manager's API socket is $STATE_DIR/node2/docker.sock. dockerd runs under `nsenter --net` (not `ip netns
# exec`, which remounts /sys and hides the cgroup mounts dockerd needs).
set -euo pipefail

STATE_DIR=${LAZY_PROXY_NODES_DIR:-/tmp/lazy-proxy-nodes}
DAEMONS_DIR=${LAZY_PROXY_DAEMONS_DIR:-/tmp/lazy-proxy-daemons}
BRIDGE=lpbr0
NET=10.231.0
REGISTRY_ADDR=$NET.1:5000
NODES=(2 3)
WAIT_SECONDS=${DAEMONS_WAIT_SECONDS:-60}

log() { printf '[swarm-nodes] %s\n' "$*" >&2; }
sock() { echo "$STATE_DIR/node$1/docker.sock"; }
dk() { local n=$1; shift; docker -H "unix://$(sock "$n")" "$@"; }
ping_node() { curl -fsS --max-time 2 --unix-socket "$(sock "$1")" http://d/_ping >/dev/null 2>&1; }

until_true() {  # until_true <what> <cmd...>
  local what=$1 deadline=$(( $(date +%s) + WAIT_SECONDS )); shift
  until "$@"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then log "$what: not within ${WAIT_SECONDS}s"; return 1; fi
    sleep 0.3
  done
}

network_up() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "bridge $BRIDGE $NET.1/24"
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  # dockerd's FORWARD policy is DROP and bridged frames pass through iptables: let the nodes talk.
  iptables -C FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null \
    || iptables -I FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  local n
  for n in "${NODES[@]}"; do
    ip netns list | grep -qw "lpnode$n" && continue
    log "node $n: netns lpnode$n, $NET.$n"
    ip netns add "lpnode$n"
    ip link add "lpv$n" type veth peer name eth0 netns "lpnode$n"
    ip link set "lpv$n" master "$BRIDGE"
    ip link set "lpv$n" up
    ip netns exec "lpnode$n" ip addr add "$NET.$n/24" dev eth0
    ip netns exec "lpnode$n" ip link set eth0 up
    ip netns exec "lpnode$n" ip link set lo up
    ip netns exec "lpnode$n" ip route add default via "$NET.1"
  done
}

dockerd_up() {  # dockerd_up <n>
  local n=$1 dir="$STATE_DIR/node$1"
  if ping_node "$n"; then return 0; fi
  mkdir -p "$dir/data" "$dir/exec"
  printf '{"insecure-registries": ["%s"]}\n' "$REGISTRY_ADDR" >"$dir/daemon.json"
  log "node $n: dockerd (log: $dir/dockerd.log)"
  echo "--- [swarm-nodes] dockerd start $(date -u +%FT%TZ)" >>"$dir/dockerd.log"  # appended: a crash's log survives the restart
  (cd / && exec setsid nohup nsenter --net="/var/run/netns/lpnode$n" dockerd --config-file "$dir/daemon.json" \
    --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/docker.pid" \
    -H "unix://$(sock "$n")" --bip "172.3$n.0.1/16") >>"$dir/dockerd.log" 2>&1 </dev/null &  # cwd /: a deleted directory breaks conmon
}

registry_up() {  # the nodes pull from the bridge address; the same storage as the loopback registry
  bash "$(dirname "$0")/daemons.sh" registry "$REGISTRY_ADDR" registry-nodes
}

ready_nodes() { [ "$(dk 2 node ls --format '{{.Status}}' 2>/dev/null | grep -c Ready)" -ge "${#NODES[@]}" ]; }

swarm_up() {
  if [ "$(dk 2 info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    log "node 2: swarm init (manager)"
    dk 2 swarm init --advertise-addr "$NET.2" >/dev/null
  fi
  if [ "$(dk 3 info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    log "node 3: swarm join (worker)"
    dk 3 swarm join --token "$(dk 2 swarm join-token -q worker)" "$NET.2:2377" >/dev/null
  fi
  until_true "both nodes Ready" ready_nodes
}

stop_pid() {  # stop_pid <pidfile>
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
}

case "${1:-up}" in
  up)
    [ "$(id -u)" = 0 ] || { log "must run as root"; exit 2; }
    mkdir -p "$STATE_DIR"
    network_up
    for n in "${NODES[@]}"; do dockerd_up "$n"; done
    for n in "${NODES[@]}"; do until_true "node $n dockerd" ping_node "$n"; done
    registry_up
    swarm_up
    log "two-node swarm ready: manager $(sock 2)"
    ;;
  down)
    for n in "${NODES[@]}"; do
      dk "$n" swarm leave --force >/dev/null 2>&1 || true
      stop_pid "$STATE_DIR/node$n/docker.pid"
      ip netns del "lpnode$n" 2>/dev/null || true
    done
    stop_pid "$DAEMONS_DIR/registry-nodes.pid"
    iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null || true
    ip link del "$BRIDGE" 2>/dev/null || true
    ;;
  status)
    for n in "${NODES[@]}"; do
      ping_node "$n" && echo "node $n: up ($(dk "$n" info --format '{{.Swarm.LocalNodeState}}'))" || echo "node $n: down"
    done
    ;;
  *)
    echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
