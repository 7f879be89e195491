"""Capsuled benchmarks: each figure next to a baseline measured in the same run on the
same machine, printed as a table and written as JSON.

    .venv/bin/python -m bench.run [--quick] [--cases 1,2,3,4,5,6] [--json PATH]

Cases (docs/benchmarks.md has the details, goals and the latest results):
  1 start-up     sandbox + 2 busybox, POST → Running (cold, and with a warm sandbox
                 pool) vs raw docker SDK (and podman)
  2 burst        50 capsules at once → all Running, and clean-up, vs raw SDK
  3 status       docker kill → the API shows it exited (median, p99)
  4 API          list/show on 10,000 capsules, capsule and bare creates/s vs GET /s
  5 scheduler    placements per second over 1,000 simulated hosts
  6 at rest      capsuled's CPU with 200 running capsules over 60 s
  7 events       creates/s with the AMQP notifier on vs off; change → watcher latency
  8 services     TCP connect via a service VIP vs the backend's own address; readiness
                 lost → backend out of the load balancer (p99)
  9 replicas     creates/s across two API replicas on PostgreSQL (16 clients) vs GET /

A full run takes ~14 minutes, --quick ~3.5 (fewer runs and capsules, said in the table).
Needs a Docker Engine with the seeded images (`capsuled image seed`); podman is optional.
Everything made is removed at the end, by label, also after a failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (BENCH_LABEL, CaseResult, Row, Server, docker_api, loadavg, log,
                           machine, remove_labelled, still_labelled)

ROOT = Path(__file__).resolve().parent.parent
ALL = (1, 2, 3, 4, 5, 6, 7, 8, 9)

FULL = {"startup_runs": 15, "burst_n": 50, "burst_rounds": 3, "kill_capsules": 10,
        "kill_per_capsule": 10, "api_n": 10_000, "api_list_rounds": 2, "api_shows": 300,
        "api_create_seconds": 5.0, "api_clients": 4, "api_rounds": 3, "sched_hosts": 1000,
        "sched_placements": 5000, "sched_rounds": 5, "idle_n": 200, "idle_window": 60.0,
        "idle_baseline": 30.0, "idle_settle": 20.0, "events_rounds": 3, "events_watchers": 4,
        "events_writes": 300, "events_rate": 50.0, "svc_connects": 2000, "svc_flips": 20,
        "rep_n": 1000, "rep_clients": 16, "rep_seconds": 5.0, "rep_rounds": 3}
QUICK = {**FULL, "startup_runs": 5, "burst_n": 20, "burst_rounds": 1, "kill_capsules": 3,
         "api_list_rounds": 1, "api_shows": 100, "api_create_seconds": 2.0, "api_rounds": 1,
         "sched_placements": 2000, "sched_rounds": 3, "idle_n": 30, "idle_window": 15.0,
         "idle_baseline": 10.0, "idle_settle": 17.0, "events_rounds": 1, "events_writes": 100,
         "svc_connects": 500, "svc_flips": 6, "rep_seconds": 2.0, "rep_rounds": 1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer runs and capsules (~3 min)")
    ap.add_argument("--cases", default=",".join(map(str, ALL)),
                    help="comma-separated case numbers (default: all)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json",
                    help="where to write the JSON (default bench/results/latest.json)")
    args = ap.parse_args(argv)
    try:
        cases = sorted({int(c) for c in args.cases.split(",") if c.strip()})
    except ValueError:
        ap.error("--cases: comma-separated numbers, e.g. 1,3,5")
    if not set(cases) <= set(ALL):
        ap.error(f"--cases: choose from {ALL}")
    p = QUICK if args.quick else FULL

    from capsuled.config import AgentSettings
    agent = AgentSettings()
    api = docker_api()
    run_id = uuid.uuid4().hex[:10]
    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "mode": "quick" if args.quick else "full", "started": started.isoformat(timespec="seconds"),
        "machine": machine(api), "load_before": loadavg(), "params": p, "cases": []}
    log(f"bench {report['mode']} run {run_id}, cases {cases}, load {report['load_before']}")

    results: list[CaseResult] = []
    main_server: Server | None = None
    warm_server: Server | None = None
    raw = podman = None

    def case(name: str, fn: Callable[[], tuple[list[Row], list[str]]]) -> None:
        lb, t0 = loadavg(), time.perf_counter()
        log(f"case {name} …")
        try:
            rows, notes = fn()
            results.append(CaseResult(name, rows, time.perf_counter() - t0, lb, loadavg(), notes))
        except Exception as exc:  # one failed case must not lose the others
            traceback.print_exc()
            results.append(CaseResult(name, [], time.perf_counter() - t0, lb, loadavg(),
                                      error=f"{type(exc).__name__}: {exc}"))

    try:
        if {1, 2, 3, 6} & set(cases):
            from bench.workloads import Podman, RawDocker
            main_server = Server("main").start()
            client = main_server.client()
            main_server.unlimited_quota(client)
            raw = RawDocker(api, run_id)
            if 1 in cases and Podman.available():
                podman = Podman(run_id)
        if 1 in cases:
            from bench.cases import startup
            assert main_server is not None and raw is not None
            # The warm-pool arm: a second capsuled whose agent keeps idle sandboxes.
            warm_server = Server("warm", env={
                "CAPSULED_AGENT__SANDBOX_POOL_SIZE": str(startup.POOL_SIZE)}).start()
            warm_client = warm_server.client()
            warm_server.unlimited_quota(warm_client)
            warm = startup.Warm(warm_client, warm_server.instance, api)
            case("1 start-up", lambda: (startup.run(client, raw, podman, p["startup_runs"], warm),
                                        [] if podman else ["podman is not installed: no podman row"]))
        if 2 in cases:
            from bench.cases import burst
            notes = [] if p["burst_n"] == 50 else [f"--quick: {p['burst_n']} capsules, not 50"]
            case("2 burst", lambda: (burst.run(client, raw, p["burst_n"], p["burst_rounds"],
                                               agent.workers, agent.stop_timeout), notes))
        if 3 in cases:
            from bench.cases import propagation
            assert main_server is not None
            case("3 status", lambda: (propagation.run(
                client, api, main_server.instance, p["kill_capsules"], p["kill_per_capsule"]), []))
        if 4 in cases:
            from bench.cases import api as api_case

            def case4() -> tuple[list[Row], list[str]]:
                srv = Server("api")
                try:
                    t0 = time.perf_counter()
                    api_case.seed(srv, p["api_n"])
                    log(f"api: seeded {p['api_n']:,} capsules in {time.perf_counter() - t0:.1f}s")
                    srv.start()
                    return api_case.run(srv, p["api_n"], p["api_list_rounds"], p["api_shows"],
                                        p["api_create_seconds"], p["api_clients"],
                                        p["api_rounds"]), []
                finally:
                    left = srv.destroy(api)
                    if left:
                        log(f"api: removed leftovers {left}")
            case("4 API", case4)
        if 5 in cases:
            from bench.cases import scheduler
            case("5 scheduler", lambda: (scheduler.run(p["sched_hosts"], p["sched_placements"],
                                                       p["sched_rounds"]), []))
        if 6 in cases:
            from bench.cases import idle
            assert main_server is not None

            def case6() -> tuple[list[Row], list[str]]:
                rows, notes = idle.run(main_server, client, p["idle_n"], p["idle_window"],
                                       p["idle_baseline"], p["idle_settle"])
                if p["idle_n"] != 200:
                    notes.append(f"--quick: {p['idle_n']} capsules, {p['idle_window']:g}s window")
                return rows, notes
            case("6 at rest", case6)
        if 7 in cases:
            from bench.cases import events
            case("7 events", lambda: (events.run(p, api), []))
        if 8 in cases:
            from bench.cases import services
            case("8 services", lambda: (services.run(api, p["svc_connects"], p["svc_flips"]),
                                        [] if p["svc_flips"] == 20 else
                                        [f"--quick: {p['svc_flips']} readiness flips, not 20"]))
        if 9 in cases:
            from bench.cases import replicas
            case("9 replicas", lambda: (replicas.run(p["rep_n"], p["rep_clients"],
                                                     p["rep_seconds"], p["rep_rounds"]), []))
    finally:
        removed: list[str] = []
        labels = [f"{BENCH_LABEL}={run_id}"]
        if podman is not None:
            podman.cleanup()
        if raw is not None:
            raw.close()
        if main_server is not None:
            labels.append(f"capsuled.instance={main_server.instance}")
            removed += main_server.destroy(api)  # its project network at least
        if warm_server is not None:
            labels.append(f"capsuled.instance={warm_server.instance}")
            removed += warm_server.destroy(api)  # its idle pooled sandboxes too
        removed += remove_labelled(api, labels[0])  # the baselines' network
        leaked = [n for label in labels for n in still_labelled(api, label)]
        report["cleanup"] = {"removed_at_end": removed, "still_there_after": leaked}
        log(f"clean-up: removed {len(removed)} Docker objects at the end "
            f"({', '.join(removed) or 'none'}); left: {', '.join(leaked) or 'nothing'}")

    report["load_after"] = loadavg()
    report["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    report["cases"] = [{"case": r.case, "seconds": round(r.seconds, 1), "load_before": r.load_before,
                        "load_after": r.load_after, "notes": r.notes, "error": r.error,
                        "rows": [row.as_json() for row in r.rows]} for r in results]
    print(render(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"wrote {args.json}")
    return 1 if any(r.error for r in results) else 0


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("/s",):
        return f"{value:,.0f}{unit}"
    if unit == "% core":
        return f"{value:.2f}%"
    if unit == "µs":
        return f"{value:.0f} µs"
    if unit == "ms":
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    return f"{value:.3f} {unit}"


def render(report: dict[str, Any]) -> str:
    """The table: one line per figure, ours next to its baseline, the ratio and the goal."""
    head = ("case", "metric", "capsuled", "baseline", "ratio", "goal", "met", "baseline is")
    lines = [head]
    for c in report["cases"]:
        if c["error"]:
            lines.append((c["case"], "FAILED: " + c["error"][:80], "", "", "", "", "", ""))
        for r in c["rows"]:
            met = {True: "yes", False: "NO", None: ""}[r["met"]]
            lines.append((r["case"], r["metric"], _fmt(r["ours"], r["unit"]),
                          _fmt(r["baseline"], r["unit"]),
                          "" if r["ratio"] is None else f"{r['ratio']:.2f}",
                          r["goal"], met, r["baseline_name"]))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = ["  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    m = report["machine"]
    out.append("")
    out.append(f"{report['mode']} run, {report['seconds']}s; {m['cpus']} × {m['cpu_model']}, "
               f"{m['memory_gib']} GiB, {m['os']}, kernel {m['kernel']}, Docker {m['docker']}"
               + (f", {m['podman']}" if m.get("podman") else ""))
    out.append("load average (1/5/15 min): before " + " ".join(f"{x:.2f}" for x in report["load_before"])
               + ", after " + " ".join(f"{x:.2f}" for x in report["load_after"]))
    for c in report["cases"]:
        for note in c["notes"]:
            out.append(f"note ({c['case']}): {note}")
    left = (report.get("cleanup") or {}).get("still_there_after")
    if left:
        out.append("Docker refused to remove (see docs/benchmarks.md): " + ", ".join(left))
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
