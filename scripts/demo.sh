#!/usr/bin/env bash
# Quick start, part 1: set everything up, start the all-in-one server and submit the demo
# capsule. The server keeps running in the foreground; Ctrl-C stops it (containers keep
# running and are adopted on the next start).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
VENV=${CAPSULED_VENV:-$ROOT/.venv}
STATE=${CAPSULED_STATE_DIR:-$("$VENV/bin/python" -c 'from capsuled.paths import default_state_dir; print(default_state_dir())')}
LISTEN=${CAPSULED_LISTEN:-127.0.0.1:9517}
export CAPSULED_STATE_DIR=$STATE CAPSULE_URL=http://$LISTEN

"$VENV/bin/capsuled" --state-dir "$STATE" --listen "$LISTEN" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server' INT TERM
for _ in $(seq 1 100); do
  curl -fsS "http://$LISTEN/" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { echo "demo: capsuled exited" >&2; exit 1; }
  sleep 0.2
done
if ! "$VENV/bin/capsule" describe web-demo >/dev/null 2>&1; then
  "$VENV/bin/capsule" create -f "$ROOT/examples/web.yaml" --wait
fi
"$VENV/bin/capsule" list
"$VENV/bin/capsule" describe web-demo
cat <<MSG

capsuled is running at http://$LISTEN (state in $STATE).
Try:  source $VENV/bin/activate
      capsule list; capsule describe web-demo; capsule delete web-demo
Ctrl-C stops the server.
MSG
wait $server
