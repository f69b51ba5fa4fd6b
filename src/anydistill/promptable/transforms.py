"""Resize an image so its long side is the model's input size, and map prompts along.

Same behaviour as ``segment_anything.utils.transforms.ResizeLongestSide``: the new size is
``round(side * target / max(H, W))`` per side (round half up; :func:`anydistill.preprocess.long_side_shape`,
shared with SAM's :class:`~anydistill.preprocess.Preprocess`), the image is resized with PIL's
bilinear filter (what ``torchvision``'s ``resize`` on a PIL image does), and coordinates are scaled
by ``new / old`` per axis. Two deviations, both on inputs where upstream fails: a side never
rounds to 0 pixels (a 1x10000 image becomes 1x1024, not 0x1024), and :meth:`apply_image_torch`
reads ``(H, W)`` from the last two dimensions (upstream reads the batch and channel sizes).
"""

# Adapted from https://github.com/facebookresearch/segment-anything/blob/2dbf79f1a2e35ca3ff8c0e17698761294045d819/segment_anything/utils/transforms.py

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from anydistill.preprocess import long_side_shape


class ResizeLongestSide:
    """Resizes images to long side ``target_length`` and maps point / box coordinates to match.

    Coordinates are ``(x, y)`` pixels in the last dimension; sizes are ``(H, W)``.
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = int(target_length)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        """``(new_h, new_w)`` with ``max(new_h, new_w) == long_side_length`` and the aspect kept
        (:func:`anydistill.preprocess.long_side_shape`, the one definition of SAM's frame)."""
        return long_side_shape(oldh, oldw, long_side_length)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 → ``(new_h, new_w, 3)`` uint8 (PIL bilinear, as upstream)."""
        if image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(f"expected an (H, W, C) uint8 image, got {image.shape} {image.dtype}")
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        pil = Image.fromarray(np.ascontiguousarray(image))
        return np.array(pil.resize((w, h), Image.Resampling.BILINEAR))  # writable, as upstream

    def _scale(self, original_size: tuple[int, ...]) -> tuple[float, float]:
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        return new_w / old_w, new_h / old_h

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """``(..., 2)`` (x, y) pixels of an ``original_size = (H, W)`` image → resized-frame pixels
        (a new float64 array)."""
        sx, sy = self._scale(original_size)
        out = np.array(coords, dtype=np.float64)  # a copy
        out[..., 0] *= sx
        out[..., 1] *= sy
        return out

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        """``(B, 4)`` (or ``(4,)``) XYXY boxes → ``(B, 4)`` in the resized frame."""
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: Tensor) -> Tensor:
        """``(B, C, H, W)`` float → resized with antialiased bilinear interpolation. Close to, but not
        bit-equal with, :meth:`apply_image` (what SAM was trained with)."""
        h, w = self.get_preprocess_shape(image.shape[-2], image.shape[-1], self.target_length)
        return F.interpolate(image, (h, w), mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: Tensor, original_size: tuple[int, ...]) -> Tensor:
        """Torch version of :meth:`apply_coords` (a new float32 tensor)."""
        sx, sy = self._scale(original_size)
        out = coords.to(torch.float32, copy=True)
        out[..., 0] *= sx
        out[..., 1] *= sy
        return out

    def apply_boxes_torch(self, boxes: Tensor, original_size: tuple[int, ...]) -> Tensor:
        """Torch version of :meth:`apply_boxes`."""
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
