"""The short chaos run (CI): ~40 capsules churned by 4 clients of 3 tenants while the
agent, each API replica, the rig's own dockerd and its own PostgreSQL are each killed
twice with SIGKILL; after recovery every count is zero."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from .scenario import SHORT, run

pytestmark = [pytest.mark.docker, pytest.mark.e2e]


def test_churn_under_kills_recovers_with_nothing_lost_or_left() -> None:
    # Not tmp_path: pytest keeps three sessions' directories, and other suites on the
    # machine roll them over before anyone reads the replicas' logs of a failed run.
    logs = Path(tempfile.mkdtemp(prefix="capsuled-chaos-"))
    report = run(SHORT, logs)
    if not report.problems() and report.converged:
        shutil.rmtree(logs, ignore_errors=True)
    print(f"logs of the rig: {logs}")
    assert report.kills == {"agent": 2, "api0": 2, "api1": 2, "dockerd": 2, "postgres": 2}
    assert report.converged, report.summary()
    assert report.problems() == {}, report.summary()
    # The churn did something: creates accepted, and some of each kind of change.
    accepted = {k.split()[0] for k, n in report.ends.items() if k.split()[1] in ("202", "204")}
    assert {"create", "update", "delete"} <= accepted, report.ends
    assert report.accepted_after > 0, report.summary()  # and it goes on once all is up
    assert report.capsules_left > 0, report.summary()  # recovery had capsules to check
