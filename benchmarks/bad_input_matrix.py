"""The bad-input matrix (issue 10): every case of the corpus × every command it applies to → outcome class.

Runs the same pairs as ``tests/bad_inputs/test_bad_inputs.py`` (``tests/bad_inputs/corpus.py`` builds the
inputs, ``matrix.py`` runs ``anydistill.cli.main`` in process and classifies what happened) and writes
``benchmarks/results/bad_inputs.md`` / ``.json``: rows = cases, columns = commands, cells = the observed
class (marked when it is not the expected one), with the totals: tracebacks, silent wrong outputs, pairs
whose class differs from the registry's.

    python benchmarks/bad_input_matrix.py [--case NAME ...] [--command NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bad_inputs.corpus import CASE_BY_NAME, CASES, COMMANDS, pairs  # noqa: E402
from bad_inputs.matrix import SILENT_WRONG, TRACEBACK, Assets, describe, run_pair  # noqa: E402
from common import markdown_table, write_results  # noqa: E402

_SHORT = {"works": "works", "one line": "one line", "counted skip": "skip", "usage": "usage"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", nargs="*", default=None, help="only these cases")
    parser.add_argument("--command", nargs="*", default=None, help="only these commands")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as the test suite runs it (tiny models are fastest on one thread)
    todo = [
        (c, m)
        for c, m in pairs()
        if (not args.case or c in args.case) and (not args.command or m in args.command)
    ]
    verdicts = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        assets = Assets.build(Path(tmp) / "assets")
        for k, (case, command) in enumerate(todo):
            start = time.perf_counter()
            v = run_pair(case, command, Path(tmp) / f"pair{k}", assets)
            verdicts.append(v)
            mark = "ok " if v.ok else "BAD"
            print(
                f"{mark} {time.perf_counter() - start:5.1f}s {case:24s} {command:14s} {v.observed}: {v.detail[:110]}"
            )
    seconds = time.perf_counter() - t0

    cell = {(v.case, v.command): v for v in verdicts}
    used = [m for m in COMMANDS if any(v.command == m for v in verdicts)]
    rows = []
    for case in CASES:
        if not any((case.name, m) in cell for m in used):
            continue
        row: list[object] = [f"`{case.name}`: {case.description}"]
        for m in used:
            v = cell.get((case.name, m))
            if v is None:
                row.append("")
            else:
                shown = _SHORT.get(v.observed, v.observed)
                row.append(shown if v.ok else f"**{shown}** (expected {_SHORT.get(v.expected, v.expected)})")
        rows.append(row)
    counts = Counter(v.observed for v in verdicts)
    tracebacks = counts[TRACEBACK]
    silent = sum(counts[c] for c in SILENT_WRONG)
    mismatched = sum(not v.ok for v in verdicts)
    totals = (
        f"{len(verdicts)} pairs ({len(rows)} cases × {len(used)} commands where they apply): "
        + ", ".join(f"{_SHORT.get(k, k)} {n}" for k, n in counts.most_common())
        + f". **Tracebacks: {tracebacks}. Silent wrong outputs: {silent}. Pairs not of their expected class: "
        f"{mismatched}.** Wall time {seconds:.0f} s (one thread)."
    )
    table = markdown_table(["case", *used], rows) + "\n\n" + totals
    print(table)
    for v in verdicts:
        if not v.ok:
            print(describe(v))
    command = "python benchmarks/bad_input_matrix.py" + (
        "" if not (args.case or args.command) else " (a selection)"
    )
    if not (args.case or args.command):
        data = {
            "seconds": round(seconds, 1),
            "tracebacks": tracebacks,
            "silent_wrong_outputs": silent,
            "mismatched": mismatched,
            "counts": dict(counts),
            "cases": {c.name: c.description for c in CASES},
            "pairs": [
                {
                    "case": v.case,
                    "command": v.command,
                    "expected": v.expected,
                    "observed": v.observed,
                    "detail": v.detail,
                }
                for v in verdicts
            ],  # fmt: skip
        }
        print(f"wrote {write_results('bad_inputs', table, data, command)}")
    assert set(CASE_BY_NAME) >= {v.case for v in verdicts}


if __name__ == "__main__":
    main()
