"""Ready and health conditions from a container's status and reported probe state."""

from __future__ import annotations

from capsuled.domain.conditions import capsule_conditions, container_health, container_ready


def _p(ready: bool | None = None, health: str | None = None, **results: str) -> dict:
    return {"ready": ready, "health": health,
            "probes": {k: {"result": v, "consecutive_failures": 0, "last_failure": None}
                       for k, v in results.items()}}


def test_container_conditions() -> None:
    assert container_ready("Running", None) and container_health("Running", None) == "healthy"
    assert not container_ready("Stopped", _p(True)) and container_health("Stopped", None) == "unknown"
    assert not container_ready("Running", _p(False, readiness="failure"))
    assert container_health("Running", _p(False, readiness="failure")) == "healthy"
    assert container_health("Running", _p(True, liveness="failure")) == "unhealthy"
    assert container_health("Running", _p(False, startup="unknown")) == "unknown"
    assert container_health("Running", _p(health="unhealthy")) == "unhealthy"
    assert not container_ready("Running", _p(health="unhealthy"))


def test_capsule_conditions() -> None:
    members = [("Running", _p(True)), ("Running", _p(False, readiness="failure")), ("Running", None)]
    assert capsule_conditions("Running", members) == (2, 3, "healthy")
    assert capsule_conditions("Creating", members)[2] == "unknown"
    assert capsule_conditions("Running", [("Running", _p(True, liveness="failure"))]) == (1, 1, "unhealthy")
