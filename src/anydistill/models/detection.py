"""Detection students: torchvision's RetinaNet, FCOS, Faster R-CNN and Mask R-CNN over any timm backbone.

The detectors, anchors, box coding, matching, RoI align and NMS are torchvision's (reused, not rewritten);
what is ours is the glue a toolkit needs around them:

- :class:`TimmFPN`: any timm backbone's stride-``r`` taps through torchvision's ``FeaturePyramidNetwork``
  (P6/P7 by strided convs for the one-stage heads, as RetinaNet [0]; a max-pooled level for the two-stage
  RPN, as Faster R-CNN with FPN [2]);
- anchors sized from the taps' strides (RetinaNet's rule: base size 4 × stride, three scales 2^{0, 1/3,
  2/3} and aspect ratios {1:2, 1:1, 2:1}), so a small input gets small anchors instead of COCO's 32–512 px;
- one input convention for all four: a uint8 or [0, 1] float batch ``(B, 3, S, S)`` already resized by
  the data pipeline (the torchvision transform only normalises and pads to the backbone's multiple) and
  labels ``0 … K-1``; two-stage models reserve class 0 for background inside, so they shift labels in and
  out;
- crowd boxes (``iscrowd``): one-stage anchors matched to them are ignored (neither positive nor
  negative, as COCO's evaluation ignores detections on them); the other heads drop them from training
  targets;
- the one-stage classification loss is replaceable (:meth:`DetectionModel.set_classification_loss`): the
  focal loss FL(p_t) = −α_t (1 − p_t)^γ log p_t (α = 0.25, γ = 2) by default, exactly torchvision's; the
  training method can set plain or hard-negative-mined cross-entropy from
  :mod:`anydistill.losses.detection` for the focal-loss ablation.

- [0] Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, https://arxiv.org/abs/1708.02002
- [1] Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019,
  https://arxiv.org/abs/1904.01355
- [2] Ren et al., "Faster R-CNN", NeurIPS 2015, https://arxiv.org/abs/1506.01497; Lin et al., "Feature
  Pyramid Networks for Object Detection", CVPR 2017; He et al., "Mask R-CNN", ICCV 2017
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from anydistill.models.backbones import TimmBackbone
from anydistill.preprocess import Preprocess

__all__ = ["ARCHITECTURES", "DetectionModel", "TimmFPN", "build_detector", "retinanet_anchor_sizes"]

Architecture = Literal["retinanet", "fcos", "faster_rcnn", "mask_rcnn"]
ARCHITECTURES: tuple[str, ...] = ("retinanet", "fcos", "faster_rcnn", "mask_rcnn")

#: A classification loss for dense one-stage heads: ``(logits (A, K), targets (A, K) in {0, 1}, valid (A,)
#: bool) -> summed loss`` (the head divides by the number of positive anchors).
DenseClassificationLoss = Callable[[Tensor, Tensor, Tensor], Tensor]


class TimmFPN(nn.Module):
    """``x (B, 3, H, W)`` normalised → ``OrderedDict`` of FPN maps ``(B, C, H / r, W / r)``, finest first.

    Args:
        backbone: the timm feature extractor (its taps are the FPN's inputs).
        out_channels: FPN width C.
        extra: ``"p6p7"`` (two more levels by stride-2 3×3 convs on the coarsest map, RetinaNet/FCOS),
            ``"pool"`` (one max-pooled level, the Faster R-CNN RPN's), or ``None``.
    """

    def __init__(self, backbone: TimmBackbone, out_channels: int, extra: str | None = "p6p7") -> None:
        super().__init__()
        self.body = backbone
        blocks: Any = {
            "p6p7": LastLevelP6P7(out_channels, out_channels),
            "pool": LastLevelMaxPool(),
            None: None,
        }[extra]
        self.fpn = FeaturePyramidNetwork(list(backbone.channels), out_channels, extra_blocks=blocks)
        self.out_channels = out_channels
        n_extra = {"p6p7": 2, "pool": 1, None: 0}[extra]
        self.strides = [
            *backbone.reductions,
            *(backbone.reductions[-1] * 2 ** (k + 1) for k in range(n_extra)),
        ]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(k), f) for k, f in enumerate(feats)))


def retinanet_anchor_sizes(strides: Sequence[int], base: float = 4.0) -> tuple[tuple[int, ...], ...]:
    """RetinaNet's anchors per level: ``base × stride × 2^{0, 1/3, 2/3}`` (stride 8 → 32, 40, 50)."""
    return tuple(tuple(int(base * s * 2 ** (k / 3)) for k in range(3)) for s in strides)


class _AsIsTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without its resize: the data pipeline has resized already
    (aspect kept, longest side = the input size), so boxes and the model see the same frame; what is
    left is normalisation and padding to the backbone's multiple."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None) -> tuple[Tensor, Any]:
        return image, target


class _ClassificationHead(RetinaNetClassificationHead):
    """RetinaNet's classification subnet with a replaceable loss (default: torchvision's focal loss, the
    same computation as ``RetinaNetClassificationHead.compute_loss``, tested)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn: DenseClassificationLoss | None = None

    def compute_loss(
        self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], matched_idxs: list[Tensor]
    ) -> Tensor:
        if self.loss_fn is None:
            return super().compute_loss(targets, head_outputs, matched_idxs)
        losses = []
        for target, logits, matched in zip(targets, head_outputs["cls_logits"], matched_idxs, strict=True):
            foreground = matched >= 0  # (A,)
            onehot = torch.zeros_like(logits)  # (A, K)
            onehot[foreground, target["labels"][matched[foreground]]] = 1.0
            valid = matched != self.BETWEEN_THRESHOLDS  # (A,)
            losses.append(self.loss_fn(logits, onehot, valid) / max(1, int(foreground.sum())))
        return torch.stack(losses).mean()


class _RetinaNet(RetinaNet):
    """RetinaNet whose anchors matched to a crowd box are ignored (neither positive nor negative)."""

    def compute_loss(
        self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor]
    ) -> dict[str, Tensor]:
        matched_idxs = []
        for anchors_per_image, target in zip(anchors, targets, strict=True):
            if target["boxes"].numel() == 0:
                matched_idxs.append(
                    torch.full(
                        (anchors_per_image.size(0),), -1, dtype=torch.int64, device=anchors_per_image.device
                    )
                )
                continue
            matched = self.proposal_matcher(box_ops.box_iou(target["boxes"], anchors_per_image))  # (A,)
            crowd = target.get("iscrowd")
            if crowd is not None and bool(crowd.any()):
                on_crowd = (matched >= 0) & crowd.bool()[matched.clamp_min(0)]
                matched = torch.where(
                    on_crowd, torch.full_like(matched, self.proposal_matcher.BETWEEN_THRESHOLDS), matched
                )
            matched_idxs.append(matched)
        return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)


class DetectionModel(nn.Module):
    """One detector behind one convention (see the module docstring).

    ``forward(images, targets=None)``:

    - ``images``: uint8 or float in [0, 1], ``(B, 3, S, S)`` (or a list of ``(3, h, w)``);
    - training: ``targets`` a list of B dicts with ``boxes`` float ``(N, 4)`` xyxy in the image's pixels,
      ``labels`` int64 ``(N,)`` in ``0 … K-1``, optional ``iscrowd`` bool ``(N,)`` and, for Mask R-CNN,
      ``masks`` bool ``(N, S, S)``; returns the detector's loss dict (``classification``,
      ``bbox_regression``, … or ``loss_classifier``, ``loss_box_reg``, ``loss_objectness``, …);
    - eval: a list of B dicts ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)`` in ``0 … K-1`` and, for
      Mask R-CNN, ``masks`` float ``(D, 1, S, S)`` probabilities.

    Attributes: ``arch``, ``num_classes`` (K), ``input_size`` (S, the default square input), ``strides``.
    """

    def __init__(
        self, detector: nn.Module, arch: str, num_classes: int, input_size: int, strides: Sequence[int]
    ) -> None:
        super().__init__()
        self.detector = detector
        self.arch = arch
        self.num_classes = num_classes
        self.input_size = input_size
        self.strides = list(strides)
        self.label_offset = 1 if arch in ("faster_rcnn", "mask_rcnn") else 0

    @property
    def backbone(self) -> TimmBackbone:
        """The timm feature extractor under the FPN."""
        return self.detector.backbone.body

    @property
    def input_multiple(self) -> int:
        """Inputs are zero-padded to a multiple of this (the backbone's coarsest stride) inside."""
        return int(self.detector.transform.size_divisible)

    def preprocess_spec(self, size: int | None = None) -> Preprocess:
        """Images resized to longest side ``size`` (default: the input size), padded bottom/right to a
        square in [0, 1] (the detector normalises inside, with the backbone's mean and std)."""
        transform = self.detector.transform
        return Preprocess(
            size=int(size or self.input_size), mean=tuple(transform.image_mean), std=tuple(transform.image_std),
            resize="long_side", pad="square", multiple=self.input_multiple, pad_before_normalize=True,
        )  # fmt: skip

    def set_postprocess(
        self, score_thresh: float | None = None, detections_per_img: int | None = None
    ) -> None:
        """Change the inference post-processing: the lowest score kept and the most detections per image
        (the two-stage models' RoI heads hold their own copies)."""
        for owner in (self.detector, getattr(self.detector, "roi_heads", None)):
            if owner is None:
                continue
            if score_thresh is not None and hasattr(owner, "score_thresh"):
                owner.score_thresh = float(score_thresh)
            if detections_per_img is not None and hasattr(owner, "detections_per_img"):
                owner.detections_per_img = int(detections_per_img)

    def postprocess_settings(self) -> dict[str, float | int]:
        """The inference post-processing in force: ``score_thresh``, ``nms_thresh``, ``detections_per_img``
        (the RoI heads' for the two-stage models)."""
        owner = getattr(self.detector, "roi_heads", None) or self.detector
        return {"score_thresh": float(owner.score_thresh), "nms_thresh": float(owner.nms_thresh),
                "detections_per_img": int(owner.detections_per_img)}  # fmt: skip

    def set_classification_loss(self, loss: DenseClassificationLoss | None) -> None:
        """Replace a RetinaNet student's classification loss (``None``: the focal loss again)."""
        head = getattr(getattr(self.detector, "head", None), "classification_head", None)
        if not isinstance(head, _ClassificationHead):
            raise ValueError(
                f"the classification loss is replaceable for retinanet students, not {self.arch}"
            )
        head.loss_fn = loss

    def forward(
        self, images: Tensor | Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> Any:
        batch = [im.float() / 255.0 if im.dtype == torch.uint8 else im for im in images]
        if self.training:
            if targets is None:
                raise ValueError("a detector in training mode needs targets")
            return self.detector(batch, [self._target_in(t) for t in targets])
        return [self._prediction_out(p) for p in self.detector(batch)]

    def forward_network(self, x: Tensor) -> dict[str, Any]:
        """The per-image network on a normalised batch ``x (B, 3, S, S)``: backbone, FPN and the dense
        head (one-stage: ``cls_logits (B, A, K)``, ``bbox_regression (B, A, 4)``, …; two-stage: the RPN's
        ``objectness`` and ``pred_bbox_deltas`` per level). What ``anydistill models`` counts; the
        proposal-dependent RoI heads, anchor decoding and NMS come after it."""
        feats = list(self.detector.backbone(x).values())
        if self.label_offset:
            objectness, deltas = self.detector.rpn.head(feats)
            return {"objectness": objectness, "pred_bbox_deltas": deltas}
        return self.detector.head(feats)

    def _target_in(self, target: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {"boxes": target["boxes"].float(), "labels": target["labels"].long() + self.label_offset}
        crowd = target.get("iscrowd")
        if self.arch == "retinanet":
            if crowd is not None:
                out["iscrowd"] = crowd.bool()
        elif crowd is not None and bool(crowd.any()):  # the other heads have no ignore state: drop them
            keep = ~crowd.bool()
            out = {k: v[keep] for k, v in out.items()}
            if "masks" in target:
                out["masks"] = target["masks"][keep]
        if self.arch == "mask_rcnn" and "masks" not in out:
            if "masks" not in target:
                raise ValueError("mask_rcnn training targets need masks (N, H, W)")
            out["masks"] = target["masks"]
        if "masks" in out:
            out["masks"] = out["masks"].to(torch.uint8)
        return out

    def _prediction_out(self, prediction: dict[str, Tensor]) -> dict[str, Tensor]:
        prediction["labels"] = prediction["labels"] - self.label_offset
        return prediction


def build_detector(
    arch: Architecture,
    backbone: TimmBackbone,
    num_classes: int,
    input_size: int,
    fpn_channels: int = 64,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
    score_thresh: float = 0.05,
    nms_thresh: float = 0.5,
    detections_per_img: int = 100,
    representation_size: int = 256,
    anchor_base: float | None = None,
) -> DetectionModel:
    """A torchvision detector of ``arch`` over ``backbone`` through a :class:`TimmFPN`.

    Args:
        arch: ``retinanet`` (focal loss, 9 anchors per location, GroupNorm subnets), ``fcos`` (anchor-free, centre-ness),
            ``faster_rcnn`` (RPN + RoI heads), ``mask_rcnn`` (Faster R-CNN + a mask head).
        backbone: timm taps, finest first (e.g. strides 8, 16, 32 for one-stage, 4 … 32 for two-stage).
        num_classes: K object classes (labels ``0 … K-1``; no background class to count).
        input_size: the square input size the data pipeline resizes to (the longest side).
        fpn_channels: FPN and head width.
        pixel_mean, pixel_std: normalisation ([0, 1] scale; default: the backbone's).
        score_thresh, nms_thresh, detections_per_img: inference post-processing (torchvision's).
        representation_size: width of the two-stage box head's two MLP layers (torchvision: 1024).
        anchor_base: anchor size / stride (default: RetinaNet's 4, FCOS 1 (torchvision's), 8 for the RPN).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if arch == "fcos" and fpn_channels % 32:
        raise ValueError(
            f"fcos needs fpn_channels divisible by 32 (its head's GroupNorm), got {fpn_channels}"
        )
    two_stage = arch in ("faster_rcnn", "mask_rcnn")
    body = TimmFPN(backbone, fpn_channels, extra="pool" if two_stage else "p6p7")
    common: dict[str, Any] = dict(
        min_size=input_size,
        max_size=input_size,
        image_mean=list(pixel_mean or backbone.pixel_mean),
        image_std=list(pixel_std or backbone.pixel_std),
    )
    if arch == "retinanet":
        sizes = retinanet_anchor_sizes(body.strides, anchor_base or 4.0)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        # GroupNorm in both subnets (torchvision's RetinaNet v2, Detectron2's option): from random
        # initialisation the plain v1 heads trained unstably here (loss spikes ×10³ at lr 2e-3 on a
        # batch of four), the normalised ones fell 10× in 30 steps on the same batch.
        norm = partial(nn.GroupNorm, min(32, max(1, fpn_channels // 4)))
        per_location = anchors.num_anchors_per_location()[0]
        head = RetinaNetHead(fpn_channels, per_location, num_classes, norm_layer=norm)
        head.classification_head = _ClassificationHead(
            fpn_channels, per_location, num_classes, norm_layer=norm
        )
        detector: nn.Module = _RetinaNet(
            body, num_classes, anchor_generator=anchors, head=head, score_thresh=score_thresh,
            nms_thresh=nms_thresh, detections_per_img=detections_per_img, **common,
        )  # fmt: skip
    elif arch == "fcos":
        sizes = tuple((round((anchor_base or 1.0) * s),) for s in body.strides)
        anchors = AnchorGenerator(sizes, ((1.0,),) * len(sizes))
        detector = FCOS(
            body, num_classes, anchor_generator=anchors, score_thresh=score_thresh, nms_thresh=nms_thresh,
            detections_per_img=detections_per_img, **common,
        )  # fmt: skip
    else:
        sizes = tuple((round((anchor_base or 8.0) * s),) for s in body.strides)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        names = [str(k) for k in range(len(backbone.channels))]
        box_pool = MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2)
        box_head = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
        kwargs: dict[str, Any] = dict(
            rpn_anchor_generator=anchors, box_roi_pool=box_pool, box_head=box_head,
            box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
            box_score_thresh=score_thresh, box_nms_thresh=nms_thresh, box_detections_per_img=detections_per_img,
        )  # fmt: skip
        if arch == "faster_rcnn":
            detector = FasterRCNN(body, None, **kwargs, **common)
        else:
            mask_pool = MultiScaleRoIAlign(featmap_names=names, output_size=14, sampling_ratio=2)
            mask_head = MaskRCNNHeads(fpn_channels, (fpn_channels,) * 4, 1)
            predictor = MaskRCNNPredictor(fpn_channels, fpn_channels, num_classes + 1)
            detector = MaskRCNN(
                body, None, mask_roi_pool=mask_pool, mask_head=mask_head, mask_predictor=predictor, **kwargs, **common
            )  # fmt: skip
    detector.transform = _AsIsTransform(
        input_size,
        input_size,
        common["image_mean"],
        common["image_std"],
        size_divisible=backbone.input_multiple,
    )
    return DetectionModel(detector, arch, num_classes, input_size, body.strides)
