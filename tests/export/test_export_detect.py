"""Detectors exported to one ONNX graph (post-processing inside): onnxruntime against the PyTorch model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tiny_students import save_tiny_detector  # noqa: E402

from anydistill.errors import ConfigError  # noqa: E402
from anydistill.export import EXPORT_JSON, METADATA_KEY, ExportCheckError, export_model  # noqa: E402
from anydistill.export import exporter as exporter_module  # noqa: E402
from anydistill.export.check import _pair_detections  # noqa: E402
from anydistill.export.graphs import DetectorGraph  # noqa: E402
from anydistill.loading import load_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _frame(height: int, width: int, size: int, seed: int) -> torch.Tensor:
    """A random image prepared as the graph takes it: long side ``size``, zero-padded, [0, 1]."""
    image = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
    scale = size / max(height, width)
    h, w = round(height * scale), round(width * scale)
    x = F.interpolate(image.permute(2, 0, 1)[None].float() / 255, (h, w), mode="bilinear", antialias=True)
    return F.pad(x.clamp(0, 1), (0, size - w, 0, size - h))  # (1, 3, S, S)


@pytest.fixture(scope="module")
def retinanet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("det")
    ckpt = save_tiny_detector(folder / "det.ckpt", size=64)
    return ckpt, export_model(ckpt, folder / "onnx", min_score=0.0)


def test_a_detector_graph_gives_the_models_detections_and_carries_its_record(retinanet) -> None:
    ckpt, result = retinanet
    m = result.manifest
    assert result.files == ["model.onnx"] and m["task"] == "detect" and m["input_size"] == [64, 64]
    assert m["classes"]["names"] == ["sphere", "box", "cylinder", "cone", "ellipsoid"]
    assert m["postprocess"] == {
        "arch": "retinanet",
        "score_thresh": 0.0,
        "nms_thresh": 0.5,
        "detections_per_img": 100,
    }
    assert m["check"]["model"]["detection_agreement"] >= 0.99 and m["check"]["model"]["detections"] == 200
    assert "detections_at_threshold" not in m["check"]["model"]  # threshold 0: the graph is its own probe
    # the record describes the graph's input: [0, 1] pixels, normalised inside the graph
    assert m["preprocess"]["mean"] == [0.0, 0.0, 0.0] and m["preprocess"]["std"] == [1.0, 1.0, 1.0]
    assert json.loads((result.out / EXPORT_JSON).read_text())["task"] == "detect"
    graph = onnx.load(str(result.out / "model.onnx"))
    assert json.loads({p.key: p.value for p in graph.metadata_props}[METADATA_KEY])["task"] == "detect"
    # an image the check never saw, of another shape: the same detections, in the same order
    session = ort.InferenceSession(str(result.out / "model.onnx"), providers=["CPUExecutionProvider"])
    model = load_model(ckpt).model.eval()
    model.set_postprocess(score_thresh=0.0)
    x = _frame(30, 64, 64, seed=7)
    boxes, scores, labels = session.run(None, {"image": x.numpy()})
    with torch.inference_mode():
        ref = model(x)[0]
    assert boxes.shape == (100, 4) and labels.dtype == np.int64
    np.testing.assert_allclose(boxes, ref["boxes"].numpy(), atol=1e-3)
    np.testing.assert_allclose(scores, ref["scores"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(labels, ref["labels"].numpy())


def test_the_model_score_threshold_is_baked_in_by_default(tmp_path) -> None:
    ckpt = save_tiny_detector(tmp_path / "det.ckpt", size=64)
    result = export_model(ckpt, tmp_path / "onnx")
    assert result.manifest["postprocess"]["score_thresh"] == 0.05
    check = result.manifest["check"]["model"]
    # an untrained detector finds nothing above 0.05 on noise: the threshold-0 probe is what was compared
    assert check["detections_at_threshold"] == 0 and check["detections"] == 200
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == [
        "export.json",
        "model.onnx",
    ]  # no probe left
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    model = load_model(ckpt).model.eval()
    for seed in range(3):
        x = _frame(48, 64, 64, seed=seed)
        _, scores, _ = session.run(None, {"image": x.numpy()})
        with torch.inference_mode():
            expected = model(x)[0]["scores"]  # the checkpoint's own threshold, 0.05
        assert len(scores) == len(expected) and (scores >= 0.05).all()


def test_a_mask_rcnn_graph_gives_its_masks(tmp_path) -> None:
    ckpt = save_tiny_detector(tmp_path / "det.ckpt", size=64, name="det_tiny_maskrcnn")
    result = export_model(ckpt, tmp_path / "onnx", min_score=0.0)
    check = result.manifest["check"]["model"]
    assert check["mask_iou"] >= 0.99 and check["detection_agreement"] >= 0.99 and check["detections"] > 0
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    assert outputs == ["boxes", "scores", "labels", "masks"]
    masks = session.run(None, {"image": _frame(64, 40, 64, seed=2).numpy()})[3]
    assert masks.ndim == 4 and masks.shape[1:] == (1, 64, 64) and 0 <= masks.min() and masks.max() <= 1


def test_a_graph_whose_boxes_drift_is_refused(tmp_path, monkeypatch) -> None:
    ckpt = save_tiny_detector(tmp_path / "det.ckpt", size=64)
    original = DetectorGraph.forward

    def shifted(self, image):
        boxes, scores, labels = original(self, image)
        return boxes + 3.0, scores, labels  # every box 3 px off: still paired, but the error shows

    monkeypatch.setattr(DetectorGraph, "forward", shifted)
    with pytest.raises(ExportCheckError, match="model .fp32.: onnxruntime disagrees with PyTorch"):
        export_model(ckpt, tmp_path / "onnx", min_score=0.0)
    assert not (tmp_path / "onnx" / "model.onnx").exists()


def test_detector_options_that_do_not_apply_are_refused(tmp_path, depth_ckpt) -> None:
    ckpt = save_tiny_detector(tmp_path / "det.ckpt", size=64)
    with pytest.raises(ConfigError, match="--dynamic: a detector exports for one"):
        export_model(ckpt, tmp_path / "a", dynamic=True)
    with pytest.raises(ConfigError, match="--size 70: a multiple of 32"):
        export_model(ckpt, tmp_path / "b", size=70)
    with pytest.raises(ConfigError, match="--min-score 0.5: a detector's lowest kept score"):
        export_model(depth_ckpt, tmp_path / "c", min_score=0.5)
    with pytest.raises(ConfigError, match="--min-score 2"):
        export_model(ckpt, tmp_path / "d", min_score=2.0)


def test_detections_pair_one_to_one_by_label_and_overlap() -> None:
    ref = [np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32), np.array([0.9, 0.8, 0.7]),
           np.array([1, 2, 3])]  # fmt: skip
    out = [ref[0][[1, 0, 2]], ref[1][[1, 0, 2]], ref[2][[1, 0, 2]]]  # the same, in another order
    assert sorted(_pair_detections(out, ref)) == [(0, 1), (1, 0), (2, 2)]
    relabelled = [
        out[0],
        out[1],
        np.array([2, 3, 1]),
    ]  # the two same boxes swap labels: still paired by label
    assert sorted(_pair_detections(relabelled, ref)) == [(0, 1), (1, 2), (2, 0)]
    other = [out[0], out[1], np.array([4, 4, 4])]
    assert _pair_detections(other, ref) == []
    assert _pair_detections([np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0, int)], ref) == []


def test_a_check_that_compared_no_detections_is_refused(tmp_path, monkeypatch) -> None:
    ckpt = save_tiny_detector(tmp_path / "det.ckpt", size=64)
    empty = {"max_abs_error": 0.0, "rel_error": 0.0, "detection_agreement": 1.0, "detections": 0.0}
    monkeypatch.setattr(exporter_module, "check_detector", lambda *a, **k: dict(empty))
    with pytest.raises(ExportCheckError, match="compared no detections"):
        export_model(ckpt, tmp_path / "onnx")
    assert not (tmp_path / "onnx" / "model.onnx").exists()
