"""Simulated prompts for promptable segmentation: first prompts, training clicks, evaluation clicks.

All coordinates are ``(x, y)`` pixel indices in the frame of the masks they were drawn from (for
training: the model's input frame, longest side 1024 for SAM); the prompt encoder adds 0.5 itself to
reach the pixel centre. Labels: 1 positive, 0 negative, -1 padding ("not a point").

- Training, first prompt (SAM [0], appendix A): with probability ``p_box`` the ground-truth box with
  noise on each coordinate of standard deviation 10% of the box side (width for x, height for y), at most
  20 pixels; otherwise a positive point drawn uniformly from the mask.
- Training, next click (SAM [0]): a pixel drawn uniformly from the error region ``FN ∪ FP`` of the
  current prediction; positive if it is a false negative, negative if a false positive. When the
  prediction is exact, a negative click drawn uniformly from the background (SAM 2's rule [2]).
- Evaluation click (RITM [1], the NoC protocol of RITM / SimpleClick / SAM): the error pixel farthest
  from the boundary of its error region (Euclidean distance transform, image border counted as
  boundary), taken from the false negatives when their largest distance exceeds the false positives'
  largest distance, else from the false positives; ties go to the first pixel in raster order, and
  pixels clicked before are excluded. Deterministic.

- [0] Kirillov et al., "Segment Anything", ICCV 2023, https://arxiv.org/abs/2304.02643
- [1] Sofiiuk et al., "Reviving Iterative Training with Mask Guidance for Interactive Segmentation"
  (RITM), ICIP 2022, https://arxiv.org/abs/2102.06583
- [2] Ravi et al., "SAM 2: Segment Anything in Images and Videos", 2024, https://arxiv.org/abs/2408.00714
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch import Tensor

__all__ = [
    "Prompts",
    "error_clicks",
    "evaluation_clicks",
    "first_prompts",
    "jitter_boxes",
    "masks_to_boxes",
    "prompt_groups",
    "sample_in_masks",
]


@dataclass
class Prompts:
    """The prompts of N objects: clicks so far and an optional box per object.

    Attributes:
        coords: float ``(N, P, 2)`` click ``(x, y)`` pixel coordinates.
        labels: int64 ``(N, P)``: 1 positive, 0 negative, -1 padding.
        boxes: float ``(N, 4)`` ``(x0, y0, x1, y1)``; meaningful only where ``has_box``.
        has_box: bool ``(N,)``. Objects prompted by a box carry a padding click in column 0 (the column
            of the first click of point-prompted objects), which :func:`prompt_groups` drops.
    """

    coords: Tensor
    labels: Tensor
    boxes: Tensor
    has_box: Tensor

    @property
    def num_objects(self) -> int:
        return self.coords.shape[0]

    def append(self, coords: Tensor, labels: Tensor) -> Prompts:
        """A new :class:`Prompts` with clicks ``coords`` ``(N, 1, 2)``, ``labels`` ``(N, 1)`` appended."""
        return Prompts(
            torch.cat([self.coords, coords.to(self.coords)], dim=1),  # (N, P + 1, 2)
            torch.cat([self.labels, labels.to(self.labels)], dim=1),  # (N, P + 1)
            self.boxes,
            self.has_box,
        )


def prompt_groups(prompts: Prompts) -> list[tuple[Tensor, tuple[Tensor, Tensor] | None, Tensor | None]]:
    """Splits N objects into the groups a SAM prompt encoder can take in one call.

    A SAM prompt encoder takes points for every row or for none, boxes for every row or for none, so
    point-prompted and box-prompted objects are encoded separately.

    Returns:
        a list of ``(rows, points, boxes)``: ``rows`` int64 indices into the N objects; ``points``
        ``(coords (n, P, 2), labels (n, P))`` or None (a box with no click yet); ``boxes`` ``(n, 4)`` or
        None.
    """
    groups: list[tuple[Tensor, tuple[Tensor, Tensor] | None, Tensor | None]] = []
    point_rows = torch.nonzero(~prompts.has_box).flatten()
    box_rows = torch.nonzero(prompts.has_box).flatten()
    if point_rows.numel():
        groups.append((point_rows, (prompts.coords[point_rows], prompts.labels[point_rows]), None))
    if box_rows.numel():
        coords = prompts.coords[box_rows, 1:]  # (n, P - 1, 2): column 0 is the unused first click
        labels = prompts.labels[box_rows, 1:]
        points = (coords, labels) if coords.shape[1] else None
        groups.append((box_rows, points, prompts.boxes[box_rows]))
    return groups


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight boxes ``(x0, y0, x1, y1)`` (inclusive pixel indices) of bool masks ``(N, H, W)``; empty → 0.

    Returns:
        float ``(N, 4)``.
    """
    # Adapted from https://github.com/facebookresearch/segment-anything/blob/6f95a3bf51e8fc26b0764deffe3dbcdf6a8aea7d/segment_anything/utils/amg.py
    n, h, w = masks.shape
    if n == 0:
        return masks.new_zeros((0, 4), dtype=torch.float32)
    rows = masks.any(dim=2)  # (N, H)
    cols = masks.any(dim=1)  # (N, W)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ys, h).amin(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1)
    x0 = torch.where(cols, xs, w).amin(dim=1)
    x1 = torch.where(cols, xs, -1).amax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()  # (N, 4)
    return torch.where(rows.any(dim=1, keepdim=True), boxes, torch.zeros_like(boxes))


def _sizes(image_size: Tensor | tuple[int, int], n: int, device: torch.device) -> Tensor:
    """``(N, 2)`` float ``(h, w)`` from one ``(h, w)`` or per-object sizes."""
    size = torch.as_tensor(image_size, dtype=torch.float32, device=device)
    return size.expand(n, 2) if size.dim() == 1 else size


def jitter_boxes(
    boxes: Tensor,
    image_size: Tensor | tuple[int, int],
    noise_std: float = 0.1,
    noise_max: float = 20.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SAM's box noise: each coordinate moves by ``N(0, (noise_std · side)²)`` clipped to ``±noise_max`` px.

    ``side`` is the box width for x coordinates and its height for y. The SAM paper says "standard
    deviation equal to 10% of the box sidelength, to a maximum of 20 pixels"; we read the maximum as a
    bound on the noise itself (SAM 2's code draws uniform noise in ``±min(0.1 · side, 20)``). The result
    is clipped to the image (``0..w-1``, ``0..h-1``) and re-ordered so that ``x0 <= x1`` and ``y0 <= y1``.

    Args:
        boxes: float ``(N, 4)`` ``(x0, y0, x1, y1)``.
        image_size: ``(h, w)`` of the valid image, or int ``(N, 2)`` per box.
        noise_std: noise standard deviation as a fraction of the box side.
        noise_max: largest displacement of a coordinate, pixels.
        generator: optional torch generator (on the boxes' device).

    Returns:
        float ``(N, 4)``.
    """
    n = boxes.shape[0]
    side_w = boxes[:, 2] - boxes[:, 0]  # (N,)
    side_h = boxes[:, 3] - boxes[:, 1]
    scale = torch.stack([side_w, side_h, side_w, side_h], dim=1) * noise_std  # (N, 4)
    noise = torch.randn(boxes.shape, generator=generator, device=boxes.device) * scale
    out = boxes + noise.clamp(-noise_max, noise_max)
    size = _sizes(image_size, n, boxes.device)  # (N, 2) (h, w)
    upper = torch.stack([size[:, 1], size[:, 0], size[:, 1], size[:, 0]], dim=1) - 1  # (N, 4)
    out = torch.minimum(out.clamp_min(0), upper)
    x0, x1 = torch.minimum(out[:, 0], out[:, 2]), torch.maximum(out[:, 0], out[:, 2])
    y0, y1 = torch.minimum(out[:, 1], out[:, 3]), torch.maximum(out[:, 1], out[:, 3])
    return torch.stack([x0, y0, x1, y1], dim=1)


def sample_in_masks(region: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One pixel drawn uniformly from each bool mask ``(N, H, W)`` (argmax of i.i.d. uniform scores).

    Returns:
        ``(coords, found)``: float ``(N, 2)`` ``(x, y)`` (0 where the mask is empty) and bool ``(N,)``.
    """
    n, h, w = region.shape
    scores = torch.rand(region.shape, generator=generator, device=region.device)  # (N, H, W)
    scores = torch.where(region, scores, scores.new_full((), -1.0)).flatten(1)  # (N, H*W)
    idx = scores.argmax(dim=1)  # (N,)
    coords = torch.stack([idx % w, idx // w], dim=1).float()  # (N, 2) (x, y)
    found = region.flatten(1).any(dim=1)
    return torch.where(found[:, None], coords, torch.zeros_like(coords)), found


def first_prompts(
    gt: Tensor,
    p_box: float = 0.5,
    image_size: Tensor | tuple[int, int] | None = None,
    box_noise_std: float = 0.1,
    box_noise_max: float = 20.0,
    generator: torch.Generator | None = None,
) -> Prompts:
    """SAM's first training prompt per object: a jittered box (probability ``p_box``) or a positive click.

    Args:
        gt: bool ``(N, H, W)`` ground-truth masks.
        p_box: probability of a box prompt (SAM: 0.5).
        image_size: ``(h, w)`` of the valid (unpadded) image, or ``(N, 2)``; default the mask size.
        box_noise_std, box_noise_max: see :func:`jitter_boxes`.
        generator: optional torch generator.

    Returns:
        :class:`Prompts` with one click column (padding for box-prompted objects; padding too for an
        empty mask, which then has no prompt at all).
    """
    n, h, w = gt.shape
    size = image_size if image_size is not None else (h, w)
    coords, found = sample_in_masks(gt, generator)
    has_box = torch.rand(n, generator=generator, device=gt.device) < p_box
    has_box &= found
    boxes = jitter_boxes(masks_to_boxes(gt), size, box_noise_std, box_noise_max, generator)
    labels = torch.where(found & ~has_box, 1, -1).long()
    return Prompts(coords[:, None], labels[:, None], boxes, has_box)


def error_clicks(
    pred: Tensor, gt: Tensor, valid: Tensor | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """SAM's training click: uniform over ``FN ∪ FP``; positive in FN, negative in FP.

    With an exact prediction the click is negative, uniform over the background (SAM 2); with nothing
    left to click (exact prediction of a mask covering the whole valid image) it is padding.

    Args:
        pred: bool ``(N, H, W)`` current binary predictions (``logits > 0``).
        gt: bool ``(N, H, W)``.
        valid: optional bool ``(N, H, W)`` (or broadcastable): pixels that may be clicked (not padding).
        generator: optional torch generator.

    Returns:
        ``(coords, labels)``: float ``(N, 1, 2)`` ``(x, y)`` and int64 ``(N, 1)``.
    """
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    fn = gt & ~pred
    fp = pred & ~gt
    background = ~gt
    if valid is not None:
        fn, fp, background = fn & valid, fp & valid, background & valid
    error = fn | fp  # (N, H, W)
    has_error = error.flatten(1).any(dim=1)  # (N,)
    region = torch.where(has_error[:, None, None], error, background)
    coords, found = sample_in_masks(region, generator)  # (N, 2), (N,)
    x, y = coords[:, 0].long(), coords[:, 1].long()
    positive = fn[torch.arange(gt.shape[0], device=gt.device), y, x]  # (N,)
    labels = torch.where(found, positive.long(), torch.full_like(positive, -1, dtype=torch.long))
    return coords[:, None], labels[:, None]


def _farthest_pixel(dist: np.ndarray) -> tuple[float, int, int]:
    """``(max distance, x, y)`` of the first pixel (raster order) reaching the maximum."""
    flat = int(np.argmax(dist))  # first maximum in C (raster) order
    y, x = divmod(flat, dist.shape[1])
    return float(dist[y, x]), x, y


def evaluation_clicks(
    pred: Tensor,
    gt: Tensor,
    valid: Tensor | None = None,
    previous: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The RITM / NoC evaluation click: the error pixel farthest from its region's boundary.

    For each object, with ``FN = gt & ~pred`` and ``FP = pred & ~gt`` (within ``valid``):
    ``d_FN``, ``d_FP`` = Euclidean distance transforms of the one-pixel zero-padded regions (so the image
    border is a boundary), set to 0 at previously clicked pixels; the click is positive at
    ``argmax d_FN`` if ``max d_FN > max d_FP``, else negative at ``argmax d_FP``; ties go to the first
    pixel in raster order. No error at all gives a padding click (label -1). Runs on the CPU
    (``scipy.ndimage.distance_transform_edt``).

    Args:
        pred: bool ``(N, H, W)`` current binary predictions.
        gt: bool ``(N, H, W)``.
        valid: optional bool ``(N, H, W)`` (or broadcastable) of pixels that count.
        previous: optional ``(coords (N, P, 2), labels (N, P))`` of earlier clicks in this frame; their
            pixels are not clicked again (padding clicks are ignored).

    Returns:
        ``(coords, labels)``: float ``(N, 1, 2)`` ``(x, y)`` and int64 ``(N, 1)``, on ``pred``'s device.
    """
    # Adapted from https://github.com/SamsungLabs/ritm_interactive_segmentation/blob/c6c8d96ff9db44d393fce333991d5003eb37f256/isegm/inference/clicker.py
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    fn = gt & ~pred
    fp = pred & ~gt
    if valid is not None:
        fn, fp = fn & valid, fp & valid
    fn_np, fp_np = fn.cpu().numpy(), fp.cpu().numpy()
    n, h, w = fn_np.shape
    clicked = np.zeros((n, h, w), dtype=bool)
    if previous is not None:
        pc, pl = previous[0].detach().cpu().numpy(), previous[1].cpu().numpy()
        for i, p in zip(*np.nonzero(pl >= 0), strict=True):
            x, y = int(round(pc[i, p, 0])), int(round(pc[i, p, 1]))
            if 0 <= x < w and 0 <= y < h:
                clicked[i, y, x] = True
    coords = np.zeros((n, 1, 2), dtype=np.float32)
    labels = np.full((n, 1), -1, dtype=np.int64)
    for i in range(n):
        best = []
        for region in (fn_np[i], fp_np[i]):
            dist = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]  # (H, W), 0 off the region
            dist[clicked[i]] = 0.0
            best.append(_farthest_pixel(dist))
        (d_fn, x_fn, y_fn), (d_fp, x_fp, y_fp) = best
        if d_fn > d_fp:
            coords[i, 0], labels[i, 0] = (x_fn, y_fn), 1
        elif d_fp > 0:
            coords[i, 0], labels[i, 0] = (x_fp, y_fp), 0
    return torch.from_numpy(coords).to(pred.device), torch.from_numpy(labels).to(pred.device)
