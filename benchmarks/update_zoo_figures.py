"""Copy the zoo's measured latencies from `anydistill bench`'s raw output into the package
(`src/anydistill/models/measured.json`), where `anydistill models` reads them.

    anydistill bench benchmarks/_out/teachers/da_v2_small depth_tiny depth_small seg_tiny sam_tiny \
        --backends eager,channels_last,compile,onnx --threads 2 --rounds 6 --batch 4 --out benchmarks/results/bench_zoo
    python benchmarks/update_zoo_figures.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "benchmarks" / "results" / "bench_zoo" / "bench.json"
TARGET = ROOT / "src" / "anydistill" / "models" / "measured.json"
COMMAND = ("anydistill bench da_v2_small depth_tiny depth_small seg_tiny sam_tiny "
           "--backends eager,channels_last,compile,onnx --threads 2")  # fmt: skip


def main() -> None:
    bench = json.loads(SOURCE.read_text())
    models: dict[str, dict] = {}
    for row in bench["rows"]:
        if row["latency_ms"] is None:
            continue
        entry = models.setdefault(row["name"], {})
        if row["backend"] == "eager":
            entry["eager_ms"] = row["latency_ms"]
        if "fastest_ms" not in entry or row["latency_ms"] < entry["fastest_ms"]:
            entry["fastest_ms"], entry["fastest_backend"] = row["latency_ms"], row["backend"]
    out = {"machine": bench["machine"], "threads": bench["threads"], "command": COMMAND,
           "source": str(SOURCE.relative_to(ROOT)), "models": models}  # fmt: skip
    TARGET.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {TARGET.relative_to(ROOT)}: {sorted(models)}")


if __name__ == "__main__":
    main()
