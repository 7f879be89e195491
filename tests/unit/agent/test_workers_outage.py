"""A capsule whose sync meets an outage (the API or the engine unreachable) is retried
with back-off, and logged as one line without a traceback; other errors keep theirs."""

from __future__ import annotations

import logging
import threading

import pytest

from capsuled.agent.workers import CapsuleWorkers
from capsuled.errors import Unavailable


def _run_until(calls: int, error: Exception, caplog: pytest.LogCaptureFixture) -> int:
    done = threading.Event()
    seen = 0

    def sync(uuid: str) -> bool:
        nonlocal seen
        seen += 1
        if seen >= calls:
            done.set()
            return True
        raise error

    workers = CapsuleWorkers(sync, threads=2, backoff_initial=0.01, backoff_max=0.02)
    with caplog.at_level(logging.WARNING, logger="capsuled.agent.workers"):
        workers.enqueue("c1")
        assert done.wait(10)
    workers.stop()
    return seen


def test_an_outage_is_retried_and_logged_without_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert _run_until(3, Unavailable("API at http://x unreachable"), caplog) == 3
    ours = [r for r in caplog.records if r.name == "capsuled.agent.workers"]
    assert len(ours) == 2
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in ours)
    assert "sync deferred capsule=c1: API at http://x unreachable" in ours[0].getMessage()


def test_other_errors_keep_their_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert _run_until(2, KeyError("bug"), caplog) == 2
    (rec,) = [r for r in caplog.records if r.name == "capsuled.agent.workers"]
    assert rec.levelno == logging.ERROR and rec.exc_info is not None
