"""Metric-learning losses on embeddings: the margin contrastive loss of Hadsell et al. [0]
(:func:`margin_contrastive_loss` / :class:`MarginContrastiveLoss`) and the triplet loss (:func:`triplet_loss`
/ :class:`TripletLoss`) with batch-hard [1], semi-hard [2] or all-triplet mining.

- [0] Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006,
  http://yann.lecun.com/exdb/publis/pdf/hadsell-chopra-lecun-06.pdf
- [1] Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person Re-Identification", 2017,
  https://arxiv.org/abs/1703.07737
- [2] Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face Recognition and Clustering",
  CVPR 2015, https://arxiv.org/abs/1503.03832; the batch form of TensorFlow Addons'
  ``triplet_semihard_loss``,
  https://github.com/tensorflow/addons/blob/f5d905dcc37d8cd0b0f66aece65c30847a9c477d/tensorflow_addons/losses/triplet.py
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from anydistill.losses.segmentation import _upcast

__all__ = ["margin_contrastive_loss", "triplet_loss", "MarginContrastiveLoss", "TripletLoss"]

Mining = Literal["batch_hard", "semi_hard", "all"]
MINING: tuple[str, ...] = ("batch_hard", "semi_hard", "all")


def margin_contrastive_loss(x1: Tensor, x2: Tensor, same: Tensor, margin: float = 1.0) -> Tensor:
    """Contrastive loss of Hadsell et al. [0] on pairs of embeddings.

        L = 1/N · Σ_n [ y_n · d_n² + (1 − y_n) · max(0, m − d_n)² ],   d_n = ‖x1_n − x2_n‖₂

    Similar pairs (``y = 1``) are pulled together, dissimilar ones pushed apart until ``m``. [0] writes
    both terms with a factor ½ and its ``Y`` the other way round (``Y = 0`` similar); here ``y = 1`` means
    "same" and there is no ½ (the gradients are twice [0]'s, the minimiser the same).

    Args:
        x1: ``(N, D)`` embeddings of the first items.
        x2: ``(N, D)`` embeddings of the second items.
        same: ``(N,)`` bool or 0/1 (soft values allowed): 1 for pairs of the same class.
        margin: ``m > 0``.

    Returns:
        scalar loss.
    """
    if x1.dim() != 2 or x1.shape[0] == 0:
        raise ValueError(f"x1 and x2 must be non-empty (N, D) tensors, got {tuple(x1.shape)}")
    if x2.shape != x1.shape:
        raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    if same.shape != x1.shape[:1]:
        raise ValueError(f"same must be (N,) = ({x1.shape[0]},), got {tuple(same.shape)}")
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    diff = _upcast(x1) - _upcast(x2)  # (N, D)
    d = torch.linalg.vector_norm(diff, dim=1)  # (N,), gradient 0 (not NaN) at d = 0
    y = same.to(d.dtype)  # (N,)
    loss = y * diff.pow(2).sum(dim=1) + (1.0 - y) * (margin - d).clamp_min(0.0).pow(2)  # (N,)
    return loss.mean()


def triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 0.2,
    mining: Mining = "batch_hard",
    squared: bool = False,
) -> Tensor:
    """Triplet loss over the triplets of a labelled batch, ``max(0, d(a, p) − d(a, n) + m)``.

    ``d`` is the Euclidean distance (``squared``: its square, FaceNet's [2] choice), over the batch's
    anchor ``a``, positives ``p ≠ a`` of its label and negatives ``n`` of another label; ``mining``:

    - ``"batch_hard"`` (Hermans et al. [1]): per anchor, its farthest positive and nearest negative,
      ``L = mean_a max(0, max_p d(a, p) − min_n d(a, n) + m)`` over the anchors with a positive and a
      negative.
    - ``"semi_hard"`` (FaceNet [2], as TF-Addons' ``triplet_semihard_loss``): per anchor–positive pair,
      the nearest negative farther than the positive, ``min {d(a, n) : d(a, n) > d(a, p)}``, or, when
      there is none, the farthest negative; ``L`` = the mean of the hinge over the anchor–positive pairs.
      Equal to TF-Addons with ``distance_metric="L2"`` (``squared=False``) or ``"squared-L2"``
      (``squared=True``), except for a batch of a single label (no negatives): 0 here, while TF-Addons
      counts each pair with ``m + d(a, p)``.
    - ``"all"``: every valid triplet (``a``, ``p``, ``n``), averaged over those with a positive loss
      (Hermans et al.'s "batch all ≠ 0", so that easy triplets do not dilute the mean).

    Anchors without a positive or a negative are skipped; with no valid triplet the loss is 0 (with a
    graph, so ``backward`` works and gives zero gradients). ``"all"`` holds ``(N, N, N)`` tensors;
    the others ``(N, N)``.

    Args:
        embeddings: ``(N, D)`` (usually L2-normalised).
        labels: ``(N,)`` integer class ids.
        margin: ``m >= 0``.
        mining: ``"batch_hard"``, ``"semi_hard"`` or ``"all"``.
        squared: use squared Euclidean distances.

    Returns:
        scalar loss.
    """
    if mining not in MINING:
        raise ValueError(f"mining must be one of {MINING}, got {mining!r}")
    if embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty (N, D) tensor, got {tuple(embeddings.shape)}")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"labels must be (N,) = ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    x = _upcast(embeddings)
    # Exact differences rather than ‖a‖² + ‖b‖² − 2a·b (no cancellation); gradient 0 at d = 0.
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")  # (N, N)
    if squared:
        d = d.pow(2)
    n = x.shape[0]
    same = labels[:, None] == labels[None, :]  # (N, N)
    positive = same & ~torch.eye(n, dtype=torch.bool, device=x.device)  # (N, N) [a, p]
    negative = ~same  # (N, N) [a, n]
    # An anchor without a negative means a batch of one label: no valid triplet at all, and every hinge
    # below is 0 (its nearest negative is at +inf), so only the anchors' positives need checking.
    inf = torch.tensor(float("inf"), dtype=d.dtype, device=d.device)

    if mining == "batch_hard":
        hardest_positive = torch.where(positive, d, -inf).amax(dim=1)  # (N,)
        hardest_negative = torch.where(negative, d, inf).amin(dim=1)  # (N,)
        counted = positive.any(dim=1)  # (N,)
        hinge = (hardest_positive - hardest_negative + margin).clamp_min(0.0)  # (N,), 0 where not counted
        return torch.where(counted, hinge, 0.0).sum() / counted.sum().clamp_min(1)

    if mining == "semi_hard":
        # The negatives of each anchor in ascending order (the others at +inf, at the end).
        sorted_negative, _ = torch.where(negative, d, inf).sort(dim=1)  # (N, N)
        n_negative = negative.sum(dim=1, keepdim=True)  # (N, 1)
        # first negative strictly farther than each positive: [a, p] -> column of sorted_negative[a]
        first_farther = torch.searchsorted(sorted_negative.detach(), d.detach(), right=True)  # (N, N)
        found = first_farther < n_negative  # (N, N)
        nearest_farther = sorted_negative.gather(1, first_farther.clamp_max(n - 1))  # (N, N)
        farthest = sorted_negative.gather(1, (n_negative - 1).clamp_min(0))  # (N, 1)
        semi_hard_negative = torch.where(found, nearest_farther, farthest)  # (N, N) [a, p]
        hinge = (d - semi_hard_negative + margin).clamp_min(0.0)  # (N, N)
        return torch.where(positive, hinge, 0.0).sum() / positive.sum().clamp_min(1)

    valid = positive[:, :, None] & negative[:, None, :]  # (N, N, N) [a, p, n]
    hinge = (d[:, :, None] - d[:, None, :] + margin).clamp_min(0.0)  # (N, N, N)
    hinge = torch.where(valid, hinge, 0.0)
    return hinge.sum() / (hinge > 0).sum().clamp_min(1)


class MarginContrastiveLoss(nn.Module):
    """Hadsell et al.'s contrastive loss [0]; see :func:`margin_contrastive_loss`.

    Shapes: ``x1``, ``x2`` ``(N, D)``; ``same`` ``(N,)`` bool or 0/1.

    Args:
        margin: ``m > 0``.
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin = margin

    def forward(self, x1: Tensor, x2: Tensor, same: Tensor) -> Tensor:
        return margin_contrastive_loss(x1, x2, same, self.margin)

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


class TripletLoss(nn.Module):
    """Triplet loss with in-batch mining; see :func:`triplet_loss`.

    Shapes: ``embeddings`` ``(N, D)``; ``labels`` ``(N,)`` integer.

    Args:
        margin: ``m >= 0`` (FaceNet's 0.2 by default).
        mining: ``"batch_hard"``, ``"semi_hard"`` or ``"all"``.
        squared: use squared Euclidean distances.
    """

    def __init__(self, margin: float = 0.2, mining: Mining = "batch_hard", squared: bool = False) -> None:
        super().__init__()
        if mining not in MINING:
            raise ValueError(f"mining must be one of {MINING}, got {mining!r}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = margin
        self.mining = mining
        self.squared = squared

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        return triplet_loss(embeddings, labels, self.margin, self.mining, self.squared)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining!r}, squared={self.squared}"
