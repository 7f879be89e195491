#!/usr/bin/env bash
# Quick start, part 2: set everything up and run the whole test suite (unit, integration
# on the real Docker Engine, end-to-end through the CLI and zunclient). Extra arguments
# go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
VENV=${CAPSULED_VENV:-$ROOT/.venv}
# The Keystone the identity tests run lives in its own virtualenv; outside the checkout it
# survives fresh clones (CI), so only the first run on a machine pays for its install.
if [ "$(id -u)" = 0 ]; then
  export CAPSULED_KEYSTONE_VENV=${CAPSULED_KEYSTONE_VENV:-/var/cache/capsuled/keystone-venv}
fi
cd "$ROOT"
# The Keystone virtualenv (a minute of pip on a new machine) is made while the checks and
# the unit tests run, not in the queue of the tests that need it; keystone.sh takes a lock,
# so a test that asks for it first waits for this install instead of starting a second.
bash "$ROOT/scripts/keystone.sh" install >/dev/null 2>&1 &
"$VENV/bin/lint-imports" --config pyproject.toml
# Type errors fail the run before any test starts; the [tool.mypy] section says what is strict.
"$VENV/bin/mypy"
# Two workers: the engine tests run one after another on one of them (tests/conftest.py's
# scheduler keeps them together) while the unit tests take the other core.
# CAPSULED_TEST_WORKERS=0 runs everything in this process.
exec "$VENV/bin/python" -m pytest -n "${CAPSULED_TEST_WORKERS:-2}" "$@"
