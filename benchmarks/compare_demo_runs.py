"""Compare finished ``anydistill demo`` folders: the same quality figures in every run, the time each took.

Reads each folder's ``results.json`` (written by the demo) and prints one row per run and model with δ1
and AbsRel to eight digits, the stage times and the load average the report recorded, then whether the
figures agree across runs (the step-budget promise: the same command gives the same figures on a quiet
or a busy machine). For a ``--seeds 2`` run, its seed-0 figures are the ones compared.

    python benchmarks/compare_demo_runs.py LABEL=DIR [LABEL=DIR ...] [--name demo_runs]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import markdown_table, write_results

MODELS = ("teacher (depth_small)", "student, labeled only", "student, distilled")


def load(folder: Path) -> dict:
    path = folder / "results.json"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (is {folder} a finished demo folder?)")
    return json.loads(path.read_text())


def seed0(result: dict, key: str) -> float:
    return float(result["per_seed"][0][key]) if "per_seed" in result else float(result["metrics"][key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=DIR")
    parser.add_argument("--name", default="demo_runs", help="results/<name>.md and .json")
    args = parser.parse_args()
    runs = {}
    for item in args.runs:
        label, _, folder = item.partition("=")
        runs[label] = load(Path(folder))
    rows, figures = [], {}
    for label, data in runs.items():
        seconds = data["seconds"]
        for model in MODELS:
            r = data["results"][model]
            figures.setdefault(model, set()).add((seed0(r, "delta1"), seed0(r, "abs_rel")))
            rows.append([label, model, f"{seed0(r, 'delta1'):.8f}", f"{seed0(r, 'abs_rel'):.8f}",
                         f"{r['latency_ms_518']:.0f}"])  # fmt: skip
        rows.append([label, "stages (s)", " / ".join(f"{k} {v:.0f}" for k, v in seconds.items()),
                     f"total {sum(seconds.values()) / 60:.1f} min", data["notes"].get("load", "–")])  # fmt: skip
    same = all(len(v) == 1 for v in figures.values())
    table = markdown_table(["run", "model (seed 0)", "δ1", "AbsRel", "latency at 518², ms"], rows)
    verdict = (
        "**Every run gives the same δ1 and AbsRel for every model (seed 0), to every digit.**"
        if same
        else "**The runs differ:** "
        + "; ".join(f"{m}: {sorted(v)}" for m, v in figures.items() if len(v) > 1)
    )
    answers = "\n".join(f"- {label}: {json.dumps(data.get('answer'))}" for label, data in runs.items())
    text = f"{table}\n\n{verdict}\n\nThe reports' answer figures:\n{answers}"
    print(text)
    command = "python benchmarks/compare_demo_runs.py " + " ".join(args.runs)
    write_results(args.name, text, {"runs": {k: {"results": v["results"], "seconds": v["seconds"],
                                                "notes": v["notes"]} for k, v in runs.items()}, "same": same},
                  command)  # fmt: skip


if __name__ == "__main__":
    main()
