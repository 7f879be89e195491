#!/usr/bin/env bash
# Rebuild the web dashboard (ui/) into capsuled/ui_static, which is committed: a machine
# that only runs capsuled needs no node or npm. Needs node >= 20.19 and the npm registry;
# the toolchain is pinned by ui/package-lock.json (npm ci installs exactly that).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT/ui"
npm ci --no-audit --no-fund
npm run build
echo "build-ui: capsuled/ui_static rebuilt; commit it with the sources"
