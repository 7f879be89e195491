"""Where a create's time goes: cProfile over the create path in one process, on a SQLite
store seeded as bench case 4 seeds it (N capsules on the simulated host).

    .venv/bin/python -m bench.profile_create [--capsules 10000] [--creates 300] [--bare]

It drives the service (CapsuleService.create / ContainerService.create, then the view)
with one thread, as one request's handler would, so HTTP (the ~1 ms `GET /` floor of
case 4) is not in it. Prints the top functions by cumulative and by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import event

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cases import api as api_case
from bench.workloads import template


class _Seeded:
    def __init__(self, root: Path) -> None:
        self.db = root / "capsuled.db"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_create")
    ap.add_argument("--capsules", type=int, default=10_000)
    ap.add_argument("--creates", type=int, default=300)
    ap.add_argument("--bare", action="store_true", help="bare containers instead of capsules")
    ap.add_argument("--top", type=int, default=35)
    ap.add_argument("--sql", action="store_true", help="print the SQL one create sends")
    args = ap.parse_args(argv)

    from capsuled.api.microversions import MAX, ApiVersion
    from capsuled.api.views import any_container_view, capsule_view
    from capsuled.cli.compose import build_api
    from capsuled.config import Settings
    from capsuled.identity.base import Principal
    from capsuled.store.engine import Store, make_engine

    root = Path(tempfile.mkdtemp(prefix="capsuled-profile-"))
    try:
        seeded = _Seeded(root)
        api_case.seed(seeded, args.capsules)  # type: ignore[arg-type]
        api_case.heartbeat_sim_host(seeded)  # type: ignore[arg-type]
        settings = Settings(state_dir=root)  # type: ignore[call-arg]
        store = Store(make_engine(f"sqlite:///{seeded.db}"))
        api = build_api(settings, store, lambda host: None)  # type: ignore[arg-type,return-value]
        state = api.app.state
        who = Principal("admin", "admin", frozenset({"admin"}))
        state.quotas.update("admin", {r: -1 for r in ("capsules", "containers", "cpu",
                                                      "memory", "disk")})

        def one() -> None:
            name = f"p-{uuid.uuid4().hex[:8]}"
            if args.bare:
                row = state.containers.create(who, {"name": name, "image": "busybox",
                                                    "command": ["sleep", "3600"]},
                                              run=True, request_id=f"req-{name}")
                any_container_view(row, True, "http://x")
            else:
                row = state.capsules.create(who, template(name))
                capsule_view(row, ApiVersion(*MAX), True, "http://x")
        api_case.heartbeat_sim_host(seeded)  # type: ignore[arg-type]
        for _ in range(10):  # warm-up
            one()
        sent: list[str] = []

        def log_sql(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            sent.append(" ".join(statement.split())[:150])
        event.listen(store.engine, "before_cursor_execute", log_sql)
        one()
        event.remove(store.engine, "before_cursor_execute", log_sql)
        print(f"one create sends {len(sent)} statements"
              + ("".join(f"\n  {q}" for q in sent) if args.sql else ""))
        cpu = time.process_time()
        for i in range(args.creates):
            if i % 10 == 0:
                api_case.heartbeat_sim_host(seeded)  # type: ignore[arg-type]
            one()
        print(f"{(time.process_time() - cpu) / args.creates * 1000:.2f} ms of CPU per create "
              "(no profiler)")
        # CPU time, not wall time: the machine is shared, and a wall-clock profile would
        # mostly measure other processes' turns on the cores.
        prof = cProfile.Profile(time.process_time)
        cpu = 0.0
        for i in range(args.creates):
            if i % 10 == 0:  # the simulated host must look alive to the scheduler (60 s)
                api_case.heartbeat_sim_host(seeded)  # type: ignore[arg-type]
            t0 = time.process_time()
            prof.enable()
            one()
            prof.disable()
            cpu += time.process_time() - t0
        print(f"{args.creates} {'bare' if args.bare else 'capsule'} creates on "
              f"{args.capsules:,} capsules: {cpu / args.creates * 1000:.2f} ms of CPU each "
              "(under cProfile)")
        for key, only in (("cumulative", "capsuled/"), ("cumulative", ""), ("tottime", "")):
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats(key).print_stats(only, args.top)
            print(out.getvalue())
        store.engine.dispose()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
