"""Where the `capsule` CLI finds a local server: its default URL and its admin token.

The CLI's own copy of what the server's `capsuled/paths.py` decides, so that the client
imports nothing of the server; tests/unit/cli/test_cli_layout.py checks that both agree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import platformdirs

DEFAULT_URL = "http://127.0.0.1:9517"
ADMIN_TOKEN_FILE = "admin-token"
STATE_DIR_ENV = "CAPSULED_STATE_DIR"


def default_state_dir() -> Path:
    """`/var/lib/capsuled` for root, a per-user data directory otherwise (as the server)."""
    if os.geteuid() == 0:
        return Path("/var/lib/capsuled")
    return Path(platformdirs.user_data_dir("capsuled"))


def local_token_path(env: Mapping[str, str] | None = None) -> Path:
    """Where a local server writes its admin token (`CAPSULED_STATE_DIR` wins, as for the server)."""
    env = os.environ if env is None else env
    state_dir = env.get(STATE_DIR_ENV)
    base = Path(state_dir).expanduser() if state_dir else default_state_dir()
    return base / ADMIN_TOKEN_FILE
