"""Automatic mask generation ("segment everything") with a promptable SAM-style model.

The recipe of SAM [0] §A / segment-anything's ``SamAutomaticMaskGenerator`` [1], same defaults and
same output records:

1. Crops: the whole image, plus (``crop_n_layers > 0``) layer ``i`` of ``2^i x 2^i`` overlapping
   crops. Each crop is embedded once by the image encoder.
2. Prompts: a regular grid of foreground points over each crop (``points_per_side^2`` points, divided
   by ``crop_n_points_downscale_factor^i`` per side in layer ``i``), decoded ``points_per_batch`` at a
   time with ``multimask_output=True``: each point gives 3 candidate masks (whole, part, sub-part)
   with logits ``(P, 3, H, W)`` at crop resolution and predicted IoUs ``(P, 3)``.
3. Filters, per batch: predicted IoU ``> pred_iou_thresh`` (0.88); stability score
   ``>= stability_score_thresh`` (0.95), where the stability score is the IoU between the mask
   thresholded at ``mask_threshold + stability_score_offset`` and at ``mask_threshold -
   stability_score_offset`` (a mask that hardly moves when the cut-off moves is confident); masks
   whose box lies within 20 px of a crop edge that is not an image edge are dropped (cut objects).
   A threshold of 0 switches its filter off.
4. Box NMS within each crop (IoU ``box_nms_thresh`` = 0.7, scored by predicted IoU), then, with
   several crops, NMS across crops (``crop_nms_thresh``), preferring masks from smaller crops.
5. Optional clean-up (``min_mask_region_area > 0``): fill holes and drop islands smaller than that
   area, then NMS again preferring masks that needed no change.

Masks are kept as COCO RLE between steps (image-size bool masks for every candidate would not fit in
memory for large images).

Each record is a dict: ``segmentation`` (bool ``(H, W)`` array, or COCO RLE dict with ``str`` counts
when ``output_mode="coco_rle"``), ``area`` (int px), ``bbox`` (XYWH, ints, width = last column -
first column as upstream), ``predicted_iou``, ``point_coords`` (``[[x, y]]`` image px),
``stability_score`` and ``crop_box`` (XYWH).

- [0] Kirillov et al., "Segment Anything", ICCV 2023, https://arxiv.org/abs/2304.02643
- [1] https://github.com/facebookresearch/segment-anything (``automatic_mask_generator.py``)
"""

# Adapted from https://github.com/facebookresearch/segment-anything/blob/276024136981fecaf22e2620414831582e30fc13/segment_anything/automatic_mask_generator.py

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops.boxes import box_area

from anydistill.promptable.amg_candidates import _Candidates, _nms
from anydistill.promptable.batched import embed_rgb_images
from anydistill.promptable.mask_utils import (
    _pycocotools_mask,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    decode_rle,
    encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
    rle_area,
    uncrop_boxes_xyxy,
    uncrop_masks,
    uncrop_points,
)
from anydistill.promptable.predictor import SamPredictor

# The records' writers (COCO JSON, overlay PNG) are in anydistill.promptable.amg_output.
__all__ = ["AutomaticMaskGenerator"]

OutputMode = Literal["binary_mask", "coco_rle"]
_OUTPUT_MODES = ("binary_mask", "coco_rle")


class PromptPredictor(Protocol):
    """What the generator needs of a predictor (``segment_anything.SamPredictor`` and ours both fit)."""

    transform: Any

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None: ...

    def predict_torch(
        self,
        point_coords: Tensor | None,
        point_labels: Tensor | None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]: ...

    def reset_image(self) -> None: ...


def _make_predictor(model: nn.Module) -> PromptPredictor:
    return SamPredictor(model)


class AutomaticMaskGenerator:
    """Masks for everything in an image from a grid of point prompts (see the module docstring for the recipe).

    Args:
        model: a SAM-style model (then ``anydistill.promptable.SamPredictor(model)`` is built), or a
            predictor-like object with ``set_image``, ``predict_torch``, ``reset_image`` and
            ``transform`` (e.g. ``segment_anything.SamPredictor``), used as is.
        points_per_side: grid points per image side (``points_per_side^2`` prompts on the full image);
            exclusive with ``point_grids``.
        points_per_batch: prompts decoded at once (memory: ``3 * points_per_batch`` full-size logit maps).
        pred_iou_thresh: keep masks whose predicted IoU is ``>`` this (0 disables).
        stability_score_thresh: keep masks whose stability score is ``>=`` this (0 disables).
        stability_score_offset: logit offset ``o`` of the stability score ``IoU(l > t + o, l > t - o)``.
        box_nms_thresh: box IoU above which a lower-scored mask of the same crop is dropped.
        crop_n_layers: extra crop layers; layer ``i`` has ``(2^i)^2`` crops.
        crop_nms_thresh: box IoU for the NMS across crops.
        crop_overlap_ratio: overlap of neighbouring crops in layer 1, as a fraction of the short side
            (halved in each further layer).
        crop_n_points_downscale_factor: layer ``i`` uses ``points_per_side / factor^i`` points per side.
        point_grids: explicit grids, one ``(N_i, 2)`` array in ``[0, 1]`` (x, y) per layer
            ``0..crop_n_layers``; exclusive with ``points_per_side``.
        min_mask_region_area: if > 0, fill holes and remove islands smaller than this many pixels
            (needs scipy; may differ slightly from upstream, which uses OpenCV).
        output_mode: ``"binary_mask"`` (bool ``(H, W)`` arrays) or ``"coco_rle"`` (RLE dicts).
    """

    def __init__(
        self,
        model: nn.Module | PromptPredictor,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: OutputMode = "binary_mask",
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError(
                "give exactly one of points_per_side and point_grids "
                f"(got points_per_side={points_per_side!r}, point_grids={'set' if point_grids is not None else None})"
            )
        if output_mode not in _OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {_OUTPUT_MODES}, got {output_mode!r}")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        if crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {crop_n_layers}")
        if crop_n_points_downscale_factor < 1:
            raise ValueError(
                f"crop_n_points_downscale_factor must be >= 1, got {crop_n_points_downscale_factor}"
            )
        for name, value in (("box_nms_thresh", box_nms_thresh), ("crop_nms_thresh", crop_nms_thresh)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= crop_overlap_ratio < 1.0:
            raise ValueError(f"crop_overlap_ratio must be in [0, 1), got {crop_overlap_ratio}")
        if min_mask_region_area < 0:
            raise ValueError(f"min_mask_region_area must be >= 0, got {min_mask_region_area}")

        if points_per_side is not None:
            if points_per_side < 1:
                raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
            self.point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            assert point_grids is not None
            if len(point_grids) < crop_n_layers + 1:
                raise ValueError(
                    f"point_grids needs one grid per layer 0..crop_n_layers ({crop_n_layers + 1}), got {len(point_grids)}"
                )
            self.point_grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
            for i, g in enumerate(self.point_grids):
                if g.ndim != 2 or g.shape[1] != 2 or len(g) == 0:
                    raise ValueError(
                        f"point_grids[{i}] must be a non-empty (N, 2) array, got shape {g.shape}"
                    )
                if g.min() < 0 or g.max() > 1:
                    raise ValueError(f"point_grids[{i}] must hold (x, y) normalised to [0, 1]")

        _pycocotools_mask()  # fail now, not after the first crop, when pycocotools is missing
        if min_mask_region_area > 0:
            try:
                import scipy.ndimage  # noqa: F401
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError("min_mask_region_area > 0 needs scipy: pip install scipy") from err

        self.predictor: PromptPredictor = model if hasattr(model, "predict_torch") else _make_predictor(model)  # type: ignore[arg-type]
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode

    @property
    def mask_threshold(self) -> float:
        model = getattr(self.predictor, "model", None)
        return float(getattr(model, "mask_threshold", 0.0))

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Mask records for an RGB image ``(H, W, 3)`` uint8, ordered as upstream (by NMS score)."""
        return self.generate_batch([image], batch_size=1)[0]

    @torch.no_grad()
    def generate_batch(self, images: Sequence[np.ndarray], batch_size: int = 4) -> list[list[dict[str, Any]]]:
        """:meth:`generate` for several images: the same records for each, with the image encoder run on
        ``batch_size`` crops at once (the crops of all the images: with ``crop_n_layers=0``, the images
        themselves). Batching needs a predictor with ``set_embedding`` (ours); another (segment-anything's)
        embeds one crop at a time. Memory: one embedding per crop of ``images`` is held."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        images = [_check_image(image) for image in images]
        jobs = [  # (image, crop box, layer) for every non-empty crop
            (i, box, layer)
            for i, image in enumerate(images)
            for box, layer in zip(
                *generate_crop_boxes(image.shape[:2], self.crop_n_layers, self.crop_overlap_ratio),
                strict=True,
            )
            if box[2] > box[0]
            and box[3] > box[1]  # an empty crop of a tiny image (upstream would crash on it)
        ]
        embedded: list[tuple[Tensor, tuple[int, int]] | None] = [None] * len(jobs)
        model = getattr(self.predictor, "model", None)
        if hasattr(self.predictor, "set_embedding") and model is not None and len(jobs) > 1:
            for start in range(0, len(jobs), batch_size):
                crops = [_crop(images[i], box) for i, box, _ in jobs[start : start + batch_size]]
                features, sizes = embed_rgb_images(model, crops)  # (b, C, h', w')
                for k, size in enumerate(sizes):
                    embedded[start + k] = (features[k : k + 1], size)
        out = []
        for i, image in enumerate(images):
            mine = [(box, layer, embedded[j]) for j, (owner, box, layer) in enumerate(jobs) if owner == i]
            for j, (owner, _, _) in enumerate(jobs):
                if owner == i:
                    embedded[j] = None  # the image's embeddings are not needed past it
            out.append(self._records(self._generate_masks(image, mine)))
        return out

    def _records(self, data: _Candidates) -> list[dict[str, Any]]:
        if self.min_mask_region_area > 0:
            data = self._remove_small_regions(data, max(self.box_nms_thresh, self.crop_nms_thresh))
        if self.output_mode == "binary_mask":
            masks = decode_rle(data.rles)  # (N, H, W) bool
            segmentations: list[Any] = list(masks)
        else:
            segmentations = list(data.rles)
        areas = rle_area(data.rles)
        bboxes = box_xyxy_to_xywh(data.boxes).tolist()
        crop_boxes = box_xyxy_to_xywh(data.crop_boxes).tolist()
        ious, stabilities, points = data.iou_preds.tolist(), data.stability.tolist(), data.points.tolist()
        return [
            {
                "segmentation": segmentations[i],
                "area": areas[i],
                "bbox": bboxes[i],
                "predicted_iou": ious[i],
                "point_coords": [points[i]],
                "stability_score": stabilities[i],
                "crop_box": crop_boxes[i],
            }
            for i in range(len(data))
        ]

    def _generate_masks(
        self, image: np.ndarray, crops: list[tuple[list[int], int, tuple[Tensor, tuple[int, int]] | None]]
    ) -> _Candidates:
        """Candidates of every crop ``(box, layer, (embedding, input size) or None: embed it here)``."""
        orig_size = (image.shape[0], image.shape[1])
        parts = [self._process_crop(image, box, layer, orig_size, emb) for box, layer, emb in crops]
        data = _Candidates.cat(parts)
        if self.crop_n_layers > 0 and len(data) > 0:
            # Duplicates across crops: prefer masks from smaller crops (score 1 / crop area).
            scores = 1 / box_area(data.crop_boxes)
            data = data.select(_nms(data.boxes, scores, self.crop_nms_thresh))
        return data

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        layer: int,
        orig_size: tuple[int, int],
        embedded: tuple[Tensor, tuple[int, int]] | None = None,
    ) -> _Candidates:
        crop = _crop(image, crop_box)
        crop_size = (crop.shape[0], crop.shape[1])
        if embedded is None:
            self.predictor.set_image(crop)
        else:
            self.predictor.set_embedding(embedded[0], crop_size, embedded[1])  # type: ignore[attr-defined]

        points = self.point_grids[layer] * np.array(crop_size)[None, ::-1]  # (P, 2) crop px, (x, y)
        parts = [
            self._process_batch(points[s : s + self.points_per_batch], crop_size, crop_box, orig_size)
            for s in range(0, len(points), self.points_per_batch)
        ]
        self.predictor.reset_image()

        data = _Candidates.cat(parts)
        # Duplicates within the crop, scored by predicted IoU.
        data = data.select(_nms(data.boxes, data.iou_preds, self.box_nms_thresh))
        data.boxes = uncrop_boxes_xyxy(data.boxes, crop_box)
        data.points = uncrop_points(data.points, crop_box)
        return data

    def _process_batch(
        self,
        points: np.ndarray,
        crop_size: tuple[int, int],
        crop_box: list[int],
        orig_size: tuple[int, int],
    ) -> _Candidates:
        orig_h, orig_w = orig_size
        device = _predictor_device(self.predictor)
        coords = torch.as_tensor(
            self.predictor.transform.apply_coords(points, crop_size), device=device
        )  # (P, 2)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=device)  # (P,) all foreground
        logits, iou_preds, pts = self._decode(coords[:, None, :], labels[:, None], points)

        stability = calculate_stability_score(logits, self.mask_threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            keep = stability >= self.stability_score_thresh
            logits, iou_preds, pts, stability = (
                logits[keep],
                iou_preds[keep],
                pts[keep.cpu()],
                stability[keep],
            )

        masks = logits > self.mask_threshold  # (K, h, w) bool
        del logits
        boxes = batched_mask_to_box(masks)  # (K, 4) crop px
        keep = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
        if not bool(keep.all()):
            masks, boxes, iou_preds, pts, stability = (
                masks[keep],
                boxes[keep],
                iou_preds[keep],
                pts[keep.cpu()],
                stability[keep],
            )
        rles = encode_rle(uncrop_masks(masks, crop_box, orig_h, orig_w))  # full-image RLEs
        return _Candidates(
            rles=rles,
            boxes=boxes.cpu(),
            iou_preds=iou_preds.float().cpu(),
            points=pts,
            stability=stability.float().cpu(),
            crop_boxes=torch.tensor([crop_box], dtype=torch.int64).expand(len(rles), 4),
        )

    def _decode(self, coords: Tensor, labels: Tensor, points: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """Decode P single-point prompts (``coords (P, 1, 2)`` input frame) into 3 masks each and keep
        those whose predicted IoU passes ``pred_iou_thresh``.

        Returns ``logits (K, H, W)`` at the crop's size, ``iou_preds (K,)`` and their points ``(K, 2)``
        (crop px). Only the kept masks are upscaled to the crop's size: the same logits as
        ``predict_torch(..., return_logits=True)`` filtered afterwards (as upstream does), without
        upscaling ``3 P`` full-size maps of which the filter may drop most.
        """
        p = self.predictor
        model = getattr(p, "model", None)
        keep_fn = self._iou_keep
        if model is None or getattr(p, "features", None) is None:  # another predictor: its own path
            logits, iou, _ = p.predict_torch(coords, labels, multimask_output=True, return_logits=True)
            keep = keep_fn(iou.flatten(0, 1))  # (P*3,)
            pts = torch.as_tensor(points).repeat_interleave(iou.shape[1], dim=0)[keep.cpu()]
            return logits.flatten(0, 1)[keep], iou.flatten(0, 1)[keep], pts
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        low_res, iou = model.mask_decoder(
            image_embeddings=p.features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )  # (P, 3, h', w'), (P, 3)
        m = iou.shape[1]
        iou = iou.flatten(0, 1)  # (P*3,)
        keep = keep_fn(iou)
        pts = torch.as_tensor(points).repeat_interleave(m, dim=0)[keep.cpu()]  # (K, 2), a point per mask
        low_res = low_res.flatten(0, 1)[keep]  # (K, h', w')
        logits = model.postprocess_masks(low_res[:, None], p.input_size, p.original_size)[:, 0]  # (K, H, W)
        return logits, iou[keep], pts

    def _iou_keep(self, iou_preds: Tensor) -> Tensor:
        """``(N,)`` bool: predicted IoU ``> pred_iou_thresh`` (all, when the threshold is 0)."""
        if self.pred_iou_thresh > 0.0:
            return iou_preds > self.pred_iou_thresh
        return torch.ones(len(iou_preds), dtype=torch.bool, device=iou_preds.device)

    def _remove_small_regions(self, data: _Candidates, nms_thresh: float) -> _Candidates:
        """Fill small holes, drop small islands, then NMS preferring unchanged masks (score 1 vs 0)."""
        if len(data) == 0:
            return data
        # One mask at a time: connected components have no batched form, and decoding all masks at
        # once would hold N full-size masks in memory.
        new_rles, new_boxes, unchanged = [], [], []
        for rle in data.rles:
            mask = decode_rle(rle)
            mask, holes_changed = remove_small_regions(mask, self.min_mask_region_area, "holes")
            mask, islands_changed = remove_small_regions(mask, self.min_mask_region_area, "islands")
            changed = holes_changed or islands_changed
            unchanged.append(0.0 if changed else 1.0)
            new_rles.append(encode_rle(torch.from_numpy(mask)[None])[0] if changed else rle)
            new_boxes.append(batched_mask_to_box(torch.from_numpy(mask)))
        data = _Candidates(
            rles=new_rles,
            boxes=torch.stack(new_boxes),
            iou_preds=data.iou_preds,
            points=data.points,
            stability=data.stability,
            crop_boxes=data.crop_boxes,
        )
        return data.select(_nms(data.boxes, torch.tensor(unchanged), nms_thresh))


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got shape {image.shape} {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    return image


def _crop(image: np.ndarray, crop_box: list[int]) -> np.ndarray:
    x0, y0, x1, y1 = crop_box
    return image[y0:y1, x0:x1, :]


def _predictor_device(predictor: Any) -> torch.device:
    device = getattr(predictor, "device", None)
    if device is not None:
        return torch.device(device)
    features = getattr(predictor, "features", None)
    return features.device if isinstance(features, Tensor) else torch.device("cpu")
