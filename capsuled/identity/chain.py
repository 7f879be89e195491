"""Local tokens beside Keystone: the tokens this server issues carry a prefix that no
Keystone token has, so they are checked locally and everything else goes to Keystone.

This keeps the bootstrap admin token (the local CLI's) and locally issued agent tokens
working on a site that uses Keystone for its users, without a Keystone round trip for them.
"""

from __future__ import annotations

from capsuled.identity.base import IdentityProvider, Principal
from capsuled.store.tokens import TOKEN_PREFIX


class LocalThenKeystone:
    def __init__(self, local: IdentityProvider, keystone: IdentityProvider) -> None:
        self._local = local
        self._keystone = keystone

    def authenticate(self, token: str) -> Principal | None:
        if token.startswith(TOKEN_PREFIX):
            return self._local.authenticate(token)
        return self._keystone.authenticate(token)

    def remembered(self, token: str) -> Principal | None:
        if token.startswith(TOKEN_PREFIX):
            return self._local.remembered(token)
        return self._keystone.remembered(token)
