"""End to end: train → checkpoints/logs/grid/metrics → resume → evaluate → predict, through API and CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from anydistill import api
from anydistill.checkpoints import read_checkpoint
from anydistill.cli import main
from anydistill.config import load_config
from anydistill.errors import DataError
from anydistill.inference import Predictor, load_student

TINY = [
    "data.train_count=16",
    "data.val_count=4",
    "data.image_size=64",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.progress_bar=false",
    "trainer.grid_images=2",
]


def tiny_config(tmp: Path, task: str, *extra: str):
    model = "depth_tiny" if task == "depth" else "seg_tiny"
    return load_config(None, [f"task={task}", f"run_dir={tmp / task}", f"model.name={model}", *TINY, *extra])


@pytest.fixture(scope="module")
def depth_run(tmp_path_factory):
    return api.train(tiny_config(tmp_path_factory.mktemp("runs"), "depth"))


@pytest.fixture(scope="module")
def semantic_run(tmp_path_factory):
    return api.train(tiny_config(tmp_path_factory.mktemp("runs"), "semantic"))


@pytest.mark.parametrize("run_name", ["depth_run", "semantic_run"])
def test_run_folder_contents(run_name, request):
    result = request.getfixturevalue(run_name)
    run = result.run_dir
    for rel in (
        "config.yaml",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "metrics.json",
        "val_grid.png",
    ):
        assert (run / rel).is_file(), rel
    assert list((run / "logs" / "csv").glob("version_*/metrics.csv"))
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    # one last.ckpt kept up to date by both checkpoint callbacks (no last-v1.ckpt beside it)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    summary = json.loads((run / "metrics.json").read_text())
    # The summary holds best.ckpt's metrics on the 4 validation scenes, which are evaluate's held-out
    # toyworld:wide scenes: the evaluation path must give the same numbers.
    evaluated = api.evaluate(run / "checkpoints" / "best.ckpt", "toyworld:wide", count=4, progress=False)
    names = ("delta1", "abs_rel", "rmse") if "depth" in run_name else ("miou", "pixel_acc", "mean_acc")
    for name in names:
        assert summary["val"][f"val/{name}"] == pytest.approx(evaluated[name], rel=1e-5, abs=1e-6), name
    grid = np.asarray(Image.open(run / "val_grid.png"))
    assert grid.ndim == 3 and grid.shape[1] > 3 * 64  # three columns of 64-pixel tiles
    # The checkpoint describes its model: builder, pre-processing at the evaluation size, class table.
    ckpt = read_checkpoint(run / "checkpoints" / "best.ckpt")
    record = ckpt["anydistill_model"]
    assert record["task"] == summary["task"] and record["arch"]["model_name"] == summary["model"]
    assert record["preprocess"]["size"] == 64 and record["preprocess"]["resize"] == "long_side"
    assert (
        summary["method"] == "supervised"
        and yaml.safe_load((run / "config.yaml").read_text())["method"] == "supervised"
    )


def test_resume_continues_from_last_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, "depth")
    first = api.train(cfg)
    steps_one_epoch = torch.load(first.last_checkpoint, weights_only=False)["global_step"]
    cfg.trainer.max_epochs = 2
    second = api.train(cfg)
    assert torch.load(second.last_checkpoint, weights_only=False)["global_step"] == 2 * steps_one_epoch


def test_killed_run_resumes_and_finishes(tmp_path):
    """Kill -9 a CLI training run mid-epoch; the same command finishes it from last.ckpt."""
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "anydistill.cli", "train", f"run_dir={run}", *TINY]
    args += ["data.train_count=64", "trainer.max_epochs=3", "trainer.checkpoint_every_n_steps=2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before it could be killed; make it longer"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_step = torch.load(last, weights_only=False)["global_step"]
    assert 0 < killed_step < 48
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout
    assert torch.load(last, weights_only=False)["global_step"] == 48  # 3 epochs x 16 steps
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 48


def test_evaluate_api_and_cli(depth_run, tmp_path, capsys):
    metrics = api.evaluate(depth_run.best_checkpoint, "toyworld:wide", count=4, progress=False)
    assert {"abs_rel", "delta1", "rmse"} <= set(metrics) and metrics["images"] == 4
    out = tmp_path / "m.json"
    code = main(
        ["evaluate", "--checkpoint", str(depth_run.best_checkpoint), "--count", "4", "--json", str(out)]
    )
    assert code == 0
    table = capsys.readouterr().out
    cli = json.loads(out.read_text())["metrics"]
    assert cli == pytest.approx(metrics)  # every metric, not only one
    assert f"| delta1 | {metrics['delta1']:.4f} |" in table  # the printed table shows the same numbers
    # Other scenes, other numbers: --count and the held-out seed reach the data.
    more = api.evaluate(depth_run.best_checkpoint, "toyworld:wide", count=6, progress=False)
    assert more["images"] == 6 and more["abs_rel"] != pytest.approx(metrics["abs_rel"])


def write_images(folder: Path) -> None:
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (90, 40), dtype=np.uint8)).save(folder / "sub" / "b.jpg")
    (folder / "broken.png").write_bytes(b"not a png at all")


def test_predict_depth_folder_keeps_sizes_and_reports_bad_images(depth_run, tmp_path):
    images = tmp_path / "imgs"
    write_images(images)
    report = api.predict(depth_run.best_checkpoint, images, tmp_path / "out", batch_size=2)
    assert len(report.written) == 2
    assert [p.name for p, _ in report.skipped] == ["broken.png"]
    assert "broken.png" in report.summary()
    raw = np.load(tmp_path / "out" / "raw" / "sub" / "b.npy")
    assert raw.shape == (90, 40) and raw.dtype == np.float32 and (raw >= 0).all()
    # What was written is the student's prediction for that very image, at its size (a grey JPEG: RGB).
    rgb = np.asarray(Image.open(images / "sub" / "b.jpg").convert("RGB"))
    expected = Predictor(load_student(depth_run.best_checkpoint)).predict([rgb])[0]
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-5)
    assert raw.std() > 0  # a real map, not a constant
    # png16: the same map scaled to 0..65535 over its own range.
    png16 = np.asarray(Image.open(tmp_path / "out" / "png16" / "sub" / "b.png")).astype(np.int64)
    scaled = np.round((raw - raw.min()) / (raw.max() - raw.min()) * 65535)
    assert png16.shape == (90, 40) and np.abs(png16 - scaled).max() <= 1
    assert Image.open(tmp_path / "out" / "png16" / "a.png").mode.startswith("I")
    assert np.asarray(Image.open(tmp_path / "out" / "color" / "a.png")).shape == (50, 70, 3)


def test_predict_semantic_cli(semantic_run, tmp_path, capsys):
    images = tmp_path / "imgs"
    write_images(images)
    code = main(
        [
            "predict",
            "--checkpoint",
            str(semantic_run.best_checkpoint),
            "--images",
            str(images),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 0
    mask = Image.open(tmp_path / "o" / "masks" / "a.png")
    assert mask.mode == "P" and mask.size == (70, 50)
    student = load_student(semantic_run.best_checkpoint)
    ids = np.asarray(mask)
    assert ids.max() < len(student.classes.names)
    # The student's class ids for that image, painted with the class table's colours.
    expected = Predictor(student).predict([np.asarray(Image.open(images / "a.png").convert("RGB"))])[0]
    assert np.array_equal(ids, expected)
    palette = np.asarray(mask.getpalette()[: 3 * len(student.classes.names)]).reshape(-1, 3)
    assert palette.tolist() == [list(c) for c in student.classes.colors]
    assert "skipped 1" in capsys.readouterr().out


def test_predictor_batches_equal_single(depth_run):
    predictor = Predictor(load_student(depth_run.best_checkpoint), batch_size=3)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (40 + 7 * i, 64, 3), dtype=np.uint8) for i in range(4)]
    batched = predictor.predict(images)
    single = [predictor.predict([img])[0] for img in images]
    for b, s, img in zip(batched, single, images, strict=True):
        assert b.shape == img.shape[:2]
        np.testing.assert_allclose(b, s, rtol=1e-4, atol=1e-5)


def test_bad_checkpoints_get_clear_errors(tmp_path, depth_run, capsys):
    truncated = tmp_path / "trunc.ckpt"
    truncated.write_bytes(depth_run.best_checkpoint.read_bytes()[:1000])
    with pytest.raises(DataError, match="trunc.ckpt"):
        load_student(truncated)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_student(empty)
    other = tmp_path / "other.ckpt"
    torch.save({"weights": 1}, other)
    with pytest.raises(DataError, match="not an anydistill"):
        load_student(other)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.ckpt")]) == 2
    assert "missing.ckpt: checkpoint file not found" in capsys.readouterr().err


def test_a_bad_image_met_in_a_loader_worker_is_one_line(tmp_path, capsys):
    """With loader workers (the shipped configs use 2) a truncated image still gives one line naming the file,
    exit 2: the DataError raised in the worker reaches the CLI as itself, not as torch's RuntimeError."""
    from anydistill.cli import main
    from anydistill.data.toyworld import write_toyworld

    root = write_toyworld(tmp_path / "data", count=8, size=64, domain="wide", seed=0, progress=False)
    bad = sorted((root / "images").iterdir())[3]
    bad.write_bytes(bad.read_bytes()[:100])
    code = main(["train", "data.source=folder", f"data.train_root={root}", "data.image_size=64", "data.batch_size=4",
                 "data.num_workers=2", "data.val_fraction=0.25", "trainer.max_steps=4", "trainer.progress_bar=false",
                 f"run_dir={tmp_path / 'run'}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == f"anydistill: error: {bad}: truncated image (image file is truncated)"
    assert not any("Traceback" in line or "RuntimeError" in line for line in err)


def test_cli_config_error_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epoch: 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "max_epoch" in err and "Traceback" not in err


def test_run_without_validation_keeps_last_checkpoint_and_resumes(tmp_path):
    """With no validation during fit, best.ckpt is a copy of the final state and last.ckpt survives."""
    cfg = tiny_config(tmp_path, "depth", "trainer.val_every_n_epochs=1000", "trainer.max_epochs=1")
    first = api.train(cfg)
    assert first.last_checkpoint.is_file() and first.best_checkpoint.is_file()
    step = torch.load(first.last_checkpoint, weights_only=False)["global_step"]
    assert torch.load(first.best_checkpoint, weights_only=False)["global_step"] == step
    cfg.trainer.max_epochs = 2
    second = api.train(cfg)
    assert torch.load(second.last_checkpoint, weights_only=False)["global_step"] == 2 * step
