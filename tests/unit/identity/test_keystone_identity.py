"""KeystoneIdentity without a Keystone: role mapping, the bounded-TTL cache, refusals and
outages, with a fake validator (and a fake keystoneclient for the real one)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from keystoneauth1 import exceptions as ks_exc

from capsuled.config import KeystoneSettings
from capsuled.errors import Forbidden, Unavailable
from capsuled.identity import keystone
from capsuled.identity.base import Principal
from capsuled.identity.keystone import KeystoneIdentity, map_roles

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def body(project: str | None = "p1", user: str = "u1", roles: tuple[str, ...] = ("member",),
         expires: datetime = NOW + timedelta(hours=1), project_name: str = "demo",
         domain: str = "Default", **scope: Any) -> dict[str, Any]:
    token: dict[str, Any] = {
        "methods": ["password"], "issued_at": NOW.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "user": {"id": user, "name": "alice", "domain": {"id": "default", "name": "Default"}},
        "roles": [{"id": f"r-{r}", "name": r} for r in roles], **scope}
    if project is not None:
        token["project"] = {"id": project, "name": project_name,
                            "domain": {"id": domain.lower(), "name": domain}}
    return {"token": token}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return NOW + timedelta(seconds=self.t - 1000.0)


class Validator:
    """Answers from a table; a token maps to a body or an exception to raise."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, token: str) -> dict[str, Any]:
        self.calls.append(token)
        answer = self.answers[token]
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]


def identity(validator: Validator, ttl: float = 300, size: int = 100,
             clock: Clock | None = None) -> tuple[KeystoneIdentity, Clock]:
    clock = clock or Clock()
    return KeystoneIdentity(validator, ttl, size, clock=clock, now=clock.wall), clock


@pytest.mark.parametrize(("keystone_roles", "ours"), [
    (["admin", "manager", "member", "reader"], {"admin", "member", "reader"}),
    (["member", "reader"], {"member", "reader"}),
    (["_member_"], {"member"}),
    (["Reader"], {"reader"}),
    (["service", "heat_stack_owner"], set()),
    ([], set()),
])
def test_keystone_roles_map_to_ours(keystone_roles: list[str], ours: set[str]) -> None:
    assert map_roles(keystone_roles) == frozenset(ours)


def test_a_valid_token_is_the_principal_of_its_project_user_and_roles() -> None:
    v = Validator(tok=body("proj-1", "user-1", ("admin", "member", "reader"), project_name="admin"))
    ident, _ = identity(v)
    who = ident.authenticate("tok")
    assert who == Principal("proj-1", "user-1", frozenset({"admin", "member", "reader"}))
    assert who is not None and who.is_admin


def test_answers_are_cached_until_the_ttl_then_asked_again() -> None:
    v = Validator(tok=body())
    ident, clock = identity(v, ttl=30)
    assert ident.authenticate("tok") is not None
    clock.t += 29
    assert ident.authenticate("tok") is not None
    assert v.calls == ["tok"]
    clock.t += 2
    v.answers["tok"] = ks_exc.NotFound()  # revoked meanwhile
    assert ident.authenticate("tok") is None
    assert v.calls == ["tok", "tok"]


def test_the_cache_never_outlives_the_token() -> None:
    v = Validator(tok=body(expires=NOW + timedelta(seconds=10)))
    ident, clock = identity(v, ttl=300)
    assert ident.authenticate("tok") is not None
    clock.t += 11
    v.answers["tok"] = ks_exc.NotFound()
    assert ident.authenticate("tok") is None
    assert len(v.calls) == 2


def test_an_expired_token_is_refused_even_if_keystone_returned_it() -> None:
    ident, _ = identity(Validator(tok=body(expires=NOW - timedelta(seconds=1))))
    assert ident.authenticate("tok") is None


def test_refusals_are_cached_too_and_garbage_is_refused_without_asking() -> None:
    v = Validator(bad=ks_exc.NotFound(), malformed=ks_exc.BadRequest())
    ident, _ = identity(v)
    assert ident.authenticate("bad") is None
    assert ident.authenticate("bad") is None
    assert ident.authenticate("malformed") is None
    for garbage in ("", "has space", "new\nline", "é", "x" * 9000):
        assert ident.authenticate(garbage) is None
    assert v.calls == ["bad", "malformed"]


def test_the_cache_is_bounded_and_keyed_by_digest() -> None:
    v = Validator(**{f"t{i}": body(user=f"u{i}") for i in range(5)})
    ident, _ = identity(v, size=2)
    for i in range(5):
        assert ident.authenticate(f"t{i}") == Principal("p1", f"u{i}", frozenset({"member"}))
    assert len(ident._good) == 2
    assert all(len(k) == 64 and not k.startswith("t") for k in ident._good)
    ident.authenticate("t0")
    assert v.calls.count("t0") == 2


def test_ttl_zero_disables_the_cache() -> None:
    v = Validator(tok=body())
    ident, _ = identity(v, ttl=0)
    ident.authenticate("tok")
    ident.authenticate("tok")
    assert v.calls == ["tok", "tok"]


@pytest.mark.parametrize("scope", [{"domain": {"id": "default", "name": "Default"}},
                                   {"system": {"all": True}}, {}])
def test_a_token_without_a_project_is_forbidden(scope: dict[str, Any]) -> None:
    ident, _ = identity(Validator(tok=body(project=None, roles=("admin",), **scope)))
    with pytest.raises(Forbidden, match="project-scoped"):
        ident.authenticate("tok")


@pytest.mark.parametrize("exc", [ks_exc.ConnectFailure("refused"), ks_exc.ConnectTimeout("slow"),
                                 ks_exc.DiscoveryFailure("no versions"),
                                 ks_exc.InternalServerError(), ks_exc.ServiceUnavailable()])
def test_keystone_unreachable_is_unavailable_and_not_cached(exc: Exception) -> None:
    v = Validator(tok=exc)
    ident, _ = identity(v)
    with pytest.raises(Unavailable):
        ident.authenticate("tok")
    v.answers["tok"] = body()
    assert ident.authenticate("tok") is not None


@pytest.mark.parametrize("exc", [ks_exc.Unauthorized(), ks_exc.Forbidden()])
def test_the_service_user_refused_is_unavailable(exc: Exception) -> None:
    ident, _ = identity(Validator(tok=exc))
    with pytest.raises(Unavailable, match="service credentials"):
        ident.authenticate("tok")


def test_the_validator_asks_keystoneclient_as_the_service_user(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class Tokens:
        def get_token_data(self, token: str, include_catalog: bool = True) -> dict[str, Any]:
            seen["token"], seen["include_catalog"] = token, include_catalog
            return body("kp", "ku", ("reader",))

    class Client:
        def __init__(self, session: Any, interface: str, region_name: str | None) -> None:
            seen["session"], seen["interface"], seen["region"] = session, interface, region_name
            self.tokens = Tokens()

    monkeypatch.setattr(keystone.ks_client, "Client", Client)
    settings = KeystoneSettings(auth_url="http://127.0.0.1:1/v3", username="capsuled",
                                password="pw", interface="internal", region_name="R1",
                                timeout=3, cache_ttl=5)  # type: ignore[arg-type]
    ident = KeystoneIdentity.from_settings(settings)
    assert ident.authenticate("user-token") == Principal("kp", "ku", frozenset({"reader"}))
    assert seen["token"] == "user-token" and seen["include_catalog"] is False
    assert (seen["interface"], seen["region"]) == ("internal", "R1")
    sess = seen["session"]
    assert sess.timeout == 3
    assert sess.auth.auth_url == "http://127.0.0.1:1/v3"
    method = sess.auth.auth_methods[0]
    assert (method.username, method.password) == ("capsuled", "pw")
    assert method.user_domain_name == "Default"
    assert (sess.auth.project_name, sess.auth.project_domain_name) == ("service", "Default")


def test_an_unreachable_keystone_is_unavailable_through_the_real_session() -> None:
    """Nothing listens on port 1: keystoneauth's connection error becomes a 503."""
    settings = KeystoneSettings(auth_url="http://127.0.0.1:1/v3", password="pw",
                                timeout=2)  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match="unavailable"):
        KeystoneIdentity.from_settings(settings).authenticate("some-token")


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from capsuled.config import Settings

    assert Settings().keystone is None
    monkeypatch.setenv("CAPSULED_KEYSTONE__AUTH_URL", "http://ks:5000/v3")
    monkeypatch.setenv("CAPSULED_KEYSTONE__PASSWORD", "s3cret")
    monkeypatch.setenv("CAPSULED_KEYSTONE__CACHE_TTL", "1.5")
    ks = Settings().keystone
    assert ks is not None and ks.auth_url == "http://ks:5000/v3" and ks.cache_ttl == 1.5
    assert ks.password.get_secret_value() == "s3cret" and "s3cret" not in repr(ks)
    assert (ks.username, ks.project_name, ks.user_domain_name) == ("capsuled", "service", "Default")


@pytest.mark.parametrize(("project_name", "domain", "is_admin"), [
    ("admin", "Default", True),
    ("demo", "Default", False),    # a project's own admin is not the cloud's
    ("admin", "Other", False),     # another domain's "admin" project
    ("Admin", "Default", False),
])
def test_only_admin_on_the_admin_project_is_a_capsuled_admin(
        project_name: str, domain: str, is_admin: bool) -> None:
    ident, _ = identity(Validator(tok=body("p9", roles=("admin",), project_name=project_name,
                                           domain=domain)))
    who = ident.authenticate("tok")
    assert who is not None and who.is_admin is is_admin
    # Elsewhere it still works in its own project, as a member.
    assert is_admin or ("member" in who.roles and who.project_id == "p9")


def test_the_admin_project_can_be_named_by_id_or_name_in_settings() -> None:
    by_id = KeystoneIdentity(Validator(a=body("ops-id", roles=("admin",), project_name="ops"),
                                       b=body("p2", roles=("admin",), project_name="admin")),
                             admin_project=keystone.AdminProject(id="ops-id"))
    assert by_id.authenticate("a").is_admin  # type: ignore[union-attr]
    assert not by_id.authenticate("b").is_admin  # type: ignore[union-attr]
    settings = KeystoneSettings(auth_url="http://127.0.0.1:1/v3", password="pw",  # type: ignore[arg-type]
                                admin_project_name="cloud-admin", admin_project_domain_name="Ops")
    ident = KeystoneIdentity.from_settings(settings)
    assert ident._admin_project == keystone.AdminProject("cloud-admin", "Ops", None)


def test_the_default_cache_is_short_and_a_revoked_token_stops_working_within_it() -> None:
    ttl = KeystoneSettings(auth_url="http://ks/v3", password="pw").cache_ttl  # type: ignore[arg-type]
    assert 0 < ttl <= 60
    v = Validator(tok=body())
    ident, clock = identity(v, ttl=ttl)
    assert ident.authenticate("tok") is not None
    v.answers["tok"] = ks_exc.NotFound()  # revoked in Keystone
    clock.t += ttl + 0.001
    assert ident.authenticate("tok") is None
