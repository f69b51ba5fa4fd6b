"""``anydistill <command>``: a thin command-line layer over :mod:`anydistill.api`.

Errors a user can fix (bad files, bad config) are printed as one line naming the file and the
problem, with exit code 2, instead of a stack trace.

Each command imports what it runs inside its function: ``anydistill --help`` and a mistyped argument
answer at once instead of after importing torch, Lightning and timm (seconds). This is the one module
with deferred imports of the package (tests/test_layers.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

from anydistill.errors import AnydistillError, ConfigError, DataError

# OpenMP's threads (torch's intra-op pool) spin while they wait for work by default. When another busy
# process shares the cores, a spinning thread holds the core the descheduled one needs: beside one busy
# process a training step on this 2-core machine took 2.4x its quiet time (6.3x in one run), with sleeping
# waits ("PASSIVE") 1.5-1.6x, at no cost on a quiet machine (benchmarks/bench_busy_slowdown.py). libgomp
# reads the variable once, when torch loads it, so it is set here, before any command imports torch; a
# value the user set wins. A short spin instead (GOMP_SPINCOUNT=1000) was measured too and is no better: quiet
# training equal within this VM's noise, the busy step ~10% slower (benchmarks/bench_openmp_spin.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _check_options(args: argparse.Namespace, minimum: int, *options: str) -> None:
    """Refuse each ``--option`` whose value (``None``: not given) is below ``minimum``: a one-line
    ``ConfigError`` naming the option, before any work (argparse itself checks only that it is an int)."""
    for option in options:
        value = getattr(args, option.removeprefix("--").replace("-", "_"))
        if value is not None and value < minimum:
            raise ConfigError(f"{option}: must be at least {minimum}, got {value}")


def _cmd_data_toyworld(args: argparse.Namespace) -> None:
    from anydistill import api

    _check_options(args, 1, "--count", "--size")
    _check_options(args, 0, "--seed")
    out = api.make_toyworld(args.out, count=args.count, size=args.size, domain=args.domain, seed=args.seed)
    print(f"wrote {args.count} toyworld images ({args.domain}, {args.size}px, seed {args.seed}) to {out}")


def _cmd_data_import(args: argparse.Namespace) -> None:
    from anydistill.data.importer import import_pairs, parse_label_map

    names = [n.strip() for n in args.classes.split(",")] if args.classes is not None else None
    out = import_pairs(
        args.images,
        args.labels,
        args.out,
        label_map=parse_label_map(args.label_map),
        class_names=names,
        kind=args.kind,
        holdout=args.holdout,
        seed=args.seed,
        unmapped=args.unmapped,
        test=args.test,
    )
    splits = [f"{out}/train"] + [
        f"{out}/{name} ({n} {why})"
        for name, n, why in (("val", args.holdout, "held out"), ("test", args.test, "for testing only"))
        if n
    ]
    print(f"imported into {', '.join(splits) if len(splits) > 1 else out}")


def _cmd_train(args: argparse.Namespace) -> None:
    from anydistill import api

    result = api.train(
        args.config, overrides=[*([f"task={args.task}"] if args.task else []), *args.overrides]
    )
    print(f"run folder: {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(json.dumps(result.metrics, indent=2))


def _cmd_distill(args: argparse.Namespace) -> None:
    from anydistill import api

    overrides = [*([f"task={args.task}"] if args.task else []), *args.overrides]
    if args.teacher:
        overrides.append(f"prompt.teacher={args.teacher}")  # used by task=promptable
        overrides.append(f"classify.teacher={args.teacher}")  # used by task=classify
    if args.images:
        # The teacher pass first (resumes, or returns at once when the cache is finished), then train.
        from anydistill.cache import run_teacher_pass
        from anydistill.config import load_config
        from anydistill.teachers import load_teacher

        if not args.teacher:
            raise AnydistillError("--images needs --teacher: the model that labels them")
        cfg = load_config(args.config, overrides)
    if args.images and cfg.task == "classify":  # the kd method runs its passes: train images + these
        overrides.append(f"classify.unlabeled_root={args.images}")
    elif args.images:
        cache = cfg.distill.cache or str(Path(cfg.run_dir) / "cache")
        manifest = run_teacher_pass(
            load_teacher(args.teacher), args.images, cache, num_workers=cfg.data.num_workers
        )
        print(manifest.summary())  # what was cached, and each image that could not be, counted and named
        overrides.append(f"distill.cache={cache}")
    result = api.distill(args.config, overrides=overrides)
    print(f"run folder: {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(json.dumps(result.metrics, indent=2))


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from anydistill import api

    overrides = [*([f"method={args.method}"] if args.method else [])]
    if args.images:
        overrides += ["data.source=folder", f"data.train_root={args.images}"]
    result = api.pretrain(args.config, overrides=[*overrides, *args.overrides])
    print(f"run folder: {result.run_dir}")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"backbone weights (timm): {result.run_dir / 'backbone.pth'}")
    print(json.dumps(result.metrics, indent=2))


def _cmd_pseudo_label(args: argparse.Namespace) -> None:
    from anydistill.cache.teacher_pass import is_global_zero, run_teacher_pass
    from anydistill.teachers import load_teacher

    # task=classify: a timm:<name>@<weights> teacher keeps its head (logits) instead of being an encoder
    options: dict[str, Any] = {"task": "classify"} if args.task == "classify" else {}
    if args.task == "detect":
        from anydistill.checkpoints import detect_kind
        from anydistill.teachers.detectors import is_hf_detector
        from anydistill.teachers.hf_utils import read_config

        kind = detect_kind(args.teacher)
        if not (
            kind.task == "detect"
            or (kind.kind == "huggingface" and is_hf_detector(read_config(args.teacher)))
        ):
            raise DataError(args.teacher, "is not a box teacher: give an anydistill detect checkpoint or a "
                            "Hugging Face *ForObjectDetection folder")  # fmt: skip
        options["min_score"] = args.min_score
        if args.classes:
            options["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    elif args.classes or args.min_score != 0.05 or args.mask_teacher:
        raise ConfigError("--classes, --min-score and --mask-teacher are for box teachers (--task detect)")
    if args.mask_teacher is not None:
        from anydistill.checkpoints import detect_kind
        from anydistill.teachers.detect_segment import load_box_teacher

        if detect_kind(args.mask_teacher).task != "promptable":  # a missing file: DataError naming it
            raise DataError(args.mask_teacher, "is not a SAM model: give a segment-anything .pth or an "
                            "anydistill promptable checkpoint")  # fmt: skip
        factory = partial(load_box_teacher, str(args.teacher), mask_teacher=str(args.mask_teacher), **options)
    else:
        factory = partial(load_teacher, str(args.teacher), **options)
    manifest = run_teacher_pass(
        factory,  # each process builds its own
        args.images,
        args.out,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        features=args.features,
        max_size=args.max_size,
        num_workers=args.num_workers,
        devices=args.devices,
        accelerator=args.accelerator,
    )
    if is_global_zero():
        print(manifest.summary())
        print(f"cache: {args.out}")


def _is_promptable(checkpoint: Path) -> bool:
    """A SAM checkpoint (.pth) or an anydistill checkpoint trained with task=promptable."""
    from anydistill.checkpoints import detect_kind

    return checkpoint.exists() and detect_kind(checkpoint).task == "promptable"


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from anydistill import api
    from anydistill.eval.evaluate import evaluate_promptable, format_table

    _check_options(args, 1, "--count", "--size", "--batch-size", "--max-clicks", "--max-instances")
    if args.protocol:
        _check_options(args, 1, "--steps")
        _check_options(args, 0, "--seed")
        if not args.train_data:
            raise AnydistillError("--protocol needs --train-data: the labeled class folders (the kNN bank)")
        metrics = api.evaluate_backbone(
            str(args.checkpoint), args.train_data, args.data, protocol=args.protocol, image_size=args.size,
            batch_size=args.batch_size, steps=args.steps, seed=args.seed, device=args.device,
            progress=sys.stderr.isatty(),
        )  # fmt: skip
        if args.json:
            from anydistill.eval.evaluate import write_metrics_json

            write_metrics_json(args.json, args.checkpoint, args.data, metrics)
        print(format_table(metrics))
        return
    if args.task == "promptable" or (args.task == "auto" and _is_promptable(args.checkpoint)):
        metrics = evaluate_promptable(
            args.checkpoint, args.data, count=args.count, max_clicks=args.max_clicks,
            max_instances=args.max_instances, device=args.device, out_json=args.json, frame=args.frame,
        )  # fmt: skip
        print(format_table(metrics))
        return
    metrics = api.evaluate(
        args.checkpoint,
        args.data,
        count=args.count,
        image_size=args.size,
        batch_size=args.batch_size,
        device=args.device,
        out_json=args.json,
    )
    print(format_table(metrics))
    if args.json:
        print(f"metrics written to {args.json}")


def _runtime(args: argparse.Namespace) -> str:
    """``torch`` or ``onnx``: ``--runtime auto`` picks onnx for an export folder (``export.json`` in it)."""
    exported = args.checkpoint.is_dir() and (args.checkpoint / "export.json").is_file()
    if args.checkpoint.is_dir() and not exported:
        raise ConfigError(
            f"--checkpoint {args.checkpoint}: a folder without export.json; give a checkpoint file or an "
            "export folder (anydistill export writes one)"
        )
    if args.runtime == "auto":
        return "onnx" if exported else "torch"
    if args.runtime == "onnx" and not exported:
        raise ConfigError(
            f"--runtime onnx: {args.checkpoint} is not an export folder (anydistill export writes one)"
        )
    if args.runtime == "torch" and args.checkpoint.is_dir():
        raise ConfigError(f"--runtime torch: {args.checkpoint} is a folder; give a checkpoint file")
    return args.runtime


def _cmd_predict(args: argparse.Namespace) -> None:
    _check_options(args, 1, "--batch-size", "--size", "--threads")
    if _runtime(args) == "onnx":
        # The deployment path: onnxruntime, numpy and Pillow only; torch is not imported (nor needed).
        from anydistill.runtime.dense import predict_folder_onnx

        if args.size is not None:
            raise ConfigError("--size: an exported graph has a fixed input size; export again with --size")
        from anydistill.runtime.export_folder import ExportFolder

        if ExportFolder.read(args.checkpoint).task == "detect":
            from anydistill.data.detection_files import DETECTION_MIN_SCORE
            from anydistill.runtime.detect import predict_detections_onnx

            score = DETECTION_MIN_SCORE if args.min_score is None else args.min_score
            report = predict_detections_onnx(
                args.checkpoint, args.images, args.out, min_score=score, threads=args.threads or 0
            )
            print(report.summary())
            print(f"outputs in {args.out}")
            return
        if args.min_score is not None:
            raise ConfigError("--min-score: for detectors (task=detect) only")
        report = predict_folder_onnx(
            args.checkpoint, args.images, args.out, batch_size=args.batch_size, threads=args.threads or 0
        )
        print(report.summary())
        print(f"outputs in {args.out}")
        return
    from anydistill import api

    report = api.predict(
        args.checkpoint, args.images, args.out, batch_size=args.batch_size, image_size=args.size,
        min_score=args.min_score,
    )  # fmt: skip
    print(report.summary())
    print(f"outputs in {args.out}")


def _cmd_export(args: argparse.Namespace) -> None:
    from anydistill.export import export_model

    _check_options(args, 1, "--size")
    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    result = export_model(
        args.checkpoint, args.out, format=args.format, dynamic=args.dynamic, opset=args.opset,
        precision=precision, size=args.size,
        decoder_masks="best" if args.return_single_mask else args.decoder_masks, min_score=args.min_score,
    )  # fmt: skip
    print(result.summary())


def _cmd_segment(args: argparse.Namespace) -> None:
    from anydistill.promptable.prompt_results import parse_box, parse_point

    _check_options(args, 1, "--points-per-side", "--points-per-batch", "--batch-size", "--threads")
    if _runtime(args) == "onnx":
        _segment_onnx(args, parse_point, parse_box)
        return
    from anydistill.promptable.segment import segment

    auto = None
    if args.auto:
        auto = {"points_per_side": args.points_per_side, "points_per_batch": args.points_per_batch}
        auto.update(pred_iou_thresh=args.pred_iou_thresh, stability_score_thresh=args.stability_thresh)
    if args.images is not None:
        _segment_folder(args, auto)
        return
    if args.prompts is not None:
        raise ConfigError("--prompts FILE goes with --images DIR; for one --image give --point/--box")
    try:
        points = [parse_point(p) for p in args.point]
        box = parse_box(args.box) if args.box else None
    except ValueError as exc:
        raise AnydistillError(str(exc)) from None
    try:
        report = segment(
            args.checkpoint,
            args.image,
            args.out,
            points,
            box,
            args.auto,
            args.multimask,
            auto,
            device=args.device,
        )
    except ValueError as exc:  # bad prompts (outside the image, ...): one line, not a stack trace
        raise AnydistillError(str(exc)) from None
    print(report.summary())
    print(f"outputs in {args.out}")


def _segment_onnx(args: argparse.Namespace, parse_point: Any, parse_box: Any) -> None:
    """``segment --runtime onnx``: one image, clicks and a box, on onnxruntime; torch is not imported."""
    from anydistill.runtime.segment import segment_onnx

    if args.images is not None or args.auto:
        raise ConfigError(
            "--runtime onnx segments one --image from --point/--box; --images and --auto need torch"
        )
    try:
        points = [parse_point(p) for p in args.point]
        box = parse_box(args.box) if args.box else None
        report = segment_onnx(
            args.checkpoint, args.image, args.out, points, box, args.multimask, args.threads or 0
        )
    except ValueError as exc:
        raise AnydistillError(str(exc)) from None
    print(report.summary())
    print(f"outputs in {args.out}")


def _segment_folder(args: argparse.Namespace, auto: dict | None) -> None:
    from anydistill.promptable.segment_folder import segment_folder

    if args.point or args.box:
        raise ConfigError(
            "--point/--box are for one --image; for --images DIR put the prompts in --prompts FILE"
        )
    try:
        report = segment_folder(
            args.checkpoint,
            args.images,
            args.out,
            prompts=args.prompts,
            auto=args.auto,
            coco_prompt=args.coco_prompt,
            batch_size=args.batch_size,
            overlays=args.overlays,
            auto_kwargs=auto,
            device=args.device,
        )
    except ValueError as exc:  # a bad --auto setting (AutomaticMaskGenerator's checks): one line
        raise AnydistillError(str(exc)) from None
    print(report.summary())


def _cmd_serve(args: argparse.Namespace) -> None:
    _check_options(args, 1, "--max-upload-mb", "--max-side", "--cache-images")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: must be 0 (any free port) to 65535, got {args.port}")
    # FastAPI and uvicorn are the optional [serve] extra: importing serve says so in one line if absent.
    from anydistill.serve import ServeLimits, serve

    limits = ServeLimits(
        max_upload_bytes=args.max_upload_mb * 2**20, max_side=args.max_side, cache_images=args.cache_images
    )
    serve(args.checkpoint, host=args.host, port=args.port, limits=limits, device=args.device)


def _cmd_demo(args: argparse.Namespace) -> None:
    from anydistill import api

    if args.promptable and args.pretrain:
        raise AnydistillError("demo: choose one of --promptable and --pretrain")
    if args.seeds != 1 and (args.promptable or args.pretrain):
        raise AnydistillError("demo: --seeds applies to the depth story (without --promptable or --pretrain)")
    if args.promptable:
        from anydistill.demos import run_promptable_demo

        report = run_promptable_demo(args.out, quick=args.quick, baseline=args.baseline)
    elif args.pretrain:
        from anydistill.demos import run_pretrain_demo

        report = run_pretrain_demo(args.out, quick=args.quick)
    else:
        report = api.demo(args.out, quick=args.quick, seeds=args.seeds)
    print(f"demo report: {report}")


def _cmd_methods(args: argparse.Namespace) -> None:
    from anydistill.methods import METHODS, get_method

    for name in METHODS.names():
        method = get_method(name)
        tasks = ", ".join(method.tasks) if method.tasks else "any"
        default = f"; default of {' / '.join(method.verbs)}" if method.verbs else ""
        print(f"{name:14s} {method.summary} (task: {tasks}{default})")


def _cmd_bench(args: argparse.Namespace) -> None:
    from anydistill.bench.run import BenchSettings, markdown, run_bench

    _check_options(args, 1, "--batch", "--rounds", "--threads", "--size", "--count")
    settings = BenchSettings(
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
        batch=args.batch, rounds=args.rounds, warmup=args.warmup, threads=args.threads, size=args.size,
        data=args.data, quality_count=args.count,
    )  # fmt: skip
    result = run_bench(args.models, args.out, settings)
    print(markdown(result), end="")
    picture = f", {args.out / result['pareto_png']}" if result["pareto_png"] else ""
    print(f"wrote {args.out / 'bench.md'}, {args.out / 'bench.json'}{picture}")


def _cmd_models(args: argparse.Namespace) -> None:
    from anydistill.models.zoo_table import as_json, markdown_table, zoo_table

    rows = zoo_table()
    print(as_json(rows) if args.json else markdown_table(rows))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anydistill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="make or convert data sets").add_subparsers(
        dest="source", required=True
    )
    toy = data.add_parser("toyworld", help="render procedural toyworld scenes into the folder format")
    toy.add_argument("--out", required=True, type=Path)
    toy.add_argument("--count", type=int, default=100)
    toy.add_argument("--size", type=int, default=128)
    toy.add_argument("--domain", default="wide")
    toy.add_argument("--seed", type=int, default=0)
    toy.set_defaults(func=_cmd_data_toyworld)

    imp = data.add_parser("import", help="copy image/label pairs from another layout into the folder format")
    imp.add_argument("--images", required=True, type=Path)
    imp.add_argument("--labels", required=True, type=Path)
    imp.add_argument("--out", required=True, type=Path)
    imp.add_argument("--kind", choices=["semantic", "depth"], default="semantic")
    imp.add_argument(
        "--label-map",
        nargs="*",
        default=None,
        help="mask value to class id (0..254, or 255 = ignore), e.g. 0:0 255:1; every mask value must be listed. "
        "Without it the mask values are the class ids",
    )
    imp.add_argument(
        "--unmapped",
        choices=["error", "ignore"],
        default="error",
        help="a mask value with no class id (not in --label-map; without it, above 255): refuse the import "
        "(error, default) or write it as ignore (255)",
    )
    imp.add_argument(
        "--classes",
        default=None,
        help="comma-separated names of class ids 0, 1, ..., e.g. background,membrane; must name every id in "
        "use (default: class_0, class_1, ...)",
    )
    imp.add_argument(
        "--holdout", type=int, default=0, help="put this many pairs into OUT/val, the rest in OUT/train"
    )
    imp.add_argument(
        "--test", type=int, default=0, help="put this many further pairs into OUT/test (for reporting only)"
    )
    imp.add_argument("--seed", type=int, default=0, help="chooses the held-out pairs")
    imp.set_defaults(func=_cmd_data_import)

    train = sub.add_parser("train", help="train a student on labels (resumes an interrupted run)")
    train.add_argument("--config", type=Path, default=None, help="YAML config (defaults if omitted)")
    train.add_argument(
        "--task",
        choices=["depth", "semantic", "promptable", "classify", "detect"],
        default=None,
        help="same as task=...",
    )
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. trainer.max_epochs=3")
    train.set_defaults(func=_cmd_train)

    dist = sub.add_parser(
        "distill",
        help="train a student from a teacher-pass cache (Depth Anything recipe; MobileSAM for promptable)",
    )
    dist.add_argument("--config", type=Path, default=None, help="YAML config; distill.cache must be set")
    dist.add_argument(
        "--task",
        choices=["depth", "semantic", "promptable", "classify", "detect"],
        default=None,
        help="same as task=...",
    )
    dist.add_argument(
        "--teacher",
        default=None,
        help="the teacher (promptable: the SAM checkpoint whose decoder the student reuses; classify: a "
        "classify checkpoint, timm:<name>@<weights> or a transformers image-classification folder)",
    )
    dist.add_argument(
        "--images",
        type=Path,
        default=None,
        help="unlabeled images: run the teacher pass into distill.cache (default RUN_DIR/cache) first "
        "(classify: same as classify.unlabeled_root=...)",
    )
    dist.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. distill.cutmix=false")
    dist.set_defaults(func=_cmd_distill)

    pre = sub.add_parser(
        "pretrain", help="self-supervised pre-training of a backbone on unlabeled images (no teacher)"
    )
    pre.add_argument("--config", type=Path, default=None, help="YAML config (defaults if omitted)")
    pre.add_argument(
        "--method", choices=["simclr", "moco", "dino", "mae"], default=None, help="same as method=..."
    )
    pre.add_argument(
        "--images", type=Path, default=None,
        help="a folder of unlabeled images (recursive); default: toyworld object crops",
    )  # fmt: skip
    pre.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. pretrain.backbone=resnet18")
    pre.set_defaults(func=_cmd_pretrain)

    pl = sub.add_parser(
        "pseudo-label",
        help="run a teacher once over unlabeled images into a resumable pseudo-label cache",
        description="Runs TEACHER over every image under DIR and writes its targets (fp16 maps, float32 boxes) to CACHE "
        "(tar shards + manifest). Rerun the same command to resume an interrupted pass.",
    )
    pl.add_argument(
        "--teacher", required=True, type=Path, help="an anydistill checkpoint or a teacher folder"
    )
    pl.add_argument("--images", required=True, type=Path, help="folder of images (DIR/images if it exists)")
    pl.add_argument("--out", required=True, type=Path, help="the cache folder")
    pl.add_argument("--batch-size", type=int, default=16)
    pl.add_argument("--shard-size", type=int, default=256, help="images per tar shard")
    pl.add_argument("--features", action="store_true", help="also cache the teacher's encoder features")
    pl.add_argument("--max-size", type=int, default=None, help="limit the stored targets' long side")
    pl.add_argument("--num-workers", type=int, default=2, help="image-reading processes")
    pl.add_argument("--devices", type=int, default=1, help="processes (GPUs, or CPU processes)")
    pl.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda", "gpu"])
    pl.add_argument(
        "--task", choices=["auto", "classify", "detect"], default="auto",
        help="classify: the teacher is an image classifier (cache its (K,) logits; needed for timm: specs); "
        "detect: a box teacher (cache every detection down to --min-score; threshold and NMS at training time)",
    )  # fmt: skip
    pl.add_argument("--min-score", type=float, default=0.05, help="box teachers: the lowest score cached")
    pl.add_argument(
        "--classes", default=None,
        help="box teachers from Hugging Face: the teacher's labels to keep, comma-separated (default: all); "
        "an OWL-ViT / OWLv2 teacher: the class names to look for (required)",
    )  # fmt: skip
    pl.add_argument(
        "--mask-teacher", type=Path, default=None,
        help="box teachers: a SAM checkpoint that the boxes prompt for instance masks (cached as COCO RLE; "
        "for a mask_rcnn student)",
    )  # fmt: skip
    pl.set_defaults(func=_cmd_pseudo_label)

    ev = sub.add_parser("evaluate", help="metrics of a checkpoint on toyworld:<domain> or a folder")
    ev.add_argument("--checkpoint", required=True, type=Path)
    ev.add_argument("--data", default="toyworld:wide")
    ev.add_argument("--count", type=int, default=256, help="images (toyworld only)")
    ev.add_argument(
        "--size", type=int, default=None, help="long side seen by the model (default: training size)"
    )
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    ev.add_argument(
        "--task",
        choices=["auto", "promptable"],
        default="auto",
        help="promptable: the interactive protocol (NoC@85/90, mIoU per click); auto: from the checkpoint",
    )
    ev.add_argument(
        "--protocol", choices=["knn", "linear", "finetune"], default=None,
        help="a pre-trained backbone (pretrain checkpoint or timm:<name>@<weights>) on class folders: "
        "weighted kNN or a linear probe of its frozen features, or full fine-tuning with a new linear head "
        "(--batch-size images per step); --data is the test split",
    )  # fmt: skip
    ev.add_argument("--train-data", type=Path, default=None, help="--protocol: the labeled train split")
    ev.add_argument(
        "--steps", type=int, default=None, help="--protocol finetune: optimiser steps (default 1000)"
    )
    ev.add_argument("--seed", type=int, default=0, help="--protocol linear/finetune: the seed")
    ev.add_argument("--max-clicks", type=int, default=20, help="promptable: clicks per object")
    ev.add_argument("--max-instances", type=int, default=16, help="promptable: objects per image")
    ev.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ev.add_argument(
        "--frame",
        choices=["original", "input"],
        default="original",
        help="promptable: measure on the source images' masks (default) or in the model's resized frame",
    )
    ev.set_defaults(func=_cmd_evaluate)

    pr = sub.add_parser("predict", help="predict every image of a folder")
    pr.add_argument("--checkpoint", required=True, type=Path, help="a checkpoint, or an export folder")
    pr.add_argument("--images", required=True, type=Path)
    pr.add_argument("--out", required=True, type=Path)
    pr.add_argument("--batch-size", type=int, default=8)
    pr.add_argument("--size", type=int, default=None)
    pr.add_argument(
        "--runtime",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="onnx: run an export folder with onnxruntime, without torch (auto: onnx for an export folder)",
    )
    pr.add_argument("--threads", type=int, default=None, help="--runtime onnx: intra-op threads")
    pr.add_argument(
        "--min-score", type=float, default=None, help="detectors: the lowest score written (default 0.3)"
    )
    pr.set_defaults(func=_cmd_predict)

    exp = sub.add_parser(
        "export", help="export a depth/semantic/promptable/detection model to ONNX, checked against PyTorch"
    )
    exp.add_argument(
        "--checkpoint", required=True, type=Path, help="anydistill .ckpt or segment-anything .pth"
    )
    exp.add_argument("--out", required=True, type=Path, help="a new or empty folder, or an earlier export")
    exp.add_argument("--format", default="onnx", help="onnx (the only one)")
    exp.add_argument(
        "--dynamic",
        action="store_true",
        help="depth/semantic: free batch (and height/width if the model allows)",
    )
    exp.add_argument("--opset", type=int, default=17, help="ONNX opset, 14..20")
    precision = exp.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="float16 weights (inputs/outputs float32)")
    precision.add_argument("--int8", action="store_true", help="int8 weights (onnxruntime quantisation)")
    exp.add_argument(
        "--size", type=int, default=None, help="depth/semantic/detect input side (default: the ckpt's)"
    )
    exp.add_argument(
        "--min-score", type=float, default=None,
        help="detect: the lowest score the graph keeps (default: the model's, 0.05; NMS and top-k are in the graph)",
    )  # fmt: skip
    exp.add_argument(
        "--decoder-masks",
        choices=("multimask", "single", "best", "all"),
        default="all",
        help="promptable: the decoder's masks: all 4 (default, as segment-anything's export; a runtime takes "
        "the 3 of an ambiguous prompt or the single mask), only the 3, only the single-mask output, or the "
        "best one as segment-anything's --return-single-mask",
    )
    exp.add_argument(
        "--return-single-mask",
        action="store_true",
        help="promptable: segment-anything's name for --decoder-masks best",
    )
    exp.set_defaults(func=_cmd_export)

    seg = sub.add_parser(
        "segment",
        help="masks for one image from clicks/boxes, or for a folder from a prompts/COCO file (or --auto: every object)",
    )
    seg.add_argument(
        "--checkpoint", required=True, type=Path, help="segment-anything .pth or anydistill .ckpt"
    )
    where = seg.add_mutually_exclusive_group(required=True)
    where.add_argument("--image", type=Path, help="one image (prompts: --point/--box, or --auto)")
    where.add_argument(
        "--images", type=Path, help="a folder: one COCO RLE results JSON from --prompts FILE or --auto"
    )
    seg.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="--images: a prompts JSON {image: {points: [[x,y,label]...], boxes: [[x0,y0,x1,y1]...]}} or a COCO file",
    )
    seg.add_argument(
        "--coco-prompt",
        choices=("box", "point", "both"),
        default="box",
        help="--prompts with a COCO file: prompt with each bbox, its centre, or both (default box)",
    )
    seg.add_argument("--batch-size", type=int, default=4, help="--images: images per image-encoder pass")
    seg.add_argument("--overlays", action="store_true", help="--images: also write overlays/<image>.png")
    seg.add_argument(
        "--point", action="append", default=[], help="X,Y (positive) or X,Y,0 (negative); repeat"
    )
    seg.add_argument("--box", default=None, help="X0,Y0,X1,Y1 in image pixels")
    seg.add_argument("--auto", action="store_true", help="automatic masks for every object (point grid)")
    seg.add_argument("--points-per-side", type=int, default=32, help="--auto: grid of points (SAM: 32)")
    seg.add_argument("--points-per-batch", type=int, default=64, help="--auto: grid points per decoder pass")
    seg.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=0.88,
        help="--auto: keep masks of higher predicted IoU (0: all)",
    )
    seg.add_argument(
        "--stability-thresh",
        type=float,
        default=0.95,
        help="--auto: keep masks at least this stable (0: all)",
    )
    seg.add_argument("--multimask", action="store_true", help="write all 3 masks of an ambiguous prompt")
    seg.add_argument("--out", type=Path, default=Path("segment_out"))
    seg.add_argument("--device", default="cpu")
    seg.add_argument(
        "--runtime",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="onnx: an export folder on onnxruntime, without torch (auto: onnx for an export folder)",
    )
    seg.add_argument("--threads", type=int, default=None, help="--runtime onnx: intra-op threads")
    seg.set_defaults(func=_cmd_segment)

    srv = sub.add_parser("serve", help="a local web demo of a model: upload an image, see its predictions")
    srv.add_argument(
        "--checkpoint", required=True, type=Path, help="depth/semantic .ckpt, SAM .ckpt or a SAM .pth"
    )
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    srv.add_argument("--port", type=int, default=7860, help="0: any free port (the start line says which)")
    srv.add_argument("--max-upload-mb", type=int, default=20, help="largest upload accepted, in MB")
    srv.add_argument("--max-side", type=int, default=4096, help="largest image side accepted, in pixels")
    srv.add_argument(
        "--cache-images", type=int, default=4, help="promptable: images whose embedding is kept (LRU)"
    )
    srv.add_argument("--device", default="cpu")
    srv.set_defaults(func=_cmd_serve)

    demo = sub.add_parser("demo", help="the whole path on toyworld: data, train, evaluate, report")
    demo.add_argument("--out", type=Path, default=Path("demo_out"))
    demo.add_argument("--quick", action="store_true", help="a much smaller run (64² images, a few minutes)")
    demo.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train both depth students with this many seeds and report the gain's spread (default 1)",
    )
    demo.add_argument(
        "--promptable",
        action="store_true",
        help="the Segment Anything story instead: promptable teacher, encoder-distilled student",
    )
    demo.add_argument(
        "--baseline",
        action="store_true",
        help="--promptable: also train the student on the labels directly, for comparison",
    )
    demo.add_argument(
        "--pretrain",
        action="store_true",
        help="the no-teacher story instead: self-supervised pre-training on unlabeled images, kNN, a student from it",
    )
    demo.set_defaults(func=_cmd_demo)

    methods = sub.add_parser("methods", help="list the training methods (config key: method)")
    methods.set_defaults(func=_cmd_methods)

    bench = sub.add_parser(
        "bench", help="latency, throughput, memory (and quality) of models and backends, in one run"
    )
    bench.add_argument("models", nargs="+", help="checkpoints, SAM .pth files or zoo names (random weights)")
    bench.add_argument("--out", type=Path, default=Path("bench_out"))
    bench.add_argument(
        "--backends",
        default="eager,channels_last,onnx",
        help="comma-separated: eager,channels_last,compile,onnx",
    )
    bench.add_argument(
        "--batch", type=int, default=8, help="batch of the throughput figure (latency: batch 1)"
    )
    bench.add_argument("--rounds", type=int, default=10, help="timed calls of each, round-robin")
    bench.add_argument("--warmup", type=int, default=2)
    bench.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    bench.add_argument("--size", type=int, default=None, help="input side of dense models")
    bench.add_argument(
        "--data", default=None, help="also measure quality: toyworld:<domain> or a labelled folder"
    )
    bench.add_argument("--count", type=int, default=64, help="--data: images the quality figure uses")
    bench.set_defaults(func=_cmd_bench)

    models = sub.add_parser(
        "models", help="the model zoo: task, backbone, parameters, GFLOPs, input, measured latency"
    )
    models.add_argument("--json", action="store_true", help="the same as JSON")
    models.set_defaults(func=_cmd_models)
    return parser


#: Options whose values may start with "-" (a negative coordinate): argparse would read "-5,10" as an option.
_SIGNED_VALUE_OPTIONS = ("--point", "--box")


def _join_signed_values(argv: list[str]) -> list[str]:
    """``--point -5,10`` → ``--point=-5,10``, so a negative coordinate reaches the command (which then says
    what is wrong with it in one line) instead of being an argparse usage error."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _SIGNED_VALUE_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(_join_signed_values(argv))
    try:
        args.func(args)
    except AnydistillError as exc:
        print(f"anydistill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anydistill: interrupted (a rerun of the same command resumes)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
