"""Instance-mask datasets for promptable segmentation (Segment Anything training and evaluation).

A sample is one image and up to ``max_instances`` of its object masks, in the model's input frame:
the image resized so that its longest side is ``size`` and zero-padded at the bottom and right to
``(size, size)`` (SAM's ``ResizeLongestSide`` followed by the padding of ``Sam.preprocess``), the masks
resized and padded the same way. Three sources:

- :class:`ToyWorldInstances`: procedural toyworld images (rendered on the fly), instance ids 1..n;
- :class:`FolderInstances`: ``root/images/<rel>.<ext>`` with ``root/instances/<rel>.png`` (8- or
  16-bit ids, 0 = background; see :mod:`anydistill.data.folder`);
- :class:`CocoInstances`: a COCO instances JSON (polygons, uncompressed and compressed RLE) and its
  image folder; crowd annotations (``iscrowd = 1``) are skipped, as they are not single objects.

Every source yields an :class:`InstanceRecord` (image + lazily decoded masks), so instance areas are
known before any mask is resized: :class:`InstanceDataset` drops instances smaller than ``min_area``
pixels (counted in the original image), samples up to ``max_instances`` of the rest, and only decodes and
resizes those. :func:`collate_instances` pads the per-image instance count to the batch maximum.

- [0] Kirillov et al., "Segment Anything", ICCV 2023, https://arxiv.org/abs/2304.02643
- [1] Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014 (annotation format),
  https://cocodataset.org/#format-data
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pycocotools.mask as mask_utils
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from anydistill.data.folder import FolderDataset
from anydistill.data.io import read_image
from anydistill.data.toyworld import ToyWorldDataset
from anydistill.errors import DataError
from anydistill.preprocess import Preprocess, long_side_shape

__all__ = [
    "CocoInstances",
    "FolderInstances",
    "InstanceDataset",
    "InstanceRecord",
    "ToyWorldInstances",
    "collate_instances",
    "preprocess_shape",
    "resize_longest_side",
]

Sampling = Literal["random", "fixed"]


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """``(h, w)`` of an ``height x width`` image resized so that its longest side is ``long_side``
    (:func:`anydistill.preprocess.long_side_shape`, SAM's rule; never 0)."""
    return long_side_shape(height, width, long_side)


def resize_longest_side(
    image: np.ndarray, masks: np.ndarray, size: int
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Resizes an image and its masks into SAM's frame (:meth:`Preprocess.sam(size)
    <anydistill.preprocess.Preprocess.sam>`): longest side ``size``, padded to ``(size, size)``.

    The image is resized and rounded to uint8 by :meth:`~anydistill.preprocess.Preprocess.resize_pixels`
    (bilinear with antialiasing, as ``ResizeLongestSide.apply_image_torch``, then rounded), the masks as
    ``bilinear(mask) >= 0.5`` with antialiasing (an area-weighted vote: thin parts thinner than a pixel of
    the output vanish rather than grow). Both are padded with 0 at the bottom and right
    (:meth:`~anydistill.preprocess.Preprocess.pad_batch`).

    Args:
        image: uint8 ``(H, W, 3)``.
        masks: bool ``(N, H, W)``.
        size: the longest side after resizing (the model's input size, SAM: 1024).

    Returns:
        ``(image, masks, (h, w))``: uint8 ``(3, size, size)``, bool ``(N, size, size)`` and the size of
        the resized (unpadded) region.
    """
    spec = Preprocess.sam(size)
    height, width = image.shape[:2]
    h, w = spec.resized_shape(height, width)
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W)
    msk = torch.from_numpy(np.ascontiguousarray(masks))  # (N, H, W)
    scaled = (h, w) != (height, width)
    if scaled:
        img = spec.resize_pixels(img[None])[0].to(torch.uint8)  # (3, h, w)
        if msk.shape[0]:
            resized = F.interpolate(
                msk[:, None].float(), (h, w), mode="bilinear", align_corners=False, antialias=True
            )  # (N, 1, h, w)
            msk = resized[:, 0] >= 0.5  # (N, h, w)
        else:
            msk = msk.new_zeros((0, h, w))
    out_img, out_msk = spec.pad_batch(img), spec.pad_batch(msk)  # (3, S, S), (N, S, S)
    if not scaled:  # never hand out views of the caller's arrays (pad_batch returns its input as is)
        out_img = out_img.clone(memory_format=torch.contiguous_format) if out_img is img else out_img
        out_msk = out_msk.clone(memory_format=torch.contiguous_format) if out_msk is msk else out_msk
    return out_img, out_msk, (h, w)


class InstanceRecord:
    """One image and its instances, with masks decoded on demand.

    Args:
        image: uint8 ``(H, W, 3)``.
        id: the sample id (relative path, toyworld id, COCO file name).
        instance_ids: int64 ``(N,)`` ids of the instances (map values or COCO annotation ids).
        areas: int64 ``(N,)`` pixel count of each instance.
        decode: maps an index array ``(n,)`` into ``instance_ids`` to bool masks ``(n, H, W)``.
    """

    def __init__(
        self,
        image: np.ndarray,
        id: str,
        instance_ids: np.ndarray,
        areas: np.ndarray,
        decode: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        self.image = image
        self.id = id
        self.instance_ids = np.asarray(instance_ids, dtype=np.int64)
        self.areas = np.asarray(areas, dtype=np.int64)
        self._decode = decode

    def masks(self, which: np.ndarray) -> np.ndarray:
        """Bool ``(n, H, W)`` masks of the instances at positions ``which``."""
        which = np.asarray(which, dtype=np.int64)
        if which.size == 0:
            return np.zeros((0, *self.image.shape[:2]), dtype=bool)
        return self._decode(which)

    @classmethod
    def from_id_map(cls, image: np.ndarray, id_map: np.ndarray, id: str) -> InstanceRecord:
        """From an instance-id map ``(H, W)`` (0 = background)."""
        ids, counts = np.unique(id_map, return_counts=True)
        keep = ids != 0
        ids, counts = ids[keep], counts[keep]

        def decode(which: np.ndarray) -> np.ndarray:
            return id_map[None] == ids[which][:, None, None]  # (n, H, W)

        return cls(image, id, ids, counts, decode)


class ToyWorldInstances:
    """Toyworld images of ``domain`` with their object instances (rendered on demand, nothing on disk).

    Args:
        domain: toyworld domain name.
        size: rendered image size (int or ``(H, W)``); rendering at the model's input size avoids a resize.
        length: number of images.
        seed: scene seed (validation should use a seed far from training seeds).
        start: index of the first image.
    """

    def __init__(
        self, domain: str, size: int | tuple[int, int], length: int, seed: int = 0, start: int = 0
    ) -> None:
        self.dataset = ToyWorldDataset(domain, size, length, seed=seed, start=start)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> InstanceRecord:
        sample = self.dataset[index]
        return InstanceRecord.from_id_map(sample["image"], sample["instance"], sample["id"])


class FolderInstances:
    """A folder of images with one instance-id PNG each (``root/instances/<rel>.png``, 0 = background).

    Discovery and checks are :class:`~anydistill.data.folder.FolderDataset`'s (task ``"instance"``): a
    missing instance file or an image/label size mismatch raises :class:`~anydistill.errors.DataError`
    naming the file (unless ``on_missing_label="skip"``).

    Args:
        root: dataset folder.
        on_missing_label: ``"error"`` or ``"skip"`` (images without an instance file).
        on_bad_image: ``"error"`` or ``"skip"`` (unreadable files are replaced by the next sample).
        images_dir: image folder instead of ``root/images``.
    """

    def __init__(
        self,
        root: str | Path,
        on_missing_label: Literal["error", "skip"] = "error",
        on_bad_image: Literal["error", "skip"] = "error",
        images_dir: str | Path | None = None,
    ) -> None:
        self.dataset = FolderDataset(
            root,
            task="instance",
            on_missing_label=on_missing_label,
            on_bad_image=on_bad_image,
            images_dir=images_dir,
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> InstanceRecord:
        sample = self.dataset[index]
        return InstanceRecord.from_id_map(sample["image"], sample["instance"], sample["id"])


def _load_coco_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(path, "COCO annotation file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, f"malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(path, 'expected a COCO object with an "images" list')
    if not isinstance(data.get("annotations"), list):
        raise DataError(path, 'expected a COCO object with an "annotations" list')
    return data


class CocoInstances:
    """Images and instance masks from a COCO-format JSON (``pycocotools`` decodes the masks).

    Segmentations may be polygons (a list of ``[x0, y0, x1, y1, ...]``), uncompressed RLE (``counts`` a
    list) or compressed RLE (``counts`` a string). Annotations with ``iscrowd = 1`` are skipped.

    Args:
        annotation_file: the instances JSON.
        image_root: folder of the images (``file_name`` is relative to it).
        skip_empty: leave out images without a non-crowd annotation (they carry no training signal).
        check_files: check at construction that every image file exists (one ``stat`` per image).

    Raises:
        DataError: missing or malformed JSON; an image entry without ``id``/``file_name``/``height``/
            ``width``; an annotation whose ``image_id`` is not in ``images`` or without a segmentation;
            a missing image file (naming it); an image whose size differs from its JSON entry.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path,
        skip_empty: bool = True,
        check_files: bool = True,
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root)
        data = _load_coco_json(self.annotation_file)
        images: dict[int, dict[str, Any]] = {}
        for k, entry in enumerate(data["images"]):
            if not isinstance(entry, dict) or not all(
                f in entry for f in ("id", "file_name", "height", "width")
            ):
                raise DataError(
                    self.annotation_file, f'images[{k}] must have "id", "file_name", "height" and "width"'
                )
            images[int(entry["id"])] = entry
        self._annotations: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
        for k, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann:
                raise DataError(self.annotation_file, f'annotations[{k}] has no "image_id"')
            name = f"annotation {ann.get('id', k)}"
            if int(ann["image_id"]) not in images:
                raise DataError(
                    self.annotation_file,
                    f"{name} references image id {ann['image_id']}, which is not in images",
                )
            if ann.get("iscrowd", 0):
                continue
            if "segmentation" not in ann:
                raise DataError(self.annotation_file, f"{name} has no segmentation")
            self._annotations[int(ann["image_id"])].append(ann)
        ids = sorted(i for i in images if self._annotations[i] or not skip_empty)
        self._images = [images[i] for i in ids]
        if check_files:
            for entry in self._images:
                path = self.image_root / entry["file_name"]
                if not path.is_file():
                    raise DataError(path, f"image file not found (referenced by {self.annotation_file})")

    def __len__(self) -> int:
        return len(self._images)

    def _rle(self, ann: dict[str, Any], height: int, width: int) -> dict[str, Any]:
        segm = ann["segmentation"]
        name = f"annotation {ann.get('id', '?')}"
        if isinstance(segm, list):
            polygons = [p for p in segm if isinstance(p, list) and len(p) >= 6]
            if not polygons:  # degenerate polygons: an empty mask, dropped by min_area
                return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
            return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        if isinstance(segm, dict) and "counts" in segm and "size" in segm:
            if list(segm["size"]) != [height, width]:
                raise DataError(
                    self.annotation_file,
                    f"{name}: RLE size {segm['size']} differs from its image {height}x{width}",
                )
            if isinstance(segm["counts"], list):
                return mask_utils.frPyObjects(segm, height, width)
            return segm
        raise DataError(self.annotation_file, f"{name}: segmentation must be polygons or an RLE object")

    def __getitem__(self, index: int) -> InstanceRecord:
        entry = self._images[index]
        path = self.image_root / entry["file_name"]
        image = read_image(path)
        height, width = int(entry["height"]), int(entry["width"])
        if image.shape[:2] != (height, width):
            raise DataError(
                path,
                f"size mismatch: image is {image.shape[0]}x{image.shape[1]} (HxW) but "
                f"{self.annotation_file} says {height}x{width}",
            )
        anns = self._annotations[int(entry["id"])]
        rles = [self._rle(a, height, width) for a in anns]
        areas = np.array([mask_utils.area(r) for r in rles], dtype=np.int64)
        ann_ids = np.array([a.get("id", k) for k, a in enumerate(anns)], dtype=np.int64)

        def decode(which: np.ndarray) -> np.ndarray:
            return np.stack([mask_utils.decode(rles[i]).astype(bool) for i in which])  # (n, H, W)

        return InstanceRecord(image, str(entry["file_name"]), ann_ids, areas, decode)


class InstanceDataset(Dataset):
    """Images with up to ``max_instances`` instance masks each, in the model's input frame.

    Item ``i`` is a dict:

    - ``image``: uint8 ``(3, S, S)``, resized to longest side ``S = size`` and zero-padded bottom/right;
    - ``masks``: bool ``(K, S, S)``, ``0 <= K <= max_instances`` (padding is False);
    - ``instance_ids``: int64 ``(K,)`` ids of the chosen instances (map values / annotation ids);
    - ``input_size``: int64 ``(2,)`` ``(h, w)`` of the resized, unpadded image;
    - ``original_size``: int64 ``(2,)`` ``(H, W)`` of the source image;
    - ``original_masks``: bool ``(K, H, W)``, the same instances in the source image's frame (only with
      ``original_masks=True``, for evaluation in the original frame);
    - ``id``: the sample id.

    Instances smaller than ``min_area`` pixels of the *original* image are ignored, and so are instances
    that vanish when resized. ``sampling="random"`` draws a fresh subset every time (torch's RNG, so
    DataLoader workers differ); ``"fixed"`` draws the same subset for item ``i`` every time (seeded by
    ``(seed, i)``), for validation.

    Args:
        source: a :class:`ToyWorldInstances`, :class:`FolderInstances`, :class:`CocoInstances`, or any
            sequence of :class:`InstanceRecord`.
        size: the model's input size (SAM: 1024; must equal ``image_encoder.img_size``).
        max_instances: most instances per image (SAM samples up to 64 masks per GPU batch).
        min_area: least instance area in original pixels.
        sampling: ``"random"`` or ``"fixed"``.
        seed: seed of ``"fixed"`` sampling.
        original_masks: also return the masks in the source image's frame.
    """

    def __init__(
        self,
        source: Sequence[InstanceRecord],
        size: int = 1024,
        max_instances: int = 16,
        min_area: int = 100,
        sampling: Sampling = "random",
        seed: int = 0,
        original_masks: bool = False,
    ) -> None:
        if size < 1 or max_instances < 1 or min_area < 0:
            raise ValueError(
                f"size and max_instances must be >= 1 and min_area >= 0, got {size}, {max_instances}, {min_area}"
            )
        if sampling not in ("random", "fixed"):
            raise ValueError(f"sampling must be 'random' or 'fixed', got {sampling!r}")
        self.source = source
        self.size = int(size)
        self.max_instances = int(max_instances)
        self.min_area = int(min_area)
        self.sampling = sampling
        self.seed = int(seed)
        self.original_masks = original_masks

    def __len__(self) -> int:
        return len(self.source)

    def _choose(self, candidates: np.ndarray, index: int) -> np.ndarray:
        if self.sampling == "random":
            order = torch.randperm(len(candidates)).numpy()
        else:
            order = np.random.default_rng([self.seed, index]).permutation(len(candidates))
        return candidates[order[: self.max_instances]]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.source[index]
        candidates = np.flatnonzero(record.areas >= max(self.min_area, 1))
        which = self._choose(candidates, index)
        original = record.masks(which)  # (n, H, W)
        image, masks, (h, w) = resize_longest_side(record.image, original, self.size)
        kept = masks.flatten(1).any(dim=1)  # (n,): drop instances that vanished when resized
        item = {
            "image": image,
            "masks": masks[kept],
            "instance_ids": torch.from_numpy(record.instance_ids[which])[kept],
            "input_size": torch.tensor([h, w], dtype=torch.int64),
            "original_size": torch.tensor(record.image.shape[:2], dtype=torch.int64),
            "id": record.id,
        }
        if self.original_masks:
            item["original_masks"] = torch.as_tensor(np.asarray(original, dtype=bool))[kept]  # (K, H, W)
        return item


def collate_instances(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batches :class:`InstanceDataset` items, padding the instance count to the batch maximum ``K``.

    Returns:
        ``image`` uint8 ``(B, 3, S, S)``, ``masks`` bool ``(B, K, S, S)``, ``valid`` bool ``(B, K)``
        (False for padding), ``instance_ids`` int64 ``(B, K)`` (-1 for padding), ``input_size`` and
        ``original_size`` int64 ``(B, 2)``, ``id`` list of B strings.
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    sizes = {tuple(s["image"].shape) for s in samples}
    if len(sizes) > 1:
        raise ValueError(f"all images of a batch must have the same padded size, got {sorted(sizes)}")
    batch_size = len(samples)
    k_max = max(s["masks"].shape[0] for s in samples)
    side = samples[0]["image"].shape[-2:]
    masks = torch.zeros((batch_size, k_max, *side), dtype=torch.bool)
    valid = torch.zeros((batch_size, k_max), dtype=torch.bool)
    ids = torch.full((batch_size, k_max), -1, dtype=torch.int64)
    for b, s in enumerate(samples):
        k = s["masks"].shape[0]
        masks[b, :k] = s["masks"]
        valid[b, :k] = True
        ids[b, :k] = s["instance_ids"]
    return {
        "image": torch.stack([s["image"] for s in samples]),  # (B, 3, S, S)
        "masks": masks,
        "valid": valid,
        "instance_ids": ids,
        "input_size": torch.stack([s["input_size"] for s in samples]),  # (B, 2)
        "original_size": torch.stack([s["original_size"] for s in samples]),  # (B, 2)
        "id": [s["id"] for s in samples],
    }
