"""Instance masks in a box cache as COCO RLE, in two plain arrays a ``.npy`` member can hold.

``mask_rle`` uint8 ``(L,)``: the N RLE ``counts`` strings (pycocotools' compressed form) concatenated;
``mask_rle_lengths`` int64 ``(N,)``: each string's length. The masks' size is the image's, which the
cache records. A 640×480 object mask of a few hundred bytes instead of 300 kB raw (pycocotools does the
encoding; only the packing into arrays is ours).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from anydistill.promptable.mask_utils import decode_rle, encode_rle

__all__ = ["masks_to_rle_arrays", "rle_arrays_to_masks"]


def masks_to_rle_arrays(masks: Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Bool ``(N, H, W)`` → ``{"mask_rle": uint8 (L,), "mask_rle_lengths": int64 (N,)}``."""
    masks = torch.as_tensor(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    counts = [r["counts"].encode("ascii") for r in encode_rle(masks.bool())]
    return {
        "mask_rle": np.frombuffer(b"".join(counts), dtype=np.uint8).copy(),
        "mask_rle_lengths": np.array([len(c) for c in counts], dtype=np.int64),
    }


def rle_arrays_to_masks(
    rle: np.ndarray, lengths: np.ndarray, size: tuple[int, int], indices: np.ndarray | None = None
) -> np.ndarray:
    """The inverse of :func:`masks_to_rle_arrays`: bool ``(n, H, W)`` for ``indices`` (default: all N) of
    an ``size = (H, W)`` image.

    Raises:
        ValueError: the lengths do not add up to the concatenated bytes (a damaged cache entry).
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    data = np.asarray(rle, dtype=np.uint8).reshape(-1).tobytes()
    if int(lengths.sum()) != len(data) or (lengths < 0).any():
        raise ValueError(f"mask RLE lengths add up to {int(lengths.sum())} bytes, the data has {len(data)}")
    ends = np.cumsum(lengths)
    starts = ends - lengths
    picked = np.arange(len(lengths)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    h, w = int(size[0]), int(size[1])
    if len(picked) == 0:
        return np.zeros((0, h, w), dtype=bool)
    rles = [{"size": [h, w], "counts": data[starts[i] : ends[i]]} for i in picked]
    return decode_rle(rles)
