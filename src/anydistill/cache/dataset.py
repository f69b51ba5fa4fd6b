"""A torch Dataset over a finished pseudo-label cache, joined with the images it was made from.

Each sample is a raw sample in the project's convention, with the teacher's outputs beside the image::

    "image"      uint8   (H, W, 3)    read from the image folder (read_image: RGB, EXIF applied)
    "disparity"  float32 (H, W)       the teacher's relative disparity (depth teachers) -- NOT metric
                                      depth: larger = nearer, 0 is a valid value (sky), no invalid mask
    "logits"     float32 (K, H, W)    the teacher's logits (semantic teachers); (K,) for classifiers
    "boxes"      float32 (N, 4)       a box teacher's detections, xyxy in the image's pixels, with
    "scores"     float32 (N,)         their scores and
    "labels"     int64   (N,)         labels (manifest ``classes`` names them); every detection the
                                      teacher kept: thresholds and NMS are the reader's choice
    "mask_rle"   uint8   (L,)         a box-and-mask teacher's instance masks as COCO RLE, kept encoded
    "mask_rle_lengths" int64 (N,)     (decode the ones you keep: :func:`anydistill.cache.masks.rle_arrays_to_masks`)
    "feat"       float32 (C, h, w)    frozen-encoder features at the teacher's feature size (only with
                                      ``features=True`` and a cache made with them)
    "id"         str

"feat" is off by default: it is not at the image's size, so the joint geometric transforms cannot move
it with the image (they refuse unknown arrays); the Depth Anything recipe computes the frozen
encoder's features online on the student's own (augmented) input instead.

Targets stored smaller than the image (the pass's ``max_size``) are resized back to ``(H, W)``
(bilinear), so image and targets are pixel-aligned for the joint transforms.

Random access goes through the shard indexes (one seek + read per target). Every read checks the
member's crc32; with ``check_images=True`` (the default) the image file's sha256 is compared with the
one recorded by the pass, so an image edited after the pass is an error naming it, not a silently
wrong pseudo-label.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from anydistill.cache.manifest import Manifest, PseudoLabelCache, open_cache
from anydistill.data.io import read_image
from anydistill.errors import DataError

__all__ = ["PseudoLabelDataset"]

_OUTPUT_KEY = {"disp": "disparity", "logits": "logits", "feat": "feat"}


def _resolve_images_dir(images_dir: str | Path) -> Path:
    """The pass's rule: ``DIR/images`` when it exists, else ``DIR``."""
    folder = Path(images_dir)
    return (folder / "images") if (folder / "images").is_dir() else folder


def _upsample(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(C, h, w)`` -> ``(C, H, W)`` bilinear (no-op at the same size)."""
    if tuple(array.shape[-2:]) == size:
        return array
    t = torch.from_numpy(array)[None]  # (1, C, h, w)
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].numpy()  # (C, H, W)


class PseudoLabelDataset(Dataset):
    """Samples of a pseudo-label cache (see the module docstring for keys, dtypes and shapes).

    Args:
        cache_dir: the folder written by :func:`anydistill.cache.run_teacher_pass`.
        images_dir: where the images are now (default: the folder recorded by the pass); the sources
            recorded in the cache are relative to it.
        transform: applied to each raw sample.
        teacher_fingerprint: when given, the cache must come from this teacher.
        verify: compare every shard's sha256 now (reads the whole cache once).
        check_images: compare each image file's sha256 with the pass's when it is read.
        features: also return the cached ``"feat"`` (see the module docstring).

    Raises:
        DataError: see :func:`anydistill.cache.open_cache`; in ``__getitem__``, an image that is
            missing or changed since the pass, or a damaged shard member.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        images_dir: str | Path | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        teacher_fingerprint: str | None = None,
        verify: bool = False,
        check_images: bool = True,
        features: bool = False,
    ) -> None:
        self.cache: PseudoLabelCache = open_cache(
            cache_dir, teacher_fingerprint=teacher_fingerprint, verify=verify
        )
        if images_dir is None:
            self.images_dir = Path(self.cache.manifest.image_root)  # already resolved by the pass
        else:
            self.images_dir = _resolve_images_dir(images_dir)
        if not self.images_dir.is_dir():
            raise DataError(
                self.images_dir, "image folder of the pseudo-label cache not found; pass images_dir"
            )
        self.transform = transform
        self.check_images = check_images
        self.features = features
        self._names = [t for t in self.cache.manifest.targets if features or t != "feat"]
        if features and "feat" not in self.cache.manifest.targets:
            raise DataError(
                Path(cache_dir), "features=True but this cache holds no features (pass --features)"
            )
        self.ids = list(self.cache.ids)

    @property
    def manifest(self) -> Manifest:
        return self.cache.manifest

    @property
    def unreadable(self) -> list[dict[str, str]]:
        """The images the pass could not cache (not in this dataset), with the reasons."""
        return list(self.cache.manifest.unreadable)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.images_dir / self.cache.record(self.ids[index])["source"]

    def load_raw(self, index: int) -> dict[str, Any]:
        """The raw sample ``index`` (before ``transform``)."""
        image_id = self.ids[index]
        record = self.cache.record(image_id)
        path = self.images_dir / record["source"]
        if self.check_images:
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except FileNotFoundError:
                raise DataError(path, "image of the pseudo-label cache not found") from None
            except OSError as e:
                raise DataError(path, f"cannot read image: {e.strerror or e}") from None
            if digest != record["sha256"]:
                raise DataError(
                    path,
                    "changed since the teacher pass (content sha256 differs from the cache's); "
                    "rerun the pass to refresh its pseudo-label",
                )
        image = read_image(path)
        hw = (int(image.shape[0]), int(image.shape[1]))
        sample: dict[str, Any] = {"image": image}
        for name, array in self.cache.read(image_id, self._names).items():
            if name == "labels":  # a box teacher's: int64 (N,), with boxes (N, 4) / scores (N,) below
                sample["labels"] = array.astype(np.int64)
                continue
            if name in ("mask_rle", "mask_rle_lengths"):  # encoded masks: the reader decodes what it keeps
                sample[name] = array
                continue
            array = array.astype(np.float32)
            if name in ("boxes", "scores"):
                sample[name] = array
            elif name == "disp":
                sample["disparity"] = _upsample(array[None], hw)[0]  # (H, W)
            elif name == "logits":
                sample["logits"] = array if array.ndim == 1 else _upsample(array, hw)  # (K,) / (K, H, W)
            else:
                sample[_OUTPUT_KEY.get(name, name)] = array  # (C, h, w)
        sample["id"] = image_id
        return sample

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        sample = self.load_raw(index % len(self))
        return self.transform(sample) if self.transform is not None else sample
