"""Who may do what: named rules with Zun's names and defaults, enforced by oslo.policy.

Roles: `admin` may do anything in any project; `member` creates and acts on its own
project's resources; `reader` only reads them. Which project a resource belongs to is
not decided here: queries are scoped to the caller's project, so another project's
resource is simply not found (404, never a 403 that confirms it exists). The rules
therefore decide which *operations* a role may perform, and which extra powers
(`all_projects`, seeing host names, force delete) it has.

Operators override any rule with check strings in the config (`policy` mapping or a
YAML `policy_file`), e.g. `{"container:execute": "role:admin"}`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path

import yaml
from oslo_config import cfg
from oslo_policy import policy as oslo

from capsuled.errors import Forbidden, InvalidInput
from capsuled.identity.base import Principal

ADMIN = "rule:admin_api"
MEMBER = "rule:project_member"
READER = "rule:project_reader"

_BASE = {
    "admin_api": "role:admin",
    "project_member": "rule:admin_api or (role:member and project_id:%(project_id)s)",
    "project_reader": "rule:project_member or (role:reader and project_id:%(project_id)s)",
}

_READS = {"get_one", "get_all", "logs", "top", "stats", "get_archive", "actions"}
_CONTAINER_ACTIONS = ("create", "delete", "update", "start", "stop", "reboot", "pause",
                      "unpause", "kill", "rename", "execute", "execute_resize", "attach",
                      "resize", "put_archive", "rebuild", "commit", "resize_container",
                      "add_security_group", "remove_security_group", *sorted(_READS))

DEFAULTS: dict[str, str] = {
    **_BASE,
    "capsule:create": MEMBER, "capsule:delete": MEMBER, "capsule:get": READER,
    # Extensions: a new revision (update, rollback) of one's own project's capsule.
    "capsule:update": MEMBER,
    "capsule:get_all": READER, "capsule:get:host": ADMIN,
    "capsule:delete_all_projects": ADMIN, "capsule:get_one_all_projects": ADMIN,
    "capsule:get_all_all_projects": ADMIN,
    # Force on a capsule or container whose host is down or gone needs no more than a
    # delete: nothing else can ever remove it. On a live host force is an admin's power.
    "capsule:delete_force": ADMIN,
    **{f"container:{a}": READER if a in _READS else MEMBER for a in _CONTAINER_ACTIONS},
    "container:get_one:host": ADMIN, "container:get_one_all_projects": ADMIN,
    "container:get_all_all_projects": ADMIN, "container:delete_all_projects": ADMIN,
    "container:delete_force": ADMIN, "container:create:requested_destination": ADMIN,
    "container:create:privileged": ADMIN, "container:create:runtime": ADMIN,
    "container:network_list": READER, "container:network_attach": MEMBER,
    "container:network_detach": MEMBER,
    "image:pull": ADMIN, "image:delete": ADMIN,
    # Members list the hosts' images too, but only base images and their own project's
    # commits; an admin (image:get_all_all_projects) sees every project's, and the hosts.
    "image:get_all": READER, "image:get_one": READER, "image:get_all_all_projects": ADMIN,
    "image:search": READER,
    "registry:create": MEMBER, "registry:update": MEMBER, "registry:delete": MEMBER,
    "registry:get_one": READER, "registry:get_all": READER, "registry:get_all_all_projects": ADMIN,
    # Image search reaching a registry (or its token realm) at a loopback, private,
    # link-local, multicast or reserved address: a registry made, or a search made, by
    # an admin (api.registry_search_private_networks opens RFC 1918/ULA to members).
    "registry:search:private_address": ADMIN,
    # Security groups (/v1/security_groups, an extension): a project's own; every
    # project's (all_projects=true, or another's by uuid) is an admin's.
    "security_group:create": MEMBER, "security_group:update": MEMBER,
    "security_group:delete": MEMBER, "security_group:get_one": READER,
    "security_group:get_all": READER, "security_group:get_all_all_projects": ADMIN,
    "host:get_all": ADMIN, "host:get": ADMIN,
    "zun-service:get_all": ADMIN, "zun-service:update": ADMIN, "zun-service:delete": ADMIN,
    "availability_zones:get_all": READER,
    "quota:get": READER, "quota:get_default": READER, "quota:update": ADMIN,
    "quota:delete": ADMIN, "quota_class:get": ADMIN, "quota_class:update": ADMIN,
    # The change records (GET /v1/events, an extension): one's own project's; every
    # project's (all_projects=true) is an admin's.
    "event:get_all": READER, "event:watch": READER, "event:get_all_all_projects": ADMIN,
    # Webhooks (/v1/subscriptions, an extension): a project's own; reaching loopback,
    # private, link-local, multicast or reserved addresses is an admin's power.
    "subscription:create": MEMBER, "subscription:delete": MEMBER,
    "subscription:get_one": READER, "subscription:get_all": READER,
    "subscription:get_all_all_projects": ADMIN, "subscription:create:private_address": ADMIN,
    "subscription:dead_letters": READER, "subscription:redeliver": MEMBER,
    "subscription:discard": MEMBER,
    # Capsule services (/v1/capsule_services, an extension): a project's own.
    "capsule_service:create": MEMBER, "capsule_service:delete": MEMBER,
    "capsule_service:get_one": READER, "capsule_service:get_all": READER,
    "capsule_service:get_all_all_projects": ADMIN,
    "token:create": ADMIN, "token:get_all": ADMIN, "token:revoke": ADMIN,
    # GET /metrics: counts per project and per host, for operators only. A token with the
    # `metrics` role (which only an admin issues, and which nothing else allows) lets a
    # Prometheus scrape without holding an admin token.
    "metrics:get": "rule:admin_api or role:metrics",
    # The agent channel: agent tokens only (each bound to its host, checked by the router).
    "agent:channel": "role:agent",
}

# Decisions remembered per replica. Each is a pure function of the rule and the few values
# the rules can see (the caller's roles, project and user, the target's project), and the
# rules never change once loaded; oslo.policy's own evaluation took 100-300 us a decision
# (it inspects each check function's signature on every call), two or three a request.
# Bounded: a tenant making up projects or users can only evict, never grow it.
DECISIONS_KEPT = 4096
# An `http:`/`https:` check asks a remote server each time, which may answer differently:
# with one anywhere in the rules nothing is remembered.
_REMOTE_CHECK = re.compile(r"(^|[\s(])https?:")


class Policy:
    def __init__(self, overrides: Mapping[str, str] | None = None,
                 policy_file: Path | None = None) -> None:
        rules = dict(DEFAULTS)
        for source, extra in (("policy_file", _read_file(policy_file)), ("policy", overrides or {})):
            for name, check in extra.items():
                if not isinstance(check, str):
                    raise InvalidInput(f"{source}: rule {name!r} must be a check string")
                rules[name] = check
        conf = cfg.ConfigOpts()
        conf([], project="capsuled", default_config_files=[], default_config_dirs=[])
        self._enforcer = oslo.Enforcer(conf, use_conf=False)
        self._enforcer.set_rules(oslo.Rules.from_dict(rules), overwrite=True, use_conf=False)
        self._names = frozenset(rules)
        remote = any(_REMOTE_CHECK.search(check) for check in rules.values())
        self._decide = (self._evaluate if remote
                        else functools.lru_cache(maxsize=DECISIONS_KEPT)(self._evaluate))

    def allows(self, rule: str, who: Principal, project_id: str | None = None) -> bool:
        """Whether `who` may perform `rule` on a resource of `project_id` (default: the
        caller's own project, which is where scoped queries keep members anyway)."""
        if rule not in self._names:
            raise KeyError(f"no policy rule named {rule}")  # a typo in our code, not input
        return self._decide(rule, frozenset(who.roles), who.project_id, who.user_id,
                            project_id or who.project_id)

    def _evaluate(self, rule: str, roles: frozenset[str], project_id: str, user_id: str,
                  target_project: str) -> bool:
        """Everything a rule can see is in the arguments (the memo's key)."""
        creds = {"roles": sorted(roles), "project_id": project_id, "user_id": user_id}
        return bool(self._enforcer.enforce(rule, {"project_id": target_project}, creds))

    def enforce(self, rule: str, who: Principal, project_id: str | None = None,
                why: str | None = None) -> None:
        if not self.allows(rule, who, project_id):
            raise Forbidden(f"Policy doesn't allow {rule} to be performed"
                            + (f": {why}." if why else "."))

    def check_host_access(self, who: Principal, asks: list[str]) -> None:
        """Refuse requests for host-level powers (domain.host_access) to the untrusted."""
        if asks:
            fields = ", ".join(asks)
            self.enforce("container:create:privileged", who,
                         why=f"{fields} {'asks' if len(asks) == 1 else 'ask'} for host-level access")


def _read_file(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(f"policy_file: cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"policy_file: {path} must map rule names to check strings")
    return data
