"""What placing one create costs at many hosts: `Placement.choose` decided exactly (every
host row locked and every host's capacity read: the baseline, and what a contended try
falls back to) against optimistically (a snapshot hit: one host's row locked and read),
alternating, in one throwaway PostgreSQL database with N registered hosts.

    .venv/bin/python -m bench.placement_cost [--hosts 1000] [--calls 60] [--rounds 2]

Prints the median wall and CPU time of a call in each mode and the ratio optimistic /
exact of each (in the same run). Each call runs in a transaction that is rolled back:
nothing is claimed, so every call sees the same hosts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

from capsuled.api.services import placement as placement_module
from capsuled.api.services.placement import Placement
from capsuled.api.services.quotas import QuotaService
from capsuled.config import QuotaSettings
from capsuled.domain.channel import HostInfo
from capsuled.scheduler.select import Request
from capsuled.store import hosts as host_repo
from capsuled.store.engine import Store, make_engine, upgrade

ADMIN_URL = os.environ.get("CAPSULED_TEST_POSTGRESQL_URL",
                           "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MODES = ("exact", "optimistic")


def measure(store: Store, placement: Placement, mode: str, calls: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of one `choose` in `mode`."""
    want = Request(cpu=0.1, memory=4)
    wall, cpu = [], []
    for _ in range(calls):
        with store.transaction() as s:
            if mode == "exact":
                s.info[placement_module._EXACT] = True
            w0, c0 = time.perf_counter(), time.process_time()
            placement.choose(s, want, "capsule bench", "bench")
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
            s.rollback()
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.placement_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"capsuled_place_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    store = Store(make_engine(make_url(ADMIN_URL).set(database=name)
                              .render_as_string(hide_password=False)))
    try:
        upgrade(store.engine)
        with store.transaction() as s:
            for i in range(args.hosts):
                host_repo.register_host(s, HostInfo(name=f"h{i:05d}", cpus=1000,
                                                    memory_mb=10_000_000, disk_gb=100))
        placement = Placement(QuotaService(store, QuotaSettings().model_dump()),
                              timedelta(seconds=600))
        got: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                got[mode].append(measure(store, placement, mode, args.calls))
        print(f"Placement.choose at {args.hosts} hosts, median of {args.calls} calls a round")
        for mode in MODES:
            print(f"  {mode:<10} " + "  ".join(f"wall {w * 1000:6.2f} ms cpu {c * 1000:6.2f} ms"
                                              for w, c in got[mode]))
        for r in range(args.rounds):
            (ew, ec), (ow, oc) = got["exact"][r], got["optimistic"][r]
            print(f"  round {r + 1}: optimistic / exact = {ow / ew:.2f} wall, {oc / ec:.2f} CPU")
    finally:
        store.engine.dispose()
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
