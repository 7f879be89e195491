#!/usr/bin/env bash
# Quick start, part 2: set everything up and run the whole test suite (unit, integration
# on the real Docker Engine, end-to-end through the CLI and zunclient). Extra arguments
# go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
VENV=${CAPSULED_VENV:-$ROOT/.venv}
cd "$ROOT"
"$VENV/bin/lint-imports" --config pyproject.toml
exec "$VENV/bin/python" -m pytest "$@"
