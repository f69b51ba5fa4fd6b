"""Evaluation metrics: relative / metric depth, semantic segmentation, per-mask IoU.

Depth follows the protocol of MiDaS [0] and Depth Anything [1] for relative depth: the prediction is
an affine-invariant disparity, aligned per image to the ground-truth disparity (``1 / depth`` on valid
pixels) by least squares, capped, turned into depth and compared with the ground-truth depth. Metrics
are computed per image and averaged over images (not over pixels), as Depth Anything reports them.

- [0] Ranftl et al., "Towards Robust Monocular Depth Estimation" (MiDaS), TPAMI 2020,
  https://arxiv.org/abs/1907.01341
- [1] Yang et al., "Depth Anything", CVPR 2024, https://arxiv.org/abs/2401.10891
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_confusion_matrix

from anydistill.losses.depth import align_scale_shift
from anydistill.losses.promptable import binary_iou  # noqa: F401  (re-exported: a metric too)

__all__ = [
    "DEPTH_METRIC_NAMES",
    "per_image_depth_metrics",
    "depth_metrics",
    "DepthMetrics",
    "iou_from_confusion",
    "SegmentationMetrics",
    "binary_iou",
]

DEPTH_METRIC_NAMES: tuple[str, ...] = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")
PredSpace = Literal["disparity", "depth"]
DepthAlignment = Literal["lstsq", "scale", "none"]

_DEFAULT_MIN_DEPTH = 1e-3  # metres; lower clamp of predicted depth when min_depth is not given


def _as_bhw(x: Tensor, name: str) -> Tensor:
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0]  # (B, H, W)
    if x.dim() != 3:
        raise ValueError(f"{name} must be (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
    return x


def _masked_median(x: Tensor, mask: Tensor) -> Tensor:
    """Per-image median ``(B,)`` of ``x`` ``(B, H, W)`` over ``mask``; NaN for an empty mask."""
    return torch.nanmedian(torch.where(mask, x, x.new_full((), float("nan"))).flatten(1), dim=1).values


@torch.no_grad()
def per_image_depth_metrics(
    pred: Tensor,
    gt_depth: Tensor,
    valid: Tensor | None = None,
    pred_space: PredSpace = "disparity",
    alignment: DepthAlignment = "lstsq",
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """Depth metrics of every image of a batch.

    Valid pixels: ``valid`` and a finite ``gt_depth > 0`` (and within ``[min_depth, max_depth]`` when
    given). The prediction is aligned in its own space, ``pred_space``:

    - ``alignment="lstsq"``: ``s · pred + t`` by :func:`~anydistill.losses.depth.align_scale_shift`
      against the ground truth in that space (``1 / gt_depth`` for disparity) — the MiDaS / Depth
      Anything protocol for relative depth;
    - ``"scale"``: median scaling, ``pred · median(gt) / median(pred)`` (in ``pred_space``);
    - ``"none"``: used as is (metric predictions).

    The aligned prediction becomes a depth ``d`` clamped to ``[lo, hi]``, where ``lo = min_depth``
    (default 1e-3 m) and ``hi = max_depth``; when ``max_depth`` is not given, ``hi`` is the image's
    largest valid ground-truth depth for disparity predictions (the MiDaS cap ``disp ≥ 1 / hi`` before
    ``d = 1 / disp``: an aligned disparity can be ≤ 0) and no upper bound for depth predictions. With
    ``d*`` the ground truth and M valid pixels:

        abs_rel = (1/M) Σ |d − d*| / d*         sq_rel = (1/M) Σ (d − d*)² / d*
        rmse = sqrt((1/M) Σ (d − d*)²)          rmse_log = sqrt((1/M) Σ (log d − log d*)²)
        delta_k = (1/M) Σ [max(d / d*, d* / d) < 1.25^k],  k = 1, 2, 3

    Computed in float64 without gradients.

    Args:
        pred: ``(B, 1, H, W)`` or ``(B, H, W)`` disparity or depth (see ``pred_space``).
        gt_depth: ground-truth depth in metres, same shape, 0 (or non-finite) where invalid.
        valid: optional bool, same shape.
        pred_space: ``"disparity"`` (affine-invariant models such as Depth Anything) or ``"depth"``.
        alignment: ``"lstsq"``, ``"scale"`` or ``"none"``.
        min_depth: optional lower bound of evaluated ground truth and of predicted depth, metres.
        max_depth: optional upper bound of evaluated ground truth and of predicted depth, metres.

    Returns:
        ``(metrics, has_valid)``: each metric ``(B,)`` (0 for images without valid pixels), and the
        bool ``(B,)`` of images that had at least one valid pixel.
    """
    if pred_space not in ("disparity", "depth"):
        raise ValueError(f"pred_space must be 'disparity' or 'depth', got {pred_space!r}")
    if alignment not in ("lstsq", "scale", "none"):
        raise ValueError(f"alignment must be 'lstsq', 'scale' or 'none', got {alignment!r}")
    pred = _as_bhw(pred, "pred").double()
    gt = _as_bhw(gt_depth, "gt_depth").double()
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred and gt_depth must have the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    mask = torch.isfinite(gt) & (gt > 0)  # (B, H, W)
    if valid is not None:
        if valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor, got {valid.dtype}")
        valid = _as_bhw(valid, "valid")
        if valid.shape != gt.shape:
            raise ValueError(
                f"valid must have the shape of gt_depth {tuple(gt.shape)}, got {tuple(valid.shape)}"
            )
        mask &= valid
    if min_depth is not None:
        mask &= gt >= min_depth
    if max_depth is not None:
        mask &= gt <= max_depth
    has_valid = mask.flatten(1).any(dim=1)  # (B,)
    gt = torch.where(mask, gt, torch.ones_like(gt))  # (B, H, W), 1 off the mask: no division by 0
    pred = torch.where(mask, pred, torch.zeros_like(pred))  # non-finite off-mask predictions can't leak

    target = 1.0 / gt if pred_space == "disparity" else gt  # (B, H, W), ground truth in pred_space
    if alignment == "lstsq":
        scale, shift = align_scale_shift(pred, target, mask)  # (B,), (B,)
        aligned = scale[:, None, None] * pred + shift[:, None, None]
    elif alignment == "scale":
        med_pred = _masked_median(pred, mask)  # (B,)
        ratio = _masked_median(target, mask) / med_pred
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))
        aligned = ratio[:, None, None] * pred
    else:
        aligned = pred

    lo = min_depth if min_depth is not None else _DEFAULT_MIN_DEPTH
    if max_depth is not None:
        hi = torch.full_like(has_valid, max_depth, dtype=gt.dtype)  # (B,)
    elif pred_space == "disparity":
        hi = torch.where(mask, gt, torch.zeros_like(gt)).flatten(1).amax(dim=1)  # (B,)
    else:
        hi = torch.full_like(has_valid, float("inf"), dtype=gt.dtype)  # (B,)
    hi = torch.where(has_valid, hi, torch.ones_like(hi))[:, None, None]  # (B, 1, 1)
    if pred_space == "disparity":
        # Adapted from https://github.com/isl-org/MiDaS (eval: disparity capped at 1 / depth_cap, then inverted)
        depth = 1.0 / torch.minimum(torch.maximum(aligned, 1.0 / hi), torch.full_like(aligned, 1.0 / lo))
    else:
        depth = torch.minimum(torch.maximum(aligned, torch.full_like(aligned, lo)), hi)

    m = mask.double()
    n = m.sum(dim=(1, 2)).clamp_min(1)  # (B,)

    def mean(x: Tensor) -> Tensor:
        return (x * m).sum(dim=(1, 2)) / n  # (B,)

    diff = depth - gt
    ratio_max = torch.maximum(depth / gt, gt / depth)
    metrics = {
        "abs_rel": mean(diff.abs() / gt),
        "sq_rel": mean(diff * diff / gt),
        "rmse": mean(diff * diff).sqrt(),
        "rmse_log": mean((depth.log() - gt.log()) ** 2).sqrt(),
        "delta1": mean((ratio_max < 1.25).double()),
        "delta2": mean((ratio_max < 1.25**2).double()),
        "delta3": mean((ratio_max < 1.25**3).double()),
    }
    return {k: torch.where(has_valid, v, torch.zeros_like(v)) for k, v in metrics.items()}, has_valid


@torch.no_grad()
def depth_metrics(
    pred: Tensor,
    gt_depth: Tensor,
    valid: Tensor | None = None,
    pred_space: PredSpace = "disparity",
    alignment: DepthAlignment = "lstsq",
    min_depth: float | None = None,
    max_depth: float | None = None,
) -> dict[str, Tensor]:
    """Batch depth metrics: :func:`per_image_depth_metrics` averaged over images with valid pixels.

    Returns:
        ``{"abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3"}`` as 0-dim float64
        tensors (NaN when no image of the batch has a valid pixel), plus ``"n_images"`` (images
        averaged) and ``"n_skipped"`` (images without a valid pixel), counts held as float64 so that
        Lightning's ``log_dict`` takes every value as is.
    """
    per_image, has_valid = per_image_depth_metrics(
        pred, gt_depth, valid, pred_space, alignment, min_depth, max_depth
    )
    n = has_valid.sum()
    out = {k: v.sum() / n if n > 0 else v.new_full((), float("nan")) for k, v in per_image.items()}
    out["n_images"] = n.double()
    out["n_skipped"] = (~has_valid).sum().double()
    return out


class DepthMetrics(Metric):
    """Accumulating depth metrics for Lightning; see :func:`per_image_depth_metrics`.

    ``update(pred, gt_depth, valid=None)`` adds the per-image metrics of a batch; ``compute()`` returns
    their MEAN OVER IMAGES (each image weighs the same whatever its number of valid pixels, as in Depth
    Anything), with the same keys as :func:`depth_metrics`. Images without a valid pixel are skipped
    and counted in ``"n_skipped"``. States are sums, so it works under DDP.

    Args:
        pred_space: ``"disparity"`` or ``"depth"``.
        alignment: ``"lstsq"``, ``"scale"`` or ``"none"``.
        min_depth: optional lower bound of evaluated depth, metres.
        max_depth: optional upper bound of evaluated depth, metres.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(
        self,
        pred_space: PredSpace = "disparity",
        alignment: DepthAlignment = "lstsq",
        min_depth: float | None = None,
        max_depth: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if pred_space not in ("disparity", "depth"):
            raise ValueError(f"pred_space must be 'disparity' or 'depth', got {pred_space!r}")
        if alignment not in ("lstsq", "scale", "none"):
            raise ValueError(f"alignment must be 'lstsq', 'scale' or 'none', got {alignment!r}")
        self.pred_space = pred_space
        self.alignment = alignment
        self.min_depth = min_depth
        self.max_depth = max_depth
        for name in DEPTH_METRIC_NAMES:
            self.add_state(
                f"sum_{name}", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
            )
        self.add_state("n_images", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("n_skipped", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, pred: Tensor, gt_depth: Tensor, valid: Tensor | None = None) -> None:
        per_image, has_valid = per_image_depth_metrics(
            pred, gt_depth, valid, self.pred_space, self.alignment, self.min_depth, self.max_depth
        )
        for name in DEPTH_METRIC_NAMES:
            state = getattr(self, f"sum_{name}")
            setattr(self, f"sum_{name}", state + per_image[name].sum().to(state))
        self.n_images += has_valid.sum()
        self.n_skipped += (~has_valid).sum()

    def compute(self) -> dict[str, Tensor]:
        out = {
            name: getattr(self, f"sum_{name}") / self.n_images
            if self.n_images > 0
            else torch.tensor(float("nan"), dtype=torch.float64, device=self.device)
            for name in DEPTH_METRIC_NAMES
        }
        out["n_images"] = self.n_images.double()
        out["n_skipped"] = self.n_skipped.double()
        return out


def iou_from_confusion(confmat: Tensor) -> Tensor:
    """Per-class IoU ``TP / (TP + FP + FN)`` from a confusion matrix ``(C, C)`` (rows = target, cols = pred).

    Classes absent from both target and prediction (union 0) are NaN. Returns ``(C,)`` float64.
    """
    confmat = confmat.double()
    tp = confmat.diagonal()  # (C,)
    union = confmat.sum(dim=0) + confmat.sum(dim=1) - tp  # (C,)
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))


class SegmentationMetrics(Metric):
    """Semantic segmentation metrics from an accumulated confusion matrix (torchmetrics).

    ``update(preds, target)``: ``preds`` are logits / probabilities ``(B, C, H, W)`` (arg-maxed over C)
    or class ids ``(B, H, W)``; ``target`` ``(B, H, W)`` with ``ignore_index`` skipped. ``compute()``:

    - ``"iou_per_class"`` ``(C,)``: ``TP / (TP + FP + FN)``, NaN for classes absent from both target
      and prediction over everything seen;
    - ``"miou"``: mean of the non-NaN IoUs, i.e. over classes present in the target or the prediction;
    - ``"pixel_acc"``: correct / counted pixels;
    - ``"mean_acc"``: mean over classes present in the target of per-class recall.

    Args:
        num_classes: number of classes C.
        ignore_index: target id of pixels to skip.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state(
            "confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.dim() == target.dim() + 1:
            if preds.shape[1] != self.num_classes:
                raise ValueError(
                    f"preds has {preds.shape[1]} channels, expected num_classes={self.num_classes}"
                )
            preds = preds.argmax(dim=1)  # (B, H, W)
        if preds.shape != target.shape:
            raise ValueError(
                f"preds must be (B, C, H, W) or (B, H, W) matching target {tuple(target.shape)}, got {tuple(preds.shape)}"
            )
        # validate_args=False: the argument checks call .unique() (a device sync per batch); an id
        # >= num_classes in the target still fails loudly in the bincount reshape.
        self.confmat += multiclass_confusion_matrix(
            preds.long(), target.long(), self.num_classes, ignore_index=self.ignore_index, validate_args=False
        )

    def compute(self) -> dict[str, Tensor]:
        confmat = self.confmat.double()
        iou = iou_from_confusion(self.confmat)  # (C,)
        total = confmat.sum()
        per_class_total = confmat.sum(dim=1)  # (C,)
        recall = torch.where(
            per_class_total > 0,
            confmat.diagonal() / per_class_total.clamp_min(1),
            torch.full_like(total, float("nan")),
        )
        return {
            "iou_per_class": iou,
            "miou": iou.nanmean(),
            "pixel_acc": confmat.diagonal().sum() / total
            if total > 0
            else torch.full_like(total, float("nan")),
            "mean_acc": recall.nanmean(),
        }
