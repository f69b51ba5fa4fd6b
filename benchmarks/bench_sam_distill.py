"""Quality of a MobileSAM-style distilled student against its promptable teacher, on toyworld.

Runs the promptable demo's story (``anydistill demo --promptable --baseline``): a ``sam_small``
teacher trained with SAM's simulated interactive recipe on labeled ``wide`` scenes, its image
embeddings of unlabeled scenes cached once, a ``sam_tiny`` student whose encoder is distilled from
the cache (teacher decoder reused, frozen; + prompt-in-the-loop mask loss), and the same student
trained on the labels directly with the same time budget. All are evaluated by the interactive
protocol on held-out scenes. Goal (issue 4): the student keeps ≥ 90% of the teacher's 1-click mIoU.

    python benchmarks/bench_sam_distill.py [--quick] [--teacher-steps 1300 --student-steps 400]
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

from common import markdown_table, write_results

from anydistill.demos.promptable import DEFAULT, QUICK, run_promptable_demo

OUT = Path(__file__).resolve().parent / "_out" / "sam_distill"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny budget: checks the pipeline only")
    parser.add_argument("--teacher-steps", type=int, default=None, help="teacher training budget (steps)")
    parser.add_argument(
        "--student-steps", type=int, default=None, help="each student's training budget (steps)"
    )
    parser.add_argument(
        "--cap-minutes", type=float, default=None, help="time cap of each run (a safety stop)"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (the scenes stay the same)")
    args = parser.parse_args()
    out = OUT.with_name(OUT.name + (f"_seed{args.seed}" if args.seed else ""))
    shutil.rmtree(out, ignore_errors=True)
    budget = QUICK if args.quick else DEFAULT
    if args.teacher_steps is not None:
        budget = replace(budget, teacher_steps=args.teacher_steps)
    if args.student_steps is not None:
        budget = replace(budget, student_steps=args.student_steps)
    if args.cap_minutes is not None:
        budget = replace(budget, cap_minutes=args.cap_minutes)
    run_promptable_demo(out, budget=budget, baseline=True, seed=args.seed)
    data = json.loads((out / "results.json").read_text())
    rows = []
    teacher_1 = None
    for name, r in data["results"].items():
        m = r["metrics"]
        teacher_1 = teacher_1 or m["miou@1"]
        rows.append([
            name, f"{m['miou@1']:.3f}", f"{m.get('miou@5', float('nan')):.3f}", f"{m['noc@85']:.2f}",
            f"{m['noc@90']:.2f}", f"{m['oracle_miou@1']:.3f}", f"{100 * m['miou@1'] / teacher_1:.0f}%",
            f"{r['encoder_params_m']:.1f}", f"{r['encoder_ms_1024']:.0f}",
        ])  # fmt: skip
    header = ["model", "1-click mIoU", "5-click mIoU", "NoC@85", "NoC@90", "oracle 1-click",
              "of teacher's 1-click", "encoder params (M)", "encoder ms @1024²"]  # fmt: skip
    table = markdown_table(header, rows)
    print(table)
    command = "python benchmarks/bench_sam_distill.py" + (" --quick" if args.quick else "")
    if args.teacher_steps is not None or args.student_steps is not None:
        command += f" --teacher-steps {budget.teacher_steps} --student-steps {budget.student_steps}"
    if args.cap_minutes is not None:
        command += f" --cap-minutes {budget.cap_minutes:g}"
    if args.seed:
        command += f" --seed {args.seed}"
    name = "sam_distill" + ("_quick" if args.quick else "") + (f"_seed{args.seed}" if args.seed else "")
    write_results(name, table, data, command)


if __name__ == "__main__":
    main()
