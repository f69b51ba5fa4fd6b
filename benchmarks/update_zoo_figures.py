"""Copy the zoo's measured latencies from `anydistill bench`'s raw output, and the test quality the
committed benchmarks measured for zoo models, into the package (`src/anydistill/models/measured.json`),
where `anydistill models` reads them.

    anydistill bench benchmarks/_out/teachers/da_v2_small depth_tiny depth_small seg_tiny sam_tiny \
        --backends eager,channels_last,compile,onnx --threads 2 --rounds 6 --batch 4 --out benchmarks/results/bench_zoo
    python benchmarks/update_zoo_figures.py
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "benchmarks" / "results" / "bench_zoo" / "bench.json"
TARGET = ROOT / "src" / "anydistill" / "models" / "measured.json"
COMMAND = ("anydistill bench da_v2_small depth_tiny depth_small seg_tiny sam_tiny "
           "--backends eager,channels_last,compile,onnx --threads 2")  # fmt: skip


RESULTS = ROOT / "benchmarks" / "results"
SEMANTIC_EM = ("semantic_peer_ablation_em.json", "semantic_peer_em_small_unet_os2.json",
               "semantic_peer_em_r18unet_seeds23.json")  # fmt: skip
SEMANTIC_TOYWORLD = ("semantic_peer_toyworld.json", "semantic_peer_toyworld_r18unet.json")
#: zoo model -> (em-membranes row, toyworld row) of bench_semantic_peer.py that is, weight for weight, that
#: model (tests/models/test_zoo.py checks the U-Net entries against their rows)
SEMANTIC_ROWS = {
    "seg_tiny": ("seg_tiny", "seg_tiny"),
    "seg_small": ("seg_small", "seg_small"),
    "seg_tiny_unet": (
        "seg_tiny_unet+model.kwargs.output_stride=2+model.kwargs.decoder_channels=[64,48,32,16]",
    )
    * 2,
    "seg_small_unet": (
        "seg_small+model.kwargs.decoder=unet+model.kwargs.out_indices=[0,1,2,3,4]"
        "+model.kwargs.decoder_channels=[128,64,32,16,16]",
        "seg_small_unet",
    ),  # fmt: skip
    "seg_r18_unet": (
        "seg_small_unet+model.kwargs.backbone=resnet18+model.kwargs.output_stride=2"
        "+model.kwargs.decoder_channels=[256,128,64,32]",
    )
    * 2,  # fmt: skip
}


def _figure(values: list[float], metric: str, data: str, sources: list[str]) -> dict:
    return {"metric": metric, "data": data, "mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None, "seeds": len(values),
            "sources": sorted(set(sources))}  # fmt: skip


def semantic_quality() -> dict[str, list[dict]]:
    """Test mIoU of the semantic zoo models on em-membranes and toyworld, over every committed seed (a
    seed measured in two result files counts once)."""
    quality: dict[str, list[dict]] = {}
    for data, files in (("em-membranes", SEMANTIC_EM), ("toyworld", SEMANTIC_TOYWORLD)):
        runs: dict[tuple[str, int], tuple[float, str]] = {}
        for name in files:
            path = RESULTS / name
            if not path.is_file():
                continue
            for r in json.loads(path.read_text())["runs"]:
                if r.get("minutes") is None:  # step budgets only (a wall-clock run depends on the machine)
                    runs[(r["row"], r["seed"])] = (r["test"]["miou"], f"benchmarks/results/{name}")
        for model, rows in SEMANTIC_ROWS.items():
            row = rows[0] if data == "em-membranes" else rows[1]
            found = [v for (r, _), v in sorted(runs.items()) if r == row]
            if found:
                figure = _figure([v for v, _ in found], "test mIoU", data, [s for _, s in found])
                quality.setdefault(model, []).append(figure)
    return quality


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
    for name, figures in semantic_quality().items():
        models.setdefault(name, {})["quality"] = figures
    out = {"machine": bench["machine"], "threads": bench["threads"], "command": COMMAND,
           "source": str(SOURCE.relative_to(ROOT)), "models": models}  # fmt: skip
    TARGET.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {TARGET.relative_to(ROOT)}: {sorted(models)}")


if __name__ == "__main__":
    main()
