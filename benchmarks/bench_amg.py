"""Automatic mask generation per image: ours (``AutomaticMaskGenerator`` on our ``Sam``) against
segment-anything's ``SamAutomaticMaskGenerator`` on its own ``Sam``, with the same weights, on the same
real photos (``../shared/data/ants-bees``, val split; skipped with a message when absent).

The model, built with segment-anything's classes and saved as an official ``.pth`` (then loaded into ours
with :func:`anydistill.loading.load_model`): SAM's prompt encoder and mask decoder at full size (256 wide,
8 heads, 64x64 embeddings for the 1024 frame) behind a *small* ViT image encoder (1024 input, patch 16,
width 192, 4 blocks, 3 heads, 14x14 windows, blocks 1 and 3 global) instead of ViT-B's 12 x 768, so a run
fits in minutes on a 2-core CPU. Random weights (seed 0), with the mask hypernetworks and upscaling
multiplied by 8 so that masks depend on the point (as the tests do). No trained SAM is available offline.

Both generators get the same settings. Random weights give few masks that pass SAM's quality filters, so
a second row switches the filters off (``pred_iou_thresh=0``, ``stability_score_thresh=0``, and box NMS
off, ``box_nms_thresh=1``: every candidate is kept) so that the comparison covers many masks.

Timing: one generate() per image and side, taken round-robin (ours and theirs alternate, the order flipped
every image), after a warm-up, ``torch.set_num_threads(2)``, ``torch.inference_mode``-free as both
generators run under ``torch.no_grad``; the median over images is reported. Agreement: per image, ours are
matched to theirs by IoU with the Hungarian method (scipy's ``linear_sum_assignment``); reported: the
fraction of masks (of the larger count) in a matched pair with IoU >= 0.95, the mean IoU of matched pairs,
and the counts.

    python benchmarks/bench_amg.py [--images 4] [--points-per-side 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from common import markdown_table, write_results
from pycocotools import mask as coco_mask
from scipy.optimize import linear_sum_assignment
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from anydistill.data.io import read_image
from anydistill.loading import load_model
from anydistill.promptable.amg import AutomaticMaskGenerator

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ants-bees" / "val"
ENCODER = dict(embed_dim=192, depth=4, num_heads=3, window_size=14, global_attn_indexes=(1, 3))
MODEL_NAME = (
    "segment-anything Sam: ViT 1024/16, width 192, 4 blocks (1, 3 global), 3 heads + SAM's full decoder"
)
SETTINGS = {
    "SAM's filters (pred_iou 0.88, stability 0.95, NMS 0.7)": {},
    "filters off (pred_iou 0, stability 0, no box NMS)": dict(
        pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    ),
}


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def build_upstream(seed: int = 0) -> Sam:
    torch.manual_seed(seed)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=1024, patch_size=16, mlp_ratio=4.0, out_chans=256, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, **ENCODER,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )  # fmt: skip
    with torch.no_grad():
        for name, p in sam.mask_decoder.named_parameters():
            if "output_hypernetworks" in name or "output_upscaling" in name:
                p.mul_(8.0)  # masks that depend on the point
    return sam.eval()


def photos(n: int) -> list[Path]:
    ants = sorted((DATA / "ants").glob("*.jpg"))
    bees = sorted((DATA / "bees").glob("*.jpg"))
    out = [p for pair in zip(ants, bees, strict=False) for p in pair]
    return out[:n]


def masks_of(records: list[dict]) -> np.ndarray:
    """``(N, H*W)`` bool masks of records (bool arrays or RLE)."""
    flat = []
    for r in records:
        seg = r["segmentation"]
        m = coco_mask.decode(seg) if isinstance(seg, dict) else np.asarray(seg)
        flat.append(m.astype(bool).ravel())
    return np.stack(flat) if flat else np.zeros((0, 0), bool)


def agreement(ours: list[dict], theirs: list[dict]) -> dict:
    """Hungarian matching on mask IoU: pairs >= 0.95, mean IoU of pairs, counts."""
    a, b = masks_of(ours), masks_of(theirs)
    n_a, n_b = len(a), len(b)
    if n_a == 0 or n_b == 0:
        return dict(ours=n_a, theirs=n_b, pairs=0, pairs_95=0, mean_iou=float("nan"))
    af, bf = a.astype(np.float32), b.astype(np.float32)
    inter = af @ bf.T  # (n_a, n_b)
    union = af.sum(1)[:, None] + bf.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    rows, cols = linear_sum_assignment(-iou)
    matched = iou[rows, cols]
    return dict(
        ours=n_a,
        theirs=n_b,
        pairs=len(matched),
        pairs_95=int((matched >= 0.95).sum()),
        mean_iou=float(matched.mean()),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="photos (ants and bees alternately)")
    parser.add_argument("--points-per-side", type=int, default=8, help="grid (SAM: 32), both sides")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"skipped: {DATA} is absent (only the team's checkouts have ../shared/data)")
        return
    torch.set_num_threads(args.threads)
    paths = photos(args.images)
    images = [read_image(p) for p in paths]

    theirs_model = build_upstream()
    with tempfile.TemporaryDirectory() as tmp:
        pth = Path(tmp) / "sam_small_vit.pth"
        torch.save(theirs_model.state_dict(), pth)
        ours_model = load_model(pth).model  # our Sam: timm's SAM ViT encoder, our decoder, same weights

    load_before = load_average()
    if load_before > 0.5:
        print(
            f"warning: load average {load_before:.2f}: other processes distort the timings", file=sys.stderr
        )
    pps = args.points_per_side
    gens = {
        label: {
            "ours": AutomaticMaskGenerator(ours_model, points_per_side=pps, **kw),
            "theirs": SamAutomaticMaskGenerator(theirs_model, points_per_side=pps, **kw),
        }
        for label, kw in SETTINGS.items()
    }
    # Warm-up: a 2x2 grid on the first photo, each side (same 1024 encoder pass, few prompts).
    warm_img = images[0]
    AutomaticMaskGenerator(ours_model, points_per_side=2).generate(warm_img)
    SamAutomaticMaskGenerator(theirs_model, points_per_side=2).generate(warm_img)

    times: dict[str, dict[str, list[float]]] = {k: {"ours": [], "theirs": []} for k in SETTINGS}
    agree: dict[str, list[dict]] = {k: [] for k in SETTINGS}
    for i, (path, image) in enumerate(zip(paths, images, strict=True)):
        for label in SETTINGS:
            order = ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours")
            records = {}
            for side in order:
                start = time.perf_counter()
                records[side] = gens[label][side].generate(image)
                times[label][side].append(time.perf_counter() - start)
            agree[label].append(dict(image=path.name, **agreement(records["ours"], records["theirs"])))
            a = agree[label][-1]
            print(
                f"{path.name} {image.shape[1]}x{image.shape[0]} | {label}: ours {times[label]['ours'][-1]:.1f} s "
                f"theirs {times[label]['theirs'][-1]:.1f} s, masks {a['ours']}/{a['theirs']}, "
                f">=0.95 {a['pairs_95']}, mean IoU {a['mean_iou']:.4f}",
                flush=True,
            )
    load_after = load_average()

    rows, data = [], []
    for label in SETTINGS:
        ours_s, theirs_s = statistics.median(times[label]["ours"]), statistics.median(times[label]["theirs"])
        per = agree[label]
        n_ours, n_theirs = sum(a["ours"] for a in per), sum(a["theirs"] for a in per)
        pairs_95 = sum(a["pairs_95"] for a in per)
        pairs = sum(a["pairs"] for a in per)
        ious = [a["mean_iou"] * a["pairs"] for a in per if a["pairs"]]
        mean_iou = sum(ious) / pairs if pairs else float("nan")
        larger = sum(max(a["ours"], a["theirs"]) for a in per)
        frac = pairs_95 / larger if larger else float("nan")
        rows.append(
            [label, f"{ours_s:.1f}", f"{theirs_s:.1f}", f"{theirs_s / ours_s:.2f}×", f"{n_ours} / {n_theirs}",
             f"{pairs_95}/{larger} ({frac:.3f})", f"{mean_iou:.4f}"]
        )  # fmt: skip
        data.append(
            dict(
                setting=label,
                kwargs=SETTINGS[label],
                ours_s=times[label]["ours"],
                theirs_s=times[label]["theirs"],
                ours_median_s=ours_s,
                theirs_median_s=theirs_s,
                speedup=theirs_s / ours_s,
                masks_ours=n_ours,
                masks_theirs=n_theirs,
                pairs_iou95=pairs_95,
                fraction_iou95=frac,
                mean_iou=mean_iou,
                per_image=per,
            )
        )
    header = ["settings", "ours s / image (median)", "segment-anything s / image", "speed-up",
              "masks ours / theirs", "pairs IoU ≥ 0.95 / masks", "mean IoU of pairs"]  # fmt: skip
    note = (
        f"\n\n{len(paths)} photos from ants-bees val ({', '.join(p.name for p in paths)}), "
        f"points_per_side={pps} (SAM: 32; {pps * pps} prompts, points_per_batch 64) on both sides, one "
        f"generate() per photo and side, round-robin, {torch.get_num_threads()} threads. Model: {MODEL_NAME}; "
        "random weights (seed 0, mask hypernetworks and upscaling ×8), the same .pth in both. Ours: "
        "`AutomaticMaskGenerator` on anydistill's `Sam` (timm SAM ViT encoder) built by `load_model`; theirs: "
        f"`SamAutomaticMaskGenerator` on segment-anything's `Sam`. 1-min load average before/after: "
        f"{load_before:.2f}/{load_after:.2f}."
    )
    table = markdown_table(header, rows) + note
    print(table)
    command = f"nice python benchmarks/bench_amg.py --images {args.images} --points-per-side {pps}"
    if args.threads != 2:
        command += f" --threads {args.threads}"
    path = write_results(
        "amg",
        table,
        dict(
            model=MODEL_NAME,
            encoder=ENCODER,
            photos=[p.name for p in paths],
            points_per_side=pps,
            threads=torch.get_num_threads(),
            load_before=load_before,
            load_after=load_after,
            rows=data,
        ),
        command,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
