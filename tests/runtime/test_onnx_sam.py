"""An exported SAM on onnxruntime (torch-free predictor) against the PyTorch SamPredictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_students import save_tiny_sam

pytest.importorskip("onnxruntime")

from anydistill.errors import DataError  # noqa: E402
from anydistill.export.exporter import export_model  # noqa: E402
from anydistill.loading import load_model  # noqa: E402
from anydistill.promptable.predictor import SamPredictor  # noqa: E402
from anydistill.runtime.dense import OnnxPredictor  # noqa: E402
from anydistill.runtime.sam import OnnxSamPredictor  # noqa: E402


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def sam_pair(tmp_path_factory) -> tuple[SamPredictor, OnnxSamPredictor, Path]:
    root = tmp_path_factory.mktemp("sam")
    pth = save_tiny_sam(root / "tiny_sam.pth", size=64)
    result = export_model(pth, root / "export")
    assert result.manifest["decoder_masks"] == "all"  # the default: segment-anything's 4 masks
    return SamPredictor(load_model(pth).model), OnnxSamPredictor(root / "export"), root / "export"


PROMPTS = [
    {"point_coords": np.array([[20.0, 14.0]]), "point_labels": np.array([1])},
    {"point_coords": np.array([[20.0, 14.0], [60.0, 30.0]]), "point_labels": np.array([1, 0])},
    {"box": np.array([5.0, 4.0, 50.0, 35.0])},
    {
        "point_coords": np.array([[30.0, 20.0]]),
        "point_labels": np.array([1]),
        "box": np.array([5.0, 4.0, 50.0, 35.0]),
    },
]


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("multimask", [True, False])
def test_onnx_masks_match_the_pytorch_predictor(sam_pair, prompt, multimask):
    torch_predictor, onnx_predictor, _ = sam_pair
    image = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    torch_predictor.set_image(image)
    onnx_predictor.set_image(image)
    expected, expected_iou, expected_low = torch_predictor.predict(**prompt, multimask_output=multimask)
    masks, iou, low = onnx_predictor.predict(**prompt, multimask_output=multimask)
    assert masks.shape == expected.shape == ((3 if multimask else 1), 40, 70)
    assert masks.dtype == bool
    np.testing.assert_allclose(iou, expected_iou, atol=1e-3)
    np.testing.assert_allclose(low, expected_low, atol=1e-3 * max(1.0, float(np.abs(expected_low).max())))
    for ours, theirs in zip(masks, expected, strict=True):
        assert _iou(ours, theirs) >= 0.99


def test_a_previous_mask_as_input(sam_pair):
    torch_predictor, onnx_predictor, _ = sam_pair
    image = np.random.default_rng(1).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    torch_predictor.set_image(image)
    onnx_predictor.set_image(image)
    prompt = {"point_coords": np.array([[20.0, 30.0]]), "point_labels": np.array([1])}
    _, _, low = torch_predictor.predict(**prompt, multimask_output=False)
    expected, _, _ = torch_predictor.predict(**prompt, mask_input=low, multimask_output=False)
    masks, _, _ = onnx_predictor.predict(**prompt, mask_input=low, multimask_output=False)
    assert _iou(masks[0], expected[0]) >= 0.99


def test_predict_before_set_image_and_wrong_tasks(sam_pair, tmp_path):
    _, _, folder = sam_pair
    fresh = OnnxSamPredictor(folder)
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(np.array([[1.0, 1.0]]), np.array([1]))
    with pytest.raises(DataError, match="promptable"):
        OnnxPredictor(folder)


_PROBE = """
import sys
from anydistill.cli import main
rc = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision", "timm", "lightning", "kornia"})
print("HEAVY", ",".join(heavy))
sys.exit(rc)
"""


def test_segment_runtime_onnx_never_imports_torch(sam_pair, tmp_path):
    import json
    import subprocess
    import sys

    from PIL import Image

    torch_predictor, _, folder = sam_pair
    image = np.random.default_rng(2).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "im.png")
    args = ["segment", "--checkpoint", str(folder), "--image", str(tmp_path / "im.png"), "--point", "20,14",
            "--point", "60,30,0", "--out", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY \n" in proc.stdout, proc.stdout
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    torch_predictor.set_image(image)
    expected, iou, _ = torch_predictor.predict(np.array([[20.0, 14.0], [60.0, 30.0]]), np.array([1, 0]),
                                               multimask_output=False)  # fmt: skip
    assert result["iou"] == pytest.approx([float(iou[0])], abs=1e-3)
    mask = np.asarray(Image.open(tmp_path / "out" / "mask.png")) > 0
    assert _iou(mask, expected[0]) >= 0.99
    bad = subprocess.run([sys.executable, "-c", _PROBE, *args[:-2], "--point", "500,5", "--out",
                          str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "outside the image" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(("mode", "works", "refused"), [("single", False, True), ("multimask", True, False)])
def test_a_partial_decoder_graph_gives_its_mode_and_refuses_the_other(
    sam_pair, tmp_path, mode, works, refused
):
    torch_predictor, _, _ = sam_pair
    pth = save_tiny_sam(tmp_path / "tiny_sam.pth", size=64)
    export_model(pth, tmp_path / mode, decoder_masks=mode)
    predictor = OnnxSamPredictor(tmp_path / mode)
    image = np.random.default_rng(3).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    predictor.set_image(image)
    torch_predictor.set_image(image)
    prompt = {"point_coords": np.array([[20.0, 14.0]]), "point_labels": np.array([1])}
    masks, iou, _ = predictor.predict(**prompt, multimask_output=works)
    expected, expected_iou, _ = torch_predictor.predict(**prompt, multimask_output=works)
    assert masks.shape == expected.shape
    np.testing.assert_allclose(iou, expected_iou, atol=1e-3)
    with pytest.raises(ValueError, match=f"--decoder-masks {mode}"):
        predictor.predict(**prompt, multimask_output=refused)
