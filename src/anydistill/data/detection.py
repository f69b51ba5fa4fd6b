"""Object-detection datasets: images with class-labelled boxes (and optional instance masks).

A source yields :class:`DetectionRecord` s (the image, its boxes in pixels, contiguous labels, crowd flags
and lazily decoded masks); :class:`DetectionDataset` resizes them into the model's frame with torchvision's
box-aware ``transforms.v2`` (boxes travel as ``tv_tensors.BoundingBoxes``), and
:func:`collate_detection` pads a batch to one size. Two sources:

- :class:`ToyWorldDetection`: procedural toyworld images; every object's box is the exact extent of its
  instance mask, its label the object's kind (sphere, box, cylinder, cone, ellipsoid);
- :class:`CocoDetection`: a COCO JSON (``images``, ``annotations`` with ``bbox = [x, y, w, h]``,
  ``categories``) and its image folder. Category ids map to contiguous labels in the order of
  ``categories`` sorted by id. ``iscrowd = 1`` boxes are kept, flagged (evaluation ignores detections that
  fall on them, training neither rewards nor punishes them).

Bad input in a COCO file is one :class:`~anydistill.errors.DataError` naming the file and the entry
(duplicate image ids, a category id missing from ``categories``, an annotation of an unknown image, a
malformed ``bbox``), or a counted skip reported as one warning line: zero-area boxes, boxes wholly outside
their image (boxes partly outside are clipped to it), images whose file does not exist
(``on_missing_image="skip"``; the default ``"error"`` names the file).

Boxes are ``(x0, y0, x1, y1)`` in pixel-edge coordinates (COCO's convention: a box around pixel columns
0 … 9 spans x0 = 0, x1 = 10).

- [0] Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014 (annotation format),
  https://cocodataset.org/#format-data
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pycocotools.mask as mask_utils
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from anydistill.data.instances import _load_coco_json
from anydistill.data.io import read_image
from anydistill.data.toyworld import ToyWorldDataset
from anydistill.data.toyworld.classes import CLASSES as TOYWORLD_CLASSES
from anydistill.errors import DataError, warn

__all__ = [
    "CocoDetection",
    "DetectionDataset",
    "DetectionRecord",
    "ToyWorldDetection",
    "TOYWORLD_DETECTION_CLASSES",
    "boxes_from_id_map",
    "collate_detection",
]

#: toyworld's object kinds (the classes with instances), in label order 0..4.
TOYWORLD_DETECTION_CLASSES: tuple[str, ...] = tuple(name for cid, name, _ in TOYWORLD_CLASSES if cid >= 4)
_TOYWORLD_FIRST_OBJECT_CLASS = 4


@dataclass
class DetectionRecord:
    """One image and its objects.

    Args:
        image: uint8 ``(H, W, 3)``.
        id: the sample id (toyworld id, COCO ``file_name``).
        boxes: float32 ``(N, 4)`` ``(x0, y0, x1, y1)`` pixel-edge coordinates, inside the image.
        labels: int64 ``(N,)`` contiguous class labels ``0 … K-1``.
        iscrowd: bool ``(N,)``; crowd regions are neither positives nor negatives.
        decode_masks: optional, maps indices ``(n,)`` to bool masks ``(n, H, W)``.
    """

    image: np.ndarray
    id: str
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray = field(default=None)  # type: ignore[assignment]
    decode_masks: Callable[[np.ndarray], np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.boxes)
        self.iscrowd = (
            np.zeros(n, bool) if self.iscrowd is None else np.asarray(self.iscrowd, bool).reshape(-1)
        )
        if len(self.labels) != n or len(self.iscrowd) != n:
            raise ValueError(
                f"{self.id}: {n} boxes but {len(self.labels)} labels and {len(self.iscrowd)} crowd flags"
            )

    def masks(self) -> np.ndarray:
        """Bool ``(N, H, W)`` instance masks (raises when the source has none)."""
        if self.decode_masks is None:
            raise ValueError(f"{self.id}: this source has no instance masks")
        if not len(self.boxes):
            return np.zeros((0, *self.image.shape[:2]), dtype=bool)
        return self.decode_masks(np.arange(len(self.boxes)))


def boxes_from_id_map(id_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of every instance of an id map ``(H, W)`` (0 = background).

    Returns ``(ids (N,), boxes (N, 4) float32 pixel-edge xyxy, areas (N,) int64)``, ids ascending. One pass
    over the pixels (``np.minimum.at`` / ``maximum.at`` per id) instead of one mask per instance.
    """
    ids, inverse, areas = np.unique(id_map, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(id_map.shape)
    ys, xs = np.indices(id_map.shape)
    n = len(ids)
    x0 = np.full(n, id_map.shape[1], np.int64)
    y0 = np.full(n, id_map.shape[0], np.int64)
    x1 = np.full(n, -1, np.int64)
    y1 = np.full(n, -1, np.int64)
    flat = inverse.ravel()
    np.minimum.at(x0, flat, xs.ravel())
    np.minimum.at(y0, flat, ys.ravel())
    np.maximum.at(x1, flat, xs.ravel())
    np.maximum.at(y1, flat, ys.ravel())
    keep = ids != 0
    boxes = np.stack([x0, y0, x1 + 1, y1 + 1], axis=1)[keep].astype(np.float32)
    return ids[keep].astype(np.int64), boxes, areas[keep].astype(np.int64)


class ToyWorldDetection:
    """Toyworld images of ``domain`` with one exact box per object (rendered on demand, nothing on disk).

    An object's box is its instance mask's extent (occluded parts excluded, as an annotator would draw it);
    its label is its kind, ``TOYWORLD_DETECTION_CLASSES``. Objects smaller than ``min_area`` visible pixels
    are left out (a sliver behind another object is not a detection target).

    Args:
        domain: toyworld domain name (``narrow``, ``wide``, ...).
        size: rendered image size (int or ``(H, W)``).
        length: number of images.
        seed: scene seed.
        start: index of the first image.
        min_area: least visible area of an object, in pixels.
    """

    classes = TOYWORLD_DETECTION_CLASSES

    def __init__(
        self,
        domain: str,
        size: int | tuple[int, int],
        length: int,
        seed: int = 0,
        start: int = 0,
        min_area: int = 16,
    ) -> None:
        self.dataset = ToyWorldDataset(domain, size, length, seed=seed, start=start)
        self.min_area = int(min_area)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> DetectionRecord:
        sample = self.dataset[index]
        id_map, semantic = sample["instance"], sample["semantic"]
        ids, boxes, areas = boxes_from_id_map(id_map)
        keep = areas >= self.min_area
        ids, boxes = ids[keep], boxes[keep]
        # every pixel of an object has its kind's class; read it at one pixel of the instance
        first = {int(i): int(semantic.flat[k]) for i, k in zip(*_first_pixels(id_map, ids), strict=True)}
        labels = np.array([first[int(i)] - _TOYWORLD_FIRST_OBJECT_CLASS for i in ids], dtype=np.int64)

        def decode(which: np.ndarray) -> np.ndarray:
            return id_map[None] == ids[which][:, None, None]  # (n, H, W)

        return DetectionRecord(sample["image"], sample["id"], boxes, labels, decode_masks=decode)


def _first_pixels(id_map: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, flat index of one pixel of each id)``."""
    flat = id_map.ravel()
    uniq, first = np.unique(flat, return_index=True)
    where = np.searchsorted(uniq, ids)
    return ids, first[where]


class CocoDetection:
    """Boxes (and optional instance masks) from a COCO-format JSON.

    Args:
        annotation_file: the instances JSON.
        image_root: folder of the images (``file_name`` is relative to it).
        skip_empty: leave out images without any box (default False: an image with nothing on it still
            teaches the detector what background is).
        on_missing_image: ``"error"`` (default: the first missing file is named) or ``"skip"`` (counted).
        with_masks: decode the annotations' ``segmentation`` (polygons or RLE) into instance masks.
        quiet: no warning line for the counted skips (they stay in :attr:`skipped`).

    Attributes:
        classes: class names in label order (``categories`` sorted by id).
        category_ids: the COCO category id of each label.
        skipped: counts of what was left out, by reason.

    Raises:
        DataError: missing or malformed JSON; no ``categories``; duplicate image ids; an image entry
            without ``id``/``file_name``/``height``/``width``; an annotation of an unknown image, with a
            category id missing from ``categories``, or with a ``bbox`` that is not four numbers; a
            missing image file (``on_missing_image="error"``); an image whose size differs from its entry.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path,
        skip_empty: bool = False,
        on_missing_image: Literal["error", "skip"] = "error",
        with_masks: bool = False,
        quiet: bool = False,
    ) -> None:
        if on_missing_image not in ("error", "skip"):
            raise ValueError(f"on_missing_image must be 'error' or 'skip', got {on_missing_image!r}")
        self.annotation_file = path = Path(annotation_file)
        self.image_root = Path(image_root)
        self.with_masks = with_masks
        data = _load_coco_json(path)
        categories = data.get("categories")
        if not isinstance(categories, list) or not categories:
            raise DataError(path, 'expected a non-empty "categories" list (the class names)')
        cats: dict[int, str] = {}
        for k, c in enumerate(categories):
            if not isinstance(c, dict) or "id" not in c or "name" not in c:
                raise DataError(path, f'categories[{k}] must have "id" and "name"')
            if int(c["id"]) in cats:
                raise DataError(path, f"categories[{k}]: duplicate category id {c['id']}")
            cats[int(c["id"])] = str(c["name"])
        self.category_ids = sorted(cats)
        self.classes = [cats[i] for i in self.category_ids]
        label_of = {cid: label for label, cid in enumerate(self.category_ids)}

        images: dict[int, dict[str, Any]] = {}
        for k, entry in enumerate(data["images"]):
            if not isinstance(entry, dict) or not all(
                f in entry for f in ("id", "file_name", "height", "width")
            ):
                raise DataError(path, f'images[{k}] must have "id", "file_name", "height" and "width"')
            if int(entry["id"]) in images:
                raise DataError(
                    path,
                    f"images[{k}]: duplicate image id {entry['id']} (also {images[int(entry['id'])]['file_name']})",
                )
            images[int(entry["id"])] = entry

        self.skipped: Counter[str] = Counter()
        self._objects: dict[int, list[tuple[list[float], int, bool, dict[str, Any]]]] = {
            i: [] for i in images
        }
        for k, ann in enumerate(data["annotations"]):
            name = f"annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
            if not isinstance(ann, dict) or "image_id" not in ann:
                raise DataError(path, f'annotations[{k}] has no "image_id"')
            image = images.get(int(ann["image_id"]))
            if image is None:
                raise DataError(path, f"{name} references image id {ann['image_id']}, which is not in images")
            if int(ann.get("category_id", -1)) not in label_of:
                raise DataError(
                    path,
                    f"{name} has category_id {ann.get('category_id')}, which is not in categories {self.category_ids}",
                )
            bbox = ann.get("bbox")
            if (
                not isinstance(bbox, list | tuple)
                or len(bbox) != 4
                or not all(isinstance(v, int | float) and np.isfinite(v) for v in bbox)
            ):
                raise DataError(
                    path, f"{name}: bbox must be [x, y, width, height] (four numbers), got {bbox!r}"
                )
            x, y, w, h = (float(v) for v in bbox)
            if w <= 0 or h <= 0:
                self.skipped["zero-area boxes"] += 1
                continue
            width, height = float(image["width"]), float(image["height"])
            box = [
                min(max(x, 0.0), width),
                min(max(y, 0.0), height),
                min(max(x + w, 0.0), width),
                min(max(y + h, 0.0), height),
            ]
            if box[2] <= box[0] or box[3] <= box[1]:
                self.skipped["boxes outside their image"] += 1
                continue
            if box != [x, y, x + w, y + h]:
                self.skipped["boxes clipped to their image (kept)"] += 1
            if with_masks and not ann.get("iscrowd", 0) and "segmentation" not in ann:
                raise DataError(path, f"{name} has no segmentation, and instance masks were asked for")
            self._objects[int(ann["image_id"])].append(
                (box, label_of[int(ann["category_id"])], bool(ann.get("iscrowd", 0)), ann)
            )

        ids = sorted(i for i in images if self._objects[i] or not skip_empty)
        self._images = []
        for i in ids:
            file = self.image_root / images[i]["file_name"]
            if not file.is_file():
                if on_missing_image == "error":
                    raise DataError(file, f"image file not found (referenced by {path})")
                self.skipped["images whose file does not exist"] += 1
                continue
            self._images.append(images[i])
        reported = {k: v for k, v in self.skipped.items() if "(kept)" not in k}
        if reported and not quiet:
            warn(f"{path}: skipped " + ", ".join(f"{v} {k}" for k, v in reported.items()))

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> DetectionRecord:
        entry = self._images[index]
        file = self.image_root / entry["file_name"]
        image = read_image(file)
        height, width = int(entry["height"]), int(entry["width"])
        if image.shape[:2] != (height, width):
            raise DataError(
                file,
                f"size mismatch: image is {image.shape[0]}x{image.shape[1]} (HxW) but "
                f"{self.annotation_file} says {height}x{width}",
            )
        objects = self._objects[int(entry["id"])]
        boxes = np.array([o[0] for o in objects], dtype=np.float32).reshape(-1, 4)
        labels = np.array([o[1] for o in objects], dtype=np.int64)
        crowd = np.array([o[2] for o in objects], dtype=bool)
        decode = None
        if self.with_masks:
            anns = [o[3] for o in objects]

            def decode(which: np.ndarray) -> np.ndarray:
                return np.stack([self._mask(anns[i], height, width) for i in which])  # (n, H, W)

        return DetectionRecord(image, str(entry["file_name"]), boxes, labels, crowd, decode)

    @property
    def has_segmentation(self) -> bool:
        """Whether every non-crowd annotation has a ``segmentation`` (instance masks can be read)."""
        return all(
            crowd or "segmentation" in ann
            for objects in self._objects.values()
            for _, _, crowd, ann in objects
        )

    def _mask(self, ann: dict[str, Any], height: int, width: int) -> np.ndarray:
        segm = ann.get("segmentation")
        if segm is None:  # a crowd region without one: no pixels (its box still marks the region to ignore)
            return np.zeros((height, width), dtype=bool)
        if isinstance(segm, list):
            polygons = [p for p in segm if isinstance(p, list) and len(p) >= 6]
            if not polygons:
                return np.zeros((height, width), dtype=bool)
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segm, dict) and "counts" in segm and "size" in segm:
            rle = mask_utils.frPyObjects(segm, height, width) if isinstance(segm["counts"], list) else segm
        else:
            raise DataError(
                self.annotation_file,
                f"annotation {ann.get('id', '?')}: segmentation must be polygons or an RLE object",
            )
        return mask_utils.decode(rle).astype(bool)


class DetectionDataset(Dataset):
    """Detection records resized into the model's frame, with box-aware augmentation.

    The image is resized so that its longest side is ``size`` (aspect kept; boxes and masks follow through
    torchvision's ``transforms.v2``), then ``augment`` (e.g. :func:`detection_train_transform`) runs on the
    image and its ``BoundingBoxes`` together, and boxes that an augmentation made degenerate are dropped
    (``SanitizeBoundingBoxes``). Padding to a square batch is :func:`collate_detection`'s.

    Item ``i`` is a dict: ``image`` uint8 ``(3, h, w)`` with ``max(h, w) = size``; ``boxes`` float32
    ``(N, 4)`` xyxy in that frame; ``labels`` int64 ``(N,)``; ``iscrowd`` bool ``(N,)``; ``masks`` bool
    ``(N, h, w)`` (only with ``masks=True``); ``scale`` float32 ``(2,)`` = ``(h / H, w / W)`` (a box in the
    source image is the frame's box divided by it); ``original_size`` int64 ``(2,)``; ``id``.
    """

    def __init__(
        self,
        source: Sequence[DetectionRecord],
        size: int,
        augment: Callable[..., Any] | None = None,
        masks: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.source = source
        self.size = int(size)
        self.augment = augment
        self.masks = masks
        self._sanitize = v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_getter)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.source[index]
        height, width = record.image.shape[:2]
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(record.image)).permute(2, 0, 1))
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(record.boxes), format="XYXY", canvas_size=(height, width)
            ),
            "labels": torch.from_numpy(record.labels),
            "iscrowd": torch.from_numpy(record.iscrowd),
        }
        if self.masks:
            target["masks"] = tv_tensors.Mask(torch.from_numpy(record.masks()))
        image, target = v2.Resize(size=None, max_size=self.size, antialias=True)(image, target)
        if self.augment is not None:
            image, target = self.augment(image, target)
        image, target = self._sanitize(image, target)
        h, w = image.shape[-2:]
        item = {
            "image": image.as_subclass(Tensor),
            "boxes": target["boxes"].as_subclass(Tensor).float(),
            "labels": target["labels"],
            "iscrowd": target["iscrowd"],
            "scale": torch.tensor([h / height, w / width], dtype=torch.float32),
            "original_size": torch.tensor([height, width], dtype=torch.int64),
            "id": record.id,
        }
        if self.masks:
            item["masks"] = target["masks"].as_subclass(Tensor).bool()
        return item


def _labels_getter(inputs: Any) -> tuple[Tensor, ...]:
    """What ``SanitizeBoundingBoxes`` drops together with a degenerate box: labels, crowd flags (and masks
    travel as a ``Mask`` tv_tensor, which it filters on its own)."""
    target = inputs[1]
    return (target["labels"], target["iscrowd"])


def detection_train_transform(flip: float = 0.5, color_jitter: float = 0.4) -> v2.Compose:
    """Box-aware training augmentation: horizontal flip and colour jitter (brightness, contrast,
    saturation by ``color_jitter``; hue by a quarter of it)."""
    steps: list[Any] = []
    if flip > 0:
        steps.append(v2.RandomHorizontalFlip(flip))
    if color_jitter > 0:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter, color_jitter / 4))
    return v2.Compose(steps)


def collate_detection(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Pads a batch of :class:`DetectionDataset` items at the bottom and right to one ``(S, S)`` size.

    Returns: ``image`` uint8 ``(B, 3, S, S)`` (S the largest side in the batch), ``image_size`` int64
    ``(B, 2)`` (the unpadded ``(h, w)``), ``targets`` a list of B dicts (``boxes``, ``labels``,
    ``iscrowd``, optional ``masks`` padded to ``(N, S, S)``), ``scale`` ``(B, 2)``, ``original_size``
    ``(B, 2)``, ``id`` list of B strings.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    side = max(max(s["image"].shape[-2:]) for s in samples)
    images = torch.zeros((len(samples), 3, side, side), dtype=torch.uint8)
    targets = []
    for b, s in enumerate(samples):
        h, w = s["image"].shape[-2:]
        images[b, :, :h, :w] = s["image"]
        target = {k: s[k] for k in ("boxes", "labels", "iscrowd")}
        if "masks" in s:
            masks = torch.zeros((len(s["masks"]), side, side), dtype=torch.bool)
            masks[:, :h, :w] = s["masks"]
            target["masks"] = masks
        targets.append(target)
    return {
        "image": images,
        "image_size": torch.tensor([list(s["image"].shape[-2:]) for s in samples], dtype=torch.int64),
        "targets": targets,
        "scale": torch.stack([s["scale"] for s in samples]),
        "original_size": torch.stack([s["original_size"] for s in samples]),
        "id": [s["id"] for s in samples],
    }
