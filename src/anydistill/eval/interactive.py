"""Interactive segmentation evaluation: mIoU after n clicks and the number of clicks (NoC) to reach an IoU.

The protocol of RITM [0] (used by SimpleClick and SAM [1]), for each object of an image:

1. click 1 is the evaluation click of :func:`~anydistill.data.clicks.evaluation_clicks` on an empty
   prediction (the point of the object farthest from its boundary, positive); the model answers with
   three masks (``multimask_output=True``) and the one with the highest *predicted* IoU is kept
   (``oracle_miou@1`` instead keeps the one with the highest *true* IoU);
2. clicks 2..k: the next evaluation click from the current prediction's errors; the model gets every
   click so far plus (``use_prev_mask``) the previous low-resolution logits as the mask prompt, and
   returns one mask;
3. ``IoU_n`` = IoU of the binarised prediction (``logits > 0`` after ``model.postprocess_masks``) with
   the ground truth after n clicks, in the ground truth's frame.

Reported over all objects: ``miou@n`` (mean ``IoU_n``, n = 1..k), ``noc@85`` / ``noc@90`` (mean of the
least n with ``IoU_n >= 0.85 / 0.90``, k when never reached, RITM's convention), ``nof@85`` / ``nof@90``
(objects that never reach it) and ``oracle_miou@1``. An object whose prediction becomes exact gets
no further click and keeps its IoU.

The image embedding is computed once per image; all objects of an image are decoded together (in
chunks of ``chunk`` prompts; the batching helpers are in :mod:`anydistill.promptable.batched`). :func:`evaluate_batch` embeds several images in one encoder pass and
decodes the objects of all of them together when the mask decoder takes one embedding per prompt set
(our :class:`~anydistill.models.sam.MaskDecoder`, ``accepts_batched_embeddings``); a decoder that takes
one image embedding ``(1, C, h, w)`` and N prompts (segment_anything's) is called once per image.
Any Sam-like model works (``image_encoder``, ``prompt_encoder``, ``mask_decoder``, ``preprocess``,
``postprocess_masks``, ``mask_threshold``).

- [0] Sofiiuk et al., "Reviving Iterative Training with Mask Guidance for Interactive Segmentation"
  (RITM), ICIP 2022, https://arxiv.org/abs/2102.06583
- [1] Kirillov et al., "Segment Anything", ICCV 2023, https://arxiv.org/abs/2304.02643
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from anydistill.data.clicks import evaluation_clicks
from anydistill.eval.metrics import binary_iou
from anydistill.promptable.batched import decode_prompts, embed_images

__all__ = [
    "InteractiveMetrics",
    "InteractiveResult",
    "evaluate_batch",
    "evaluate_image",
    "evaluate_interactive",
    "interactive_clicks",
    "number_of_clicks",
    "summarize_interactive",
]

NOC_THRESHOLDS: tuple[float, ...] = (0.85, 0.90)


@dataclass
class InteractiveResult:
    """Per-object results of :func:`interactive_clicks`.

    Attributes:
        ious: float ``(N, k)``, IoU after 1..k clicks.
        oracle_iou: float ``(N,)``, the best true IoU of the three first-click masks.
        coords: float ``(N, k, 2)`` the clicks ``(x, y)`` in the ground truth's frame.
        labels: int64 ``(N, k)`` (1 / 0, -1 where no click was needed).
    """

    ious: Tensor
    oracle_iou: Tensor
    coords: Tensor
    labels: Tensor


def _postprocess(
    model: nn.Module, low: Tensor, input_size: tuple[int, int], out_size: tuple[int, int]
) -> Tensor:
    """Binary masks ``(N, M, *out_size)`` from low-resolution logits ``(N, M, s, s)``."""
    return model.postprocess_masks(low, input_size, out_size) > model.mask_threshold


@torch.no_grad()
def interactive_clicks(
    model: nn.Module,
    embedding: Tensor,
    input_size: tuple[int, int] | Tensor,
    gt: Tensor,
    max_clicks: int = 20,
    use_prev_mask: bool = True,
    multimask_first: bool = True,
    image_index: Tensor | None = None,
) -> InteractiveResult:
    """Runs the click protocol (module docstring) on N objects of one image, or of several images.

    Args:
        model: a Sam-like model.
        embedding: ``(1, C, h', w')`` the image's embedding; with ``image_index``, ``(B, C, h', w')``.
        input_size: ``(h, w)`` of the resized image inside the model's padded input; with
            ``image_index``, int ``(N, 2)``, each object's image's.
        gt: bool ``(N, H, W)`` ground-truth masks in any frame of the same image (the resized one,
            ``(h, w)``, or the original one); clicks are computed there and scaled to the input frame as
            ``ResizeLongestSide.apply_coords`` does (``x · w / W``). With ``image_index``: in the padded
            input frame ``(S, S)``, pixels outside an object's ``input_size`` being padding (never
            clicked, not counted), which gives the same clicks and IoUs as each object's crop
            ``gt[:h, :w]`` in the one-image form.
        max_clicks: k.
        use_prev_mask: feed the previous low-resolution logits as the mask prompt.
        multimask_first: three masks on the first click (the highest predicted IoU kept); else one.
        image_index: optional int64 ``(N,)``, each object's image in ``embedding``
            (:func:`decode_embedded`).

    Returns:
        an :class:`InteractiveResult`.
    """
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    n, gh, gw = gt.shape
    device = embedding.device
    if n == 0:
        return InteractiveResult(
            torch.zeros((0, max_clicks)),
            torch.zeros(0),
            torch.zeros((0, max_clicks, 2)),
            torch.zeros((0, max_clicks), dtype=torch.int64),
        )
    gt = gt.to(device=device, dtype=torch.bool)
    valid: Tensor | None = None
    if image_index is None:
        h, w = (int(v) for v in torch.as_tensor(input_size).reshape(2).tolist())
        scale = torch.tensor([w / gw, h / gh], device=device)  # (2,) gt frame -> input frame
    else:
        side = getattr(model.image_encoder, "img_size", gw)
        if (gh, gw) != (side, side):
            raise ValueError(f"with image_index, gt must be in the padded input frame {side}², got {gh}x{gw}")
        sizes = torch.as_tensor(input_size, device=device).reshape(-1, 2).expand(n, 2)  # (N, 2) (h, w)
        grid = torch.arange(side, device=device)
        valid = (grid[:, None] < sizes[:, :1, None]) & (grid < sizes[:, 1:, None])  # (N, S, S)
        gt, scale = gt & valid, torch.ones(2, device=device)
        image_index = image_index.to(device)
    image_pe = model.prompt_encoder.get_dense_pe()
    ious = torch.zeros((n, max_clicks), device=device)
    coords = torch.zeros((n, 0, 2), device=device)  # gt frame
    labels = torch.zeros((n, 0), dtype=torch.int64, device=device)
    pred = torch.zeros_like(gt)  # (N, H, W)
    prev_low: Tensor | None = None
    oracle = torch.zeros(n, device=device)
    for t in range(max_clicks):
        c, lab = evaluation_clicks(pred, gt, valid, previous=(coords, labels))  # (N, 1, 2), (N, 1)
        coords, labels = torch.cat([coords, c], dim=1), torch.cat([labels, lab], dim=1)
        points = (coords * scale, labels)  # input frame
        multimask = multimask_first and t == 0
        mask_input = prev_low if (use_prev_mask and prev_low is not None) else None
        low, iou_pred = decode_prompts(
            model, embedding, image_pe, points, None, mask_input, multimask, image_index
        )
        if valid is None:
            masks = _postprocess(model, low, (h, w), (gh, gw))  # (N, M, H, W)
        else:  # the padded frame: upsampled, padding cleared (= postprocessing to each crop)
            masks = _postprocess(model, low, (gh, gw), (gh, gw)) & valid[:, None]  # (N, M, S, S)
        true_iou = binary_iou(masks, gt[:, None].expand_as(masks))  # (N, M)
        pick = iou_pred.argmax(dim=1)  # (N,)
        rows = torch.arange(n, device=device)
        new_low, new_pred, new_iou = low[rows, pick][:, None], masks[rows, pick], true_iou[rows, pick]
        if t == 0:
            oracle = true_iou.max(dim=1).values
            ious[:, 0], pred, prev_low = new_iou, new_pred, new_low
            continue
        clicked = lab[:, 0] >= 0  # (N,): objects already exact get no click and keep their mask
        ious[:, t] = torch.where(clicked, new_iou, ious[:, t - 1])
        pred = torch.where(clicked[:, None, None], new_pred, pred)
        assert prev_low is not None
        prev_low = torch.where(clicked[:, None, None, None], new_low, prev_low)
    return InteractiveResult(ious.cpu(), oracle.cpu(), coords.cpu(), labels.cpu())


def _cat_results(parts: list[InteractiveResult]) -> InteractiveResult:
    return InteractiveResult(
        *(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(InteractiveResult))
    )


@torch.no_grad()
def evaluate_image(
    model: nn.Module,
    image: Tensor,
    input_size: tuple[int, int] | Tensor,
    gt: Tensor,
    max_clicks: int = 20,
    use_prev_mask: bool = True,
    multimask_first: bool = True,
    chunk: int = 32,
) -> InteractiveResult:
    """:func:`interactive_clicks` for the objects ``gt`` ``(N, H, W)`` of one image ``(3, S, S)``
    (uint8 or 0..255 float, valid in its top-left ``input_size``), embedding it once and decoding at
    most ``chunk`` objects at a time."""
    device = _model_device(model)
    size = torch.as_tensor(input_size).reshape(1, 2)
    h, w = (int(v) for v in size[0].tolist())
    embedding = embed_images(model, image[None].to(device), size)  # (1, C, h', w')
    parts = [
        interactive_clicks(
            model, embedding, (h, w), gt[i : i + chunk], max_clicks, use_prev_mask, multimask_first
        )
        for i in range(0, max(gt.shape[0], 1), chunk)
    ]
    return _cat_results(parts)


@torch.no_grad()
def evaluate_batch(
    model: nn.Module,
    images: Tensor,
    input_sizes: Tensor,
    gts: Sequence[Tensor],
    max_clicks: int = 20,
    use_prev_mask: bool = True,
    multimask_first: bool = True,
    chunk: int = 32,
) -> InteractiveResult:
    """:func:`evaluate_image` for the objects of several images at once: one encoder pass, then chunks
    of at most ``chunk`` objects taken across images, each chunk decoded in one call per click when the
    decoder :func:`decodes_batched` (else one call per image of the chunk). Same results as
    :func:`evaluate_image` on each image with its ground truth in the resized frame.

    Args:
        images: ``(B, 3, S, S)`` uint8 or 0..255 float, image b valid in its top-left ``input_sizes[b]``.
        input_sizes: int ``(B, 2)`` ``(h, w)``.
        gts: B bool tensors ``(N_b, h_b, w_b)``, each image's objects in its resized frame.

    Returns:
        the :class:`InteractiveResult` of all objects, image by image.
    """
    if len(gts) != images.shape[0] or input_sizes.shape != (images.shape[0], 2):
        raise ValueError(
            f"need one ground truth and one (h, w) per image: {images.shape[0]} images, {len(gts)} "
            f"ground truths, input_sizes {tuple(input_sizes.shape)}"
        )
    side = images.shape[-1]
    sizes = input_sizes.long().cpu()
    for b, (g, (h, w)) in enumerate(zip(gts, sizes.tolist(), strict=True)):
        if tuple(g.shape[-2:]) != (h, w):
            raise ValueError(
                f"ground truth {b} is {tuple(g.shape[-2:])}, not its image's input size {(h, w)}"
            )
    device = _model_device(model)
    gt = torch.zeros((sum(g.shape[0] for g in gts), side, side), dtype=torch.bool, device=device)
    start = 0
    for g in gts:  # (N, S, S): each object in its image's padded input frame
        gt[start : start + g.shape[0], : g.shape[1], : g.shape[2]] = g.to(device, torch.bool)
        start += g.shape[0]
    counts = torch.tensor([g.shape[0] for g in gts])
    image_index = torch.repeat_interleave(torch.arange(len(gts)), counts)  # (N,) each object's image
    embeddings = embed_images(model, images.to(device), sizes)  # (B, C, h', w')
    parts = [
        interactive_clicks(
            model,
            embeddings,
            sizes[image_index[i : i + chunk]],
            gt[i : i + chunk],
            max_clicks,
            use_prev_mask,
            multimask_first,
            image_index[i : i + chunk].to(device),
        )
        for i in range(0, max(gt.shape[0], 1), chunk)
    ]
    return _cat_results(parts)  # coords: (x, y) of the padded frame = of the resized frame


def _model_device(model: nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def number_of_clicks(ious: Tensor, threshold: float) -> Tensor:
    """NoC per object: the least n (1-based) with ``ious[:, n-1] >= threshold``, ``k`` when never reached.

    Args:
        ious: ``(N, k)``.

    Returns:
        float ``(N,)``.
    """
    reached = ious >= threshold  # (N, k)
    first = reached.float().argmax(dim=1) + 1  # (N,)
    return torch.where(reached.any(dim=1), first, torch.full_like(first, ious.shape[1])).float()


def summarize_interactive(
    ious: Tensor, oracle_iou: Tensor | None = None, thresholds: Iterable[float] = NOC_THRESHOLDS
) -> dict[str, float]:
    """``miou@1..k``, ``noc@T`` and ``nof@T`` (T = 85, 90 for thresholds 0.85, 0.90), ``oracle_miou@1``.

    Args:
        ious: ``(N, k)`` IoU after each click.
        oracle_iou: optional ``(N,)``.
        thresholds: IoU thresholds of NoC / NoF.
    """
    ious = ious.float()
    out: dict[str, float] = {"num_objects": float(ious.shape[0])}
    if ious.shape[0] == 0:
        return out
    for n, v in enumerate(ious.mean(dim=0).tolist(), start=1):
        out[f"miou@{n}"] = v
    for thr in thresholds:
        key = f"{round(thr * 100)}"
        out[f"noc@{key}"] = number_of_clicks(ious, thr).mean().item()
        out[f"nof@{key}"] = float((ious < thr).all(dim=1).sum().item())
    if oracle_iou is not None:
        out["oracle_miou@1"] = oracle_iou.float().mean().item()
    return out


class InteractiveMetrics(Metric):
    """Accumulates :class:`InteractiveResult` s (across batches and processes) and summarises them."""

    full_state_update = False

    def __init__(self, thresholds: Iterable[float] = NOC_THRESHOLDS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.thresholds = tuple(thresholds)
        self.add_state("ious", default=[], dist_reduce_fx="cat")
        self.add_state("oracle", default=[], dist_reduce_fx="cat")

    def update(self, result: InteractiveResult) -> None:  # type: ignore[override]
        self.ious.append(result.ious.to(self.device))
        self.oracle.append(result.oracle_iou.to(self.device))

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        # A list of (n, k) tensors in one process; after a distributed sync torchmetrics has already
        # concatenated it into one tensor.
        if isinstance(self.ious, list) and not self.ious:
            return {"num_objects": 0.0}
        ious, oracle = dim_zero_cat(self.ious), dim_zero_cat(self.oracle)
        if ious.numel() == 0:
            return {"num_objects": 0.0}
        return summarize_interactive(ious, oracle, self.thresholds)


@torch.no_grad()
def evaluate_interactive(
    model: nn.Module,
    dataset: Iterable[dict[str, Any]],
    max_clicks: int = 20,
    use_prev_mask: bool = True,
    multimask_first: bool = True,
    max_images: int | None = None,
    chunk: int = 32,
    batch_size: int = 4,
    frame: Literal["original", "input"] = "input",
) -> dict[str, float]:
    """The interactive protocol over an :class:`~anydistill.data.instances.InstanceDataset`.

    ``frame="input"``: ground truth is each sample's masks cropped to its ``input_size`` (the resized
    frame, longest side ``S``), objects of ``batch_size`` images decoded together. ``frame="original"``
    (the benchmarks' protocol): clicks are placed and IoUs measured on the source image's masks
    (``original_masks``, from ``InstanceDataset(original_masks=True)``), the predictions postprocessed to
    the source size as ``SamPredictor`` does; images whose source size is their input size take the
    batched path (the same result), the others are evaluated one at a time.

    Args:
        model: a Sam-like model (put in eval mode here), on the device to evaluate on.
        dataset: :class:`InstanceDataset` items (``image``, ``masks``, ``input_size``).
        max_clicks: k (RITM / SAM: 20).
        use_prev_mask, multimask_first: see :func:`interactive_clicks`.
        max_images: evaluate at most this many images.
        chunk: objects decoded together.
        batch_size: images embedded together (:func:`evaluate_batch`).
        frame: ``"input"`` or ``"original"`` (see above).

    Returns:
        :func:`summarize_interactive`'s dict.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if frame not in ("original", "input"):
        raise ValueError(f"frame must be 'original' or 'input', got {frame!r}")
    model.eval()
    metrics = InteractiveMetrics()
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        images = torch.stack([p["image"] for p in pending])  # (B, 3, S, S)
        sizes = torch.stack([p["input_size"] for p in pending])  # (B, 2)
        gts = [p["masks"][:, :h, :w] for p, (h, w) in zip(pending, sizes.tolist(), strict=True)]
        metrics.update(
            evaluate_batch(model, images, sizes, gts, max_clicks, use_prev_mask, multimask_first, chunk)
        )
        pending.clear()

    for i, sample in enumerate(dataset):
        if max_images is not None and i >= max_images:
            break
        if not sample["masks"].shape[0]:
            continue
        if frame == "original" and not torch.equal(sample["original_size"], sample["input_size"]):
            if "original_masks" not in sample:
                raise ValueError(
                    "frame='original' needs the source-frame masks: build the dataset with "
                    "InstanceDataset(..., original_masks=True)"
                )
            metrics.update(
                evaluate_image(
                    model, sample["image"], sample["input_size"], sample["original_masks"], max_clicks,
                    use_prev_mask, multimask_first, chunk,
                )
            )  # fmt: skip
        else:
            pending.append(sample)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return metrics.compute()
