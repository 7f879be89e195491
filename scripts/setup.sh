#!/usr/bin/env bash
# Idempotent machine + project setup: Docker Engine (Debian docker.io), the static
# binaries the offline images are built from, a virtualenv with the pinned project,
# and the offline images. Safe to run again; does nothing that is already done.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CAPSULED_VENV:-$ROOT/.venv}
export DEBIAN_FRONTEND=noninteractive

need_pkgs=()
# docker-registry and apache2-utils (htpasswd): the private registry the registry tests run.
# nftables: the agent programs capsule services' VIPs with `nft` (kernel NAT; IPVS is not
# in every kernel, this project's CI kernel has none).
# chromium: the web dashboard's end-to-end test drives Debian's build through Playwright
# (tests/e2e/test_ui.py; no `playwright install`, which downloads a browser of its own).
for p in docker.io busybox-static catatonit iptables iproute2 docker-registry apache2-utils nftables chromium; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# An engine whose default bridge interface has vanished (deleted by some other dockerd
# that shared the machine's links) fails every container start until it recreates the
# bridge, which it does only when it starts: restart it.
bridge_if=$(/usr/bin/docker -H unix:///var/run/docker.sock network inspect \
  -f '{{index .Options "com.docker.network.bridge.name"}}' bridge 2>/dev/null || true)
if [ -n "$bridge_if" ] && ! ip link show "$bridge_if" >/dev/null 2>&1; then
  echo "setup: restarting dockerd, whose bridge $bridge_if is missing"
  pid=$(cat /var/run/docker.pid 2>/dev/null || true)
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
fi

# Start dockerd when no engine answers on the default socket.
if ! /usr/bin/docker -H unix:///var/run/docker.sock version >/dev/null 2>&1; then
  echo "setup: starting dockerd"
  mkdir -p /var/log
  # Debian's docker.io installs the daemon in /usr/sbin, which is not on every PATH.
  dockerd_bin=$(PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH" command -v dockerd || true)
  [ -n "$dockerd_bin" ] || { echo "setup: dockerd not found after installing docker.io" >&2; exit 1; }
  nohup "$dockerd_bin" >/var/log/capsuled-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    /usr/bin/docker version >/dev/null 2>&1 && break
    sleep 0.5
  done
  /usr/bin/docker version >/dev/null 2>&1 || { echo "setup: dockerd did not start; see /var/log/capsuled-dockerd.log" >&2; tail -20 /var/log/capsuled-dockerd.log >&2; exit 1; }
fi

# Security groups are iptables rules in FORWARD (agent/firewall.py): packets between
# containers on one bridge reach them only with br_netfilter's bridge-nf-call-iptables.
if [ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null)" != "1" ]; then
  echo "setup: enabling net.bridge.bridge-nf-call-iptables (security groups)"
  modprobe br_netfilter 2>/dev/null || true
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 || echo "setup: could not set net.bridge.bridge-nf-call-iptables=1: security groups will not filter traffic within a host's project network" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi
stamp="$VENV/.capsuled-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$ROOT/constraints.txt" -nt "$stamp" ]; then
  echo "setup: installing the project into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -c "$ROOT/constraints.txt" -e "$ROOT[test]"
  touch "$stamp"
fi

"$VENV/bin/capsuled" image seed
