"""Image-classification data: class-per-folder image sets, unlabeled image folders, toyworld object crops.

The image sets of classification distillation (KD) and of the self-supervised methods' evaluation
(kNN / linear probe), and the unlabeled images of their pre-training:

- :class:`ClassFolderDataset`: ``root/<class>/**/<image>`` (torchvision's ``ImageFolder`` layout), read
  with :func:`~anydistill.data.io.read_image` (EXIF orientation, grey/RGBA/16-bit handled);
- :class:`UnlabeledImages`: every image under a folder, recursively (labels, if any, ignored);
- :class:`ToyWorldObjects`: the embedded set: crops centred on single toyworld objects, labelled with
  the object's kind, rendered on demand (no disk).

Every item is a dict ``{"image": uint8 (3, H, W) tensor, "label": int64 (labeled sets only), "id": str}``;
``transform`` is applied to the image tensor alone (e.g. :class:`~anydistill.data.views.SimCLRViews`,
whose list of views then stands under ``"image"``), and :func:`~anydistill.data.views.collate_views`
batches them.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from anydistill.data.io import IMAGE_EXTENSIONS, find_images, iter_files, read_image
from anydistill.data.toyworld.camera import Camera
from anydistill.data.toyworld.classes import CEILING, CLASS_IDS, CLASSES, FLOOR, SKY, WALL
from anydistill.data.toyworld.domains import get_domain
from anydistill.data.toyworld.render import render
from anydistill.data.toyworld.sample import make_scene, sample_id
from anydistill.data.toyworld.scene import Scene
from anydistill.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = ["OBJECT_CLASSES", "ClassFolderDataset", "ToyWorldObjects", "UnlabeledImages"]

Transform = Callable[[torch.Tensor], Any]
Policy = Literal["error", "skip"]
_MAX_REPLACEMENT_TRIES = 64

#: The object kinds of toyworld's class table (floor, wall, sky and ceiling left out), in table order:
#: the classes of :class:`ToyWorldObjects` (label ``k`` is ``OBJECT_CLASSES[k]``).
OBJECT_CLASSES: tuple[str, ...] = tuple(
    name for cid, name, _ in CLASSES if cid not in (FLOOR, WALL, SKY, CEILING)
)


def _to_chw(image: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` array → uint8 ``(3, H, W)`` contiguous tensor."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()  # (3, H, W)


def _check_policy(on_bad_image: str) -> None:
    if on_bad_image not in ("error", "skip"):
        raise ConfigError(f"on_bad_image must be one of ('error', 'skip'), got {on_bad_image!r}")


class _ImageList(Dataset):
    """A sorted list of image files read on demand, with ``on_bad_image`` handling (base class)."""

    def __init__(self, root: Path, transform: Transform | None, on_bad_image: Policy) -> None:
        _check_policy(on_bad_image)
        self.root = root
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.paths: list[Path] = []
        #: ``(path, reason)`` of every unreadable image replaced so far (``on_bad_image="skip"``; in this
        #: process only: DataLoader workers keep their own copy).
        self.skipped: list[tuple[Path, str]] = []
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def _index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        return index % len(self)

    def _load(self, index: int) -> tuple[int, torch.Tensor]:
        """``(i, image)``: image ``index`` as uint8 ``(3, H, W)``, or with ``on_bad_image="skip"`` the next
        readable one ``i`` (index + 1, + 2, ...: deterministic, the epoch keeps its length)."""
        if self.on_bad_image == "error":
            return index, _to_chw(read_image(self.paths[index]))
        tries = min(len(self), _MAX_REPLACEMENT_TRIES)
        for step in range(tries):
            i = (index + step) % len(self)
            if i in self._bad:
                continue
            try:
                return i, _to_chw(read_image(self.paths[i]))
            except DataError as e:
                self._bad.add(i)
                self.skipped.append((self.paths[i], str(e)))
                logger.warning("skipping unreadable image (replaced by the next one): %s", e)
        raise DataError(self.root, f"{tries} consecutive images from index {index} are unreadable")

    def _id(self, i: int) -> str:
        return self.paths[i].relative_to(self.root).as_posix()

    def _image(self, image: torch.Tensor) -> Any:
        return self.transform(image) if self.transform is not None else image


class ClassFolderDataset(_ImageList):
    """A class-per-folder image set, ``root/<class>/**/<image>`` (torchvision's ``ImageFolder`` layout).

    Class folders are the visible sub-folders of ``root`` (hidden ones, ``.name``, skipped); a class's
    images are found recursively inside its folder (extensions :data:`~anydistill.data.io.IMAGE_EXTENSIONS`
    in any case, as torchvision's ``ImageFolder`` leaves out ``.gif``; hidden files skipped), sorted, so the
    order is the same on every machine. Other files, and images directly in ``root``, are ignored with one
    warning (counted in :attr:`ignored_extensions`).

    Item ``i`` is ``{"image": uint8 (3, H, W) tensor (or transform(image)), "label": int64 scalar tensor,
    "id": "<class>/<relative path>"}``.

    Args:
        root: the split's folder (e.g. ``cifar10/train``).
        transform: applied to the uint8 ``(3, H, W)`` image tensor.
        classes: the class table to use instead of this split's sorted folder names: pass the training
            split's :attr:`classes` to a validation/test split so that labels agree (a class without a
            folder here is allowed; a folder whose class is not in the table is an error).
        on_bad_image: an unreadable image: ``"error"`` raises naming the file; ``"skip"`` replaces it by
            the next readable image (recorded in :attr:`skipped`, logged).

    Attributes:
        classes: class names; label ``k`` is ``classes[k]``.
        targets: the label of every image, in item order.
        paths: the image files, in item order.

    Raises:
        DataError: at construction, one line naming the folder: ``root`` missing; no class folder; only
            one class (classification needs two or more); a class folder without images; a class folder
            missing from ``classes``.
        ConfigError: ``classes`` with fewer than two names or a repeated name.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Transform | None = None,
        classes: Sequence[str] | None = None,
        on_bad_image: Policy = "error",
    ) -> None:
        super().__init__(Path(root), transform, on_bad_image)
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder not found")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DataError(
                self.root,
                "no class folders: expected one sub-folder of images per class (root/<class>/<image>)",
            )
        if classes is None:
            if len(folders) < 2:
                raise DataError(
                    self.root,
                    f"only one class folder ({folders[0]!r}); classification needs two or more classes",
                )
            self.classes = folders
        else:
            self.classes = self._check_table(classes)
            unknown = [f for f in folders if f not in self.classes]
            if unknown:
                raise DataError(
                    self.root / unknown[0],
                    f"class {unknown[0]!r} is not in the given class table ({_short(self.classes)})",
                )
            absent = [c for c in self.classes if c not in folders]
            if absent:
                logger.info("%s: no folder for class(es) %s of the class table", self.root, _short(absent))
        loose = [p.name for p in self.root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if loose:
            logger.warning(
                "%s: %d image(s) directly in the folder are ignored (images belong in root/<class>/)",
                self.root,
                len(loose),
            )
        index = {name: k for k, name in enumerate(self.classes)}
        self.targets: list[int] = []
        #: Files in the class folders left out because of their extension (``.gif``, ``.txt``, ...), by
        #: extension (as :attr:`FolderDataset.ignored_extensions <anydistill.data.folder.FolderDataset>`).
        self.ignored_extensions: Counter[str] = Counter()
        for name in folders:
            files = []
            for path in iter_files(self.root / name):
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(path)
                else:
                    self.ignored_extensions[path.suffix.lower() or "(none)"] += 1
            if not files:
                raise DataError(
                    self.root / name,
                    f"class folder {name!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                    "any case, recursively)",
                )
            files.sort()
            self.paths += files
            self.targets += [index[name]] * len(files)
        if self.ignored_extensions:
            shown = ", ".join(f"{ext} ({n})" for ext, n in self.ignored_extensions.most_common(5))
            logger.warning("%s: files in the class folders ignored by extension: %s", self.root, shown)

    @staticmethod
    def _check_table(classes: Sequence[str]) -> list[str]:
        if isinstance(classes, str):
            raise ConfigError(f"classes must be a list of class names, got the string {classes!r}")
        table = [str(c) for c in classes]
        if len(table) < 2:
            raise ConfigError(f"classes: classification needs two or more classes, got {table}")
        repeated = sorted({c for c in table if table.count(c) > 1})
        if repeated:
            raise ConfigError(f"classes: repeated class name(s) {repeated}")
        return table

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, image = self._load(self._index(index))
        return {
            "image": self._image(image),
            "label": torch.tensor(self.targets[i], dtype=torch.int64),
            "id": self._id(i),
        }


class UnlabeledImages(_ImageList):
    """Every image under ``root``, recursively (for self-supervised pre-training; class folders, if any,
    are just sub-folders: their names are ignored).

    Item ``i`` is ``{"image": uint8 (3, H, W) tensor (or transform(image)), "id": relative path}``; files
    are found by :func:`~anydistill.data.io.find_images` (sorted, hidden files skipped).

    Args:
        root: a folder of images (any depth).
        transform: applied to the uint8 ``(3, H, W)`` image tensor.
        on_bad_image: ``"error"`` or ``"skip"``, as :class:`ClassFolderDataset`.

    Raises:
        DataError: ``root`` missing or holding no image (naming it).
    """

    def __init__(
        self, root: str | Path, transform: Transform | None = None, on_bad_image: Policy = "error"
    ) -> None:
        super().__init__(Path(root), transform, on_bad_image)
        if not self.root.is_dir():
            raise DataError(
                self.root, "is a file, not a folder" if self.root.exists() else "image folder not found"
            )
        self.paths = find_images(self.root)

    def __getitem__(self, index: int) -> dict[str, Any]:
        i, image = self._load(self._index(index))
        return {"image": self._image(image), "id": self._id(i)}


def _short(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ----------------------------------------------------------------------------------- toyworld objects
_FINDER_SIZE = 64  # the low-resolution render that locates the objects of a scene
_SCENES_PER_ITEM = 64  # item i looks for its object in toyworld images i * 64 ... i * 64 + 63
_MAX_SIDE = 2.0  # the largest crop side, in finder widths (keeps the crop's field of view below 180°)
_SALT = zlib.crc32(b"toyworld-objects")


def _crop_camera(cam: Camera, x0: float, y0: float, side: float, size: int) -> Camera:
    """The camera whose ``size x size`` image is the square ``[x0, x0 + side] x [y0, y0 + side]`` of
    ``cam``'s image, in ``cam``'s pixel-edge coordinates (pixel ``j`` covers ``[j, j + 1]``).

    Crop pixel ``j`` has its centre at edge coordinate ``x0 + (j + 0.5)·s`` (``s = side / size``), i.e. at
    ``K`` coordinate ``u = x0 + (j + 0.5)·s − 0.5``; its ray ``(u − cx) / fx`` equals ``(j − cx') / fx'``
    with ``fx' = fx / s`` and ``cx' = (cx + 0.5 − x0) / s − 0.5`` (the same for ``y``).
    """
    s = side / size
    return replace(
        cam,
        fx=cam.fx / s,
        fy=cam.fy / s,
        cx=(cam.cx + 0.5 - x0) / s - 0.5,
        cy=(cam.cy + 0.5 - y0) / s - 0.5,
        width=size,
        height=size,
    )


def _bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` in pixel-edge coordinates of the True pixels of ``mask`` ``(H, W)``."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


class ToyWorldObjects(Dataset):
    """Crops of single toyworld objects labelled with the object's kind: the embedded classification set.

    Item ``i`` comes from the first toyworld image ``i * 64 + a`` (``a = 0, 1, ...``; images of
    ``(domain, seed)``, see :func:`~anydistill.data.toyworld.make_scene`) holding an object that covers
    at least ``min_area`` of a 64 x 64 render of it; among those objects one is picked by a generator
    seeded with ``(seed, i)``. Its label is its semantic class in the 64 x 64 render (a kind of
    :data:`OBJECT_CLASSES`). Kinds are drawn uniformly by the domains, so classes are balanced up to
    sampling and to how often each kind is visible enough (``wide``: 17-23 % each over 400 items).

    The crop is *rendered*, not cut out: a camera with the same pose looks through a square window
    centred on the object's bounding box, ``1 + 2 · context`` times its longest side, rendered at
    ``size x size`` (sharp at any size; the window may reach beyond the original image, where the world
    simply continues). When the object touches the border of the 64 x 64 render (only part of it was
    seen), the window is refined once from the object's mask in that first crop, so it is centred too.
    Everything is a function of ``(domain, seed, i)``: random access, no disk, identical in every worker.

    Item ``i`` is ``{"image": uint8 (3, size, size) tensor (or transform(image)), "label": int64 scalar
    tensor (index into :attr:`classes`), "id": "<domain>_<seed>_<image index>#<instance id>"}``;
    :meth:`crop` also returns the object's mask.

    Cost per item: a scene sampling per image looked at (1.4 per item in ``wide``, 1.05 in ``narrow``), a
    64² render of those with objects, one ``size``² render (two for objects at the border). At ``size=32``
    about 300 crops per CPU-second (Intel Xeon; 140-230 crops/s wall clock on one thread of a machine
    shared at load 2.5 per core).

    Args:
        domain: toyworld domain name (``"narrow"`` draws spheres, boxes and cylinders; ``"wide"`` all five).
        size: side of the square crops.
        count: number of items.
        seed: scene seed; use ``seed + TOYWORLD_HELDOUT_SEED_OFFSET`` for a test split (no shared scene).
        transform: applied to the uint8 ``(3, size, size)`` image tensor.
        min_area: the smallest visible object, as a fraction of the image (in the 64 x 64 render).
        context: margin around the object's bounding box on each side, as a fraction of its longest side.

    Attributes:
        classes: :data:`OBJECT_CLASSES` (all five object kinds, whatever the domain draws, so labels agree
            across domains: a ``narrow`` set only has labels 0-2).

    Raises:
        ConfigError: bad arguments, a domain without objects; an item for which none of its 64 images holds
            an object of at least ``min_area`` (lower ``min_area``).
    """

    def __init__(
        self,
        domain: str,
        size: int,
        count: int,
        seed: int = 0,
        transform: Transform | None = None,
        min_area: float = 0.005,
        context: float = 0.25,
    ) -> None:
        dom = get_domain(domain)
        if not isinstance(size, int) or size < 4:
            raise ConfigError(f"size must be an int >= 4, got {size!r}")
        if count < 0 or seed < 0:
            raise ConfigError(f"count and seed must be >= 0, got count={count}, seed={seed}")
        if not 0.0 < min_area < 1.0:
            raise ConfigError(f"min_area must be a fraction of the image in (0, 1), got {min_area}")
        if context < 0:
            raise ConfigError(f"context must be >= 0, got {context}")
        if not set(dom.object_kinds) & set(OBJECT_CLASSES) or dom.object_count[1] < 1:
            raise ConfigError(f"toyworld domain {dom.name!r} draws no objects; ToyWorldObjects needs some")
        self.domain = dom.name
        self.size = size
        self.count = int(count)
        self.seed = int(seed)
        self.transform = transform
        self.min_area = float(min_area)
        self.context = float(context)
        self.classes: list[str] = list(OBJECT_CLASSES)
        self._label_of_class = {CLASS_IDS[name]: k for k, name in enumerate(OBJECT_CLASSES)}

    def __len__(self) -> int:
        return self.count

    def crop(self, i: int) -> dict[str, Any]:
        """Item ``i`` before the transform, with its provenance.

        Returns:
            ``{"image": uint8 (size, size, 3), "mask": bool (size, size) (the object's visible pixels),
            "label": int, "scene": int (toyworld image index), "instance": int (its instance id there)}``.
        """
        if i < 0:
            i += self.count
        if not 0 <= i < self.count:
            raise IndexError(f"index {i} out of range for {self.count} toyworld objects")
        rng = np.random.default_rng([self.seed, i, _SALT])
        min_pixels = self.min_area * _FINDER_SIZE**2
        for a in range(_SCENES_PER_ITEM):
            index = i * _SCENES_PER_ITEM + a
            scene = make_scene(index, self.seed, self.domain, _FINDER_SIZE)
            if not scene.objects:
                continue
            finder = render(scene)
            areas = np.bincount(finder["instance"].ravel(), minlength=len(scene.objects) + 1)  # (n + 1,)
            big = np.flatnonzero(areas[1:] >= min_pixels) + 1  # instance ids
            if big.size == 0:
                continue
            instance = int(big[int(rng.integers(big.size))])
            where = finder["instance"] == instance  # (64, 64)
            label = self._label_of_class[int(finder["semantic"][where][0])]
            image, mask = self._render_crop(scene, where, instance)
            return {"image": image, "mask": mask, "label": label, "scene": index, "instance": instance}
        first = i * _SCENES_PER_ITEM
        raise ConfigError(
            f"min_area={self.min_area}: no object covers that much of the image in toyworld images "
            f"{first}..{first + _SCENES_PER_ITEM - 1} of domain {self.domain!r}, seed {self.seed}; lower min_area"
        )

    def _render_crop(
        self, scene: Scene, finder_mask: np.ndarray, instance: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Renders the window around the object's box in the finder (refined once from its mask in the
        first crop when the object touches the finder's border); returns the image ``(size, size, 3)``
        and the object's mask ``(size, size)``."""
        box = _bbox(finder_mask)  # in finder pixels
        touches = box[0] == 0 or box[1] == 0 or box[2] == _FINDER_SIZE or box[3] == _FINDER_SIZE
        out: tuple[np.ndarray, np.ndarray] | None = None
        for _ in range(2 if touches else 1):
            x0, y0, x1, y1 = box
            side = min(max(x1 - x0, y1 - y0) * (1.0 + 2.0 * self.context), _MAX_SIDE * _FINDER_SIZE)
            left, top = 0.5 * (x0 + x1 - side), 0.5 * (y0 + y1 - side)
            rendered = render(replace(scene, camera=_crop_camera(scene.camera, left, top, side, self.size)))
            mask = rendered["instance"] == instance  # (size, size)
            if not mask.any():  # (not expected) keep the first crop
                break
            out = rendered["image"], mask
            scale = side / self.size  # finder pixels per crop pixel
            cx0, cy0, cx1, cy1 = _bbox(mask)
            box = (left + cx0 * scale, top + cy0 * scale, left + cx1 * scale, top + cy1 * scale)
        return out if out is not None else (rendered["image"], mask)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.crop(i)
        image = _to_chw(item["image"])  # (3, size, size)
        return {
            "image": self.transform(image) if self.transform is not None else image,
            "label": torch.tensor(item["label"], dtype=torch.int64),
            "id": f"{sample_id(self.domain, self.seed, item['scene'])}#{item['instance']}",
        }
