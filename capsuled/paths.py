"""Where a local capsuled keeps its state.

Stdlib and platformdirs only. The `capsule` CLI keeps its own copy of the default URL and
of where the admin token lives (cli/capsule/settings.py; a unit test keeps them equal).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import platformdirs

DEFAULT_LISTEN = "127.0.0.1:9517"
DEFAULT_URL = f"http://{DEFAULT_LISTEN}"
ADMIN_TOKEN_FILE = "admin-token"
# The agent's record of which cached images are private to which projects (agent/image_ledger.py).
PRIVATE_IMAGES_FILE = "private-images.json"
# The agent's record of which pooled sandbox each capsule claimed (agent/pool_claims.py).
SANDBOX_CLAIMS_FILE = "sandbox-claims.json"


def default_state_dir() -> Path:
    """The directory systemd made for the unit (StateDirectory=: $STATE_DIRECTORY, the
    first when it names several), else `/var/lib/capsuled` for root, else a per-user data
    directory. The API unit runs as the `capsuled` user: it finds /var/lib/capsuled so."""
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if given:
        return Path(given)
    if os.geteuid() == 0:
        return Path("/var/lib/capsuled")
    return Path(platformdirs.user_data_dir("capsuled"))


def private_dir(path: Path) -> Path:
    """Make `path` (and its parents) and keep it 0700: it holds the database and the admin
    token. An existing directory is tightened too (installs from before this rule), unless
    it is a shared sticky directory such as /tmp, which is never ours to lock."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = path.stat().st_mode
    if not mode & stat.S_ISVTX and stat.S_IMODE(mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def private_file(path: Path) -> None:
    """Keep an existing secret file 0600 (created with it since; tightened for old installs)."""
    try:
        if stat.S_IMODE(path.stat().st_mode) != 0o600:
            os.chmod(path, 0o600)
    except FileNotFoundError:
        pass


def replace_file(path: Path, body: bytes) -> None:
    """Replace `path` with `body` atomically and durably (0600: the agent's records of
    which project owns what): a temporary file beside it, fsynced, then renamed over it.
    A crash leaves the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
