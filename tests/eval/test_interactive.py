"""Interactive evaluation: NoC / mIoU@n with an oracle model whose answers are known, and a tiny SAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sam_upstream import tiny_patch8_sam
from torch import Tensor, nn

from anydistill.data.instances import InstanceDataset, InstanceRecord
from anydistill.eval.interactive import (
    InteractiveMetrics,
    InteractiveResult,
    evaluate_batch,
    evaluate_image,
    evaluate_interactive,
    interactive_clicks,
    number_of_clicks,
    summarize_interactive,
)
from anydistill.promptable.batched import decode_prompts, decodes_batched, embed_images

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- a fake "oracle" Sam


class _Encoder(nn.Module):
    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return torch.zeros((x.shape[0], 1, 1, 1))


class _PromptEncoder(nn.Module):
    """Passes the number of real clicks of each prompt to the decoder; records what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Tensor, Tensor, Tensor | None]] = []

    def get_dense_pe(self) -> Tensor:
        return torch.zeros((1, 1, 1, 1))

    def forward(self, points, boxes, masks):
        coords, labels = points
        self.calls.append((coords.clone(), labels.clone(), masks))
        clicks = (labels >= 0).sum(dim=1).float()  # (N,)
        return clicks[:, None, None], torch.zeros((coords.shape[0], 1, 1, 1))


class _OracleDecoder(nn.Module):
    """Object i is answered exactly once it has ``needed[i]`` clicks, by an empty mask before.

    Multimask output: [current answer (predicted IoU 0.9), the ground truth (0.1), empty (0.5)], so the
    kept mask is the current answer and the oracle mask is always exact.
    """

    def __init__(self, gt_input: Tensor, needed: list[int]) -> None:
        super().__init__()
        self.gt_logits = torch.where(gt_input, 10.0, -10.0)  # (N, S, S) input frame
        self.needed = torch.tensor(needed)

    def forward(
        self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output
    ):
        clicks = sparse_prompt_embeddings[:, 0, 0]  # (N,)
        exact = clicks >= self.needed
        empty = torch.full_like(self.gt_logits, -10.0)
        answer = torch.where(exact[:, None, None], self.gt_logits, empty)  # (N, S, S)
        if not multimask_output:
            return answer[:, None], torch.full((len(clicks), 1), 0.5)
        masks = torch.stack([answer, self.gt_logits, empty], dim=1)  # (N, 3, S, S)
        return masks, torch.tensor([0.9, 0.1, 0.5]).expand(len(clicks), 3)


class _OracleSam(nn.Module):
    mask_threshold = 0.0

    def __init__(self, gt_input: Tensor, needed: list[int], img_size: int) -> None:
        super().__init__()
        self.image_encoder = _Encoder(img_size)
        self.prompt_encoder = _PromptEncoder()
        self.mask_decoder = _OracleDecoder(gt_input, needed)

    def preprocess(self, x: Tensor) -> Tensor:
        s = self.image_encoder.img_size
        return F.pad(x, (0, s - x.shape[-1], 0, s - x.shape[-2]))

    def postprocess_masks(self, masks: Tensor, input_size, original_size) -> Tensor:
        # The same steps as segment_anything's Sam.postprocess_masks (decoder output = input size here).
        s = self.image_encoder.img_size
        masks = F.interpolate(masks, (s, s), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)


def _squares(n: int, size: int, side: int = 6) -> Tensor:
    gt = torch.zeros((n, size, size), dtype=torch.bool)
    for i in range(n):
        y, x = 2 + 4 * i, 3 + 5 * i
        gt[i, y : y + side, x : x + side] = True
    return gt


@pytest.mark.parametrize("use_prev_mask", [True, False])
def test_oracle_model_gives_exact_noc_and_miou(use_prev_mask: bool) -> None:
    gt = _squares(4, 32)
    needed = [1, 3, 5, 9]  # the last object is never exact within 6 clicks
    model = _OracleSam(gt, needed, img_size=32)
    result = evaluate_image(
        model, torch.zeros((3, 32, 32)), (32, 32), gt, max_clicks=6, use_prev_mask=use_prev_mask
    )
    expected = torch.tensor([[float(t + 1 >= k) for t in range(6)] for k in needed])
    assert torch.equal(result.ious, expected)
    assert result.oracle_iou.tolist() == [1.0] * 4
    assert number_of_clicks(result.ious, 0.85).tolist() == [1.0, 3.0, 5.0, 6.0]
    summary = summarize_interactive(result.ious, result.oracle_iou)
    assert summary["noc@85"] == summary["noc@90"] == pytest.approx((1 + 3 + 5 + 6) / 4)
    assert summary["nof@90"] == 1.0
    assert [summary[f"miou@{n}"] for n in range(1, 7)] == pytest.approx([0.25, 0.25, 0.5, 0.5, 0.75, 0.75])
    assert summary["oracle_miou@1"] == 1.0
    assert model.image_encoder.calls == 1
    calls = model.prompt_encoder.calls
    assert len(calls) == 6 and calls[0][2] is None
    assert all((c[2] is not None) == use_prev_mask for c in calls[1:])
    if use_prev_mask:
        assert calls[1][2].shape == (4, 1, 32, 32)
    # Objects already exact get padding clicks: object 0 has exactly one real click.
    assert (result.labels[0, 1:] == -1).all() and (result.labels[3] >= 0).all()


def test_first_click_is_the_deepest_point_and_clicks_are_scaled_to_the_input_frame() -> None:
    gt_small = _squares(2, 16, side=5)  # ground truth in the original frame (16 x 16)
    gt_input = torch.zeros((2, 32, 32), dtype=torch.bool)  # 2x resized into the input frame (32 x 32)
    gt_input[:, :32, :32] = gt_small.repeat_interleave(2, 1).repeat_interleave(2, 2)
    model = _OracleSam(gt_input, [2, 2], img_size=32)
    result = evaluate_image(model, torch.zeros((3, 32, 32)), (32, 32), gt_small, max_clicks=3)
    # By hand: the squares are rows 2..6 x columns 3..7 and rows 6..10 x columns 8..12; click 1 is each
    # centre, the one pixel 3 from the square's edge. The oracle still answers an empty mask, so click 2
    # is the deepest pixel left: the 3x3 ring around the centre is 2 deep, its top-left corner first in
    # raster order. Then the oracle is exact: no third click (padding).
    assert result.coords[:, :2].tolist() == [[[5.0, 4.0], [4.0, 3.0]], [[10.0, 8.0], [9.0, 7.0]]]
    assert result.labels.tolist() == [[1, 1, -1], [1, 1, -1]]
    coords_seen, labels_seen, _ = model.prompt_encoder.calls[0]
    assert coords_seen.tolist() == [[[10.0, 8.0]], [[20.0, 16.0]]]  # apply_coords: x * w_input / w_original
    assert labels_seen.tolist() == [[1], [1]]
    assert result.ious[:, 0].eq(0.0).all() and result.ious[:, 1:].eq(1.0).all()  # in the 16 x 16 frame


def test_clicks_are_scaled_to_a_non_square_input_frame() -> None:
    """A 12 x 20 ground truth for an input of 24 x 30 (y scaled by 2, x by 1.5): the click (x, y) reaches
    the prompt encoder as (1.5 x, 2 y), each axis by its own factor."""
    gt = torch.zeros((1, 12, 20), dtype=torch.bool)
    gt[0, 3:10, 10:17] = True  # 7x7: centre (13, 6)
    model = _OracleSam(torch.zeros((1, 32, 32), dtype=torch.bool), [9], img_size=32)
    result = evaluate_image(model, torch.zeros((3, 32, 32)), (24, 30), gt, max_clicks=1)
    assert result.coords[0, 0].tolist() == [13.0, 6.0] and result.labels[0, 0].item() == 1
    assert model.prompt_encoder.calls[0][0].tolist() == [[[19.5, 12.0]]]


def test_number_of_clicks_and_summary_on_hand_made_curves() -> None:
    ious = torch.tensor([[0.5, 0.86, 0.95], [0.9, 0.8, 0.95], [0.1, 0.2, 0.3]])
    assert number_of_clicks(ious, 0.85).tolist() == [2.0, 1.0, 3.0]
    assert number_of_clicks(ious, 0.90).tolist() == [3.0, 1.0, 3.0]
    s = summarize_interactive(ious, torch.tensor([0.6, 0.9, 0.2]))
    assert s["miou@1"] == pytest.approx(0.5) and s["miou@3"] == pytest.approx(2.2 / 3)
    assert s["noc@85"] == pytest.approx(2.0) and s["noc@90"] == pytest.approx(7 / 3)
    assert s["nof@85"] == 1.0 and s["nof@90"] == 1.0 and s["oracle_miou@1"] == pytest.approx(1.7 / 3)
    metric = InteractiveMetrics()
    metric.update(
        InteractiveResult(ious[:2], torch.tensor([0.6, 0.9]), torch.zeros(2, 3, 2), torch.ones(2, 3))
    )
    metric.update(InteractiveResult(ious[2:], torch.tensor([0.2]), torch.zeros(1, 3, 2), torch.ones(1, 3)))
    assert metric.compute() == pytest.approx(s)


# --------------------------------------------------------------------------- a tiny random SAM


def _tiny_sam(img_size: int = 64, dim: int = 32, patch: int = 8, ours: bool = False) -> nn.Module:
    """segment_anything's Sam (random, tiny); ``ours``: with our MaskDecoder, the same weights."""
    pytest.importorskip("segment_anything")
    return tiny_patch8_sam(img_size, dim, patch, ours).eval()


def _numpy_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def test_tiny_sam_first_click_iou_matches_numpy_and_encoder_runs_once() -> None:
    model = _tiny_sam()
    image = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
    gt = _squares(3, 48, side=10)  # input size (48, 64): the image is padded at the bottom
    gt = torch.cat([gt, torch.zeros((3, 48, 16), dtype=torch.bool)], dim=2)  # (3, 48, 64)
    calls = {"enc": 0, "dec": 0}
    model.image_encoder.register_forward_hook(lambda *a: calls.__setitem__("enc", calls["enc"] + 1))
    model.mask_decoder.register_forward_hook(lambda *a: calls.__setitem__("dec", calls["dec"] + 1))
    result = evaluate_image(model, image, (48, 64), gt, max_clicks=3, chunk=2)
    assert result.ious.shape == (3, 3) and result.oracle_iou.shape == (3,)
    assert ((result.ious >= 0) & (result.ious <= 1)).all()
    assert (result.oracle_iou >= result.ious[:, 0] - 1e-6).all()
    assert calls == {"enc": 1, "dec": 3 * 2}  # one embedding; k decoder calls per chunk of objects
    # Click 1 again by hand: highest predicted IoU among three masks, IoU in numpy.
    # Click 1 by hand: square i is rows 2+4i..11+4i x columns 3+5i..12+5i; its four central pixels are
    # 5 from the edge, and raster order picks the top-left one, (7 + 5i, 6 + 4i).
    first = torch.tensor([[[7.0, 6.0]], [[12.0, 10.0]], [[17.0, 14.0]]])
    labels = torch.ones((3, 1), dtype=torch.int64)
    assert torch.equal(result.coords[:, :1], first) and torch.equal(result.labels[:, :1], labels)
    with torch.no_grad():
        emb = embed_images(model, image[None], torch.tensor([[48, 64]]))
        low, iou_pred = decode_prompts(
            model, emb, model.prompt_encoder.get_dense_pe(), (first, labels), None, None, True
        )
        masks = model.postprocess_masks(low, (48, 64), (48, 64)) > 0
    for i in range(3):
        pick = int(iou_pred[i].argmax())
        assert result.ious[i, 0].item() == pytest.approx(_numpy_iou(masks[i, pick].numpy(), gt[i].numpy()))
        assert result.oracle_iou[i].item() == pytest.approx(
            max(_numpy_iou(masks[i, m].numpy(), gt[i].numpy()) for m in range(3))
        )


def _three_images() -> tuple[Tensor, Tensor, list[Tensor]]:
    """Images (3, 3, 64, 64) of input sizes 48x64, 64x40, 64x64 with 2, 0 and 3 objects (resized frame)."""
    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8, generator=g)
    sizes = torch.tensor([[48, 64], [64, 40], [64, 64]])
    gts = []
    for (h, w), n in zip(sizes.tolist(), (2, 0, 3), strict=True):
        gt = torch.zeros((n, h, w), dtype=torch.bool)
        for i in range(n):
            y, x = (
                int(torch.randint(0, h - 12, (1,), generator=g)),
                int(torch.randint(0, w - 12, (1,), generator=g)),
            )
            gt[i, y : y + 8 + 2 * i, x : x + 12] = True
        gts.append(gt)
    gts[2][2, 40:, 50:] = True  # touches the image border
    return images, sizes, gts


@pytest.mark.parametrize("ours", [False, True])
def test_evaluate_batch_equals_evaluate_image_per_image(ours: bool) -> None:
    """Objects of several images decoded together (chunks across images, per-object embeddings with
    our decoder, one call per image with segment_anything's) give each image's own results."""
    model = _tiny_sam(ours=ours)
    assert decodes_batched(model) == ours
    images, sizes, gts = _three_images()
    calls = {"enc": 0, "dec": []}
    model.image_encoder.register_forward_hook(lambda m, i, o: calls.__setitem__("enc", calls["enc"] + 1))
    model.mask_decoder.register_forward_hook(lambda m, i, o: calls["dec"].append(o[0].shape[0]))
    batched = evaluate_batch(model, images, sizes, gts, max_clicks=4, chunk=3)
    assert calls["enc"] == 1
    # chunks: objects 0, 1, 2 (images 0, 0, 2) then 3, 4 (image 2); 4 clicks each
    assert calls["dec"] == ([3] * 4 + [2] * 4 if ours else [2, 1] * 4 + [2] * 4)
    ref = [evaluate_image(model, images[b], tuple(sizes[b].tolist()), gts[b], max_clicks=4) for b in (0, 2)]
    assert batched.ious.shape == (5, 4) and batched.coords.shape == (5, 4, 2)
    torch.testing.assert_close(batched.ious, torch.cat([r.ious for r in ref]), rtol=0, atol=1e-6)
    torch.testing.assert_close(batched.oracle_iou, torch.cat([r.oracle_iou for r in ref]), rtol=0, atol=1e-6)
    assert torch.equal(batched.coords, torch.cat([r.coords for r in ref]))
    assert torch.equal(batched.labels, torch.cat([r.labels for r in ref]))
    assert (batched.coords[:3, :, 1] < 48).all()  # image 0's clicks stay off its padding
    with pytest.raises(ValueError, match="input size"):
        evaluate_batch(model, images, sizes, [gts[0], gts[1], gts[2][:, :60]], max_clicks=2)
    with pytest.raises(ValueError, match="one ground truth"):
        evaluate_batch(model, images, sizes, gts[:2], max_clicks=2)


def test_evaluate_interactive_over_a_dataset() -> None:
    model = _tiny_sam()
    records = []
    for k in range(2):
        id_map = np.zeros((40, 40), dtype=np.int32)
        id_map[5 : 15 + k, 5:20] = 1
        id_map[25:35, 10 + k : 30] = 2
        image = np.where(id_map[..., None] > 0, 220, 30).astype(np.uint8).repeat(3, axis=2)
        records.append(InstanceRecord.from_id_map(image, id_map, f"img{k}"))
    dataset = InstanceDataset(records, size=64, min_area=10, sampling="fixed")
    summary = evaluate_interactive(model, dataset, max_clicks=3)
    assert summary["num_objects"] == 4.0
    assert set(summary) >= {"miou@1", "miou@2", "miou@3", "noc@85", "noc@90", "oracle_miou@1"}
    assert 1.0 <= summary["noc@90"] <= 3.0 and summary["oracle_miou@1"] >= summary["miou@1"] - 1e-6
    one_by_one = evaluate_interactive(_tiny_sam(ours=True), dataset, max_clicks=3, batch_size=1)
    assert one_by_one == pytest.approx(summary, abs=1e-6)


def test_interactive_clicks_without_objects_and_bad_clicks() -> None:
    model = _OracleSam(torch.zeros((0, 8, 8), dtype=torch.bool), [], img_size=8)
    out = interactive_clicks(
        model, torch.zeros((1, 1, 1, 1)), (8, 8), torch.zeros((0, 8, 8), dtype=torch.bool), 4
    )
    assert out.ious.shape == (0, 4)
    with pytest.raises(ValueError, match="max_clicks"):
        interactive_clicks(
            model, torch.zeros((1, 1, 1, 1)), (8, 8), torch.zeros((1, 8, 8), dtype=torch.bool), 0
        )


def test_evaluate_interactive_in_the_original_frame() -> None:
    """frame='original': clicks and IoUs on the source-resolution masks (here 90x60 source, 64² model
    input), equal to evaluate_image on those masks; the resized frame gives other clicks."""
    model = _tiny_sam(ours=True)
    id_map = np.zeros((60, 90), dtype=np.int32)
    id_map[5:17, 7:31] = 1
    id_map[31:53, 40:83] = 2
    image = np.where(id_map[..., None] > 0, 220, 30).astype(np.uint8).repeat(3, axis=2)
    records = [InstanceRecord.from_id_map(image, id_map, "wide")]
    dataset = InstanceDataset(records, size=64, min_area=10, sampling="fixed", original_masks=True)
    sample = dataset[0]
    assert sample["original_masks"].shape == (2, 60, 90) and sample["masks"].shape == (2, 64, 64)
    assert torch.equal(
        sample["original_masks"].sum(dim=(1, 2)).sort().values, torch.tensor([12 * 24, 22 * 43])
    )
    original = evaluate_interactive(model, dataset, max_clicks=3, frame="original")
    ref = evaluate_image(model, sample["image"], sample["input_size"], sample["original_masks"], max_clicks=3)
    assert original == pytest.approx(summarize_interactive(ref.ious, ref.oracle_iou), abs=1e-6)
    resized = evaluate_image(
        model, sample["image"], sample["input_size"], sample["masks"][:, :43, :64], max_clicks=3
    )
    assert not torch.equal(resized.coords, ref.coords)  # another frame, other click positions
    with pytest.raises(ValueError, match="original_masks=True"):
        evaluate_interactive(
            model, InstanceDataset(records, size=64, min_area=10), max_clicks=1, frame="original"
        )
    with pytest.raises(ValueError, match="frame"):
        evaluate_interactive(model, dataset, max_clicks=1, frame="resized")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- edge cases of the helpers


class _ZeroDecoder(nn.Module):
    """Logits exactly 0 (= SAM's mask threshold) everywhere."""

    def forward(
        self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output
    ):
        n, m = sparse_prompt_embeddings.shape[0], 3 if multimask_output else 1
        return torch.zeros((n, m, 32, 32)), torch.full((n, m), 0.5)


def test_a_logit_equal_to_the_threshold_is_background() -> None:
    """``logits > mask_threshold`` as SamPredictor: logits of exactly 0 predict nothing (IoU 0), not the
    whole image."""
    gt = _squares(2, 32)
    model = _OracleSam(gt, [1, 1], img_size=32)
    model.mask_decoder = _ZeroDecoder()
    result = evaluate_image(model, torch.zeros((3, 32, 32)), (32, 32), gt, max_clicks=2)
    assert result.ious.eq(0.0).all() and result.oracle_iou.eq(0.0).all()


def test_model_device_prefers_the_device_attribute_then_parameters_then_buffers() -> None:
    """On the meta device (no GPU here): where evaluate_image/evaluate_batch put the images and masks."""
    from anydistill.eval.interactive import _model_device

    meta = torch.device("meta")
    with_params = nn.Linear(2, 2, device=meta)  # parameters, no buffers
    assert _model_device(with_params) == meta
    only_buffers = nn.BatchNorm1d(2, affine=False, device=meta)  # buffers, no parameters
    assert list(only_buffers.parameters()) == [] and _model_device(only_buffers) == meta
    assert _model_device(nn.Identity()) == torch.device("cpu")  # nothing to go by

    class Declared(nn.Module):  # no tensors, but a device property (segment_anything's Sam has one)
        device = meta

    assert _model_device(Declared()) == meta
    declared_over_params = nn.Linear(2, 2)
    declared_over_params.device = meta  # type: ignore[assignment]
    assert _model_device(declared_over_params) == meta


def test_summarize_no_object_one_object_and_a_threshold_reached_exactly() -> None:
    assert summarize_interactive(torch.zeros((0, 3))) == {"num_objects": 0.0}
    one = summarize_interactive(torch.tensor([[0.5, 1.0]]), torch.tensor([0.75]), thresholds=(0.5, 0.75))
    assert one == {
        "num_objects": 1.0,
        "miou@1": 0.5,
        "miou@2": 1.0,
        "noc@50": 1.0,
        "nof@50": 0.0,
        "noc@75": 2.0,
        "nof@75": 0.0,
        "oracle_miou@1": 0.75,
    }  # an IoU equal to the threshold reaches it
    never = summarize_interactive(torch.tensor([[0.5, 0.5], [0.25, 0.75]]), thresholds=(0.75,))
    assert never["nof@75"] == 1.0 and never["noc@75"] == 2.0 and "oracle_miou@1" not in never


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric InteractiveMetrics was called before")
def test_interactive_metrics_edge_cases_thresholds_device_and_sync() -> None:
    empty = InteractiveMetrics()
    assert empty.compute() == {"num_objects": 0.0}  # nothing evaluated
    no_objects = InteractiveMetrics()
    no_objects.update(
        InteractiveResult(torch.zeros((0, 2)), torch.zeros(0), torch.zeros((0, 2, 2)), torch.zeros(0, 2))
    )
    assert no_objects.compute() == {"num_objects": 0.0}
    result = InteractiveResult(
        torch.tensor([[0.5]]), torch.tensor([0.75]), torch.zeros((1, 1, 2)), torch.ones(1, 1)
    )
    one = InteractiveMetrics(thresholds=(0.5,))
    one.update(result)  # one object, one click: a single IoU
    assert one.compute() == {
        "num_objects": 1.0,
        "miou@1": 0.5,
        "noc@50": 1.0,
        "nof@50": 0.0,
        "oracle_miou@1": 0.75,
    }
    # the states follow the metric's device (the meta device stands in for a GPU)
    on_meta = InteractiveMetrics().to("meta")
    on_meta.update(result)
    assert on_meta.ious[0].device.type == "meta" and on_meta.oracle[0].device.type == "meta"
    # torchmetrics' own sync with the gather faked: a second process saw the same objects
    two = InteractiveMetrics(
        dist_sync_fn=lambda t, group=None: [t, t.clone()], distributed_available_fn=lambda: True
    )
    two.update(InteractiveResult(torch.tensor([[0.5, 1.0], [0.25, 0.5]]), torch.tensor([0.5, 1.0]),
                                 torch.zeros((2, 2, 2)), torch.ones(2, 2)))  # fmt: skip
    two.update(InteractiveResult(torch.tensor([[1.0, 1.0]]), torch.tensor([1.0]), torch.zeros((1, 2, 2)),
                                 torch.ones(1, 2)))  # fmt: skip
    out = two.compute()  # three objects on each process, summarised together
    assert out["num_objects"] == 6.0 and out["miou@1"] == pytest.approx(1.75 / 3)
    assert out["miou@2"] == pytest.approx(2.5 / 3) and out["oracle_miou@1"] == pytest.approx(2.5 / 3)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric InteractiveMetrics was called before")
@pytest.mark.parametrize("batches", [0, 1, 3])
def test_interactive_metrics_gather_each_state_once_whatever_the_batches(batches: int) -> None:
    """Under DDP every process must make the same collectives: one gather per state (ious, oracle),
    also for a process that evaluated 3 batches or none while the others evaluated 1."""
    gathered: list[tuple[int, ...]] = []

    def gather(t: Tensor, group=None) -> list[Tensor]:
        gathered.append(tuple(t.shape))
        return [t, t.clone()]

    metric = InteractiveMetrics(dist_sync_fn=gather, distributed_available_fn=lambda: True)
    for _ in range(batches):
        metric.update(InteractiveResult(torch.tensor([[0.5, 1.0]]), torch.tensor([0.5]), torch.zeros((1, 2, 2)),
                                        torch.ones(1, 2)))  # fmt: skip
    out = metric.compute()
    assert gathered == [(batches, 2), (batches,)] if batches else gathered == [(0,), (0,)]
    assert out["num_objects"] == 2.0 * batches
