"""What an agent's assignments answer costs does not grow with the number of capsules on
its host: each unit's firewall and pull plan are worked out from reads made once per
project and answer (the pull credentials were read again for every unit), and the remote
group `default` reads only the members on other hosts, without their specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from capsuled.api.services.agents import ControlPlane
from capsuled.api.services.capsules import CapsuleService
from capsuled.domain.channel import HostInfo
from capsuled.domain.template import Limits
from capsuled.identity.base import Principal
from capsuled.store.crypto import SecretBox
from capsuled.store.engine import Store
from tests.unit.store.sqlite_rig import sqlite_store

WHO = Principal("p1", "u", frozenset({"member"}))


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return sqlite_store(tmp_path)  # h1, registered again below with a label


def _create(capsules: CapsuleService, name: str, host: str) -> None:
    capsules.create(WHO, {"kind": "capsule", "metadata": {"name": name}, "spec": {
        "nodeSelector": {"at": host}, "containers": [{"image": "busybox"}]}})


def _statements(store: Store, fn: Any) -> int:
    n = 0

    def count(*_: Any) -> None:
        nonlocal n
        n += 1

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        fn()
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    return n


def test_an_assignments_answer_reads_the_same_whatever_the_capsules_on_its_host(
        store: Store) -> None:
    control = ControlPlane(store, secrets=SecretBox("registry secret"))
    try:
        for h in ("h1", "h2"):
            control.register(HostInfo(name=h, cpus=64, memory_mb=65536, disk_gb=50,
                                      labels={"at": h}))
        capsules = CapsuleService(store, control, Limits())
        _create(capsules, "far", "h2")
        for i in range(2):
            _create(capsules, f"c{i}", "h1")
        answers = []
        few = _statements(store, lambda: answers.append(control.watch("h1", -1, 0)))
        for i in range(2, 12):
            _create(capsules, f"c{i}", "h1")
        many = _statements(store, lambda: answers.append(control.watch("h1", -1, 0)))
    finally:
        control.board.stop()
    answer = answers[-1]
    assert [len(a.capsules) for a in answers] == [2, 12]
    assert all(a.firewall is not None for a in answer.capsules)
    assert many == few, (few, many)
