"""Where a local capsuled keeps its state, shared by the server and the `capsule` CLI.

Stdlib and platformdirs only: the CLI may import this module and nothing else of ours.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DEFAULT_LISTEN = "127.0.0.1:9517"
DEFAULT_URL = f"http://{DEFAULT_LISTEN}"
ADMIN_TOKEN_FILE = "admin-token"


def default_state_dir() -> Path:
    """`/var/lib/capsuled` for root, a per-user data directory otherwise."""
    if os.geteuid() == 0:
        return Path("/var/lib/capsuled")
    return Path(platformdirs.user_data_dir("capsuled"))
