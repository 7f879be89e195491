"""Secrets at rest: registry credentials are sealed with Fernet (AES-128-CBC + HMAC-SHA256,
`cryptography`'s authenticated recipe) before they reach a table, so a copy of the
database alone does not reveal them.

The key comes from the composition root: `api.registry_secret` (the same on every API
replica of a multi-host deployment) or, all-in-one, a random key file made 0600 in the
state directory on first start. Any secret text is stretched into a Fernet key with
HKDF, so operators may set a passphrase rather than a base64 key.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from capsuled.errors import Unavailable

KEY_FILE = "registry.key"
_INFO = b"capsuled registry credentials v1"


class SecretBox:
    """Seals and opens short strings; opening text sealed under another key fails loudly."""

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode() if isinstance(secret, str) else secret
        if not raw:
            raise ValueError("the registry secret is empty")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(raw)
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def __repr__(self) -> str:
        return "SecretBox(<key hidden>)"

    def seal(self, value: str | None) -> str | None:
        return None if value is None else self._fernet.encrypt(value.encode()).decode()

    def open(self, token: str | None) -> str | None:
        if token is None:
            return None
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise Unavailable("a registry's credentials cannot be decrypted: the registry "
                              "secret differs from the one they were stored under (is "
                              "api.registry_secret the same on every API replica?)") from None


def key_file_secret(state_dir: Path) -> bytes:
    """The all-in-one key: read from the state directory, or made there (0600) first."""
    path = state_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        data = path.read_bytes().strip()
        if not data:
            raise ValueError(f"{path} is empty; remove it only if no registry is stored") from None
        return data
    with os.fdopen(fd, "wb") as f:
        f.write(base64.urlsafe_b64encode(os.urandom(32)))
    return path.read_bytes().strip()
