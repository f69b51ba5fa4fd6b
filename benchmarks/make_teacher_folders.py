"""Write teacher-sized models at random weights as the local folders users download, for benchmarks that
time teachers (`anydistill bench FOLDER ...`): no weights can be downloaded here, and speed does not
depend on the weights.

    python benchmarks/make_teacher_folders.py benchmarks/_out/teachers
    # -> benchmarks/_out/teachers/da_v2_small/ (Hugging Face DepthAnythingForDepthEstimation, DA-V2-Small's shape)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_latency import depth_anything_v2_small  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    folder = args.out / "da_v2_small"
    depth_anything_v2_small().save_pretrained(folder)
    print(f"wrote {folder} (Depth-Anything-V2-Small's shape, random weights)")


if __name__ == "__main__":
    main()
