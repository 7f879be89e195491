#!/usr/bin/env bash
# A real OpenStack Keystone on a loopback port, for testing (and demoing) Capsuled's
# [keystone] identity. Idempotent: every step that is already done is skipped.
#
#   scripts/keystone.sh [start] [--state-dir DIR] [--port PORT] [--container-url URL]
#   scripts/keystone.sh stop [--state-dir DIR]
#   scripts/keystone.sh install     (only the virtualenv: scripts/test.sh makes it early)
#
# start: makes the Keystone virtualenv ($CAPSULED_KEYSTONE_VENV, default .keystone-venv;
# pinned by scripts/keystone-constraints.txt; reused while that file is unchanged), writes
# DIR/keystone.conf (SQLite, fernet tokens, an in-process cache: one uWSGI worker, so a
# revocation invalidates it at once),
# runs keystone-manage db_sync / fernet_setup / credential_setup / bootstrap once per
# state directory, serves keystone.wsgi.api with uWSGI on 127.0.0.1:PORT, and makes:
#   - admin / $KEYSTONE_ADMIN_PASSWORD       project admin, role admin (bootstrap)
#   - capsuled / $KEYSTONE_SERVICE_PASSWORD  project service, role service: validates tokens
#   - demo / $KEYSTONE_DEMO_PASSWORD         project demo, role member
#   - with --container-url: service `zun`, type `container`, public endpoint URL in RegionOne
# and writes DIR/capsuled.env (CAPSULED_KEYSTONE__* for capsuled) and DIR/demo.env
# (OS_* for the zun CLI), both sourceable.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CAPSULED_KEYSTONE_VENV:-$ROOT/.keystone-venv}
CONSTRAINTS=$ROOT/scripts/keystone-constraints.txt
ADMIN_PASSWORD=${KEYSTONE_ADMIN_PASSWORD:-admin-secret}
SERVICE_PASSWORD=${KEYSTONE_SERVICE_PASSWORD:-capsuled-secret}
DEMO_PASSWORD=${KEYSTONE_DEMO_PASSWORD:-demo-secret}
# Every password login writes the user's last_active_at; on SQLite two at once can fail with
# "database is locked" (a 500). Callers that log in concurrently (the tempest job) set 1.
THREADS=${KEYSTONE_UWSGI_THREADS:-4}

action=start
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then action=$1; shift; fi
STATE=${TMPDIR:-/tmp}/capsuled-keystone
PORT=5000
CONTAINER_URL=
while [ $# -gt 0 ]; do
  case "$1" in
    --state-dir) STATE=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --container-url) CONTAINER_URL=$2; shift 2 ;;
    *) echo "keystone.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
# 1. The virtualenv: keystone + uWSGI, separate from the project's. One maker at a time
# (the test run makes it in the background while a test may already ask for it).
make_venv() {
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  flock 9
  local stamp=$VENV/.capsuled-installed
  if [ ! -f "$stamp" ] || ! cmp -s "$CONSTRAINTS" "$stamp"; then
    echo "keystone.sh: installing keystone and uwsgi into $VENV" >&2
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -c "$CONSTRAINTS" keystone uwsgi \
      >"$VENV/install.log" 2>&1 || { tail -40 "$VENV/install.log" >&2; exit 1; }
    cp "$CONSTRAINTS" "$stamp"
  fi
  flock -u 9
  exec 9>&-
}

if [ "$action" = install ]; then
  make_venv
  exit 0
fi

mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
PIDFILE=$STATE/uwsgi.pid
AUTH_URL=http://127.0.0.1:$PORT/v3

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

if [ "$action" = stop ]; then
  if running; then
    pid=$(cat "$PIDFILE")
    kill -INT "$pid"  # uWSGI: SIGINT/SIGQUIT stop it at once, SIGTERM only reloads
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$PIDFILE"
  exit 0
fi
[ "$action" = start ] || { echo "keystone.sh: unknown action $action (start|stop|install)" >&2; exit 2; }

make_venv

# 2. Configuration and the database, once per state directory.
CONF=$STATE/keystone.conf
cat >"$CONF.new" <<EOF
[DEFAULT]
log_file = $STATE/keystone.log
[database]
connection = sqlite:///$STATE/keystone.db
[identity]
# bcrypt's cost: 4 rounds instead of 12 (a test Keystone; every zun command logs in twice)
password_hash_rounds = 4
[token]
provider = fernet
expiration = 3600
[fernet_tokens]
key_repository = $STATE/fernet-keys
[fernet_receipts]
key_repository = $STATE/fernet-keys
[credential]
key_repository = $STATE/credential-keys
[cache]
enabled = true
backend = dogpile.cache.memory
EOF
mv "$CONF.new" "$CONF"
manage() { "$VENV/bin/keystone-manage" --config-file "$CONF" "$@" >>"$STATE/manage.log" 2>&1; }
me=$(id -un); group=$(id -gn)
if [ ! -f "$STATE/.bootstrapped" ]; then
  echo "keystone.sh: db_sync, fernet_setup, credential_setup, bootstrap in $STATE" >&2
  # The key repositories do not touch the database: set them up while it migrates.
  manage fernet_setup --keystone-user "$me" --keystone-group "$group" &
  keys=$!
  manage credential_setup --keystone-user "$me" --keystone-group "$group" &
  creds=$!
  manage db_sync || { tail -20 "$STATE/manage.log" >&2; exit 1; }
  wait $keys && wait $creds || { tail -20 "$STATE/manage.log" >&2; exit 1; }
  manage bootstrap --bootstrap-password "$ADMIN_PASSWORD" --bootstrap-username admin \
    --bootstrap-project-name admin --bootstrap-role-name admin \
    --bootstrap-service-name keystone --bootstrap-region-id RegionOne \
    --bootstrap-public-url "$AUTH_URL" || { tail -20 "$STATE/manage.log" >&2; exit 1; }
  touch "$STATE/.bootstrapped"
fi

# 3. Serve it.
if ! running; then
  echo "keystone.sh: starting uwsgi on 127.0.0.1:$PORT" >&2
  OS_KEYSTONE_CONFIG_FILES=$CONF "$VENV/bin/uwsgi" --http-socket "127.0.0.1:$PORT" \
    --module keystone.wsgi.api:application --master --processes 1 --threads "$THREADS" \
    --die-on-term --need-app --pidfile "$PIDFILE" --daemonize "$STATE/uwsgi.log" \
    --add-header "Connection: close"
fi
up=
for _ in $(seq 1 150); do
  if "$VENV/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
      "$AUTH_URL" 2>/dev/null; then up=1; break; fi
  running || break
  sleep 0.2
done
[ -n "$up" ] || { echo "keystone.sh: keystone did not answer on $AUTH_URL" >&2; tail -30 "$STATE/uwsgi.log" >&2; exit 1; }

# 4. Projects, users, roles and the container endpoint (find or create: idempotent).
"$VENV/bin/python" - "$AUTH_URL" "$ADMIN_PASSWORD" "$SERVICE_PASSWORD" "$DEMO_PASSWORD" "$CONTAINER_URL" <<'EOF'
import sys

from keystoneauth1 import session
from keystoneauth1.identity import v3
from keystoneclient.v3 import client

auth_url, admin_pw, service_pw, demo_pw, container_url = sys.argv[1:6]
auth = v3.Password(auth_url=auth_url, username="admin", password=admin_pw,
                   project_name="admin", user_domain_id="default", project_domain_id="default")
ks = client.Client(session=session.Session(auth=auth, timeout=30), interface="public")


def one(manager, name, **create):
    found = manager.list(name=name, **({"domain": "default"} if "domain" in create else {}))
    return found[0] if found else manager.create(name=name, **create)


def role(name):
    found = ks.roles.list(name=name)
    return found[0] if found else ks.roles.create(name=name)


def member(user_name, password, project_name, role_name):
    project = one(ks.projects, project_name, domain="default")
    user = one(ks.users, user_name, domain="default", password=password)  # set when made
    ks.roles.grant(role(role_name), user=user, project=project)


member("capsuled", service_pw, "service", "service")
member("demo", demo_pw, "demo", "member")
if container_url:
    service = next((s for s in ks.services.list(type="container")), None) \
        or ks.services.create(name="zun", type="container", description="Capsuled (Zun API)")
    endpoints = ks.endpoints.list(service=service, interface="public")
    if endpoints:
        ks.endpoints.update(endpoints[0], url=container_url, region="RegionOne")
        for extra in endpoints[1:]:
            ks.endpoints.delete(extra)
    else:
        ks.endpoints.create(service=service, url=container_url, interface="public",
                            region="RegionOne")
EOF

cat >"$STATE/capsuled.env" <<EOF
export CAPSULED_KEYSTONE__AUTH_URL=$AUTH_URL
export CAPSULED_KEYSTONE__USERNAME=capsuled
export CAPSULED_KEYSTONE__PASSWORD=$SERVICE_PASSWORD
export CAPSULED_KEYSTONE__PROJECT_NAME=service
EOF
cat >"$STATE/demo.env" <<EOF
export OS_AUTH_URL=$AUTH_URL
export OS_IDENTITY_API_VERSION=3
export OS_USERNAME=demo
export OS_PASSWORD=$DEMO_PASSWORD
export OS_PROJECT_NAME=demo
export OS_USER_DOMAIN_NAME=Default
export OS_PROJECT_DOMAIN_NAME=Default
EOF
echo "keystone.sh: keystone at $AUTH_URL (state $STATE)" >&2
