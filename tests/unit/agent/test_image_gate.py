"""The image gate on FakeRuntime (agent/pulls.py, agent/image_ledger.py): an image that came
through a credentialed pull and was not on the host is private to the projects that
proved access; everything else stays public and is used with no pull."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from capsuled.agent import image_ledger
from capsuled.agent.image_ledger import ImageLedger
from capsuled.agent.pulls import ImageGate
from capsuled.domain.channel import ImagePull
from capsuled.domain.spec import ContainerSpec
from capsuled.drivers.runtime.fake import FakeRuntime
from capsuled.errors import ImageNotFound

SECRET = "127.0.0.1:5000/private/app"
SECRET_REF = f"{SECRET}:latest"


def host() -> FakeRuntime:
    rt = FakeRuntime(images=("busybox",), registry=(SECRET,))
    rt.registry_users[SECRET_REF] = "alice"  # the registry serves it to alice only
    return rt


def spec(image: str = SECRET, policy: str = "IfNotPresent") -> ContainerSpec:
    return ContainerSpec(name="app", image=image, image_pull_policy=policy)  # type: ignore[arg-type]


def plan(user: str | None, image: str = SECRET) -> list[ImagePull]:
    return [ImagePull(container="app", image=image, always=False, username=user,
                      password="pw" if user else None)]


def a_pulls_secret(rt: FakeRuntime, gate: ImageGate) -> None:
    assert gate.ensure("proj-a", spec(), plan("alice")) == SECRET
    assert rt.pulls == [SECRET_REF]


def test_a_stranger_cannot_use_the_cached_private_image_by_any_policy() -> None:
    rt = host()
    gate = ImageGate(rt)
    a_pulls_secret(rt, gate)
    assert gate.ensure("proj-a", spec(), plan("alice")) == SECRET  # A: from the cache
    assert rt.pulls == [SECRET_REF]
    for policy in ("IfNotPresent", "Never", "Always"):
        with pytest.raises(ImageNotFound, match="could not be pulled"):
            gate.ensure("proj-b", spec(policy=policy), [])
    with pytest.raises(ImageNotFound, match="could not be pulled"):
        gate.ensure("proj-b", spec(), plan("mallory"))  # wrong credentials
    # Every refusal was a real pull attempt, never the cached copy.
    assert [u for r, u in rt.pull_auths if r == SECRET_REF][-4:] == [None, None, None, "mallory"]
    assert gate.ledger.private_to(rt.image_id(SECRET)) == ["proj-a"]


def test_another_name_for_the_same_image_id_is_the_same_private_image() -> None:
    rt = host()
    gate = ImageGate(rt)
    a_pulls_secret(rt, gate)
    # The same image under another reference (a re-tag): judged by ID, so B must pull it.
    rt.ids["evil/copy:latest"] = rt.image_id(SECRET)
    rt.images.add("evil/copy:latest")
    with pytest.raises(ImageNotFound, match="could not be pulled"):
        gate.ensure("proj-b", spec("evil/copy"), [])
    with pytest.raises(ImageNotFound):
        gate.ensure("proj-b", spec(rt.image_id(SECRET)), [])


def test_a_successful_pull_proves_access() -> None:
    rt = host()
    gate = ImageGate(rt)
    a_pulls_secret(rt, gate)
    # B holds its own credentials for the registry: its pull succeeds, then the cache serves it.
    rt.registry_users[SECRET_REF] = "bob"
    gate.ensure("proj-b", spec(), plan("bob"))
    assert gate.ledger.private_to(rt.image_id(SECRET)) == ["proj-a", "proj-b"]
    pulls = len(rt.pulls)
    gate.ensure("proj-b", spec(), plan("bob"))
    assert len(rt.pulls) == pulls
    # The registry made it public: an anonymous success makes it public on this host.
    del rt.registry_users[SECRET_REF]
    gate.ensure("proj-c", spec(), [])
    assert gate.ledger.private_to(rt.image_id(SECRET)) is None
    pulls = len(rt.pulls)
    gate.ensure("proj-d", spec(), [])
    assert len(rt.pulls) == pulls


def test_images_on_the_host_before_a_credentialed_pull_stay_public() -> None:
    """C registers docker.io with a username and pulls busybox with it; D still runs the
    cached busybox with no pull at all (this host cannot reach any registry)."""
    rt = host()
    gate = ImageGate(rt)
    rt.registry.add("busybox:latest")
    gate.ensure("proj-c", spec("busybox", policy="Always"), plan("carol", image="busybox"))
    assert rt.pulls == ["busybox:latest"]
    assert gate.ledger.private_to(rt.image_id("busybox")) is None
    rt.registry.discard("busybox:latest")  # offline again
    rt.pulls.clear()
    rt.pull_auths.clear()
    assert gate.ensure("proj-d", spec("busybox"), []) == "busybox"
    assert gate.ensure("proj-d", spec("busybox", policy="Never"), []) == "busybox"
    assert gate.ensure("proj-c", spec("busybox"), plan("carol", image="busybox")) == "busybox"
    assert rt.pulls == [] and rt.pull_auths == []


def test_the_record_survives_a_restart_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "private-images.json"
    rt = host()
    a_pulls_secret(rt, ImageGate(rt, ImageLedger(path)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["private-images.json"]  # no temp left
    restarted = ImageGate(rt, ImageLedger(path))
    with pytest.raises(ImageNotFound, match="could not be pulled"):
        restarted.ensure("proj-b", spec(), [])
    assert restarted.ensure("proj-a", spec(), plan("alice")) == SECRET


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 99}', b"[]",
                                     b'{"version":1,"distrust":false,"private":{"x":[1]},'
                                     b'"public":[]}'])
def test_an_unreadable_record_fails_safe(tmp_path: Path, content: bytes,
                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "private-images.json"
    rt = host()
    a_pulls_secret(rt, ImageGate(rt, ImageLedger()))  # pulled, but the record is lost
    path.write_bytes(content)
    gate = ImageGate(rt, ImageLedger(path))
    assert gate.ledger.distrust and "unreadable" in caplog.text
    # What came from a registry must be pulled again, even by A; a local image stays usable.
    with pytest.raises(ImageNotFound):
        gate.ensure("proj-b", spec(), [])
    rt.pull_auths.clear()
    assert gate.ensure("proj-b", spec("busybox"), []) == "busybox" and rt.pull_auths == []
    gate.ensure("proj-a", spec(), plan("alice"))
    assert gate.ledger.private_to(rt.image_id(SECRET)) == ["proj-a"]
    saved = json.loads(path.read_text())
    assert saved["distrust"] is True and saved["version"] == image_ledger.VERSION
    # The mode is kept across a restart (a restart must not clear the doubt).
    assert ImageLedger(path).distrust


def test_the_record_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_ledger, "MAX_PRIVATE", 2)
    rt = FakeRuntime(images=("busybox",), registry=("r.io/a", "r.io/b", "r.io/c"))
    gate = ImageGate(rt, ImageLedger(tmp_path / "p.json"))
    for name in ("r.io/a", "r.io/b"):
        gate.ensure("proj-a", spec(name), plan("alice", image=name))
    # Full: a private image that is still on the host is never forgotten; the pull is refused.
    with pytest.raises(ImageNotFound, match="record of private images is full"):
        gate.ensure("proj-a", spec("r.io/c"), plan("alice", image="r.io/c"))
    assert "r.io/c:latest" not in rt.images
    # One goes from the host: its entry makes room.
    rt.images.discard("r.io/a:latest")
    gate.ensure("proj-a", spec("r.io/c"), plan("alice", image="r.io/c"))
    assert gate.ledger.private_to(rt.image_id("r.io/c")) == ["proj-a"]
    assert gate.ledger.private_to(rt.image_id("r.io/a")) is None
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (image_ledger.MAX_FILE_BYTES + 1))
    assert ImageLedger(big).distrust
