"""Our exported prompt decoder against segment-anything's own exported decoder, same weights.

segment-anything's decoder is exported as its ``scripts/export_onnx_model.py`` does
(``SamOnnxModel`` + ``torch.onnx.export``, points dynamic), from the real ``segment_anything`` classes;
ours comes from those weights loaded with ``load_model`` from the ``.pth``. Both graphs run in
onnxruntime on the same embedding and prompts.

One known difference: upstream's graph freezes its crop to the un-padded image at the export example's
``orig_im_size`` (the tracer turns its ``int(tensor)`` into a constant), so it is exported here with the
test image's size; at another size its masks are wrong and ours are not (the last test).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("segment_anything")

from segment_anything.utils.onnx import SamOnnxModel  # noqa: E402

from anydistill.export import export_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 96, 170
NAMES = ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"]


def _upstream_decoder(sam, path, return_single_mask: bool):
    """segment-anything's export script, its dummy inputs with our image's size."""
    model = SamOnnxModel(sam, return_single_mask=return_single_mask)
    c, (h, w) = sam.prompt_encoder.embed_dim, sam.prompt_encoder.image_embedding_size
    dummy = (
        torch.randn(1, c, h, w), torch.randint(0, 128, (1, 5, 2)).float(), torch.randint(0, 4, (1, 5)).float(),
        torch.randn(1, 1, 4 * h, 4 * w), torch.tensor([1.0]), torch.tensor([float(H), float(W)]),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, dummy, str(path), input_names=NAMES, output_names=["masks", "iou_predictions", "low_res_masks"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
            opset_version=17, do_constant_folding=True, dynamo=False,
        )  # fmt: skip
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def decoders(tmp_path_factory, upstream_sam, upstream_sam_pth):
    tmp = tmp_path_factory.mktemp("parity")
    sessions = {}
    for mode in ("all", "best"):
        export_model(upstream_sam_pth, tmp / mode, decoder_masks=mode)
        sessions[f"ours_{mode}"] = ort.InferenceSession(
            str(tmp / mode / "prompt_decoder.onnx"), providers=["CPUExecutionProvider"]
        )
        sessions[f"upstream_{mode}"] = _upstream_decoder(
            upstream_sam, tmp / f"up_{mode}.onnx", mode == "best"
        )
    image = np.random.default_rng(7).integers(0, 256, (H, W, 3), dtype=np.uint8)
    from segment_anything import SamPredictor as UpstreamPredictor

    predictor = UpstreamPredictor(upstream_sam)
    predictor.set_image(image)
    return sessions, predictor


def _prompts(predictor):
    """(coords in the input frame, labels): a click + padding, two clicks + padding, a box, click + box."""
    frame = predictor.transform.apply_coords
    box = np.array([[25.0, 20.0], [140.0, 80.0]])
    sets = [
        (np.array([[80.0, 40.0], [0, 0]]), [1, -1]),
        (np.array([[50.0, 30.0], [120.0, 70.0], [0, 0]]), [1, 0, -1]),
        (box, [2, 3]),
        (np.concatenate([[[90.0, 55.0]], box]), [1, 2, 3]),
    ]
    return [(frame(c, (H, W)).astype(np.float32)[None], np.array([labels], np.float32)) for c, labels in sets]


def _feeds(predictor, coords, labels, size=(H, W)):
    return {
        "image_embeddings": predictor.get_image_embedding().numpy(),
        "point_coords": coords,
        "point_labels": labels,
        "mask_input": np.zeros((1, 1, 32, 32), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(size, np.float32),
    }


def _iou(a, b):
    a, b = a > 0, b > 0
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("mode", ["all", "best"])
def test_our_decoder_graph_gives_segment_anythings_masks(decoders, mode):
    sessions, predictor = decoders
    for coords, labels in _prompts(predictor):
        feeds = _feeds(predictor, coords, labels)
        ours = sessions[f"ours_{mode}"].run(None, feeds)
        theirs = sessions[f"upstream_{mode}"].run(None, feeds)
        assert ours[0].shape == theirs[0].shape == (1, 4 if mode == "all" else 1, H, W)
        assert _iou(ours[0], theirs[0]) >= 0.99
        assert 0.02 < (theirs[0] > 0).mean() < 0.98
        np.testing.assert_allclose(ours[1], theirs[1], atol=1e-5)  # iou_predictions
        np.testing.assert_allclose(ours[2], theirs[2], atol=1e-4)  # low_res_masks


def test_at_another_image_size_upstreams_frozen_crop_is_wrong_and_ours_is_not(decoders, upstream_sam):
    sessions, predictor = decoders
    size = (W, H)  # portrait: the crop upstream's graph froze (landscape) is wrong here
    coords, labels = _prompts(predictor)[0]
    feeds = _feeds(predictor, coords, labels, size)
    with torch.no_grad():
        reference = SamOnnxModel(upstream_sam, return_single_mask=False)(
            **{k: torch.from_numpy(v) for k, v in feeds.items()}
        )
    expected = reference[0].numpy()  # upstream's module itself, evaluated eagerly: the right answer
    assert _iou(sessions["ours_all"].run(None, feeds)[0], expected) >= 0.99
    assert _iou(sessions["upstream_all"].run(None, feeds)[0], expected) < 0.9
