"""Depth and semantic students exported to one ONNX graph: onnxruntime against the PyTorch model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from anydistill.export import EXPORT_JSON, METADATA_KEY, ExportCheckError, export_model, read_manifest  # noqa: E402
from anydistill.export import exporter as exporter_module  # noqa: E402
from anydistill.inference import Predictor, load_student  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _input(student, size, images):
    """The normalised padded batch ``Predictor.run`` hands the model, made here from its public steps."""
    predictor = Predictor(student, image_size=size)
    batch = torch.stack([predictor.prepare(image)["image"] for image in images])  # (B, 3, S, S) in [0, 1]
    return predictor.preprocess.normalize(batch)


def _images(count, height=45, width=70, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture(scope="module")
def depth_export(tmp_path_factory, depth_ckpt):
    out = tmp_path_factory.mktemp("exports") / "depth"
    return export_model(depth_ckpt, out)


def test_a_depth_graph_matches_pytorch_and_carries_its_record(depth_export, depth_ckpt):
    out = depth_export.out
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_JSON, "model.onnx"]
    manifest = json.loads((out / EXPORT_JSON).read_text())
    student = load_student(depth_ckpt)
    assert (
        manifest["format"] == "anydistill-onnx" and manifest["version"] == 1 and manifest["task"] == "depth"
    )
    assert manifest["graphs"] == {"model": "model.onnx"} and manifest["classes"] == {}
    assert manifest["preprocess"] == student.preprocess.to_dict()
    assert (manifest["opset"], manifest["dynamic"], manifest["input_size"]) == (17, False, [64, 64])
    assert (manifest["precision"], manifest["source"]) == ("fp32", "depth.ckpt")
    assert manifest["check"]["model"]["max_abs_error"] < 1e-4
    assert read_manifest(out) == manifest

    model = onnx.load(str(out / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props[METADATA_KEY]) == {k: v for k, v in manifest.items() if k != "check"}
    assert model.opset_import[0].version == 17

    session = _session(out / "model.onnx")
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.shape, inp.type) == ("image", [1, 3, 64, 64], "tensor(float)")
    assert (outp.name, outp.shape) == ("prediction", [1, 1, 64, 64])
    x = _input(student, 64, _images(1))
    with torch.no_grad():
        expected = student.model(x).numpy()
    (got,) = session.run(None, {"image": x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_dynamic_semantic_graph_takes_other_batches_and_sizes(tmp_path, semantic_ckpt):
    result = export_model(semantic_ckpt, tmp_path / "seg", dynamic=True)
    manifest = result.manifest
    student = load_student(semantic_ckpt)
    assert manifest["classes"] == student.classes.to_dict() and manifest["classes"]["names"]
    assert manifest["dynamic"] is True
    assert manifest["dynamic_axes"] == {"model": {"image": {"0": "batch", "2": "height", "3": "width"}}}
    assert manifest["check"]["model"]["argmax_agreement"] >= 0.99
    session = _session(tmp_path / "seg" / "model.onnx")
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    x = torch.randn(3, 3, 96, 64, generator=torch.Generator().manual_seed(1))  # another batch, H != W
    with torch.no_grad():
        expected = student.model(x).numpy()
    (got,) = session.run(None, {"image": x.numpy()})
    assert got.shape == (3, student.classes.num_classes, 96, 64)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.999


def test_a_frozen_input_size_falls_back_to_a_free_batch_only(tmp_path, depth_ckpt, monkeypatch):
    """When the check at a second size fails (a trace that froze H/W), only the batch stays free."""
    real = exporter_module.check_dense

    def frozen(session, student, size, batch=1, seed=0):
        if size != 64:
            raise ExportCheckError("model (fp32): disagrees at another size")
        return real(session, student, size, batch, seed)

    monkeypatch.setattr(exporter_module, "check_dense", frozen)
    result = export_model(depth_ckpt, tmp_path / "d", dynamic=True)
    assert result.manifest["dynamic_axes"] == {"model": {"image": {"0": "batch"}}}
    assert _session(tmp_path / "d" / "model.onnx").get_inputs()[0].shape == ["batch", 3, 64, 64]


@pytest.mark.parametrize(
    ("precision", "opset", "size", "atol"),
    [("fp16", 17, 64, 5e-3), ("int8", 17, 64, 5e-2), ("fp32", 14, 96, 1e-5)],
)
def test_other_precisions_opsets_and_sizes(tmp_path, depth_ckpt, depth_export, precision, opset, size, atol):
    result = export_model(depth_ckpt, tmp_path / "d", precision=precision, opset=opset, size=size)
    path = tmp_path / "d" / "model.onnx"
    manifest = result.manifest
    assert (manifest["precision"], manifest["opset"], manifest["input_size"]) == (
        precision,
        opset,
        [size, size],
    )
    assert manifest["preprocess"]["size"] == size
    assert onnx.load(str(path)).opset_import[0].version == opset
    if precision != "fp32":
        assert path.stat().st_size < 0.6 * (depth_export.out / "model.onnx").stat().st_size
    session = _session(path)
    assert session.get_inputs()[0].shape == [1, 3, size, size]
    assert (
        session.get_inputs()[0].type == "tensor(float)" and session.get_outputs()[0].type == "tensor(float)"
    )
    student = load_student(depth_ckpt)
    x = _input(student, size, _images(1, seed=2))
    with torch.no_grad():
        expected = student.model(x).numpy()
    (got,) = session.run(None, {"image": x.numpy()})
    assert np.abs(got - expected).max() <= atol * max(np.abs(expected).max(), 1.0)
