#!/usr/bin/env bash
# Start, idempotently, an extra Docker Engine that stands in for another compute host in
# the multi-host tests: its own network namespace, data root, exec root, socket, pidfile,
# containerd namespaces and address pool. The network namespace matters: a dockerd that
# shares the machine's links may delete docker0 (the main engine's bridge) when it
# restarts on an existing data root, which breaks every later container on the main
# engine. Only the socket (a path, reachable from any namespace) is shared, and an
# underlay link to the machine's namespace (see below) for project networks across hosts.
#   usage: extra-dockerd.sh NAME INDEX      prints the engine's socket URL
#          extra-dockerd.sh --stop NAME
set -euo pipefail
if [ "${1:-}" = "--stop" ]; then
  pid=$(cat "/run/cap-$2/docker.pid" 2>/dev/null || true)
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  exit 0
fi
NAME=$1
INDEX=${2:-1}
DIR=/var/lib/capsuled-hosts/$NAME
RUN=/run/cap-$NAME
SOCK=$RUN/docker.sock
mkdir -p "$DIR" "$RUN"
NS="cap-$NAME"
[ -e "/run/netns/$NS" ] || ip netns add "$NS"
in_ns() { nsenter --net="/run/netns/$NS" "$@"; }
in_ns ip link set lo up
# The underlay between this host and the machine's own (host A): a veth pair, a /30 of
# 172.31.250.0/24 per index (.1 the machine's side, .2 the namespace's), which project
# networks that span hosts carry their VXLAN traffic over. Idempotent, engine or not.
UL="capul$INDEX"
UL_BASE=$(( (INDEX - 1) * 4 ))
if ! ip link show "$UL" >/dev/null 2>&1; then
  ip link add "$UL" type veth peer name "$UL-ns"
  ip link set "$UL-ns" netns "$NS"
  ip addr add "172.31.250.$((UL_BASE + 1))/30" dev "$UL"
  in_ns ip addr add "172.31.250.$((UL_BASE + 2))/30" dev "$UL-ns"
fi
ip link set "$UL" up
in_ns ip link set "$UL-ns" up
if docker -H "unix://$SOCK" version >/dev/null 2>&1; then
  echo "unix://$SOCK"
  exit 0
fi
dockerd_bin=$(PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH" command -v dockerd)
# Its own default bridge inside the namespace (never --bridge none: that deletes docker0).
BRIDGE="capbr$INDEX"
if ! in_ns ip link show "$BRIDGE" >/dev/null 2>&1; then
  in_ns ip link add "$BRIDGE" type bridge
  in_ns ip addr add "10.$((100 + INDEX)).255.1/24" dev "$BRIDGE"
  in_ns ip link set "$BRIDGE" up
fi
# nsenter enters only the network namespace: the engine keeps the machine's mounts
# (cgroups included), unlike `ip netns exec`, which remounts /sys.
nohup nsenter --net="/run/netns/$NS" "$dockerd_bin" --data-root "$DIR/data" \
  --exec-root "$RUN/exec" -H "unix://$SOCK" --pidfile "$RUN/docker.pid" \
  --containerd-namespace "cap-$NAME" --containerd-plugins-namespace "cap-$NAME-plugins" \
  --bridge "$BRIDGE" --iptables=false --ip-masq=false \
  --default-address-pool "base=10.$((100 + INDEX)).0.0/16,size=24" \
  >"$DIR/dockerd.log" 2>&1 &
for _ in $(seq 60); do
  if docker -H "unix://$SOCK" version >/dev/null 2>&1; then
    echo "unix://$SOCK"
    exit 0
  fi
  sleep 0.5
done
echo "extra-dockerd: $NAME did not start; see $DIR/dockerd.log" >&2
tail -20 "$DIR/dockerd.log" >&2
exit 1
