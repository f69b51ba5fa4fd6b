"""Run the bad-input corpus through every command it applies to, in process, and classify each outcome.

Used by ``tests/bad_inputs/test_bad_inputs.py`` (one test per pair) and ``benchmarks/bad_input_matrix.py``
(the table in ``benchmarks/RESULTS.md``). Each pair builds its case in a fresh folder, runs
``anydistill.cli.main(argv)`` with stdout, stderr, log records and Python warnings captured (what a user
would see in a terminal), and sorts what happened into a class (see :mod:`bad_inputs.corpus`):

- exit 0: the outputs are checked against what the corpus knows independently (sizes in the displayed
  orientation, predictions from the pixels a reader must see, finite metrics, counts): ``works``; with
  a report naming and counting every bad file: ``counted skip``; else ``wrong output`` /
  ``accepted silently`` (a bad file taken without a word) / ``uncounted skip``;
- exit 2 with one ``anydistill: error:`` line naming what it must: ``one line``; argparse's usage block
  and one error line naming the option: ``usage``; else ``line not naming ...`` / ``N-line error``;
- an exception out of ``main`` or ``Traceback`` on stderr: ``traceback``; any other exit code: ``exit N``.

Training runs are tiny (64-pixel inputs, one step of one batch holding every training image of a case,
``depth_tiny``/``seg_tiny``), so a bad file is met in the first step; logs and warnings of DataLoader
worker processes are not captured (a user sees them), so the skip cases train with ``num_workers=0``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import re
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anydistill.cache import run_teacher_pass
from anydistill.cache.manifest import open_cache, read_manifest
from anydistill.cli import main
from anydistill.data.classes import ClassInfo
from anydistill.inference import Predictor, load_student
from anydistill.loading import model_record
from anydistill.models import build_model
from anydistill.teachers import load_teacher
from bad_inputs.corpus import (
    CASE_BY_NAME,
    CLASSES,
    DISTILL,
    EVALUATE,
    IMPORT,
    ONE_LINE,
    PREDICT,
    PSEUDO,
    SEGMENT,
    SKIP,
    TOYWORLD,
    TRAIN,
    USAGE,
    WORKS,
    CaseFiles,
    Expect,
    good_set,
    save_tiny_sam,
)

#: Observed classes that are silent wrong outputs (exit 0 with something wrong and nothing said).
SILENT_WRONG = ("wrong output", "accepted silently", "uncounted skip")
TRACEBACK = "traceback"

TINY_TRAIN = (
    "data.source=folder",
    "data.image_size=64",
    "data.batch_size=4",  # > the 2-4 training images of a case: the first step reads every one
    "data.num_workers=0",
    "data.val_fraction=0.34",
    "trainer.max_steps=1",
    "trainer.progress_bar=false",
    "trainer.grid_images=1",
    "trainer.log_every_n_steps=1",
)


# --------------------------------------------------------------------------------------------- assets
@dataclass(frozen=True)
class Assets:
    """What every pair shares, made once: tiny untrained students and a finished pseudo-label cache."""

    depth: Path  # a depth_tiny student checkpoint (64-pixel pre-processing)
    semantic: Path  # a seg_tiny student with the corpus's 3 classes
    sam: Path  # a sam_tiny in a 64-pixel frame
    cache: Path  # a depth teacher's pseudo-labels of 3 images, for distill

    @classmethod
    def build(cls, folder: Path) -> Assets:
        folder.mkdir(parents=True, exist_ok=True)
        depth = _save_student(folder / "depth.ckpt", "depth", "depth_tiny", None)
        semantic = _save_student(folder / "semantic.ckpt", "semantic", "seg_tiny", len(CLASSES))
        sam = save_tiny_sam(folder / "sam.ckpt")
        unlabeled = good_set(folder / "unlabeled").images
        run_teacher_pass(load_teacher(str(depth)), unlabeled, folder / "cache", num_workers=0, progress=False)
        return cls(depth, semantic, sam, folder / "cache")

    def fields(self) -> dict[str, str]:
        return {"depth_ckpt": str(self.depth), "semantic_ckpt": str(self.semantic), "sam_ckpt": str(self.sam)}


def _save_student(path: Path, task: str, name: str, num_classes: int | None) -> Path:
    """A tiny untrained student saved the way training saves one (``model.*`` weights + model record)."""
    torch.manual_seed(0)
    model = build_model(name, **({"num_classes": num_classes} if num_classes else {}))
    arch = {"model_name": name, "model_kwargs": {}, "num_classes": num_classes}
    classes = (
        ClassInfo([c["name"] for c in CLASSES], [[0, 0, 0], [255, 0, 0], [0, 255, 0]])
        if num_classes
        else None
    )
    record = model_record(task, model.preprocess_spec(64), arch, classes)
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "anydistill_model": record},
        path,
    )
    return path


# ------------------------------------------------------------------------------------------ commands
def command_argv(command: str, files: CaseFiles, assets: Assets, work: Path) -> list[str]:
    """The ordinary invocation of ``command`` on the case's files (the case's ``Expect.argv`` is added
    after it: a repeated option or key overrides the one here)."""
    out = str(files.out) if files.out else None
    ckpt = str(files.checkpoint) if files.checkpoint else None
    if command == IMPORT:
        return ["data", "import", "--images", str(files.images), "--labels", str(files.labels),
                "--out", out or str(work / "imported"), "--kind", files.task]  # fmt: skip
    if command == TOYWORLD:
        return ["data", "toyworld", "--out", out or str(work / "toy"), "--count", "2", "--size", "32"]
    if command in (TRAIN, DISTILL):
        model = "depth_tiny" if files.task == "depth" else "seg_tiny"
        argv = [command, f"task={files.task}", f"model.name={model}", f"data.train_root={files.root}",
                *TINY_TRAIN, f"run_dir={out or work / 'run'}"]  # fmt: skip
        if command == DISTILL:
            argv.append(f"distill.cache={assets.cache}")
            if ckpt:
                argv += ["distill.feature_align=true", f"distill.frozen_encoder={ckpt}"]
        return argv
    if command == PSEUDO:
        return ["pseudo-label", "--teacher", ckpt or str(assets.depth), "--images", str(files.images),
                "--out", out or str(work / "cache"), "--num-workers", "0", "--batch-size", "2"]  # fmt: skip
    if command == EVALUATE:
        default = assets.depth if files.task == "depth" else assets.semantic
        argv = [
            "evaluate",
            "--checkpoint",
            ckpt or str(default),
            "--data",
            str(files.root),
            "--batch-size",
            "2",
        ]
        return argv + (["--json", f"{out}/metrics.json"] if out else [])
    if command == PREDICT:
        return ["predict", "--checkpoint", ckpt or str(assets.depth), "--images", str(files.images),
                "--out", out or str(work / "pred"), "--batch-size", "2"]  # fmt: skip
    if command == SEGMENT:
        image = files.segment_image()
        pixels = files.pixels.get(_rel(files, image))
        point = f"{pixels.shape[1] // 2},{pixels.shape[0] // 2}" if pixels is not None else "5,5"
        return ["segment", "--checkpoint", ckpt or str(assets.sam), "--image", str(image), "--point", point,
                "--out", out or str(work / "seg")]  # fmt: skip
    raise ValueError(f"unknown command {command!r}")


def _rel(files: CaseFiles, path: Path) -> str:
    try:
        return path.relative_to(files.images).as_posix()
    except ValueError:
        return path.name


def full_argv(command: str, expect: Expect, files: CaseFiles, assets: Assets, work: Path) -> list[str]:
    """The command line of a pair: the ordinary invocation, then the case's arguments. For train and
    distill, whose ``key=value`` overrides are positional, the case's ``--option VALUE`` pairs go before
    the overrides (argparse takes no option after the positionals)."""
    values = {**files.fields(), **assets.fields()}
    extra = [a.format(**values) for a in expect.argv]
    argv = command_argv(command, files, assets, work)
    if command not in (TRAIN, DISTILL):
        return argv + extra
    options, overrides, i = [], [], 0
    while i < len(extra):
        if extra[i].startswith("--"):
            options += extra[i : i + 2]
            i += 2
        else:
            overrides.append(extra[i])
            i += 1
    return argv[:1] + options + argv[1:] + overrides


# ---------------------------------------------------------------------------------------- running
@dataclass
class Result:
    """What one CLI call did: exit code, captured output, the exception that escaped ``main`` (if any)."""

    code: int
    stdout: str
    stderr: str
    error: str | None = None


def run_cli(argv: list[str]) -> Result:
    """``anydistill.cli.main(argv)`` in this process, with what a terminal would show captured: stdout,
    stderr, log records (WARNING and up, as Python's last-resort handler prints them: the message) and
    Python warnings (with the interpreter's default filters: deprecations hidden)."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    error = None
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("default")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.filterwarnings("ignore", category=category)
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception as exc:  # noqa: BLE001 -- what escapes main is what the user sees as a traceback
                code = 1
                error = f"{type(exc).__name__}: {exc}"
                err.write(
                    "Traceback (most recent call last):\n" + "".join(traceback.format_tb(exc.__traceback__))
                )
                err.write(f"{error}\n")
    finally:
        root.removeHandler(handler)
    shown = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    return Result(code, out.getvalue(), err.getvalue() + shown, error)


_ARGPARSE_ERROR = re.compile(r"^anydistill(?: [\w-]+)*: error: ")
_PROGRESS = re.compile(r"\d+%\||\|\s*\d+/\d+ \[|\d+(?:it|img|batch)(?:/s)?\]")


def visible_lines(text: str) -> list[str]:
    """The lines a terminal would show: each line's last carriage-return segment, progress bars and
    blank lines dropped."""
    lines = []
    for line in text.split("\n"):
        shown = line.split("\r")[-1].strip()
        if shown and not _PROGRESS.search(shown):
            lines.append(shown)
    return lines


# ------------------------------------------------------------------------------------------- checks
def _finite_metrics(stdout: str) -> dict[str, float]:
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", stdout, flags=re.M)
    return {k: float(v) for k, v in rows if k != "metric"}


def check_outputs(command: str, files: CaseFiles, argv: list[str], res: Result, assets: Assets) -> str | None:
    """Why the outputs of an exit-0 run are wrong (None: right). Uses only what the corpus knows."""
    n = len(files.pixels)
    out = Path(_last(argv, "--out")) if "--out" in argv else None
    if command == IMPORT:
        assert out is not None
        images = [p for p in (out / "images").rglob("*") if p.is_file()]
        labels = [p for p in (out / files.task).rglob("*") if p.is_file()]
        if len(images) != n or len(labels) != n:
            return f"imported {len(images)} images and {len(labels)} labels, expected {n} of each"
        if files.task == "semantic" and not (out / "classes.json").is_file():
            return "no classes.json written"
        return None
    if command == TOYWORLD:
        assert out is not None
        count = int(_last(argv, "--count"))
        found = len(list((out / "images").glob("*.png")))
        return None if found == count else f"{found} toyworld images written, expected {count}"
    if command in (TRAIN, DISTILL):
        run = Path(next(a for a in reversed(argv) if a.startswith("run_dir=")).partition("=")[2])
        if not (run / "checkpoints" / "best.ckpt").is_file():
            return "no best.ckpt"
        val = json.loads((run / "metrics.json").read_text())["val"]
        bad = {k: v for k, v in val.items() if not math.isfinite(v)}
        return f"non-finite validation metrics {bad}" if bad or not val else None
    if command == EVALUATE:
        metrics = _finite_metrics(res.stdout)
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad or "images" not in metrics:
            return f"metrics {bad or metrics}"
        return None if metrics["images"] == n else f"evaluated {metrics['images']:.0f} images, expected {n}"
    if command == PSEUDO:
        assert out is not None
        manifest = read_manifest(out)
        if manifest.count != n:
            return f"cached {manifest.count} images, expected {n}"
        if "disp" not in manifest.targets:  # a features teacher (SAM): image embeddings, not at image size
            return None
        cache = open_cache(out)
        for rel, pixels in files.pixels.items():
            disp = cache.read(rel.rsplit(".", 1)[0])["disp"]  # (H, W)
            if disp.shape != pixels.shape[:2]:
                return (
                    f"{rel}: pseudo-label of shape {disp.shape}, the image is {pixels.shape[:2]} as displayed"
                )
        return None
    if command == PREDICT:
        assert out is not None
        predictor = _predictor(_last(argv, "--checkpoint"))
        for rel, pixels in files.pixels.items():
            path = out / "raw" / f"{rel.rsplit('.', 1)[0]}.npy"
            if not path.is_file():
                return f"no prediction for {rel}"
            raw = np.load(path)
            if raw.shape != pixels.shape[:2]:
                return f"{rel}: prediction of shape {raw.shape}, the image is {pixels.shape[:2]} as displayed"
            if not np.allclose(raw, predictor.predict([pixels])[0], atol=1e-4, rtol=1e-3):
                return f"{rel}: prediction differs from the prediction on the pixels a reader must see"
        return (
            None
            if f"wrote predictions for {n} image(s)" in res.stdout
            else "report does not count the images"
        )
    if command == SEGMENT:
        assert out is not None
        pixels = files.pixels.get(_rel(files, Path(_last(argv, "--image"))))
        mask = out / "mask.png"
        if pixels is None or not mask.is_file():
            return "no mask.png"
        size = Image.open(mask).size
        return (
            None
            if size == (pixels.shape[1], pixels.shape[0])
            else f"mask is {size} (w, h), image {pixels.shape[:2]}"
        )
    return None


@functools.lru_cache(maxsize=4)
def _predictor(checkpoint: str) -> Predictor:
    """The reference predictor of a checkpoint (built once: a model build is most of a pair's time)."""
    return Predictor(load_student(checkpoint), batch_size=1)


def _last(argv: list[str], option: str) -> str:
    return argv[len(argv) - 1 - argv[::-1].index(option) + 1]


def _skip_count(command: str, res: Result) -> int:
    """How many inputs the command's report says it skipped (0: none, or a command without such a report)."""
    if command == PREDICT:
        found = re.search(r"skipped (\d+) unreadable image", res.stdout)
    elif command in (PSEUDO, DISTILL):  # distill --images: the teacher pass's summary
        found = re.search(r"(\d+) image\(s\) not cached", res.stdout)
    elif command == TRAIN:  # data.on_missing_label=skip: a warning counts and names them
        found = re.search(r"skipped (\d+) image\(s\) without a \w+ label", res.stderr)
    elif command == EVALUATE:  # images without a valid target are left out of the metrics and counted
        found = re.search(r"^\| n_skipped \| (\d+)\.0+ \|$", res.stdout, flags=re.M)
    else:
        found = None
    return int(found.group(1)) if found else 0


def classify(
    command: str, expect: Expect, files: CaseFiles, argv: list[str], res: Result, assets: Assets
) -> tuple[str, str]:
    """``(observed class, detail)`` of one run (see the module docstring)."""
    if res.error is not None or "Traceback" in res.stderr:
        return TRACEBACK, res.error or visible_lines(res.stderr)[-1]
    lines = visible_lines(res.stderr)
    if res.code == 0:
        problem = check_outputs(command, files, argv, res, assets)
        if problem:
            return "wrong output", problem
        skipped = _skip_count(command, res)
        if skipped:
            said = res.stdout + res.stderr  # the count in the report, each file named there or in a warning
            missing = [p.name for p in files.bad if p.name not in said]
            if skipped != len(files.bad) or missing:
                return (
                    "uncounted skip",
                    f"{skipped} skipped, {len(files.bad)} bad file(s), not named: {missing}",
                )
            return SKIP, f"{skipped} skipped and named"
        if files.bad and expect.outcome != WORKS:
            return "accepted silently", f"exit 0 without naming {files.bad[0]}"
        return WORKS, (lines[-1] if lines else "")
    values = {**files.fields(), **assets.fields()}
    names = [n.format(**values) for n in expect.names]
    if res.code == 2:
        last = lines[-1] if lines else ""
        if len(lines) >= 2 and lines[0].startswith("usage: anydistill") and _ARGPARSE_ERROR.match(last):
            missing = [n for n in names if n not in last]  # argparse: its usage block, then one error line
            return (USAGE, last) if not missing else (f"usage not naming {missing}", last)
        if len(lines) == 1 and last.startswith("anydistill: error: "):
            missing = [n for n in names if n not in last]
            return (ONE_LINE, last) if not missing else (f"line not naming {missing}", last)
        return f"{len(lines)}-line error", " / ".join(lines[-3:])
    return f"exit {res.code}", " / ".join(lines[-3:])


@dataclass
class Verdict:
    """One pair's expected and observed class, the command line and what was seen."""

    case: str
    command: str
    expected: str
    observed: str
    detail: str
    argv: list[str]

    @property
    def ok(self) -> bool:
        return self.expected == self.observed


def run_pair(case_name: str, command: str, tmp: Path, assets: Assets) -> Verdict:
    """Build the case in ``tmp``, run ``command`` on it and classify the outcome."""
    case = CASE_BY_NAME[case_name]
    expect = case.expect[command]
    files = case.build(tmp / "in")
    argv = full_argv(command, expect, files, assets, tmp / "work")
    res = run_cli(argv)
    observed, detail = classify(command, expect, files, argv, res, assets)
    return Verdict(case_name, command, expect.outcome, observed, detail, argv)


def describe(v: Verdict) -> str:
    """A failure message: the pair, both classes, what was seen and the command to reproduce it."""
    return (
        f"{v.case} × {v.command}: expected {v.expected!r}, got {v.observed!r}: {v.detail}\n"
        f"  anydistill {' '.join(v.argv)}"
    )


ACCEPTED = (WORKS, ONE_LINE, SKIP, USAGE)
