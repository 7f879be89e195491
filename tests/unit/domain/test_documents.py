"""Hostile documents are fast 400s: alias bombs, deep nesting, huge numbers, big texts."""

from __future__ import annotations

import time

import pytest

from capsuled import documents
from capsuled.domain.template import parse_template
from capsuled.errors import InvalidInput


def laughs(levels: int = 7, fan: int = 9) -> str:
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels + 1):
        refs = ", ".join(f"*a{i - 1}" for _ in range(fan))
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + f"\nkind: *a{levels}\n"


def test_billion_laughs_is_a_fast_400_without_expansion() -> None:
    started = time.monotonic()
    with pytest.raises(InvalidInput) as exc:
        parse_template(laughs())
    assert time.monotonic() - started < 1.0
    assert "expands to more than" in exc.value.message
    assert len(exc.value.message) < 300


def test_a_few_aliases_are_fine() -> None:
    text = ("kind: capsule\nmetadata: {}\nspec:\n  containers:\n"
            "  - {name: a, image: busybox, env: &e {A: '1'}}\n"
            "  - {name: b, image: busybox, env: *e}\n")
    spec = parse_template(text)
    assert [c.env for c in spec.containers] == [{"A": "1"}, {"A": "1"}]


@pytest.mark.parametrize("text", ["[" * 50_000, "{\"a\":" * 40_000, "a:\n" + "- " * 5000 + "x",
                                  "- " * 10_000 + "x", "x: " + "[" * 3000 + "]" * 3000])
def test_deep_nesting_is_a_400_not_a_recursion_error(text: str) -> None:
    with pytest.raises(documents.DocumentError) as exc:
        documents.load_text(text)
    assert "nested" in exc.value.message or "not valid" in exc.value.message


def test_deep_objects_are_refused_before_parsing() -> None:
    value: object = "x"
    for _ in range(200):
        value = {"a": value}
    with pytest.raises(InvalidInput, match="nested deeper than 64"):
        parse_template(value)


def test_text_over_the_size_limit_is_refused() -> None:
    with pytest.raises(documents.DocumentError, match="larger than"):
        documents.load_text("kind: capsule\n" + "#" * documents.MAX_TEXT_BYTES)


@pytest.mark.parametrize("text", ["kind: " + "9" * 5000, '{"kind": ' + "9" * 5000 + "}",
                                  "kind: !!python/object:os.system ls"])
def test_unconvertible_or_unsafe_values_are_400s(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_template(text)


def test_json_depth_scan_skips_strings() -> None:
    assert documents.json_depth_ok('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"[[[["}', limit=2)
    assert not documents.json_depth_ok('[[[1]]]', limit=2)


def test_error_messages_quote_values_briefly() -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_template({"kind": ["x" * 10_000] * 1000, "metadata": {}, "spec": {"containers": [
            {"image": "busybox"}]}})
    assert len(exc.value.message) < 400
