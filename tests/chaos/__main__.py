"""python -m tests.chaos [--short] [--capsules N] [--duration S] [--kills K] [--json PATH]

Exit status 0 when every count that must be zero is zero (docs/benchmarks.md, "Chaos and
soak")."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .scenario import SHORT, Config, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    ap.add_argument("--short", action="store_true", help="the CI form: 40 capsules, 2 kills of each kind")
    ap.add_argument("--capsules", type=int, help="creates in all (default 200)")
    ap.add_argument("--duration", type=float, help="seconds the kills are spread over (default 300)")
    ap.add_argument("--tail", type=float, help="seconds of churn once all is up again (default 30)")
    ap.add_argument("--kills", type=int, help="kills of each kind (default 3)")
    ap.add_argument("--threads", type=int, help="client threads (default 6)")
    ap.add_argument("--seed", type=int, help="random seed (default 1)")
    ap.add_argument("--json", type=Path, help="write the report here as JSON")
    args = ap.parse_args(argv)
    config = SHORT if args.short else Config()
    overrides = {"capsules": args.capsules, "duration": args.duration,
                 "kills_per_kind": args.kills, "threads": args.threads, "tail": args.tail, "seed": args.seed}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    report = run(config)
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps(dataclasses.asdict(report), indent=2))
    return 1 if report.problems() or not report.converged else 0


if __name__ == "__main__":
    sys.exit(main())
