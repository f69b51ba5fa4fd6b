"""SAM exported as two graphs: the image encoder, and segment-anything's decoder interface, against
``SamPredictor`` on the PyTorch model (points, box corners as labels 2/3, padding, mask prompts)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from anydistill.export import METADATA_KEY, export_model  # noqa: E402
from anydistill.loading import load_model  # noqa: E402
from anydistill.promptable.predictor import SamPredictor  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 90, 150  # the test image: landscape, shrunk into the 128 frame (resized 77 x 128, then padded)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, upstream_sam_pth):
    """The tiny official ``.pth`` exported (3 masks), its sessions, and a predictor with an image set."""
    out = tmp_path_factory.mktemp("exports") / "sam"
    result = export_model(upstream_sam_pth, out, decoder_masks="multimask")  # the 3 masks of SamPredictor
    sam = load_model(upstream_sam_pth).model
    predictor = SamPredictor(sam)
    image = np.random.default_rng(5).integers(0, 256, (H, W, 3), dtype=np.uint8)
    predictor.set_image(image)
    return {
        "result": result,
        "encoder": _session(out / "image_encoder.onnx"),
        "decoder": _session(out / "prompt_decoder.onnx"),
        "predictor": predictor,
        "image": image,
    }


def _feeds(predictor, coords, labels, mask=None):
    """Decoder inputs: ``coords (N, 2)`` in original-image pixels (mapped to the input frame here, as
    segment-anything's ONNX example does with ``transform.apply_coords``), ``labels (N,)``."""
    frame = predictor.transform.apply_coords(np.asarray(coords, np.float64), predictor.original_size)
    return {
        "image_embeddings": predictor.get_image_embedding().numpy(),
        "point_coords": frame[None].astype(np.float32),
        "point_labels": np.asarray(labels, np.float32)[None],
        "mask_input": np.zeros((1, 1, 32, 32), np.float32) if mask is None else mask[None].astype(np.float32),
        "has_mask_input": np.array([0.0 if mask is None else 1.0], np.float32),
        "orig_im_size": np.array([H, W], np.float32),
    }


def _close(onnx_out, torch_out):
    """ONNX ``(masks, iou, low_res)`` of one prompt set ``(1, M, ...)`` against ``SamPredictor.predict``'s."""
    masks, iou, low = (o[0] for o in onnx_out)
    ref_masks, ref_iou, ref_low = torch_out
    assert masks.shape == ref_masks.shape == (3, H, W)
    np.testing.assert_allclose(masks, ref_masks, atol=1e-4)
    np.testing.assert_allclose(iou, ref_iou, atol=1e-5)
    np.testing.assert_allclose(low, ref_low, atol=1e-4)
    inter = ((masks > 0) & (ref_masks > 0)).sum()
    assert inter / max(((masks > 0) | (ref_masks > 0)).sum(), 1) > 0.999
    assert 0.02 < (ref_masks > 0).mean() < 0.98  # masks that are neither empty nor everything


def test_the_graphs_interface_and_record(exported):
    result = exported["result"]
    manifest = result.manifest
    assert manifest["task"] == "promptable" and manifest["mask_threshold"] == 0.0
    assert manifest["graphs"] == {
        "image_encoder": "image_encoder.onnx",
        "prompt_decoder": "prompt_decoder.onnx",
    }
    assert manifest["input_size"] == [128, 128] and manifest["decoder_masks"] == "multimask"
    assert manifest["preprocess"]["size"] == 128 and manifest["preprocess"]["input_range"] == 255.0
    assert manifest["source"] == "sam_tiny_official.pth"
    assert manifest["dynamic_axes"]["prompt_decoder"] == {
        "point_coords": {"1": "num_points"}, "point_labels": {"1": "num_points"}
    }  # fmt: skip
    assert set(manifest["check"]) == {"image_encoder", "prompt_decoder"}
    assert manifest["check"]["prompt_decoder"]["mask_iou"] >= 0.99
    for name in ("image_encoder.onnx", "prompt_decoder.onnx"):
        props = {p.key: p.value for p in onnx.load(str(result.out / name)).metadata_props}
        assert json.loads(props[METADATA_KEY]) == {k: v for k, v in manifest.items() if k != "check"}

    enc, dec = exported["encoder"], exported["decoder"]
    assert [(i.name, i.shape) for i in enc.get_inputs()] == [("image", [1, 3, 128, 128])]
    assert [(o.name, o.shape) for o in enc.get_outputs()] == [("image_embeddings", [1, 32, 8, 8])]
    assert [(i.name, i.shape, i.type) for i in dec.get_inputs()] == [
        ("image_embeddings", [1, 32, 8, 8], "tensor(float)"),
        ("point_coords", [1, "num_points", 2], "tensor(float)"),
        ("point_labels", [1, "num_points"], "tensor(float)"),
        ("mask_input", [1, 1, 32, 32], "tensor(float)"),
        ("has_mask_input", [1], "tensor(float)"),
        ("orig_im_size", [2], "tensor(float)"),
    ]
    assert [o.name for o in dec.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]


def test_the_encoder_graph_gives_the_predictors_embedding(exported):
    predictor, sam = exported["predictor"], exported["predictor"].model
    resized = predictor.transform.apply_image(exported["image"])
    x = sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None]).numpy()  # (1, 3, 128, 128)
    (embedding,) = exported["encoder"].run(None, {"image": x})
    np.testing.assert_allclose(embedding, predictor.get_image_embedding().numpy(), atol=1e-4)


def test_clicks_with_a_padding_point(exported):
    predictor, dec = exported["predictor"], exported["decoder"]
    points = np.array([[60.0, 40.0], [100.0, 70.0]])
    got = dec.run(None, _feeds(predictor, [*points, [0, 0]], [1, 0, -1]))
    _close(got, predictor.predict(points, np.array([1, 0]), return_logits=True))


def test_a_box_is_two_corner_points_labelled_2_and_3(exported):
    predictor, dec = exported["predictor"], exported["decoder"]
    box = np.array([20.0, 15.0, 110.0, 80.0])
    _close(
        dec.run(None, _feeds(predictor, box.reshape(2, 2), [2, 3])),
        predictor.predict(box=box, return_logits=True),
    )
    click = np.array([[70.0, 50.0]])
    got = dec.run(None, _feeds(predictor, [*click, *box.reshape(2, 2)], [1, 2, 3]))
    _close(got, predictor.predict(click, np.array([1]), box, return_logits=True))


def test_padding_points_are_ignored_wherever_they_are(exported):
    predictor, dec = exported["predictor"], exported["decoder"]
    a = dec.run(None, _feeds(predictor, [[60.0, 40.0], [0.0, 0.0]], [1, -1]))
    b = dec.run(None, _feeds(predictor, [[60.0, 40.0], [140.0, 85.0]], [1, -1]))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_mask_prompt_is_used_only_with_has_mask_input(exported):
    predictor, dec = exported["predictor"], exported["decoder"]
    click = np.array([[60.0, 40.0]])
    first = predictor.predict(click, np.array([1]), return_logits=True)
    mask = first[2][int(np.argmax(first[1]))][None]  # (1, 32, 32): the best low-res mask, as SAM's refinement
    with_mask = dec.run(None, _feeds(predictor, [*click, [0, 0]], [1, -1], mask))
    _close(with_mask, predictor.predict(click, np.array([1]), mask_input=mask, return_logits=True))
    ignored = _feeds(predictor, [*click, [0, 0]], [1, -1], mask)
    ignored["has_mask_input"] = np.array([0.0], np.float32)
    without = dec.run(None, _feeds(predictor, [*click, [0, 0]], [1, -1]))
    for x, y in zip(dec.run(None, ignored), without, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)
    assert not np.allclose(with_mask[0], without[0], atol=1e-3)


def test_an_anydistill_promptable_checkpoint_exports_too(tmp_path, sam_student_ckpt):
    """The record path (``sam_tiny`` rebuilt by name at 64²), and the decoder's single-mask output."""
    result = export_model(sam_student_ckpt, tmp_path / "s", decoder_masks="single")
    assert (result.manifest["source"], result.manifest["input_size"]) == ("sam.ckpt", [64, 64])
    predictor = SamPredictor(load_model(sam_student_ckpt).model)
    image = np.random.default_rng(0).integers(0, 256, (40, 64, 3), dtype=np.uint8)
    predictor.set_image(image)
    dec = _session(tmp_path / "s" / "prompt_decoder.onnx")
    feeds = {
        "image_embeddings": predictor.get_image_embedding().numpy(),
        "point_coords": np.array([[[30.0, 20.0], [0.0, 0.0]]], np.float32),  # 64-wide image: frame = image px
        "point_labels": np.array([[1.0, -1.0]], np.float32),
        "mask_input": np.zeros((1, 1, 16, 16), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array([40.0, 64.0], np.float32),
    }
    masks, iou, low = dec.run(None, feeds)
    ref = predictor.predict(
        np.array([[30.0, 20.0]]), np.array([1]), multimask_output=False, return_logits=True
    )
    assert masks.shape == (1, 1, 40, 64) and iou.shape == (1, 1) and low.shape == (1, 1, 16, 16)
    np.testing.assert_allclose(masks[0], ref[0], atol=1e-4)
    np.testing.assert_allclose(iou[0], ref[1], atol=1e-5)
