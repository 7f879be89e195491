"""Commit targets follow Docker's reference grammar, and ownership is decided on one
normalised spelling of a reference."""

from __future__ import annotations

import pytest

from capsuled.domain.image_ref import normalise, parse_commit_target
from capsuled.errors import InvalidInput


@pytest.mark.parametrize(("repository", "tag", "want"), [
    ("myapp", None, ("myapp", "latest")),
    ("myapp", "v1", ("myapp", "v1")),
    ("team/my-app:v1.2", None, ("team/my-app", "v1.2")),
    ("localhost:5000/team/app", None, ("localhost:5000/team/app", "latest")),
    ("localhost:5000/team/app:v2", None, ("localhost:5000/team/app", "v2")),
    ("a__b.c", "V_1", ("a__b.c", "V_1")),
])
def test_good_targets(repository: str, tag: str | None, want: tuple[str, str]) -> None:
    assert parse_commit_target(repository, tag) == want


@pytest.mark.parametrize(("repository", "tag", "field"), [
    (None, None, "repository"), ("", None, "repository"), ("UPPER", None, "repository"),
    ("a//b", None, "repository"), ("-a", None, "repository"), ("a" * 64, None, "repository"),
    ("x" * 256, None, "repository"), ("ok", "-v", "tag"), ("ok", "t" * 129, "tag"),
    ("ok", 5, "tag"), ("ok:", None, "tag"), ("a b", None, "repository"),
])
def test_bad_targets_name_the_field(repository: object, tag: object, field: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{field}:"):
        parse_commit_target(repository, tag)


@pytest.mark.parametrize("spelling", [
    "busybox", "busybox:latest", "library/busybox", "docker.io/library/busybox:latest",
    "index.docker.io/library/busybox", "DOCKER.IO/busybox"])
def test_every_spelling_of_a_hub_image_is_one_reference(spelling: str) -> None:
    assert normalise(spelling) == "busybox:latest"


def test_other_registries_and_namespaces_stay_apart() -> None:
    assert normalise("team/app:v1") == "team/app:v1"
    assert normalise("docker.io/team/app:v1") == "team/app:v1"
    assert normalise("quay.io/team/app:v1") == "quay.io/team/app:v1"
    assert normalise("localhost:5000/app") == "localhost:5000/app:latest"

