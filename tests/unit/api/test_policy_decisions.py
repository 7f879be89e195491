"""Policy decisions are remembered per replica: the same answers as oslo.policy gives, one
evaluation per distinct question, a bounded memory, and nothing remembered when a rule
asks a remote server (whose answer may change)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from capsuled.api.policy import DECISIONS_KEPT, DEFAULTS, Policy
from capsuled.identity.base import Principal

ROLES = ("admin", "member", "reader", "metrics", "agent")
OVERRIDES = {"container:execute": "role:admin", "capsule:get": "user_id:alice or rule:admin_api"}
REMOTE = {"zz:remote": "http://127.0.0.1:9/allow"}  # never asked here: no rule names it

remembered = Policy(OVERRIDES)
evaluated = Policy({**OVERRIDES, **REMOTE})


def counting(policy: Policy) -> list[str]:
    """Count the enforcer's evaluations of `policy` (what the memo saves)."""
    asked: list[str] = []
    enforce = policy._enforcer.enforce

    def spy(rule: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(rule)
        return enforce(rule, *args, **kwargs)

    policy._enforcer.enforce = spy  # type: ignore[method-assign]
    return asked


@settings(max_examples=300, deadline=None)
@given(rule=st.sampled_from(sorted(DEFAULTS)), roles=st.frozensets(st.sampled_from(ROLES)),
       project=st.sampled_from(["p1", "p2"]), user=st.sampled_from(["alice", "bob"]),
       target=st.sampled_from([None, "p1", "p2"]))
def test_remembered_decisions_are_oslo_policys(rule: str, roles: frozenset[str], project: str,
                                               user: str, target: str | None) -> None:
    who = Principal(project, user, roles)
    expected = evaluated.allows(rule, who, target)
    assert remembered.allows(rule, who, target) == expected
    assert remembered.allows(rule, who, target) == expected  # the second from memory


def test_a_member_is_allowed_in_its_own_project_only_however_often_it_asks() -> None:
    policy = Policy()
    alice = Principal("p1", "alice", frozenset({"member"}))
    for _ in range(3):
        assert policy.allows("capsule:delete", alice)
        assert policy.allows("capsule:delete", alice, "p1")
        assert not policy.allows("capsule:delete", alice, "p2")
        assert not policy.allows("capsule:delete_force", alice)
    assert policy.allows("capsule:delete", Principal("p2", "bob", frozenset({"member"})), "p2")


def test_each_distinct_question_is_evaluated_once() -> None:
    policy = Policy()
    asked = counting(policy)
    alice = Principal("p1", "alice", frozenset({"member"}))
    for _ in range(5):
        policy.allows("capsule:get", alice)
        policy.allows("capsule:get", alice, "p2")
    assert asked == ["capsule:get", "capsule:get"]
    # Another user, other roles: other questions.
    policy.allows("capsule:get", Principal("p1", "carol", frozenset({"member"})))
    policy.allows("capsule:get", Principal("p1", "alice", frozenset({"reader"})))
    assert len(asked) == 4


def test_a_remote_check_anywhere_turns_the_memory_off() -> None:
    policy = Policy(REMOTE)
    asked = counting(policy)
    alice = Principal("p1", "alice", frozenset({"member"}))
    for _ in range(3):
        assert policy.allows("capsule:get", alice)
    assert asked == ["capsule:get"] * 3


def test_made_up_projects_only_evict() -> None:
    policy = Policy()
    for i in range(DECISIONS_KEPT + 500):
        policy.allows("capsule:get", Principal(f"p{i}", "mallory", frozenset({"member"})))
    assert policy._decide.cache_info().currsize == DECISIONS_KEPT  # type: ignore[attr-defined]


def test_an_operators_override_is_what_is_remembered() -> None:
    alice = Principal("p1", "alice", frozenset({"member"}))
    root = Principal("p9", "root", frozenset({"admin"}))
    assert Policy().allows("container:execute", alice)
    for _ in range(2):
        assert not remembered.allows("container:execute", alice)
        assert remembered.allows("container:execute", root, "p1")
