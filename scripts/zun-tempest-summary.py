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
from pathlib import Path

import subunit
import testtools

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
    found: dict[str, str] = {}

    def record(test: dict[str, object]) -> None:
        found[str(test["id"])] = str(test["status"])

    result = testtools.StreamToDict(record)
    result.startTestRun()
    with stream_path.open("rb") as fh:
        subunit.ByteStreamToStreamResult(fh, non_subunit_name="stdout").run(result)
    result.stopTestRun()
    return found


def main(run: str, stream: str, expected_file: str) -> int:
    expected = expected_failures(Path(expected_file))
    results = statuses(Path(stream))
    counts: Counter[str] = Counter()
    unexpected: list[str] = []
    failures: list[str] = []
    stale: list[str] = []
    for test_id, status in sorted(results.items()):
        name = bare(test_id)
        if status in ("success", "xfail"):
            counts["passed"] += 1
            if name in expected:
                stale.append(name)
        elif status == "skip":
            counts["skipped"] += 1
        elif status in ("fail", "uxsuccess"):
            counts["failed"] += 1
            failures.append(name)
            if name not in expected:
                unexpected.append(name)
        else:  # "exists", "inprogress": a worker died mid-test
            counts["failed"] += 1
            failures.append(name)
            unexpected.append(name)
    Path(stream).with_suffix(".failures.txt").write_text("".join(f"{f}\n" for f in failures))
    print(f"== {run}: {counts['passed']} passed, {counts['failed']} failed "
          f"({counts['failed'] - len(unexpected)} expected), {counts['skipped']} skipped")
    for name in failures:
        if name in expected:
            print(f"   expected failure  {name}  ({expected[name]})")
        else:
            cls = FIXTURE.match(name)
            hint = f" (class fixture of {cls['cls']})" if cls else ""
            print(f"   UNEXPECTED FAIL   {name}{hint}")
    for name in stale:
        print(f"   note: now passes, remove it from the expected-failure list: {name}")
    if not results:
        print(f"   no test results in {stream}: the run did not start")
        return 1
    return 1 if unexpected else 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
