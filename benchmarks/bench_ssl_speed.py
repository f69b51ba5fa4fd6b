"""Training speed and peak memory of anydistill's self-supervised methods against lightly's, same run.

For each method (SimCLR, MoCo v2, DINO, MAE) the training step of our LightningModule
(:mod:`anydistill.methods`: ``ssl_loss`` → backward → the optimizer step, plus what the module does
around a step in a Trainer: DINO's ``on_after_backward`` and ``on_train_batch_end`` teacher update; MoCo's
key-encoder update is inside ``ssl_loss``) is timed against lightly's same method built as lightly's own
examples build it (``examples/pytorch/{simclr,moco,dino,mae}.py``; MoCo with split BatchNorm as
``docs/source/getting_started/benchmarks/cifar10_benchmark.py``):

- SimCLR: backbone + ``SimCLRProjectionHead(512, 2048, 128)`` + ``NTXentLoss``; lightly's example runs
  the two views through the model one after the other (BatchNorm statistics per view), ours in one pass
  of both views (statistics over both).
- MoCo v2: backbone + ``MoCoProjectionHead(512, 2048, 128)``, momentum copies (``deactivate_requires_grad``,
  ``update_momentum``), ``NTXentLoss(memory_bank_size=(4096, 128))``. Two rows: ``bn_splits=1`` against
  the example (no split, no shuffle; ours still shuffles the keys), and our default ``bn_splits=8``
  (keys shuffled, every BatchNorm2d of both encoders with statistics in 8 groups) against the CIFAR benchmark's way (every ``BatchNorm2d`` of the backbone a
  ``lightly.models.batchnorm.SplitBatchNorm(num_splits=8)``, keys through ``batch_shuffle`` /
  ``batch_unshuffle``; one direction, not the benchmark's symmetric two-direction loss, as ours).
- DINO: backbone + ``DINOProjectionHead(512, 2048, 256, 4096, batch_norm=True)`` (3 layers; lightly's
  hidden Linear layers have no bias when followed by BatchNorm, ours keep one: 4096 parameters),
  teacher copies, ``DINOLoss(4096)``, 2 global views of 32² and 6 local views of 16²; lightly's example
  runs each view through the model on its own (8 student + 2 teacher passes), ours the 2 global views in
  one pass and the local views in another (+ 1 teacher pass). ``freeze_last_layer=0`` on both sides (the
  step after the first epoch: the last layer is trained).
- MAE: ``MaskedVisionTransformerTIMM`` + ``MaskedVisionTransformerDecoderTIMM`` with the example's
  ``decoder_embed`` / ``prediction_head``, ``random_token_mask``, ``set_at_index``, ``get_at_index``,
  ``patchify`` and ``nn.MSELoss`` on the masked patches (lightly 1.6's ``MAEDecoderTIMM`` is deprecated in
  favour of it; the example was migrated); ours ``MaskedAutoencoder`` with ``norm_pix=false`` (lightly's
  example does not normalise the targets). Decoder 1 block × 128 wide, 4 heads, mask ratio 0.75.

The same backbone on both sides: timm ``resnet18_cifar`` (``num_classes=0``; 512-d) for SimCLR / MoCo /
DINO, timm ``vit_tiny_patch16_224`` with ``img_size=32, patch_size=4`` (64 patches, 192-d) for MAE.
The same optimizer on both sides: SGD, lr 0.06, momentum 0.9, weight decay 5e-4 (lightly's CIFAR
benchmark; ours built by ``anydistill.optim.build_optimizer`` with ``optim.optimizer=sgd``, which takes
norms and biases out of weight decay).

What is timed: the training step only. Views are made once, before timing, as random normal tensors
(the normalised images a loader would give), ``--batch`` images each; every step: forward, loss,
backward, optimizer step, zero_grad (+ the momentum update of MoCo / DINO). Each (method, side) runs in a
fresh process with ``torch.set_num_threads(--threads)``: ``--warmup`` steps, then ``--steps`` timed
steps; its figure is the median step time (images/s = batch / median) and the process's CPU seconds per
step (``time.process_time``: less sensitive to other jobs on the machine than wall time). Rounds are
round-robin (every (method, side) once per round, the order reversed every other round); the table gives
the median over rounds and the ratio ours / lightly per method.

Memory: each child reads its ``VmRSS`` after building the model and making the views, resets the
high-water mark (``/proc/self/clear_refs`` ← 5), and after the steps reads ``VmHWM``: "peak" is the
whole process's peak RSS during the warm-up and timed steps (interpreter, torch, both libraries imported
on both sides, model, views, activations, gradients, optimizer state), "step Δ" is that peak minus the
RSS after building (what training adds). ``ru_maxrss`` is not used: Linux carries the forking process's
high-water mark into the child across ``exec``, so a child of this (torch-importing) script would report
at least this script's RSS.

    python benchmarks/bench_ssl_speed.py [--quick] [--batch 128] [--threads 2] [--steps 5] [--warmup 2]
        [--rounds 3] [--methods simclr,moco,moco_split8,dino,mae]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common  # first: it sets OMP_WAIT_POLICY before torch loads
import torch

METHODS = ("simclr", "moco", "moco_split8", "dino", "mae")
SIDES = ("ours", "lightly")
LABELS = {
    "simclr": "SimCLR",
    "moco": "MoCo v2, bn_splits=1 (lightly: example, no split)",
    "moco_split8": "MoCo v2, bn_splits=8 (lightly: SplitBatchNorm(8) + batch shuffle)",
    "dino": "DINO, 2×32² + 6×16²",
    "mae": "MAE (ViT-Ti/4, 32²)",
}
LR, MOMENTUM, WEIGHT_DECAY = 0.06, 0.9, 5e-4
QUEUE, PROJ_HIDDEN, PROJ_DIM = 4096, 2048, 128
DINO_HIDDEN, DINO_BOTTLENECK, DINO_OUT = 2048, 256, 4096
N_LOCAL, GLOBAL_SIZE, LOCAL_SIZE = 6, 32, 16
MAE_DECODER_DIM, MAE_DECODER_DEPTH, MAE_DECODER_HEADS, MASK_RATIO = 128, 1, 4, 0.75
VIT, VIT_KWARGS = "vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}
CNN = "resnet18_cifar"


# ---------------------------------------------------------------------------------------------- child
def _proc_status(key: str) -> int:
    """``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def make_views(method: str, batch: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if method == "dino":
        sizes = [GLOBAL_SIZE] * 2 + [LOCAL_SIZE] * N_LOCAL
    elif method == "mae":
        sizes = [GLOBAL_SIZE]
    else:
        sizes = [GLOBAL_SIZE] * 2
    return [torch.randn(batch, 3, s, s, generator=g) for s in sizes]


def ours_overrides(method: str) -> list[str]:
    """Our config overrides for ``method``: the backbone and head sizes both sides share, SGD as lightly's
    CIFAR benchmark (``method`` ``moco`` / ``moco_split8`` differ in ``bn_splits``)."""
    cnn = [f"pretrain.backbone={CNN}"]
    opt = ["optim.optimizer=sgd", f"optim.lr={LR}", f"optim.momentum={MOMENTUM}",
           f"optim.weight_decay={WEIGHT_DECAY}"]  # fmt: skip
    if method == "simclr":
        return [*cnn, *opt, f"pretrain.proj_hidden_dim={PROJ_HIDDEN}", f"pretrain.proj_dim={PROJ_DIM}",
                "pretrain.temperature=0.5"]  # fmt: skip
    if method.startswith("moco"):
        return [*cnn, *opt, f"pretrain.proj_hidden_dim={PROJ_HIDDEN}", f"pretrain.proj_dim={PROJ_DIM}",
                f"pretrain.queue_size={QUEUE}", "pretrain.temperature=0.2",
                f"pretrain.bn_splits={8 if method == 'moco_split8' else 1}"]  # fmt: skip
    if method == "dino":
        return [*cnn, *opt, f"pretrain.dino_hidden_dim={DINO_HIDDEN}",
                f"pretrain.dino_bottleneck_dim={DINO_BOTTLENECK}", f"pretrain.dino_out_dim={DINO_OUT}",
                "pretrain.dino_batch_norm=true", "pretrain.freeze_last_layer=0",
                f"pretrain.n_local_crops={N_LOCAL}", f"pretrain.local_size={LOCAL_SIZE}"]  # fmt: skip
    return [f"pretrain.backbone={VIT}", *opt, *(f"pretrain.backbone_kwargs.{k}={v}" for k, v in VIT_KWARGS.items()
            if k != "img_size"), f"pretrain.decoder_dim={MAE_DECODER_DIM}",
            f"pretrain.decoder_depth={MAE_DECODER_DEPTH}", f"pretrain.decoder_heads={MAE_DECODER_HEADS}",
            f"pretrain.mask_ratio={MASK_RATIO}", "pretrain.norm_pix=false"]  # fmt: skip


def build_ours(method: str):
    """Our module for ``method``; returns ``step(views) -> loss`` and the module."""
    from anydistill.config import load_config
    from anydistill.methods.base import get_method
    from anydistill.optim import build_optimizer

    common_ov = ["task=embed", "data.source=toyworld", "data.image_size=32", "data.num_workers=0",
                 "data.train_count=16", "data.val_count=8", "pretrain.knn_count=16"]  # fmt: skip
    name = "moco" if method.startswith("moco") else method
    ov = ours_overrides(method)
    cfg = load_config(overrides=[f"method={name}", *common_ov, *ov])
    module = get_method(name)(cfg).module
    module.train()
    opt = build_optimizer(module, cfg.optim)
    dino = method == "dino"
    counter = [0]

    def step(views: list[torch.Tensor]) -> torch.Tensor:
        loss = module.ssl_loss(views)["loss"]
        loss.backward()
        if dino:
            module.on_after_backward()  # the last layer's gradients (none cancelled: freeze_last_layer=0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dino:
            module.on_train_batch_end(None, {"views": views}, counter[0])  # teacher EMA
        counter[0] += 1
        return loss.detach()

    return step, module


def _cnn_backbone() -> torch.nn.Module:
    import timm

    import anydistill.models  # noqa: F401  (registers resnet18_cifar)

    return timm.create_model(CNN, num_classes=0)


def _split_bn(module: torch.nn.Module, splits: int) -> torch.nn.Module:
    """Every ``BatchNorm2d`` of ``module`` replaced by lightly's ``SplitBatchNorm`` (CIFAR benchmark)."""
    from lightly.models.batchnorm import SplitBatchNorm

    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            split = SplitBatchNorm(child.num_features, splits)
            with torch.no_grad():
                split.weight.copy_(child.weight)
                split.bias.copy_(child.bias)
            setattr(module, name, split)
        else:
            _split_bn(child, splits)
    return module


def build_lightly(method: str, knobs: dict | None = None, make_optimizer=None):
    """lightly's ``method`` as its examples build it; returns ``step(views) -> loss`` and the model.

    ``knobs`` (read at every step; the caller may change them between steps): ``momentum`` of the MoCo key
    encoder / DINO teacher (default 0.999 / 0.996, the speed run's constants) and ``epoch`` (DINO's loss
    and last-layer freezing; default 0). ``make_optimizer(params)`` replaces SGD (``LR``, ``MOMENTUM``,
    ``WEIGHT_DECAY``); the optimizer is ``step.optimizer``, the knobs ``step.knobs``.
    """
    import copy

    from lightly.loss import DINOLoss, NTXentLoss
    from lightly.models import utils
    from lightly.models.modules import (
        DINOProjectionHead,
        MoCoProjectionHead,
        SimCLRProjectionHead,
    )
    from torch import nn

    knobs = {"epoch": 0} if knobs is None else knobs
    knobs.setdefault("epoch", 0)
    model = nn.Module()
    if method == "simclr":
        model.backbone = _cnn_backbone()
        model.projection_head = SimCLRProjectionHead(512, PROJ_HIDDEN, PROJ_DIM)
        criterion = NTXentLoss(temperature=0.5)

        def forward(x):
            return model.projection_head(model.backbone(x).flatten(start_dim=1))

        def loss_fn(views):
            return criterion(forward(views[0]), forward(views[1]))

    elif method.startswith("moco"):
        split = method == "moco_split8"
        backbone = _cnn_backbone()
        model.backbone = _split_bn(backbone, 8) if split else backbone
        model.projection_head = MoCoProjectionHead(512, PROJ_HIDDEN, PROJ_DIM)
        model.backbone_momentum = copy.deepcopy(model.backbone)
        model.projection_head_momentum = copy.deepcopy(model.projection_head)
        utils.deactivate_requires_grad(model.backbone_momentum)
        utils.deactivate_requires_grad(model.projection_head_momentum)
        criterion = NTXentLoss(temperature=0.2, memory_bank_size=(QUEUE, PROJ_DIM))
        knobs.setdefault("momentum", 0.999)

        def loss_fn(views):
            m = knobs["momentum"]
            utils.update_momentum(model.backbone, model.backbone_momentum, m=m)
            utils.update_momentum(model.projection_head, model.projection_head_momentum, m=m)
            x_query, x_key = views
            query = model.projection_head(model.backbone(x_query).flatten(start_dim=1))
            if split:  # the CIFAR benchmark's step
                x_key, shuffle = utils.batch_shuffle(x_key)
            key = model.projection_head_momentum(model.backbone_momentum(x_key).flatten(start_dim=1)).detach()
            if split:
                key = utils.batch_unshuffle(key, shuffle)
            return criterion(query, key)

    elif method == "dino":
        model.student_backbone = _cnn_backbone()
        model.student_head = DINOProjectionHead(
            512, DINO_HIDDEN, DINO_BOTTLENECK, DINO_OUT, batch_norm=True, freeze_last_layer=0
        )
        model.teacher_backbone = copy.deepcopy(model.student_backbone)
        model.teacher_head = DINOProjectionHead(512, DINO_HIDDEN, DINO_BOTTLENECK, DINO_OUT, batch_norm=True)
        utils.deactivate_requires_grad(model.teacher_backbone)
        utils.deactivate_requires_grad(model.teacher_head)
        criterion = DINOLoss(output_dim=DINO_OUT, warmup_teacher_temp_epochs=5)
        knobs.setdefault("momentum", 0.996)

        def loss_fn(views):
            m = knobs["momentum"]
            utils.update_momentum(model.student_backbone, model.teacher_backbone, m=m)
            utils.update_momentum(model.student_head, model.teacher_head, m=m)
            teacher_out = [
                model.teacher_head(model.teacher_backbone(v).flatten(start_dim=1)) for v in views[:2]
            ]
            student_out = [model.student_head(model.student_backbone(v).flatten(start_dim=1)) for v in views]
            return criterion(teacher_out, student_out, epoch=knobs["epoch"])

    elif method == "mae":
        import timm
        from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM
        from lightly.models.modules.masked_vision_transformer_timm import init_weights

        vit = timm.create_model(VIT, num_classes=0, **VIT_KWARGS)
        patch = vit.patch_embed.patch_size[0]
        model.backbone = MaskedVisionTransformerTIMM(vit=vit)
        seq_len = model.backbone.sequence_length
        model.decoder_embed = nn.Linear(vit.embed_dim, MAE_DECODER_DIM)
        model.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches, embed_dim=MAE_DECODER_DIM, depth=MAE_DECODER_DEPTH,
            num_heads=MAE_DECODER_HEADS, num_prefix_tokens=vit.num_prefix_tokens, mlp_ratio=4.0,
            proj_drop_rate=0.0, attn_drop_rate=0.0,
        )  # fmt: skip
        model.prediction_head = nn.Linear(MAE_DECODER_DIM, patch**2 * 3)
        model.decoder_embed.apply(init_weights)
        model.prediction_head.apply(init_weights)
        criterion = nn.MSELoss()

        def loss_fn(views):
            images = views[0]
            idx_keep, idx_mask = utils.random_token_mask(
                size=(images.shape[0], seq_len), mask_ratio=MASK_RATIO, device=images.device
            )
            x_encoded = model.backbone.encode(images=images, idx_keep=idx_keep)
            x_decode = model.decoder_embed(x_encoded)
            x_masked = x_decode.new_zeros(images.shape[0], seq_len, x_decode.shape[-1])
            x_masked = utils.set_at_index(x_masked, idx_keep, x_decode.type_as(x_masked))
            x_decoded = model.decoder(x_masked, idx_mask=idx_mask)
            x_pred = model.prediction_head(utils.get_at_index(x_decoded, idx_mask))
            target = utils.get_at_index(utils.patchify(images, patch), idx_mask - 1)
            return criterion(x_pred, target)

    else:
        raise ValueError(method)

    model.train()
    if make_optimizer is None:
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    else:
        opt = make_optimizer(model.parameters())
    student_head = getattr(model, "student_head", None)

    def step(views: list[torch.Tensor]) -> torch.Tensor:
        loss = loss_fn(views)
        loss.backward()
        if student_head is not None:
            student_head.cancel_last_layer_gradients(
                current_epoch=knobs["epoch"]
            )  # freeze_last_layer=0: none
        opt.step()
        opt.zero_grad()
        return loss.detach()

    step.optimizer, step.knobs = opt, knobs
    return step, model


def child(spec: dict) -> dict:
    """One measurement in this (fresh) process."""
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    # Both libraries on both sides, so the processes' baselines are the same.
    import lightly.loss  # noqa: F401
    import lightly.models.modules  # noqa: F401

    import anydistill.methods  # noqa: F401

    views = make_views(spec["method"], spec["batch"])
    build = build_ours if spec["side"] == "ours" else build_lightly
    step, model = build(spec["method"])
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rss_built = _proc_status("VmRSS")
    reset = _reset_peak()
    load_before = os.getloadavg()[0]
    losses, times, cpu = [], [], []
    for i in range(spec["warmup"] + spec["steps"]):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = float(step(views))
        t1, c1 = time.perf_counter(), time.process_time()
        losses.append(loss)
        if i >= spec["warmup"]:
            times.append(t1 - t0)
            cpu.append(c1 - c0)
    return {
        **spec,
        "trainable_params": params,
        "step_s": times,
        "cpu_s": cpu,
        "losses": losses,
        "rss_built_bytes": rss_built,
        "peak_rss_bytes": _proc_status("VmHWM"),
        "peak_reset": reset,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "threads": torch.get_num_threads(),
    }


def run_child(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{spec} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- parent
REPO = Path(__file__).resolve().parents[1]


def source_state() -> dict:
    """The code the children import: git HEAD, the files of ``src/`` that differ from it, and a digest of
    every ``src/**/*.py`` (compared at the end: a change during the run mixes two versions)."""

    def git(*args: str) -> str | None:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    digest = hashlib.sha256()
    for path in sorted((REPO / "src").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    changed = git("status", "--porcelain", "--", "src")
    return {
        "head": git("rev-parse", "--short", "HEAD"),
        "src_not_in_head": changed.splitlines() if changed else [],
        "src_sha256": digest.hexdigest(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a check of the script: batch 16, 1 warm-up + 1 timed step, 1 round",
    )
    parser.add_argument("--batch", type=int, default=None, help="images per view (default 128, quick 16)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every child (default 2)")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per measurement (default 5, quick 1)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2, quick 1)")
    parser.add_argument("--rounds", type=int, default=None, help="round-robin rounds (default 3, quick 1)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--name", default=None, help="results name (default ssl_speed, quick ssl_speed_quick)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return

    batch = args.batch or (16 if args.quick else 128)
    steps = args.steps or (1 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    rounds = args.rounds or (1 if args.quick else 3)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    name = args.name or ("ssl_speed_quick" if args.quick else "ssl_speed")
    torch.set_num_threads(args.threads)  # as the children: the machine line reports it

    cases = [(m, s) for m in methods for s in SIDES]
    source = source_state()
    load_start = os.getloadavg()
    if load_start[0] > 0.5 * (os.cpu_count() or 1):
        print(
            f"warning: load average {load_start[0]:.2f}: other processes slow every figure", file=sys.stderr
        )
    started = time.perf_counter()
    results: dict[tuple[str, str], list[dict]] = {c: [] for c in cases}
    for r in range(rounds):
        for method, side in cases if r % 2 == 0 else cases[::-1]:
            spec = dict(
                method=method, side=side, batch=batch, steps=steps, warmup=warmup, threads=args.threads
            )
            m = run_child(spec)
            results[(method, side)].append(m)
            print(
                f"round {r + 1}/{rounds} {method:12s} {side:7s}: median step {statistics.median(m['step_s']):.2f} s, "
                f"peak {m['peak_rss_bytes'] / 2**20:.0f} MiB (+{(m['peak_rss_bytes'] - m['rss_built_bytes']) / 2**20:.0f}),"
                f" loss {m['losses'][-1]:.3f}, load {m['load_before']:.1f}→{m['load_after']:.1f} "
                f"[{time.perf_counter() - started:.0f} s]",
                flush=True,
            )
    load_end = os.getloadavg()
    source_end = source_state()
    source_note = (
        f"Code: git {source['head']}"
        + (
            f" with uncommitted src changes ({len(source['src_not_in_head'])} file(s))"
            if source["src_not_in_head"]
            else ""
        )
        + f", src sha256 {source['src_sha256'][:12]}"
        + (
            f"; WARNING: src changed during the run (sha256 {source_end['src_sha256'][:12]} at the end): the "
            "figures may mix two versions of the code."
            if source_end["src_sha256"] != source["src_sha256"]
            else ", unchanged during the run."
        )
    )
    if source_end["src_sha256"] != source["src_sha256"]:
        print("warning: src/ changed during the run", file=sys.stderr)

    def summary(ms: list[dict]) -> dict:
        per_round = [statistics.median(m["step_s"]) for m in ms]
        per_round_cpu = [statistics.median(m["cpu_s"]) for m in ms]
        step = statistics.median(per_round)
        cpu = statistics.median(per_round_cpu)
        peak = statistics.median(m["peak_rss_bytes"] for m in ms)
        delta = statistics.median(m["peak_rss_bytes"] - m["rss_built_bytes"] for m in ms)
        finite = all(math.isfinite(x) for m in ms for x in m["losses"])
        return dict(step_s=step, img_s=batch / step, cpu_s=cpu, img_per_cpu_s=batch / cpu, peak=peak,
                    delta=delta, finite=finite, per_round_step_s=per_round, per_round_cpu_s=per_round_cpu,
                    params=ms[0]["trainable_params"], loads=[m["load_before"] for m in ms] +
                    [m["load_after"] for m in ms])  # fmt: skip

    mib = 2**20
    header = ["method", "ours img/s", "lightly img/s", "ours / lightly", "ours / lightly (img per CPU-s)",
              "peak RSS ours / lightly, MiB", "step Δ RSS ours / lightly, MiB", "trainable params ours / lightly",
              "load (min–max)"]  # fmt: skip
    rows, data = [], []
    finite_line = []
    for method in methods:
        o, lt = summary(results[(method, "ours")]), summary(results[(method, "lightly")])
        loads = o["loads"] + lt["loads"]
        rows.append([
            LABELS[method], f"{o['img_s']:.1f}", f"{lt['img_s']:.1f}", f"{o['img_s'] / lt['img_s']:.2f}×",
            f"{o['img_per_cpu_s'] / lt['img_per_cpu_s']:.2f}×",
            f"{o['peak'] / mib:.0f} / {lt['peak'] / mib:.0f}", f"{o['delta'] / mib:.0f} / {lt['delta'] / mib:.0f}",
            f"{o['params'] / 1e6:.2f} M / {lt['params'] / 1e6:.2f} M", f"{min(loads):.1f}–{max(loads):.1f}",
        ])  # fmt: skip
        finite_line.append(
            f"{method}: ours {'finite' if o['finite'] else 'NOT FINITE'}, lightly {'finite' if lt['finite'] else 'NOT FINITE'}"
        )
        data.append({
            "method": method, "label": LABELS[method], "ours": o, "lightly": lt,
            "ratio_img_s": o["img_s"] / lt["img_s"], "ratio_img_per_cpu_s": o["img_per_cpu_s"] / lt["img_per_cpu_s"],
            "runs": {"ours": results[(method, "ours")], "lightly": results[(method, "lightly")]},
        })  # fmt: skip
    table = common.markdown_table(header, rows)
    import lightly
    import timm

    note = (
        f"\n\nTraining step only (forward, loss, backward, SGD step, zero_grad, + the momentum update of MoCo / "
        f"DINO) on views made beforehand (random normal tensors), batch {batch} images per view at 32² "
        f"(DINO: + {N_LOCAL} local views of 16²; MAE: 1 view). Each (method, side) in a fresh process with "
        f"{args.threads} torch thread(s): {warmup} warm-up step(s), then {steps} timed; images/s = batch / median "
        f"step time; median over {rounds} round-robin rounds (order reversed every other round). "
        '"img per CPU-s": the same ratio from the process\'s CPU seconds per step (less sensitive to other jobs). '
        "Peak RSS: the child's whole-process high-water mark (VmHWM) over the warm-up and timed steps, after a "
        "reset once the model is built; step Δ: peak minus the RSS after building (model and views). Both "
        "children import torch, timm, lightly and anydistill. Same backbone (timm resnet18_cifar / "
        "vit_tiny_patch16_224 at 32² patch 4) and head sizes on both sides; see the script's docstring for "
        "where the two sides' steps differ (per-view passes in lightly's examples, split BN).\n\n"
        f"Loss finite in every step: {'; '.join(finite_line)}.\n\n"
        f"lightly {lightly.__version__}, timm {timm.__version__}. 1/5/15-minute load average at start "
        f"{'/'.join(f'{x:.2f}' for x in load_start)}, at end {'/'.join(f'{x:.2f}' for x in load_end)} on "
        f"{os.cpu_count()} cores (other jobs share this machine: both sides are slowed alike only on average; "
        f"wall time {time.perf_counter() - started:.0f} s).\n\n{source_note}"
    )
    print(table + note)
    command = " ".join(
        ["python benchmarks/bench_ssl_speed.py", *(argv if argv is not None else sys.argv[1:])]
    )
    path = common.write_results(
        name,
        table + note,
        {"rows": data, "batch": batch, "steps": steps, "warmup": warmup, "rounds": rounds,
         "threads": args.threads, "load_start": load_start, "load_end": load_end,
         "lightly": lightly.__version__, "timm": timm.__version__, "source_start": source,
         "source_end": source_end},
        command,
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
