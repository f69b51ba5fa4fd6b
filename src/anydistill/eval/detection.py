"""COCO box (and instance-mask) mAP of a detector, in each source image's own pixels.

torchmetrics' ``MeanAveragePrecision`` (pycocotools underneath: the COCO evaluation itself) does the
matching and averaging; what is ours is putting predictions and ground truth back into the source
image's frame first (the model saw the image resized to its input size), so that COCO's small / medium /
large area ranges (32², 96² pixels) mean what they mean on the user's images, and passing crowd flags
through (detections on crowd regions are ignored, not counted as false positives). A Mask R-CNN's masks
are scored the same way (``iou_type="segm"``, keys ``mask_map`` …), on masks resized back to the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.detection import MeanAveragePrecision
from tqdm import tqdm

from anydistill.checkpoints import detect_kind
from anydistill.data.detection import CocoDetection, DetectionDataset, ToyWorldDetection, collate_detection
from anydistill.data.detection_files import (
    DETECTION_MIN_SCORE,
    CocoResults,
    DetectionPredictions,
    inside_image,
    save_detection_overlay,
)
from anydistill.data.io import find_images, read_image
from anydistill.data.outputs import make_output_folder
from anydistill.data.toyworld import TOYWORLD_HELDOUT_SEED_OFFSET
from anydistill.errors import ConfigError, DataError
from anydistill.eval.evaluate import check_at_least, write_metrics_json
from anydistill.loading import load_model
from anydistill.preprocess import long_side_shape

__all__ = [
    "DETECTION_KEYS",
    "DETECTION_MIN_SCORE",
    "DetectionMetrics",
    "detection_eval_source",
    "evaluate_detector",
    "masks_to_source_frame",
    "source_target",
    "to_source_frame",
]

#: The figures :meth:`DetectionMetrics.compute` returns (COCO's names; -1 where a size has no object).
DETECTION_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")


def masks_to_source_frame(
    masks: Tensor, valid: Sequence[int], size: Sequence[int], threshold: float | None
) -> Tensor:
    """Masks in the model's padded frame ``(N, S, S)`` (or a Mask R-CNN's ``(N, 1, S, S)`` probabilities)
    → bool ``(N, H, W)`` in the source image's pixels: crop the unpadded ``valid = (h, w)``, resize to
    ``size = (H, W)`` (bilinear on probabilities, then ``> threshold``; nearest on bool masks with
    ``threshold=None``)."""
    h, w = int(valid[0]), int(valid[1])
    x = masks.reshape(-1, 1, *masks.shape[-2:])[..., :h, :w].float()  # (N, 1, h, w)
    if x.shape[0] == 0:
        return torch.zeros((0, int(size[0]), int(size[1])), dtype=torch.bool)
    if threshold is None:
        return F.interpolate(x, tuple(int(v) for v in size), mode="nearest")[:, 0] > 0.5
    return (
        F.interpolate(x, tuple(int(v) for v in size), mode="bilinear", align_corners=False)[:, 0] > threshold
    )


def to_source_frame(boxes: Tensor, scale: Tensor) -> Tensor:
    """``boxes (N, 4)`` xyxy in the model's frame → the source image's pixels; ``scale (2,)`` is
    ``(h / H, w / W)`` of :class:`~anydistill.data.detection.DetectionDataset`."""
    sy, sx = float(scale[0]), float(scale[1])
    return boxes / boxes.new_tensor([sx, sy, sx, sy])


class DetectionMetrics:
    """Accumulates a detector's predictions over batches; :meth:`compute` gives COCO mAP@[.5:.95], mAP50,
    mAP75, AP by object size and AR@100 (and per-class AP with ``class_metrics``).

    Args:
        class_metrics: also per-class AP (``map/<class name>``).
        class_names: names of labels ``0 … K-1`` (for the per-class keys).
        masks: also instance-mask mAP (``mask_map``, ``mask_map_50``, …) from the predictions' ``masks``
            (Mask R-CNN probabilities, thresholded at 0.5 as torchvision's ``paste_masks`` does) against
            the targets' ``masks``.
    """

    def __init__(
        self, class_metrics: bool = False, class_names: list[str] | None = None, masks: bool = False
    ) -> None:
        self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=class_metrics)
        self.mask_metric = MeanAveragePrecision(iou_type="segm") if masks else None
        self.class_names = class_names

    def reset(self) -> None:
        self.metric.reset()
        if self.mask_metric is not None:
            self.mask_metric.reset()

    def update(
        self,
        predictions: list[dict[str, Tensor]],
        batch: dict[str, Any],
        source_targets: list[dict[str, Tensor]] | None = None,
    ) -> None:
        """``predictions``: the model's eval output for ``batch`` (a :func:`collate_detection` batch).

        The ground truth is the batch's, mapped back to the source pixels (exact for boxes; masks resized
        back from the model's frame lose detail), or ``source_targets``: per image ``boxes (N, 4)``,
        ``labels``, ``iscrowd`` [, ``masks`` bool ``(N, H, W)``] in its own pixels
        (:func:`source_target`), what :func:`evaluate_detector` scores against."""
        targets = source_targets or [
            {"boxes": to_source_frame(t["boxes"].float().cpu(), scale), "labels": t["labels"].cpu(),
             "iscrowd": t["iscrowd"].cpu().long(),
             **({"masks": masks_to_source_frame(t["masks"].cpu(), batch["image_size"][b].tolist(),
                                                batch["original_size"][b].tolist(), None)} if "masks" in t else {})}
            for b, (t, scale) in enumerate(zip(batch["targets"], batch["scale"], strict=True))
        ]  # fmt: skip
        preds = [{"boxes": to_source_frame(p["boxes"].detach().float().cpu(), scale),
                  "scores": p["scores"].detach().float().cpu(), "labels": p["labels"].cpu()}
                 for p, scale in zip(predictions, batch["scale"], strict=True)]  # fmt: skip
        self.metric.update(preds, [{k: t[k] for k in ("boxes", "labels", "iscrowd")} for t in targets])
        if self.mask_metric is not None:
            self.mask_metric.update(*self._masks(predictions, batch, targets))

    def _masks(
        self, predictions: list[dict[str, Tensor]], batch: dict[str, Any], targets: list[dict[str, Tensor]]
    ) -> tuple[list, list]:
        preds, truth = [], []
        for b, (pred, target) in enumerate(zip(predictions, targets, strict=True)):
            if "masks" not in pred or "masks" not in target:
                raise ValueError(
                    "mask mAP needs masks in the predictions and the targets (a mask_rcnn model)"
                )
            valid, size = batch["image_size"][b].tolist(), batch["original_size"][b].tolist()
            preds.append({"masks": masks_to_source_frame(pred["masks"].detach().cpu(), valid, size, 0.5),
                          "scores": pred["scores"].detach().float().cpu(), "labels": pred["labels"].cpu()})  # fmt: skip
            truth.append(
                {"masks": target["masks"].bool(), "labels": target["labels"], "iscrowd": target["iscrowd"]}
            )
        return preds, truth

    def compute(self) -> dict[str, float]:
        out = self.metric.compute()
        figures = {k: float(out[k]) for k in DETECTION_KEYS}
        if self.mask_metric is not None:
            masks = self.mask_metric.compute()
            figures.update({f"mask_{k}": float(masks[k]) for k in DETECTION_KEYS})
        per_class = out.get("map_per_class")
        if self.metric.class_metrics and per_class is not None and per_class.numel() > 1:
            for label, ap in zip(out["classes"].tolist(), per_class.tolist(), strict=True):
                name = (
                    self.class_names[label]
                    if self.class_names and label < len(self.class_names)
                    else str(label)
                )
                figures[f"map/{name}"] = float(ap)
        return figures


def source_target(record: Any, masks: bool = False) -> dict[str, Tensor]:
    """A :class:`~anydistill.data.detection.DetectionRecord`'s ground truth in its own pixels, as
    :meth:`DetectionMetrics.update` takes it (``masks``: with its instance masks at full resolution)."""
    target = {"boxes": torch.from_numpy(record.boxes).float(), "labels": torch.from_numpy(record.labels),
              "iscrowd": torch.from_numpy(record.iscrowd).long()}  # fmt: skip
    if masks:
        target["masks"] = torch.from_numpy(record.masks())
    return target


def detection_eval_source(data: str, size: int, count: int, seed: int, masks: bool = False) -> Sequence[Any]:
    """``toyworld:<domain>`` (``count`` held-out images rendered at ``size``) or a COCO JSON file whose
    images lie under ``<json folder>/images`` (else beside the JSON); ``masks``: with instance masks (a COCO
    file whose annotations have no ``segmentation`` gives boxes only: its ``with_masks`` is False)."""
    if data.startswith("toyworld"):
        domain = data.partition(":")[2] or "wide"
        return ToyWorldDetection(domain, size, count, seed=seed + TOYWORLD_HELDOUT_SEED_OFFSET)
    path = Path(data)
    if path.suffix.lower() != ".json" or not path.is_file():
        raise DataError(path, "detection evaluation data must be toyworld:<domain> or a COCO JSON file")
    images = path.parent / "images"
    source = CocoDetection(path, images if images.is_dir() else path.parent)
    source.with_masks = masks and source.has_segmentation  # a box-only file: box mAP alone
    return source


@torch.inference_mode()
def evaluate_detector(
    checkpoint: str | Path,
    data: str = "toyworld:wide",
    count: int = 256,
    image_size: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    device: str = "cpu",
    out_json: str | Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """COCO box mAP, mAP50, mAP75, AP by size, AR@100 and per-class AP of a ``task=detect`` checkpoint on
    ``data`` (:func:`detection_eval_source`), in the source images' pixels; images resized to longest
    side ``image_size`` (default: the checkpoint's input size)."""
    check_at_least(1, count=count, image_size=image_size, batch_size=batch_size)
    check_at_least(0, seed=seed)
    loaded = load_model(checkpoint, device=device)
    if loaded.task != "detect":
        raise DataError(checkpoint, f"is a {loaded.task!r} model, not a detector (task=detect)")
    size = int(image_size or loaded.model.input_size)
    source = detection_eval_source(str(data), size, count, seed, masks=loaded.model.arch == "mask_rcnn")
    masks = bool(getattr(source, "with_masks", loaded.model.arch == "mask_rcnn"))  # COCO without masks: boxes
    if len(source) == 0:
        raise DataError(data, "no images to evaluate")
    loader = DataLoader(
        DetectionDataset(source, size, masks=masks), batch_size=batch_size, collate_fn=collate_detection
    )
    metrics = DetectionMetrics(class_metrics=True, class_names=loaded.classes.names, masks=masks)
    start = 0
    for batch in tqdm(loader, desc="evaluate", disable=not progress, unit="batch"):
        n = len(batch["id"])
        # scored against each image's own annotations, at full resolution (masks), not the resized ones
        truth = [source_target(source[k], masks) for k in range(start, start + n)]
        metrics.update(loaded.model(batch["image"].to(device)), batch, truth)
        start += n
    figures = {**metrics.compute(), "images": float(len(source))}
    if out_json is not None:
        write_metrics_json(out_json, checkpoint, str(data), figures)
    return figures


def is_detector_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is an anydistill ``task=detect`` checkpoint (False for anything else, even an
    unreadable file: the caller's own loader names the problem)."""
    path = Path(path)
    if path.suffix != ".ckpt" or not path.is_file():
        return False
    try:
        return detect_kind(path).task == "detect"
    except DataError:
        return False


@torch.inference_mode()
def predict_detections(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    image_size: int | None = None,
    min_score: float = DETECTION_MIN_SCORE,
    device: str = "cpu",
    overlays: bool = True,
) -> DetectionPredictions:
    """Detect objects in every image under ``images`` (recursive) with a ``task=detect`` checkpoint.

    Writes ``out/detections.json`` in COCO's format (``images``, ``categories``, ``annotations`` with
    ``bbox = [x, y, w, h]`` in each image's own pixels and a ``score``; category ids ``1 … K``; a Mask
    R-CNN's instance mask as ``segmentation``, COCO RLE), written
    atomically, and, with ``overlays``, ``out/overlays/<image>.png``: the image with its boxes and labels.
    Detections below ``min_score`` are left out. Unreadable images are skipped and reported.
    """
    check_at_least(1, image_size=image_size)
    if not 0 <= min_score <= 1:
        raise ConfigError(f"min_score: must be in [0, 1], got {min_score}")
    root = Path(images)
    files = find_images(root)
    base = root if root.is_dir() else root.parent
    loaded = load_model(checkpoint, device=device)
    if loaded.task != "detect":
        raise DataError(checkpoint, f"is a {loaded.task!r} model, not a detector (task=detect)")
    size = int(image_size or loaded.model.input_size)
    loaded.model.set_postprocess(score_thresh=min_score)
    names = list(loaded.classes.names)
    out = make_output_folder(Path(out))
    report = DetectionPredictions()
    coco = CocoResults(names)
    for path in tqdm(files, desc="predict", unit="img"):
        try:
            array = read_image(path)  # (H, W, 3) uint8
        except DataError as exc:
            report.skipped.append((path, exc.problem))
            continue
        height, width = array.shape[:2]
        h, w = long_side_shape(height, width, size)
        image = torch.from_numpy(array).permute(2, 0, 1)[None].float().div(255).to(device)  # (1, 3, H, W)
        x = (
            image
            if (h, w) == (height, width)
            else F.interpolate(image, (h, w), mode="bilinear", antialias=True)
        )
        x = F.pad(x.clamp(0, 1), (0, size - w, 0, size - h))  # (1, 3, S, S): the frame an export takes
        found = loaded.model(x)[0]
        keep = found["scores"] >= min_score
        masks = (
            masks_to_source_frame(found["masks"][keep].cpu(), (h, w), (height, width), 0.5).numpy()
            if "masks" in found
            else None
        )  # (N, H, W) bool: a Mask R-CNN's instance masks in the image's pixels
        boxes = to_source_frame(found["boxes"][keep].float().cpu(), torch.tensor([h / height, w / width]))
        boxes = torch.minimum(
            boxes.clamp_min(0), torch.tensor([width, height, width, height], dtype=torch.float32)
        ).numpy()
        scores, labels = found["scores"][keep].float().cpu().numpy(), found["labels"][keep].cpu().numpy()
        inside = inside_image(boxes)  # a box wholly in the square frame's padding clips to nothing
        boxes, scores, labels = boxes[inside], scores[inside], labels[inside]
        masks = masks[inside] if masks is not None else None
        rel = path.relative_to(base).as_posix()
        coco.add(rel, height, width, boxes, scores, labels, masks)
        if overlays:
            text = [
                f"{names[int(k)] if int(k) < len(names) else k} {s:.2f}"
                for k, s in zip(labels, scores, strict=True)
            ]
            target = out / "overlays" / Path(rel).with_suffix(".png")
            report.written.append(save_detection_overlay(target, array, boxes, text, masks))
        report.images += 1
        report.detections += len(boxes)
    if report.images == 0 and not report.skipped:
        raise DataError(root, "no images to predict")
    report.written.insert(0, coco.write(out / "detections.json"))
    return report
