"""``ToyWorldDataset``: a map-style dataset that renders image ``start + i`` of a domain on demand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from anydistill.data.toyworld.classes import CLASSES, class_table
from anydistill.data.toyworld.domains import get_domain
from anydistill.data.toyworld.sample import image_size, render_sample, sample_id

__all__ = ["CLASSES", "ToyWorldDataset", "class_table", "sample_id"]

# The validation/test split of toyworld uses seeds far from any training seed, so no scene repeats.
TOYWORLD_HELDOUT_SEED_OFFSET = 10_000


class ToyWorldDataset(Dataset):
    """``length`` procedural images of ``domain`` (no disk): item ``i`` is image ``start + i`` of ``seed``.

    Items are raw samples (``image`` uint8 ``(H, W, 3)``, ``depth`` float32 ``(H, W)`` metres with 0 for
    sky, ``semantic`` uint8, ``instance`` int32, ``K`` float32 ``(3, 3)``, ``id`` str), passed through
    ``transform`` when given. Rendering is a pure function of ``(domain, seed, index)``, so workers and
    epochs see identical images in any order.
    """

    CLASSES = CLASSES
    class_table = staticmethod(class_table)

    def __init__(
        self,
        domain: str,
        size: int | tuple[int, int],
        length: int,
        seed: int = 0,
        start: int = 0,
        transform: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        if length < 0 or seed < 0 or start < 0:
            raise ValueError(f"length, seed and start must be >= 0, got {length}, {seed}, {start}")
        self.domain = get_domain(domain).name
        self.size = image_size(size)
        self.length = int(length)
        self.seed = int(seed)
        self.start = int(start)
        self.transform = transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Any:
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} toyworld images")
        index = self.start + i
        sample: dict[str, Any] = render_sample(index, self.seed, self.domain, self.size)
        sample["id"] = sample_id(self.domain, self.seed, index)
        return self.transform(sample) if self.transform is not None else sample
