"""Merge iscsi-test-cu outputs of several runs into one verdict per test.

    python merge.py --skip-list skip-list.txt RUN1.txt [RUN2.txt ...]

A test is *failed* if it failed in any run, else *passed* if it passed in any
run, else *skipped* (libiscsi prints "[SKIPPED]" and CUnit counts it as
passed).  Every skipped test must appear in the skip list with a reason;
an unlisted skip is reported and fails the exit status, a listed test that
did not skip is reported as stale.  Prints a per-family table and, last,
"N passed, M failed, K skipped".
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

STATES = ("passed", "failed", "skipped")


def parse_run(text: str) -> dict[str, str]:
    """SUITE.TEST -> passed / failed / skipped for one raw iscsi-test-cu output.

    Same reading as iscsi_conformance.sh: the status is "passed"/"FAILED" right
    after "Test: NAME ..." or at the start of a later line; "[SKIPPED]" anywhere
    in between marks a skip.
    """
    results: dict[str, str] = {}
    suite = test = status = None
    skipped = False

    def flush() -> None:
        if suite and test:
            st = status or "failed"  # a test that never finished did not pass
            results[f"{suite}.{test}"] = "skipped" if st == "passed" and skipped else st

    for line in text.splitlines():
        if line.startswith("Suite: "):
            flush()
            suite, test = line[7:].strip(), None
        elif line.startswith("  Test: "):
            flush()
            test, _, tail = line[8:].partition(" ...")
            status, skipped = _status(tail), "[SKIPPED]" in tail
        elif line.startswith("Run Summary"):
            flush()
            suite = test = None
        elif test and status is None:
            skipped = skipped or "[SKIPPED]" in line
            status = _status(line)
    flush()
    return results


def _status(text: str) -> str | None:
    if text.startswith("passed"):
        return "passed"
    if text.startswith("FAILED"):
        return "failed"
    return None


def combine(a: str | None, b: str) -> str:
    if "failed" in (a, b):
        return "failed"
    if "passed" in (a, b):
        return "passed"
    return "skipped"


def read_skip_list(path: Path) -> dict[str, str]:
    entries = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip() if raw.lstrip().startswith("#") else raw.strip()
        if not line:
            continue
        name, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"skip-list entry without a reason: {raw!r}")
        entries[name] = reason.strip()
    return entries


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-list", type=Path, required=True)
    ap.add_argument("outputs", nargs="+", type=Path)
    args = ap.parse_args()
    merged: dict[str, str] = {}
    for out in args.outputs:
        for name, st in parse_run(out.read_text(errors="replace")).items():
            merged[name] = combine(merged.get(name), st)
    skips = read_skip_list(args.skip_list)
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, st in merged.items():
        table[name.split(".", 1)[0]][st] += 1
    print(f"{'family':<26} {'passed':>6} {'failed':>6} {'skipped':>7}")
    for fam, counts in table.items():
        print(f"{fam:<26} {counts['passed']:>6} {counts['failed']:>6} {counts['skipped']:>7}")
    failed = sorted(n for n, s in merged.items() if s == "failed")
    unlisted = sorted(n for n, s in merged.items() if s == "skipped" and n not in skips)
    stale = sorted(n for n in skips if merged.get(n) not in (None, "skipped"))
    for name in failed:
        print(f"  failed: {name}")
    for name in unlisted:
        print(f"  skipped but not in the skip list: {name}")
    for name in stale:
        print(f"  in the skip list but {merged[name]}: {name}")
    totals = {k: sum(1 for s in merged.values() if s == k) for k in STATES}
    print(f"{totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
    return 0 if not failed and not unlisted else 1


if __name__ == "__main__":
    sys.exit(main())
