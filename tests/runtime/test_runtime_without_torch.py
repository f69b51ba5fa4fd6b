"""The deployment path: an exported student predicts through onnxruntime alone, in a process that never
imports torch, and gives the PyTorch predictor's results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_students import save_tiny_depth_student

pytest.importorskip("onnxruntime")

from anydistill.cli import main  # noqa: E402
from anydistill.errors import DataError  # noqa: E402
from anydistill.export.exporter import export_model  # noqa: E402
from anydistill.inference import predict_folder  # noqa: E402
from anydistill.runtime.dense import OnnxPredictor  # noqa: E402
from anydistill.runtime.export_folder import ExportFolder  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("runtime")
    ckpt = save_tiny_depth_student(root / "student.ckpt", size=64)
    export_model(ckpt, root / "export")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(48, 64), (90, 40), (64, 64)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    return ckpt, root / "export", images


_PROBE = """
import sys
from anydistill.cli import main
rc = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision", "timm", "lightning", "kornia"})
print("HEAVY", ",".join(heavy))
sys.exit(rc)
"""


def test_predict_runtime_onnx_never_imports_torch_and_matches_pytorch(exported, tmp_path):
    ckpt, folder, images = exported
    out = tmp_path / "onnx_out"
    proc = subprocess.run([sys.executable, "-c", _PROBE, "predict", "--checkpoint", str(folder), "--images",
                           str(images), "--out", str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY \n" in proc.stdout, proc.stdout  # auto: the export folder ran on onnxruntime, torch unused
    assert "skipped 1 unreadable image" in proc.stdout and "broken.jpg" in proc.stdout
    reference = predict_folder(ckpt, images, tmp_path / "torch_out", progress=False)
    assert len(reference.written) == 3
    for raw in reference.written:
        ours = np.load(out / "raw" / raw.name)
        theirs = np.load(raw)
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=1e-3 * max(1.0, float(np.abs(theirs).max())))
        for kind in ("png16", "color"):
            assert (out / kind / raw.with_suffix(".png").name).is_file()


def test_fixed_batch_graphs_take_any_number_of_images(exported):
    _, folder, _ = exported
    predictor = OnnxPredictor(folder, batch_size=4)
    assert predictor.batch_size == 1  # a static export: batch 1 at a time
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (30 + i, 50, 3), dtype=np.uint8) for i in range(3)]
    preds = predictor.predict(images)
    assert [p.shape for p in preds] == [(30, 50), (31, 50), (32, 50)]
    assert all(p.dtype == np.float32 and p.min() >= 0 for p in preds)


def test_bad_export_folders_are_one_line(exported, tmp_path, capsys):
    _, folder, images = exported
    with pytest.raises(DataError, match="no export.json"):
        ExportFolder.read(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "export.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot be read as JSON"):
        ExportFolder.read(broken)
    meta = json.loads((folder / "export.json").read_text())
    (broken / "export.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(DataError, match="version 99"):
        ExportFolder.read(broken)
    import shutil

    shutil.copy(folder / "model.onnx", broken / "model.onnx")  # so each record reaches its own check
    for bad, match in (({"version": "1.0"}, "malformed"), ({"graphs": ["model.onnx"]}, "names no"),
                       ({"input_size": [56]}, "malformed"),
                       ({"preprocess": {**meta["preprocess"], "mean": ["a", "b", "c"]}}, "preprocess")):  # fmt: skip
        (broken / "export.json").write_text(json.dumps({**meta, **bad}))
        with pytest.raises(DataError, match=match):
            ExportFolder.read(broken)
    (broken / "model.onnx").unlink()
    (broken / "export.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="missing from the export folder"):
        ExportFolder.read(broken)
    (broken / "export.json").write_text(json.dumps({**meta, "graphs": {"model": "../model.onnx"}}))
    with pytest.raises(DataError, match="missing from the export folder"):
        ExportFolder.read(broken)  # a graph outside the folder is never opened
    assert main(["predict", "--checkpoint", str(tmp_path), "--images", str(images), "--out", str(tmp_path / "o"),
                 "--runtime", "onnx"]) == 2  # fmt: skip
    assert "a folder without export.json" in capsys.readouterr().err
    assert (
        main(
            ["predict", "--checkpoint", str(tmp_path), "--images", str(images), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "a folder without export.json" in capsys.readouterr().err  # not a torch loader's message
    assert main(["predict", "--checkpoint", str(folder), "--images", str(images), "--out", str(tmp_path / "o"),
                 "--size", "96"]) == 2  # fmt: skip
    assert "fixed input size" in capsys.readouterr().err


def test_a_detector_export_predicts_without_torch_and_matches_pytorch(tmp_path):
    from tiny_students import save_tiny_detector

    from anydistill.eval.detection import predict_detections
    from anydistill.promptable.mask_utils import decode_rle

    ckpt = save_tiny_detector(tmp_path / "det.ckpt", size=64, name="det_tiny_maskrcnn")
    export_model(ckpt, tmp_path / "export", min_score=0.0)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(48, 80), (100, 40)]):  # one downscaled, one larger than the frame
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "onnx_out"
    proc = subprocess.run([sys.executable, "-c", _PROBE, "predict", "--checkpoint", str(tmp_path / "export"),
                           "--images", str(images), "--out", str(out), "--min-score", "0"], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY \n" in proc.stdout, proc.stdout
    assert "skipped 1 unreadable image" in proc.stdout and (out / "overlays" / "im1.png").is_file()
    ours = json.loads((out / "detections.json").read_text())
    predict_detections(ckpt, images, tmp_path / "torch_out", min_score=0.0)
    theirs = json.loads((tmp_path / "torch_out" / "detections.json").read_text())
    assert ours["images"] == theirs["images"] and ours["categories"] == theirs["categories"]
    assert 100 < len(ours["annotations"]) <= 200  # min_score 0: the top 100 of each image, inside it
    assert all(a["bbox"][2] > 0 and a["bbox"][3] > 0 for a in ours["annotations"])
    # the same graph on inputs resized by Pillow here and by torch there: the near-tied scores of an
    # untrained detector may swap places, so detections are paired, not compared in order
    from anydistill.export.check import _pair_detections

    def arrays(record, image_id):
        anns = [a for a in record["annotations"] if a["image_id"] == image_id]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32)
        return [boxes, np.array([a["score"] for a in anns]), np.array([a["category_id"] for a in anns]),
                [decode_rle(a["segmentation"]) for a in anns]]  # fmt: skip

    for image_id in (1, 2):
        a, b = arrays(ours, image_id), arrays(theirs, image_id)
        pairs = _pair_detections(a, b, iou_min=0.9)
        # the best detections in the same order; near the top-100 cut, near-ties may swap in or out
        assert all((i, i) in pairs for i in range(30)), (image_id, pairs[:30])
        assert len(pairs) >= 0.8 * max(len(a[0]), len(b[0])), (image_id, len(pairs), len(a[0]), len(b[0]))
        inter = sum(int((a[3][i] & b[3][j]).sum()) for i, j in pairs)
        union = sum(int((a[3][i] | b[3][j]).sum()) for i, j in pairs)
        assert inter / max(union, 1) > 0.95 and union > 0
