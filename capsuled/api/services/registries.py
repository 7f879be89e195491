"""Registry use cases (Zun's /v1/registries, microversion 1.30): a project's private
registries, and resolving the `registry` a container or template names.

Credentials are sealed before they are stored (store/crypto.py) and never leave here in
clear: views show the password as '***', errors name registries by name or uuid only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capsuled.api.policy import Policy
from capsuled.domain import registry as rules
from capsuled.domain.template import short
from capsuled.errors import InvalidInput
from capsuled.identity.base import Principal
from capsuled.store import registries as repo
from capsuled.store.capsules import UUID_RE, Page
from capsuled.store.crypto import SecretBox
from capsuled.store.engine import Store
from capsuled.store.tables import Registry

FIELDS = ("name", "domain", "username", "password")
# Whose registries image search may reach at loopback/private/link-local/… addresses.
PRIVATE_RULE = "registry:search:private_address"


@dataclass(frozen=True)
class RegistryView:
    """A registry as shown: no password, the username opened for its owner."""

    uuid: str
    name: str | None
    domain: str
    username: str | None
    has_password: bool
    project_id: str
    user_id: str


class RegistryService:
    def __init__(self, store: Store, secrets: SecretBox, policy: Policy | None = None) -> None:
        self._store = store
        self._box = secrets
        self._policy = policy or Policy()

    def _scope(self, who: Principal, all_projects: bool = False) -> str | None:
        if all_projects:
            self._policy.enforce("registry:get_all_all_projects", who)
            return None
        return who.project_id

    def _view(self, row: Registry) -> RegistryView:
        return RegistryView(uuid=row.uuid, name=row.name, domain=row.domain,
                            username=repo.username(self._box, row),
                            has_password=row.password_enc is not None,
                            project_id=row.project_id, user_id=row.user_id)

    def create(self, who: Principal, body: dict[str, Any]) -> RegistryView:
        fields = _parse(body, creating=True)
        with self._store.transaction() as s:
            row = repo.create(s, self._box, who.project_id, who.user_id, fields.get("name"),
                              fields["domain"], fields.get("username"), fields.get("password"),
                              allow_private=self._policy.allows(PRIVATE_RULE, who))
            return self._view(row)

    def get(self, who: Principal, ident: str) -> RegistryView:
        with self._store.transaction() as s:
            return self._view(repo.get(s, ident, self._wide(who)))

    def list(self, who: Principal, page: Page, all_projects: bool,
             filters: dict[str, str]) -> list[RegistryView]:
        with self._store.transaction() as s:
            return [self._view(r) for r in repo.list_(s, self._scope(who, all_projects), page,
                                                      filters)]

    def update(self, who: Principal, ident: str, body: dict[str, Any]) -> RegistryView:
        fields = _parse(body, creating=False)
        with self._store.transaction() as s:
            row = repo.get(s, ident, self._wide(who))
            repo.update(s, self._box, row, fields,
                        allow_private=self._policy.allows(PRIVATE_RULE, who))
            return self._view(row)

    def delete(self, who: Principal, ident: str) -> None:
        with self._store.transaction() as s:
            repo.delete(s, repo.get(s, ident, self._wide(who)))

    def _wide(self, who: Principal) -> str | None:
        """Admins reach any one registry by uuid or name, as in Zun; members their own."""
        return None if self._policy.allows("registry:get_all_all_projects", who) else who.project_id


def _parse(body: dict[str, Any], creating: bool) -> dict[str, str]:
    """Zun's body: {"registry": {name, domain, username, password}}; every problem at once."""
    inner = body.get("registry")
    problems = [f"{k}: unknown field" for k in sorted(set(body) - {"registry"})]
    if not isinstance(inner, dict):
        raise InvalidInput([*problems, "registry: is required: an object of name, domain, "
                                       "username and password"])
    problems += [f"registry.{short(str(k))}: unknown field" for k in sorted(set(inner) - set(FIELDS))]
    out: dict[str, str] = {}
    if "name" in inner:
        name = inner["name"]
        if isinstance(name, str) and UUID_RE.match(name):
            problems.append("registry.name: must not look like a uuid (registries are found "
                            "by uuid or name)")
        elif not (isinstance(name, str) and rules.NAME_RE.match(name)):
            problems.append("registry.name: must be 2 to 255 letters, digits, '_', '.' or '-', "
                            "starting with a letter or digit")
        else:
            out["name"] = name
    if creating or "domain" in inner:
        problem = rules.domain_problem(inner.get("domain"))
        if problem:
            problems.append(f"registry.domain: {problem}")
        else:
            out["domain"] = str(inner["domain"]).strip().lower()
    for key, most in (("username", rules.MAX_USERNAME), ("password", rules.MAX_PASSWORD)):
        if key not in inner:
            continue
        value = inner[key]
        # The value itself is never echoed: it may be a secret typed into the wrong field.
        if not isinstance(value, str) or not value or len(value) > most or "\x00" in value:
            problems.append(f"registry.{key}: must be a non-empty string of at most {most} "
                            "characters")
        else:
            out[key] = value
    if "password" in out and "username" not in out and creating:
        problems.append("registry.username: is required with a password")
    if problems:
        raise InvalidInput(problems)
    return out
