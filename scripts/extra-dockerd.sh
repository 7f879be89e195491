#!/usr/bin/env bash
# Start, idempotently, an extra Docker Engine that stands in for another compute host in
# the multi-host tests: its own data root, exec root, socket, pidfile, containerd
# namespaces and address pool, and no changes to the host's iptables.
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
if docker -H "unix://$SOCK" version >/dev/null 2>&1; then
  echo "unix://$SOCK"
  exit 0
fi
dockerd_bin=$(PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH" command -v dockerd)
# Its own default bridge: with --bridge none a starting dockerd deletes docker0, which
# belongs to the machine's main engine.
BRIDGE="capbr$INDEX"
if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link add "$BRIDGE" type bridge
  ip addr add "10.$((100 + INDEX)).255.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
fi
nohup "$dockerd_bin" --data-root "$DIR/data" --exec-root "$RUN/exec" -H "unix://$SOCK" \
  --pidfile "$RUN/docker.pid" --containerd-namespace "cap-$NAME" \
  --containerd-plugins-namespace "cap-$NAME-plugins" --bridge "$BRIDGE" --iptables=false \
  --ip-masq=false --default-address-pool "base=10.$((100 + INDEX)).0.0/16,size=24" \
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
