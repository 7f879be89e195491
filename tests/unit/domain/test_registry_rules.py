"""The pull rules of private registries (domain/registry.py) and the `registry` field of
container requests and templates."""

from __future__ import annotations

import pytest

from capsuled.domain.container_request import parse_container_request
from capsuled.domain.registry import (Credentials, domain_problem, image_host, plan_pull,
                                      pull_reference, split_host)
from capsuled.domain.spec import ContainerSpec
from capsuled.domain.template import parse_template
from capsuled.errors import InvalidInput
from capsuled.store.crypto import SecretBox

A = Credentials(uuid="a", domain="127.0.0.1:5000", username="u", password="pw")


@pytest.mark.parametrize(("image", "host"), [
    ("busybox", "docker.io"), ("library/busybox", "docker.io"),
    ("index.docker.io/acme/app", "docker.io"), ("127.0.0.1:5000/p/b", "127.0.0.1:5000"),
    ("localhost/x", "localhost"), ("Reg.Example.com/x:1", "reg.example.com")])
def test_image_host(image: str, host: str) -> None:
    assert image_host(image) == host


def test_pull_reference_joins_the_domain_unless_the_image_names_a_host() -> None:
    assert pull_reference("private/busybox", A) == "127.0.0.1:5000/private/busybox"
    assert pull_reference("other.io/x", A) == "other.io/x"
    assert pull_reference("busybox", None) == "busybox"
    assert split_host("a/b") == (None, "a/b")


def test_named_registry_pulls_with_its_credentials_under_the_specs_policy() -> None:
    spec = ContainerSpec(name="c", image="private/busybox", registry="a")
    plan = plan_pull(spec, {"a": A})
    assert plan is not None and not plan.always and plan.username == "u" and plan.password == "pw"
    assert plan.image == "127.0.0.1:5000/private/busybox"
    assert "pw" not in repr(plan) and "pw" not in repr(A)


def test_no_registry_of_its_own_means_no_plan_whatever_other_projects_registered() -> None:
    # Other projects' registry domains are not an input any more: nothing to guard here.
    assert plan_pull(ContainerSpec(name="c", image="127.0.0.1:5000/private/busybox",
                                   image_pull_policy="Never"), {}) is None
    assert plan_pull(ContainerSpec(name="c", image="busybox"), {}) is None


def test_own_registry_of_the_host_lends_its_credentials() -> None:
    spec = ContainerSpec(name="c", image="127.0.0.1:5000/private/busybox")
    plan = plan_pull(spec, {"a": A})
    assert plan is not None and plan.username == "u" and not plan.always
    hub = Credentials(uuid="h", domain="docker.io", username="me", password="x")
    other = plan_pull(ContainerSpec(name="c", image="127.0.0.1:5000/private/busybox"), {"h": hub})
    assert other is None  # a registry of another host lends nothing


@pytest.mark.parametrize("bad", ["", "http://x.io", "x.io/path", "x.io:99999", "a b", None, 5])
def test_bad_domains(bad: object) -> None:
    assert domain_problem(bad) is not None


@pytest.mark.parametrize("good", ["x.io", "127.0.0.1:5000", "localhost:5000", "[::1]:5000"])
def test_good_domains(good: str) -> None:
    assert domain_problem(good) is None


def test_container_request_and_template_take_a_registry() -> None:
    spec = parse_container_request({"image": "p/b", "registry": "myreg"})
    assert spec.container.registry == "myreg"
    with pytest.raises(InvalidInput, match="registry"):
        parse_container_request({"image": "p/b", "registry": "../etc"})
    cap = parse_template({"kind": "capsule", "metadata": {"name": "xy"}, "spec": {
        "containers": [{"image": "p/b", "registry": "myreg"}]}})
    assert cap.containers[0].registry == "myreg"
    with pytest.raises(InvalidInput, match=r"containers\[0\].registry"):
        parse_template({"kind": "capsule", "metadata": {"name": "xy"}, "spec": {
            "containers": [{"image": "p/b", "registry": ["x"]}]}})


def test_secret_box_round_trip_and_other_key_fails() -> None:
    from capsuled.errors import Unavailable
    box = SecretBox("one")
    sealed = box.seal("hunter2")
    assert sealed and "hunter2" not in sealed and box.open(sealed) == "hunter2"
    with pytest.raises(Unavailable, match="registry secret"):
        SecretBox("two").open(sealed)
