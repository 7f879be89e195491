"""Summarise one tempest run's subunit v2 stream against the expected-failure list.

    python zun-tempest-summary.py RUN_NAME RESULTS.subunit EXPECTED_FAILURES.txt

Prints passed/failed/skipped, each failure marked expected or not, and writes
RESULTS.failures.txt (one failing id a line). Exit status 1 when a test outside the list
failed (or errored in a class fixture), else 0. Runs in the tempest virtualenv, which has
python-subunit and testtools.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Tempest appends the idempotent id and attributes: "...test_x[id-…,smoke]".
ATTRS = re.compile(r"\[.*\]$")
# A class fixture failure is reported as "setUpClass (module.Class)".
FIXTURE = re.compile(r"^(setUpClass|tearDownClass) \((?P<cls>[\w.]+)\)$")


def bare(test_id: str) -> str:
    return ATTRS.sub("", test_id)


def expected_failures(path: Path) -> dict[str, str]:
    """id → reason; a line is `test.id  # reason`, blank lines and comments are skipped."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        test_id, _, reason = line.partition("#")
        if test_id.strip():
            out[test_id.strip()] = reason.strip()
    return out


def statuses(stream_path: Path) -> dict[str, str]:
    """Final status of every test id in the stream (success, fail, skip, …)."""
    # Here, not at the top: the pure parts are imported by tests without the tempest venv.
    import subunit
    import testtools

    found: dict[str, str] = {}

    def record(test: dict[str, object]) -> None:
        found[str(test["id"])] = str(test["status"])

    result = testtools.StreamToDict(record)
    result.startTestRun()
    with stream_path.open("rb") as fh:
        subunit.ByteStreamToStreamResult(fh, non_subunit_name="stdout").run(result)
    result.stopTestRun()
    return found


@dataclass
class Report:
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)   # every failing id
    unexpected: list[str] = field(default_factory=list)  # failing and not in the list
    stale: list[str] = field(default_factory=list)       # in the list but passing


def classify(results: dict[str, str], expected: dict[str, str]) -> Report:
    report = Report()
    for test_id, status in sorted(results.items()):
        name = bare(test_id)
        if status in ("success", "xfail"):
            report.counts["passed"] += 1
            if name in expected:
                report.stale.append(name)
        elif status == "skip":
            report.counts["skipped"] += 1
        else:  # fail, uxsuccess, or "exists"/"inprogress": a worker died mid-test
            report.counts["failed"] += 1
            report.failures.append(name)
            if name not in expected:
                report.unexpected.append(name)
    return report


def main(run: str, stream: str, expected_file: str) -> int:
    expected = expected_failures(Path(expected_file))
    results = statuses(Path(stream))
    report = classify(results, expected)
    counts = report.counts
    Path(stream).with_suffix(".failures.txt").write_text(
        "".join(f"{f}\n" for f in report.failures))
    print(f"== {run}: {counts['passed']} passed, {counts['failed']} failed "
          f"({counts['failed'] - len(report.unexpected)} expected), {counts['skipped']} skipped")
    for name in report.failures:
        if name in expected:
            print(f"   expected failure  {name}  ({expected[name]})")
        else:
            cls = FIXTURE.match(name)
            hint = f" (class fixture of {cls['cls']})" if cls else ""
            print(f"   UNEXPECTED FAIL   {name}{hint}")
    for name in report.stale:
        print(f"   note: now passes, remove it from the expected-failure list: {name}")
    if not results:
        print(f"   no test results in {stream}: the run did not start")
        return 1
    return 1 if report.unexpected else 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
