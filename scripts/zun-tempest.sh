#!/usr/bin/env bash
# Opt-in: run Zun's own tempest suite (zun-tempest-plugin's API tests) against Capsuled,
# as a Zun user's tooling would: a real Keystone (scripts/keystone.sh) with Capsuled in its
# catalog as `container`, pre-provisioned credentials, Neutron/Glance/Cinder unavailable.
# Not part of scripts/test.sh: it installs tempest (network access for pip, first run only)
# and takes ~10 minutes.
#
#   scripts/zun-tempest.sh [--results DIR] [--regex REGEX] [--only lowest|highest]
#
# Two runs: "lowest" (no configured minimum: each class at its own minimum, i.e.
# TestContainerLegacy at 1.1, TestContainer at 1.20, TestService at 1.7) and "highest"
# (min_microversion = 1.40). Each run's subunit stream, its tempest log and the servers'
# logs are kept in the results directory (printed at the end). Exit status: 0 when every
# failure is listed in scripts/zun-tempest-expected-failures.txt, 1 otherwise.
#
# Environment: CAPSULED_TEMPEST_VENV (default /var/cache/capsuled/tempest-venv as root,
# else .tempest-venv), CAPSULED_KEYSTONE_VENV (as in scripts/keystone.sh; the same
# /var/cache default as scripts/test.sh when root), CAPSULED_VENV (the project's, .venv),
# ZUN_TEMPEST_CONCURRENCY (parallel workers, default 2: one credential pair each),
# ZUN_TEMPEST_RUN_TIMEOUT (seconds per run, default 1800).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONSTRAINTS=$ROOT/scripts/tempest-constraints.txt
EXPECTED=$ROOT/scripts/zun-tempest-expected-failures.txt
CAPSULED_VENV=${CAPSULED_VENV:-$ROOT/.venv}
CONCURRENCY=${ZUN_TEMPEST_CONCURRENCY:-2}
RUN_TIMEOUT=${ZUN_TEMPEST_RUN_TIMEOUT:-1800}
if [ "$(id -u)" = 0 ]; then
  # Outside the checkout: survives fresh clones, so only a machine's first run installs.
  VENV=${CAPSULED_TEMPEST_VENV:-/var/cache/capsuled/tempest-venv}
  export CAPSULED_KEYSTONE_VENV=${CAPSULED_KEYSTONE_VENV:-/var/cache/capsuled/keystone-venv}
else
  VENV=${CAPSULED_TEMPEST_VENV:-$ROOT/.tempest-venv}
fi
# The images the tests name. cirros/ubuntu: busybox (every test that uses them gives a
# command); nginx: busybox with a long-running default command, made locally (no pull).
TEST_IMAGE=busybox:latest
NGINX_IMAGE=capsuled-tempest/nginx:latest
PASSWORD=tempest-secret

RESULTS=
REGEX='^zun_tempest_plugin\.tests\.tempest\.api\.'
ONLY=
while [ $# -gt 0 ]; do
  case "$1" in
    --results) RESULTS=$2; shift 2 ;;
    --regex) REGEX=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    *) echo "zun-tempest.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$ONLY" in ""|lowest|highest) ;; *) echo "zun-tempest.sh: --only lowest|highest" >&2; exit 2 ;; esac

log() { echo "zun-tempest: $*" >&2; }

# 0. The project (Docker Engine, .venv, busybox:latest) and the tempest virtualenv.
bash "$ROOT/scripts/setup.sh" >/dev/null
stamp=$VENV/.capsuled-installed
if [ ! -f "$stamp" ] || ! cmp -s "$CONSTRAINTS" "$stamp"; then
  log "installing tempest and zun-tempest-plugin into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -c "$CONSTRAINTS" \
    tempest zun-tempest-plugin >"$VENV/install.log" 2>&1 || { tail -40 "$VENV/install.log" >&2; exit 1; }
  cp "$CONSTRAINTS" "$stamp"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/capsuled-tempest.XXXXXX")
RESULTS=${RESULTS:-$WORK/results}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
free_port() { "$CAPSULED_VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KS_PORT=$(free_port)
CAP_PORT=$(free_port)
while [ "$CAP_PORT" = "$KS_PORT" ]; do CAP_PORT=$(free_port); done
CAP_URL=http://127.0.0.1:$CAP_PORT
CAP_PID=
TEMPEST_PID=
MADE_NGINX=

# Everything this run started goes on exit, whatever the exit: capsuled, the Docker
# objects of its instance (by label), Keystone, the nginx stand-in image if we made it.
cleanup() {
  set +e
  if [ -n "$TEMPEST_PID" ] && kill -0 "$TEMPEST_PID" 2>/dev/null; then
    kill -TERM "$TEMPEST_PID"
    wait "$TEMPEST_PID" 2>/dev/null
  fi
  if [ -n "$CAP_PID" ] && kill -0 "$CAP_PID" 2>/dev/null; then
    kill -TERM "$CAP_PID"
    for _ in $(seq 1 100); do kill -0 "$CAP_PID" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$CAP_PID" 2>/dev/null && kill -KILL "$CAP_PID"
  fi
  if [ -f "$WORK/capsuled/capsuled.db" ]; then
    "$CAPSULED_VENV/bin/python" - "$WORK/capsuled/capsuled.db" <<'EOF'
import sqlite3, sys
import docker
with sqlite3.connect(sys.argv[1]) as db:
    row = db.execute("select value from meta where key='instance_id'").fetchone()
if row:
    api = docker.APIClient(base_url="unix:///var/run/docker.sock", version="auto")
    label = f"capsuled.instance={row[0]}"
    for c in api.containers(all=True, filters={"label": [label]}):
        api.remove_container(c["Id"], force=True)
    for v in (api.volumes(filters={"label": [label]}) or {}).get("Volumes") or []:
        api.remove_volume(v["Name"], force=True)
    for n in api.networks(filters={"label": [label]}):
        api.remove_network(n["Id"])
EOF
  fi
  bash "$ROOT/scripts/keystone.sh" stop --state-dir "$WORK/keystone" >/dev/null 2>&1
  [ -n "$MADE_NGINX" ] && docker rmi "$NGINX_IMAGE" >/dev/null 2>&1
  # Keep the logs with the results; drop the state (databases, keys, tokens).
  cp "$WORK/capsuled/server.log" "$RESULTS/capsuled.log" 2>/dev/null
  cp "$WORK/keystone/keystone.log" "$RESULTS/keystone.log" 2>/dev/null
  cp "$WORK/keystone/uwsgi.log" "$RESULTS/keystone-uwsgi.log" 2>/dev/null
  rm -rf "$WORK/capsuled" "$WORK/keystone" "$WORK/lowest" "$WORK/highest" "$WORK/accounts.yaml" \
    "$WORK/workspaces.yaml" "$WORK/tempest-etc"
  rmdir "$WORK" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. The nginx stand-in: busybox:latest plus a default command that keeps running.
if ! docker image inspect "$NGINX_IMAGE" >/dev/null 2>&1; then
  cid=$(docker create "$TEST_IMAGE" true)
  docker commit --change 'CMD ["sleep", "1000000"]' "$cid" "$NGINX_IMAGE" >/dev/null
  docker rm "$cid" >/dev/null
  MADE_NGINX=1
fi

# 2. Keystone, with capsuled's URL in its catalog (capsuled is not up yet: it is only a URL).
log "keystone on 127.0.0.1:$KS_PORT, capsuled on $CAP_URL (work dir $WORK)"
# One request at a time: the workers log in concurrently, and two password logins at once
# can hit SQLite's "database is locked" in Keystone (each writes last_active_at).
KEYSTONE_UWSGI_THREADS=1 bash "$ROOT/scripts/keystone.sh" start --state-dir "$WORK/keystone" \
  --port "$KS_PORT" --container-url "$CAP_URL/v1"
# shellcheck disable=SC1091
source "$WORK/keystone/capsuled.env"
AUTH_URL=$CAPSULED_KEYSTONE__AUTH_URL

# 3. Capsuled all-in-one with Keystone identity.
mkdir -p "$WORK/capsuled"
CAPSULED_AGENT__RELIST_INTERVAL=2 "$CAPSULED_VENV/bin/capsuled" --state-dir "$WORK/capsuled" \
  --listen "127.0.0.1:$CAP_PORT" >"$WORK/capsuled/server.log" 2>&1 &
CAP_PID=$!
up=
for _ in $(seq 1 150); do
  if "$CAPSULED_VENV/bin/python" -c "import sys, httpx; sys.exit(httpx.get(sys.argv[1], timeout=1).status_code != 200)" \
      "$CAP_URL/" 2>/dev/null; then up=1; break; fi
  kill -0 "$CAP_PID" 2>/dev/null || break
  sleep 0.2
done
[ -n "$up" ] || { log "capsuled did not answer on $CAP_URL"; tail -30 "$WORK/capsuled/server.log" >&2; exit 1; }

# 4. Pre-provisioned credentials: per worker, a member in its own project and an admin
# (role admin on the `admin` project, the one Capsuled's is_admin_project accepts).
"$CAPSULED_KEYSTONE_VENV/bin/python" - "$AUTH_URL" "${KEYSTONE_ADMIN_PASSWORD:-admin-secret}" \
  "$PASSWORD" "$CONCURRENCY" "$WORK/accounts.yaml" <<'EOF'
import sys

import yaml
from keystoneauth1 import session
from keystoneauth1.identity import v3
from keystoneclient.v3 import client

auth_url, admin_pw, password, workers, out = sys.argv[1:6]
auth = v3.Password(auth_url=auth_url, username="admin", password=admin_pw,
                   project_name="admin", user_domain_id="default", project_domain_id="default")
ks = client.Client(session=session.Session(auth=auth, timeout=30), interface="public")
roles = {r.name: r for r in ks.roles.list()}
admin_project = ks.projects.list(name="admin", domain="default")[0]
accounts = []
for i in range(1, int(workers) + 1):
    project = ks.projects.create(name=f"tempest-{i}", domain="default")
    member = ks.users.create(name=f"tempest-member-{i}", domain="default", password=password,
                             default_project=project)
    ks.roles.grant(roles["member"], user=member, project=project)
    admin = ks.users.create(name=f"tempest-admin-{i}", domain="default", password=password)
    ks.roles.grant(roles["admin"], user=admin, project=admin_project)
    accounts.append({"username": member.name, "password": password, "project_name": project.name,
                     "domain_name": "Default", "roles": ["member"]})
    accounts.append({"username": admin.name, "password": password, "project_name": "admin",
                     "domain_name": "Default", "roles": ["admin"], "types": ["admin"]})
with open(out, "w") as fh:
    yaml.safe_dump(accounts, fh)
EOF

# 5. One tempest workspace per microversion setting.
workspace() {  # name, min_microversion ("" = none)
  local ws=$WORK/$1
  # Its own workspace registry and (empty) global config dir: nothing goes to ~/.tempest.
  mkdir -p "$WORK/tempest-etc"
  "$VENV/bin/tempest" init --workspace-path "$WORK/workspaces.yaml" --config-dir "$WORK/tempest-etc" \
    --name "$1" "$ws" >/dev/null
  cat >"$ws/etc/tempest.conf" <<EOF
[DEFAULT]
log_dir = $ws
log_file = tempest.log
use_stderr = False
[oslo_concurrency]
lock_path = $ws/locks
[auth]
use_dynamic_credentials = False
test_accounts_file = $WORK/accounts.yaml
default_credentials_domain_name = Default
admin_username = tempest-admin-1
admin_password = $PASSWORD
admin_project_name = admin
admin_domain_name = Default
[identity]
uri_v3 = $AUTH_URL
auth_version = v3
region = RegionOne
v3_endpoint_type = public
[identity-feature-enabled]
api_v2 = False
[service_available]
zun = True
neutron = False
glance = False
cinder = False
nova = False
swift = False
[validation]
run_validation = False
[container_service]
catalog_type = container
cirros_image = $TEST_IMAGE
ubuntu_image = $TEST_IMAGE
nginx_image = $NGINX_IMAGE
wait_timeout = 60
max_microversion = latest
${2:+min_microversion = $2}
[docker]
api_url = unix:///var/run/docker.sock
EOF
}

run() {  # name, min_microversion
  local ws=$WORK/$1 rc=0
  workspace "$1" "$2"
  log "run $1 (min_microversion ${2:-unset}): tempest run --concurrency $CONCURRENCY"
  # Bounded: a hung worker must not hold the job forever (a normal run takes ~3 minutes).
  # In the background and waited for, so that a signal reaches the trap at once (bash runs
  # traps only between foreground commands); `timeout` leads its own process group, and a
  # TERM sent to it goes to tempest and its stestr workers too.
  (cd "$ws" && exec timeout -k 30 "$RUN_TIMEOUT" "$VENV/bin/tempest" run --regex "$REGEX" \
     --concurrency "$CONCURRENCY") >"$RESULTS/$1.out" 2>&1 &
  TEMPEST_PID=$!
  wait "$TEMPEST_PID" || true
  TEMPEST_PID=
  (cd "$ws" && "$VENV/bin/stestr" last --subunit >"$RESULTS/$1.subunit" 2>/dev/null) || true
  cp "$ws/tempest.log" "$RESULTS/$1.tempest.log" 2>/dev/null || true
  "$VENV/bin/python" "$ROOT/scripts/zun-tempest-summary.py" "$1" "$RESULTS/$1.subunit" "$EXPECTED" \
    || rc=1
  return $rc
}

status=0
[ "$ONLY" = highest ] || run lowest "" || status=1
[ "$ONLY" = lowest ] || run highest 1.40 || status=1
log "results (subunit streams, tempest output and logs, failure lists): $RESULTS"
exit $status
