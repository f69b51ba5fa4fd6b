"""``anydistill predict``: one set of outputs per input (names that would collide keep their extension),
the report counts what was written, and bad ``--batch-size`` / output folders are one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anydistill.cli import main
from anydistill.errors import ConfigError, DataError
from anydistill.inference import output_names, predict_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(path: Path, height: int, width: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


#: input (relative path) → (height, width); sizes differ so each output shows which input it came from.
INPUTS = {
    "a.png": (20, 30),
    "a.jpg": (24, 36),
    "a.png.jpg": (28, 22),  # its short name "a.png" is a name "a.png" keeps: it keeps its own extension too
    "b.png": (16, 16),
    "scan.v1.png": (18, 26),  # dotted stems: never cut at the inner dot
    "scan.v2.png": (22, 18),
    "sub/c.png": (30, 20),
}
EXPECTED_NAMES = {
    "a.png": "a.png",
    "a.jpg": "a.jpg",
    "a.png.jpg": "a.png.jpg",
    "b.png": "b",
    "scan.v1.png": "scan.v1",
    "scan.v2.png": "scan.v2",
    "sub/c.png": "sub/c",
}


def test_output_names_keep_the_extension_only_where_names_collide() -> None:
    names = output_names([Path(rel) for rel in INPUTS])
    assert {rel.as_posix(): name for rel, name in names.items()} == EXPECTED_NAMES
    assert len(set(names.values())) == len(INPUTS)
    assert output_names([Path("x/a.png"), Path("y/a.jpg")]) == {
        Path("x/a.png"): "x/a",
        Path("y/a.jpg"): "y/a",
    }


def test_every_input_gets_its_own_outputs(tmp_path, depth_ckpt, capsys) -> None:
    images = tmp_path / "images"
    for i, (rel, (h, w)) in enumerate(INPUTS.items()):
        _image(images / rel, h, w, seed=i)
    out = tmp_path / "preds"
    assert main(["predict", "--checkpoint", str(depth_ckpt), "--images", str(images), "--out", str(out),
                 "--batch-size", "3"]) == 0  # fmt: skip
    assert f"wrote predictions for {len(INPUTS)} image(s)" in capsys.readouterr().out
    for rel, (h, w) in INPUTS.items():
        name = EXPECTED_NAMES[rel]
        assert np.load(out / "raw" / f"{name}.npy").shape == (h, w), rel
        assert Image.open(out / "png16" / f"{name}.png").size == (w, h), rel
        assert Image.open(out / "color" / f"{name}.png").size == (w, h), rel
    for folder in ("raw", "png16", "color"):
        assert len([p for p in (out / folder).rglob("*") if p.is_file()]) == len(INPUTS), folder

    report = predict_folder(depth_ckpt, images, tmp_path / "again", batch_size=2, progress=False)
    assert len(report.written) == len(set(report.written)) == len(INPUTS)
    assert all(p.is_file() for p in report.written)


@pytest.mark.parametrize("value", ["0", "-2"])
def test_batch_size_below_one_is_refused(tmp_path, depth_ckpt, capsys, value) -> None:
    _image(tmp_path / "images" / "a.png", 16, 16, seed=0)
    out = tmp_path / "preds"
    code = main(["predict", "--checkpoint", str(depth_ckpt), "--images", str(tmp_path / "images"),
                 "--out", str(out), "--batch-size", value])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("anydistill: error: --batch-size") and "Traceback" not in err
    assert not out.exists()
    with pytest.raises(ConfigError, match="batch_size"):
        predict_folder(depth_ckpt, tmp_path / "images", out, batch_size=int(value), progress=False)
    assert not out.exists()


def test_size_that_is_no_multiple_is_one_line(tmp_path, depth_ckpt, capsys) -> None:
    _image(tmp_path / "images" / "a.png", 16, 16, seed=0)
    code = main(["predict", "--checkpoint", str(depth_ckpt), "--images", str(tmp_path / "images"),
                 "--out", str(tmp_path / "preds"), "--size", "33"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "size" in err and "multiple" in err and "Traceback" not in err


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_output_folder_that_cannot_be_made_is_refused_before_any_work(tmp_path, depth_ckpt, capsys, where):
    _image(tmp_path / "images" / "a.png", 16, 16, seed=0)
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker if where == "file" else blocker / "preds"
    code = main(["predict", "--checkpoint", str(depth_ckpt), "--images", str(tmp_path / "images"),
                 "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2 and len(captured.err.strip().splitlines()) == 1, captured.err
    assert (
        captured.err.startswith(f"anydistill: error: {out}: output folder")
        and "Traceback" not in captured.err
    )
    assert "wrote" not in captured.out
    # Checked before the checkpoint is even read: a missing checkpoint is not what is reported.
    with pytest.raises(DataError, match="output folder") as err:
        predict_folder(tmp_path / "missing.ckpt", tmp_path / "images", out, progress=False)
    assert err.value.path == out
