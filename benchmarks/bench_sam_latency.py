"""SAM latency on this machine: our student image encoders against SAM ViT-B's, and our prompt
encoder + mask decoder against segment_anything's.

(a) Image encoder, batch 1, 1024×1024 (SAM's padded input), ``torch.inference_mode``, random
    weights: segment_anything's ``ImageEncoderViT`` (ViT-B, ``sam_model_registry["vit_b"]``) against
    the image encoders of ``sam_tiny`` (the default student) and ``sam_small``. Warm-up runs, then
    timed runs taken round-robin over the models (so drift from other processes hits them all alike).
(b) Prompt side for one image embedding (1, 256, 64, 64), one foreground point per prompt, 1 and 64
    prompts: the prompt encoder + mask decoder modules (3 masks per prompt, low-res logits), and the
    predictors' whole ``predict_torch`` (single mask, upscaled to a 480×640 image), ours batched
    exactly as upstream's. Same decoder weights in both.

    python benchmarks/bench_sam_latency.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from common import markdown_table, write_results
from segment_anything import SamPredictor as UpstreamPredictor
from segment_anything import sam_model_registry
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from anydistill.models import build_model
from anydistill.promptable import SamPredictor

SIDE = 1024
IMAGE_HW = (480, 640)  # original image of (b): resized to 768×1024 inside the 1024² input


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def timed(runs: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Milliseconds per run of each callable, ``repeats`` times, round-robin after ``warmup`` rounds."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for _ in range(warmup):
            for run in runs.values():
                run()
        for _ in range(repeats):
            for label, run in runs.items():
                start = time.perf_counter()
                run()
                times[label].append((time.perf_counter() - start) * 1000)
    return times


def gflops(build: Callable[[], nn.Module]) -> float:
    """Forward GFLOPs (2 × multiply-adds) at 1024², counted on the meta device (no compute)."""
    with torch.device("meta"):
        model = build()
        counter = FlopCounterMode(display=False)
        with counter:
            model(torch.randn(1, 3, SIDE, SIDE))
    return counter.get_total_flops() / 1e9


# --------------------------------------------------------------------------------------------------
# (a) image encoders
# --------------------------------------------------------------------------------------------------


def bench_encoders(warmup: int, repeats: int) -> tuple[str, list[dict]]:
    builders: dict[str, Callable[[], nn.Module]] = {
        "segment_anything ViT-B (`ImageEncoderViT`)": lambda: sam_model_registry["vit_b"]().image_encoder,
        "`sam_tiny` encoder (MobileNetV4-Conv-S + neck)": lambda: build_model("sam_tiny").image_encoder,
        "`sam_small` encoder (MobileNetV4-Conv-M + neck)": lambda: build_model("sam_small").image_encoder,
    }
    models = {k: b().eval() for k, b in builders.items()}
    x = torch.randn(1, 3, SIDE, SIDE)
    times = timed({k: (lambda m=m: m(x)) for k, m in models.items()}, warmup, repeats)
    first = next(iter(models))
    ref, ref_min = statistics.median(times[first]), min(times[first])
    rows, data = [], []
    for label, model in models.items():
        t = times[label]
        med = statistics.median(t)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        flops = gflops(builders[label])
        rows.append(
            [
                label,
                f"{params:.1f}",
                f"{flops:.0f}",
                f"{med:.0f}",
                f"{min(t):.0f}–{max(t):.0f}",
                f"{ref / med:.1f}×",
                f"{ref_min / min(t):.1f}×",
            ]
        )
        data.append(
            dict(
                model=label,
                params_m=params,
                gflops=flops,
                median_ms=med,
                times_ms=t,
                speedup_median=ref / med,
                speedup_min=ref_min / min(t),
            )
        )
    header = [
        "image encoder, 1024²",
        "params (M)",
        "GFLOPs",
        "ms (median)",
        "min–max ms",
        "speed-up vs ViT-B (median)",
        "(min)",
    ]
    return markdown_table(header, rows), data


# --------------------------------------------------------------------------------------------------
# (b) prompt encoder + mask decoder
# --------------------------------------------------------------------------------------------------


def _inject(predictor: object, features: torch.Tensor) -> None:
    """Set the image state of a predictor without running an image encoder (only the prompt side is
    timed): what ``set_image`` leaves for a 480×640 image."""
    predictor.reset_image()
    predictor.features = features
    predictor.original_size = IMAGE_HW
    predictor.input_size = (768, 1024)
    predictor.is_image_set = True


def bench_decoders(warmup: int, repeats: int) -> tuple[str, list[dict]]:
    torch.manual_seed(0)
    with torch.device("meta"):
        up_sam = sam_model_registry["vit_b"]()  # only the prompt side is materialised below
    up_sam.prompt_encoder.to_empty(device="cpu")
    up_sam.mask_decoder.to_empty(device="cpu")
    up_sam.image_encoder = _SizeOnly(SIDE)
    up_sam.pixel_mean, up_sam.pixel_std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    ours = build_model("sam_tiny")
    with torch.no_grad():
        for p in ours.prompt_encoder.parameters():
            p.normal_(0, 0.1)
        for p in ours.mask_decoder.parameters():
            p.normal_(0, 0.05)
    up_sam.prompt_encoder.load_state_dict(ours.prompt_encoder.state_dict())
    up_sam.mask_decoder.load_state_dict(ours.mask_decoder.state_dict())
    up_sam.eval()

    features = torch.randn(1, 256, 64, 64)
    p_up, p_ours = UpstreamPredictor(up_sam), SamPredictor(ours)
    _inject(p_up, features)
    _inject(p_ours, features)

    runs: dict[str, Callable[[], object]] = {}
    for n in (1, 64):
        pts = torch.rand(n, 1, 2) * torch.tensor([1024.0, 768.0])
        labels = torch.ones(n, 1, dtype=torch.int)
        for who, sam in (("ours", ours), ("segment_anything", up_sam)):

            def modules(sam=sam, pts=pts, labels=labels) -> object:
                sparse, dense = sam.prompt_encoder(points=(pts, labels), boxes=None, masks=None)
                return sam.mask_decoder(features, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)

            runs[f"modules|{n}|{who}"] = modules
        for who, pred in (("ours", p_ours), ("segment_anything", p_up)):
            runs[f"predict_torch|{n}|{who}"] = lambda pred=pred, pts=pts, labels=labels: pred.predict_torch(
                pts, labels, multimask_output=False
            )
    times = timed(runs, warmup, repeats)

    rows, data = [], []
    for path, desc in (
        ("modules", "prompt encoder + mask decoder (3 masks, low-res)"),
        ("predict_torch", "`predict_torch` (1 mask, upscaled to 480×640)"),
    ):
        for n in (1, 64):
            ours_ms = statistics.median(times[f"{path}|{n}|ours"])
            up_ms = statistics.median(times[f"{path}|{n}|segment_anything"])
            rows.append([desc, n, f"{ours_ms / n:.2f}", f"{up_ms / n:.2f}", f"{up_ms / ours_ms:.2f}×"])
            data.append(
                dict(
                    path=path,
                    prompts=n,
                    ours_ms=ours_ms,
                    upstream_ms=up_ms,
                    ours_times_ms=times[f"{path}|{n}|ours"],
                    upstream_times_ms=times[f"{path}|{n}|segment_anything"],
                )
            )
    header = ["prompt side", "prompts", "ours ms / prompt", "segment_anything ms / prompt", "speed-up"]
    return markdown_table(header, rows), data


class _SizeOnly(nn.Module):
    """Stands in for upstream's image encoder where only ``img_size`` is read."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 2 timed runs (default 1 + 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    warmup, repeats = (1, 2) if args.quick else (1, 5)
    dec_warmup, dec_repeats = (1, 3) if args.quick else (2, 10)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    load_before = load_average()
    if load_before > 0.5:
        print(
            f"warning: load average {load_before:.2f}: other processes will distort the timings",
            file=sys.stderr,
        )
    enc_table, enc_data = bench_encoders(warmup, repeats)
    print(enc_table, flush=True)
    dec_table, dec_data = bench_decoders(dec_warmup, dec_repeats)
    print(dec_table, flush=True)
    load_after = load_average()

    note = (
        f"\n\nBatch 1 image, `torch.inference_mode`, {torch.get_num_threads()} threads, random weights; "
        f"encoders: {warmup} warm-up + {repeats} timed runs each, prompt side: {dec_warmup} + {dec_repeats}, "
        "round-robin. GFLOPs = 2 × multiply-adds (torch FlopCounterMode). 1-min load average "
        f"before/after: {load_before:.2f}/{load_after:.2f}."
    )
    table = enc_table + "\n\n" + dec_table + note
    print(note.strip())
    command = "python benchmarks/bench_sam_latency.py" + (" --quick" if args.quick else "")
    if args.threads != 2:
        command += f" --threads {args.threads}"
    path = write_results(
        "sam_latency",
        table,
        {
            "encoders": enc_data,
            "prompt_side": dec_data,
            "threads": torch.get_num_threads(),
            "load_before": load_before,
            "load_after": load_after,
        },
        command,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
