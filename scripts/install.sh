#!/usr/bin/env bash
# Production install of capsuled from this checkout (Debian 12, as root):
#
#   scripts/install.sh [--prefix /opt/capsuled] [--mode all-in-one|api|agent]
#                      [--etc-dir /etc/capsuled] [--state-dir /var/lib/capsuled] [--no-system]
#
#   PREFIX/venv              a virtualenv with the pinned dependencies (constraints.txt) and
#                            capsuled itself (not editable: the checkout can go away)
#   PREFIX/share             the sample configuration of the installed version, the README,
#                            the systemd units and logrotate file as installed
#   ETC/capsuled.conf        from the sample when absent (never overwritten), 0640 root:capsuled
#   STATE                    /var/lib/capsuled: the database (all-in-one), the admin token
#   /etc/systemd/system      capsuled.service (all-in-one), capsuled-api.service,
#                            capsuled-agent.service; the one of --mode is enabled and started
#   /etc/logrotate.d/capsuled   for log_file = "/var/log/capsuled/capsuled.log"
#
# The all-in-one server and the agent run as root (they drive Docker, iptables, nftables
# and network namespaces: packaging/systemd/*.service say why); the API server runs as the
# `capsuled` system user, which this makes. Idempotent: run it again from a newer checkout
# to upgrade. The package is reinstalled when the checkout changed, and the running unit
# is restarted: the server migrates the database when it starts, and capsules keep running
# through the restart (their containers are the Docker Engine's, adopted again at start).
#
# --no-system skips everything outside PREFIX, --etc-dir and --state-dir (apt, the user,
# /etc/systemd, /etc/logrotate.d, systemctl): the units are still rendered into
# PREFIX/share/systemd. pip honours PIP_INDEX_URL / PIP_FIND_LINKS for offline installs.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=/opt/capsuled
MODE=all-in-one
ETC=/etc/capsuled
STATE=/var/lib/capsuled
SYSTEM=1
PYTHON=${PYTHON:-python3}
export DEBIAN_FRONTEND=noninteractive

usage() { sed -n '4,5p' "$0" | sed 's/^#  *//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --mode) MODE=${2:?--mode needs all-in-one, api or agent}; shift 2 ;;
    --mode=*) MODE=${1#*=}; shift ;;
    --etc-dir) ETC=${2:?--etc-dir needs a directory}; shift 2 ;;
    --etc-dir=*) ETC=${1#*=}; shift ;;
    --state-dir) STATE=${2:?--state-dir needs a directory}; shift 2 ;;
    --state-dir=*) STATE=${1#*=}; shift ;;
    --no-system) SYSTEM=0; shift ;;
    -h|--help) usage ;;
    *) echo "install: unknown argument $1" >&2; usage ;;
  esac
done
case "$MODE" in
  all-in-one) UNIT=capsuled.service; SUBCOMMAND= ;;
  api) UNIT=capsuled-api.service; SUBCOMMAND=api ;;
  agent) UNIT=capsuled-agent.service; SUBCOMMAND=agent ;;
  *) echo "install: --mode must be all-in-one, api or agent, not $MODE" >&2; exit 2 ;;
esac
case "$PREFIX$ETC$STATE" in *['#|"']*) echo 'install: paths may not contain #, | or "' >&2; exit 2 ;; esac
if [ "$SYSTEM" = 1 ] && [ "$(id -u)" != 0 ]; then
  echo "install: run as root (or with --no-system into directories of your own)" >&2; exit 1
fi
say() { echo "install: $*"; }
systemd_runs() { [ "$SYSTEM" = 1 ] && [ -d /run/systemd/system ]; }

# ---- packages --------------------------------------------------------------------------
if [ "$SYSTEM" = 1 ]; then
  pkgs=(python3 python3-venv ca-certificates)
  # The agent's host: the engine, the images' static binaries, the kernel tools it drives.
  [ "$MODE" = api ] || pkgs+=(docker.io busybox-static catatonit iptables iproute2 nftables)
  need=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  if [ "$MODE" != api ] && systemd_runs; then
    systemctl enable --now docker.service >/dev/null 2>&1 || say "could not start docker.service"
  fi
  if ! getent group capsuled >/dev/null; then groupadd --system capsuled; fi
  if ! getent passwd capsuled >/dev/null; then
    say "adding the system user capsuled (runs capsuled-api.service)"
    useradd --system --gid capsuled --home-dir "$STATE" --no-create-home \
      --shell /usr/sbin/nologin --comment "Capsuled API server" capsuled
  fi
fi

# ---- the virtualenv and the package ------------------------------------------------------
VENV=$PREFIX/venv
mkdir -p "$PREFIX/share"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# What is installed is this checkout's content: its digest decides whether to reinstall.
digest=$(cd "$ROOT" && find capsuled pyproject.toml constraints.txt README.md -type f \
           ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z \
         | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
stamp=$PREFIX/.installed-from
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ] || ! "$VENV/bin/capsuled" --version >/dev/null 2>&1; then
  say "installing capsuled and its pinned dependencies into $VENV"
  # Built from a copy: pip's in-tree build would leave build/ and *.egg-info in the checkout.
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
  (cd "$ROOT" && cp -r capsuled pyproject.toml constraints.txt README.md "$src/")
  find "$src" -name __pycache__ -prune -exec rm -rf {} +
  pip=("$VENV/bin/pip" -q --disable-pip-version-check)
  "${pip[@]}" wheel --no-deps -w "$src/dist" "$src"
  wheel=$(ls "$src"/dist/capsuled-*.whl)
  "${pip[@]}" install -c "$ROOT/constraints.txt" "$wheel"
  # Same version number, new code (an upgrade between releases): replace the package itself.
  "${pip[@]}" install --no-deps --force-reinstall "$wheel"
  echo "$digest" > "$stamp"
  upgraded=1
else
  say "$VENV is up to date"
  upgraded=0
fi
say "$("$VENV/bin/capsuled" --version)"
"$VENV/bin/capsuled" config sample > "$PREFIX/share/capsuled.conf.sample"
cp "$ROOT/README.md" "$PREFIX/share/README.md"

# ---- configuration, state, logs ----------------------------------------------------------
mkdir -p "$ETC" "$STATE"
chmod 0700 "$STATE"
conf=$ETC/capsuled.conf
if [ -e "$conf" ]; then
  say "kept $conf (compare with $PREFIX/share/capsuled.conf.sample for new options)"
  new_conf=0
else
  install -m 0640 "$PREFIX/share/capsuled.conf.sample" "$conf"
  if [ "$STATE" != /var/lib/capsuled ]; then  # the one option set: where --state-dir said
    sed -i "s|^# state_dir = <.*|state_dir = \"$STATE\"|" "$conf"
  fi
  say "wrote $conf from the sample (options commented out: the defaults)"
  new_conf=1
fi
if [ "$SYSTEM" = 1 ]; then
  chmod 0750 "$ETC"
  chgrp capsuled "$ETC" "$conf"
  mkdir -p /var/log/capsuled
  if [ "$MODE" = api ]; then chown capsuled:capsuled "$STATE" /var/log/capsuled; fi
fi

# ---- systemd units and logrotate -------------------------------------------------------
mkdir -p "$PREFIX/share/systemd"
for unit in "$ROOT"/packaging/systemd/*.service; do
  sed -e "s#/opt/capsuled#$PREFIX#g" -e "s#/etc/capsuled/#$ETC/#g" "$unit" \
    > "$PREFIX/share/systemd/$(basename "$unit")"
done
cp "$ROOT/packaging/logrotate/capsuled" "$PREFIX/share/logrotate"
if [ "$SYSTEM" = 1 ]; then
  for unit in "$PREFIX"/share/systemd/*.service; do
    install -m 0644 "$unit" "/etc/systemd/system/$(basename "$unit")"
  done
  install -m 0644 "$PREFIX/share/logrotate" /etc/logrotate.d/capsuled
fi

run_by_hand="$VENV/bin/capsuled --config-file $conf${SUBCOMMAND:+ $SUBCOMMAND}"
if systemd_runs; then
  systemctl daemon-reload
  systemctl enable "$UNIT" >/dev/null 2>&1
  if [ "$MODE" = agent ] && [ "$new_conf" = 1 ]; then
    say "set agent.api_url and agent.token_file in $conf, then: systemctl start $UNIT"
  elif systemctl is-active --quiet "$UNIT"; then
    if [ "$upgraded" = 1 ]; then
      say "restarting $UNIT (it migrates the database as it starts; capsules keep running)"
      systemctl restart "$UNIT"
    fi
  else
    systemctl start "$UNIT"
    say "started $UNIT"
  fi
elif [ "$SYSTEM" = 1 ]; then
  say "systemd is not running on this machine: start capsuled yourself: $run_by_hand"
fi
say "check it with: $VENV/bin/capsuled --config-file $conf doctor --mode $MODE"
