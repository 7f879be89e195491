"""One chaos run: the rig up, tenants made, the churn and the killer together, then
recovery, the counts, deleting everything, and the rig down."""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from . import checks
from .churn import Churn
from .killer import KINDS, Killer
from .rig import Rig, start_rig, stop_rig, wait_for


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Config:
    capsules: int = 200  # creates in all
    duration: float = 300.0  # seconds over which the kills are spread
    tail: float = 30.0  # seconds of churn once every process is up again
    kills_per_kind: int = 3
    threads: int = 6
    tenants: int = 3
    recovery_timeout: float = 300.0
    seed: int = 1


# The CI form. On a quiet machine it takes ~80 s (the ten kills fall ~5 s apart); on a
# loaded one the replicas alone take a minute each to start, which the killer does not
# wait for.
SHORT = Config(capsules=40, duration=50.0, tail=15.0, kills_per_kind=2, threads=4,
               recovery_timeout=180.0)


def _tenants(rig: Rig, n: int) -> dict[str, str]:
    out = {}
    with rig.client() as api:
        for i in range(n):
            project = f"chaos-t{i}"
            r = api.put(f"/v1/quotas/{project}", json={"capsules": -1, "containers": -1,
                                                        "cpu": -1, "memory": -1, "disk": -1})
            assert r.status_code == 200, r.text
            r = api.post("/v1/tokens", json={"project_id": project, "user_id": f"u{i}",
                                             "roles": ["member"]})
            assert r.status_code == 201, r.text
            out[project] = r.json()["token"]
    return out


def run(config: Config, tmp: Path | None = None) -> checks.Report:
    tmp = tmp or Path(tempfile.mkdtemp(prefix="capsuled-chaos-"))
    log(f"rig in {tmp}")
    rig = start_rig(tmp, log=log)
    try:
        return _run(rig, config)
    finally:
        log("stopping the rig")
        stop_rig(rig)


def _run(rig: Rig, config: Config) -> checks.Report:
    tenants = _tenants(rig, config.tenants)
    churn = Churn(rig.urls, tenants, rig.engine.client, rig.instance, config.capsules, config.seed)
    killer = Killer(rig, config.kills_per_kind, spread=config.duration, seed=config.seed, log=log)
    log(f"churn: {config.capsules} capsules, {config.threads} threads; over {config.duration:g} s "
        f"{config.kills_per_kind} kills of each of {', '.join(KINDS)}")
    churn.start(config.threads)
    killer.start()
    killer.join(timeout=config.duration * 3)
    # Every kill planned happens, even those the timeout cut off.
    for kind in KINDS:
        missing = config.kills_per_kind - sum(k.kind == kind for k in killer.kills)
        for _ in range(missing):
            killer._kill_and_restart(kind, 1.0)  # noqa: SLF001 - the same kill, late
    killer.wait_all_up()
    all_up = time.monotonic()
    log(f"every process is up again; the churn goes on for {config.tail:g} s")
    time.sleep(config.tail)
    churn.stop()
    log(f"churn done ({len(churn.records)} requests)")
    report = checks.Report(requests=len(churn.records),
                           kills=dict(Counter(k.kind for k in killer.kills)),
                           kill_errors=[f"{k.kind}: {k.error}" for k in killer.kills if k.error])
    # Work resumes once everything is up again: requests accepted after that moment.
    report.accepted_after = sum(1 for r in churn.records if r.t > all_up and r.status is not None
                                and 200 <= r.status < 300 and r.op != "kill")
    log("recovery: waiting for convergence")
    seen, took, ok = checks.wait_converged(rig, config.recovery_timeout)
    report.converged, report.recovery_seconds = ok, took
    report.capsules_left = len(seen.capsules)
    report.statuses = dict(Counter(c["status"] for c in seen.capsules))
    report.transitional = seen.transitional()
    report.orphans = seen.orphans()
    report.duplicates = seen.duplicates()
    report.missing_members = seen.missing()
    report.quota_mismatches = checks.quota_mismatches(rig, seen, sorted(tenants))
    report.host_mismatches = checks.host_mismatches(rig, seen)
    report.unfulfilled, ends = checks.unfulfilled(churn, seen)
    report.ends = dict(ends)
    for r in churn.records:
        if r.detail:
            got = report.samples.setdefault(f"{r.op} {checks.end(r)}", [])
            if len(got) < 3:
                got.append(r.detail[:200])
    report.server_errors = checks.server_errors(churn)
    log("deleting everything")
    report.left_after_delete_all = _delete_all(rig, seen)
    log("report:\n" + report.summary())
    log(f"samples: {report.samples}")
    return report


def _delete_all(rig: Rig, seen: checks.Seen) -> list[str]:
    """Every capsule deleted through the API; then nothing of the instance may be left in
    the engine (its project networks excepted: they are kept for a grace period)."""
    with rig.client() as api:
        for c in seen.capsules:
            api.delete(f"/v1/capsules/{c['uuid']}", params={"all_projects": "true"})
        try:
            wait_for(lambda: not api.get("/v1/capsules", params={"all_projects": "true"}
                                         ).json()["capsules"], 120, "every capsule deleted", 1.0)
        except TimeoutError:
            left = api.get("/v1/capsules", params={"all_projects": "true"}).json()["capsules"]
            return [f"capsule {c['name']}={c['status']}" for c in left]
    engine = rig.engine.client()
    label = [f"capsuled.instance={rig.instance}"]
    try:
        wait_for(lambda: not engine.containers(all=True, filters={"label": label}), 30,
                 "the engine emptied", 1.0)
    except TimeoutError:
        pass
    left = [f"container {c['Names'][0]}" for c in engine.containers(all=True, filters={"label": label})]
    left += [f"volume {v['Name']}" for v in (engine.volumes(filters={"label": label}) or {}).get("Volumes") or []]
    return left
