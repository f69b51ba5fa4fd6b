"""Classification knowledge distillation (``anydistill distill --task classify --teacher SPEC``; Hinton et
al. 2015): a small student learns a teacher classifier's temperature-softened outputs.

Before training, the teacher (:func:`~anydistill.teachers.load_teacher` with ``task="classify"``: an
anydistill classify checkpoint, ``timm:<name>@<weights>``, a transformers image-classification folder)
labels every training image once, and every image under ``classify.unlabeled_root`` when given: the
teacher pass of :mod:`anydistill.cache` (fp16 ``(K,)`` logits per image in tar shards + manifest, keyed
by the teacher's fingerprint; a rerun resumes it, or checks in a moment that it is complete and the
images unchanged). The caches go to ``distill.cache`` (default ``<run_dir>/teacher_cache``), in
``labeled/`` and ``unlabeled/``. Toyworld object crops are written as class folders under
``<run_dir>/toyworld_objects/train`` first, so the pass reads files like for a user's folder.

The cached logits of the *clean* images are the targets of the student's *augmented* views (flip,
pad-and-crop, optional CutMix): the teacher never runs during training. The loss is
:class:`~anydistill.methods.classify.ClassifyModule`'s: ``α · T² · KL + (1 − α) · CE`` on labeled images,
``w_u · T² · KL`` on unlabeled ones (``classify.temperature``, ``classify.alpha``,
``distill.unlabeled_weight``, batches ``distill.unlabeled_ratio`` times larger).

Class order: the teacher's logit ``i`` is the student's class ``i`` (the sorted class folders). When the
teacher names its classes (an anydistill checkpoint's table, a transformers ``id2label``) and the names are
the student's in another order, the logits are reordered to the student's; names that are not the
student's are warned about and index order is assumed. A teacher with another number of classes is
refused before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from anydistill.cache import open_cache, run_teacher_pass
from anydistill.config import TrainConfig
from anydistill.data.classify import ToyWorldObjects, UnlabeledImages
from anydistill.data.classify_sets import classify_sets, classify_train_transform, write_class_folders
from anydistill.data.folder_index import LABEL_DIRS
from anydistill.errors import ConfigError, DataError, warn
from anydistill.methods.base import MethodRun, register_method
from anydistill.methods.classify import ClassifyDataModule, classify_model_name, classify_module
from anydistill.teachers import load_teacher

__all__ = ["WithTeacherLogits", "build_kd", "cached_logits", "teacher_class_order"]


class WithTeacherLogits(Dataset):
    """Items of ``base`` (``{"image", "id", ...}``) that have cached logits, with ``"teacher"``: float32 ``(K,)``.

    Args:
        base: a dataset whose items' ``"id"`` is the image's path relative to the folder the teacher
            pass read (:class:`~anydistill.data.classify.ClassFolderDataset`,
            :class:`~anydistill.data.classify.UnlabeledImages`, or a ``Subset`` of one).
        table: ``{relative path: row}`` of ``logits``.
        logits: ``(N, K)`` float32.

    Raises:
        DataError: no item of ``base`` has cached logits.
    """

    def __init__(self, base: Dataset, table: dict[str, int], logits: torch.Tensor, where: Path) -> None:
        ids = _item_ids(base)
        keep = [i for i, image_id in enumerate(ids) if image_id in table]
        if not keep:
            raise DataError(
                where, f"holds teacher logits for none of the {len(ids)} images (another folder?)"
            )
        if len(keep) < len(ids):
            warn(
                f"{where}: {len(ids) - len(keep)} of {len(ids)} images have no teacher logits (unreadable?): left out"
            )
        self.base = base if len(keep) == len(ids) else Subset(base, keep)
        self.table, self.logits = table, logits

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        item["teacher"] = self.logits[self.table[item["id"]]]  # (K,)
        return item


def _item_ids(dataset: Dataset) -> list[str]:
    """The ``"id"`` of every item, without reading an image (a class folder or image list, or Subsets)."""
    if isinstance(dataset, Subset):
        inner = _item_ids(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    paths, root = getattr(dataset, "paths", None), getattr(dataset, "root", None)
    if paths is None or root is None:
        raise TypeError(f"{type(dataset).__name__}: cannot list its image ids")
    return [Path(p).relative_to(root).as_posix() for p in paths]


def cached_logits(
    cache_dir: str | Path, order: list[int] | None = None
) -> tuple[dict[str, int], torch.Tensor]:
    """The logits of a finished classify cache: ``({source path: row}, (N, K) float32)``, the columns
    taken in ``order`` (teacher index of each student class) when given.

    Raises:
        DataError: not a finished cache, or not a classifier's (naming the folder).
    """
    cache = open_cache(cache_dir)
    if cache.manifest.task != "classify":
        raise DataError(
            cache_dir, f"holds a {cache.manifest.task!r} teacher's targets, not a classifier's logits"
        )
    rows = [cache.read(image_id, ["logits"])["logits"] for image_id in cache.ids]  # [(K,) float16]
    logits = torch.from_numpy(np.stack(rows).astype(np.float32)) if rows else torch.zeros(0, 0)  # (N, K)
    if order is not None:
        logits = logits[:, order]  # (N, K) in the student's class order
    table = {cache.record(image_id)["source"]: i for i, image_id in enumerate(cache.ids)}
    return table, logits


def teacher_class_order(teacher: Any, classes: list[str], spec: str) -> list[int] | None:
    """The teacher's index of each of the student's classes when its named classes are the student's in
    another order, else None (index order).

    Raises:
        ConfigError: the teacher predicts another number of classes (naming the teacher).
    """
    if int(teacher.num_classes) != len(classes):
        shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        raise ConfigError(
            f"classify.teacher: {spec} predicts {teacher.num_classes} classes; the student's data has "
            f"{len(classes)} ({shown})"
        )
    names = getattr(teacher, "class_names", None)
    if not names or list(names) == list(classes):
        return None
    if sorted(names) == sorted(classes):
        return [list(names).index(c) for c in classes]
    warn(f"classify.teacher: {spec} names its classes {list(names)[:5]}, not the student's {classes[:5]}; "
         "assuming the same order")  # fmt: skip
    return None


def _toyworld_train_folder(cfg: TrainConfig) -> Path:
    """Toyworld's training crops written as class folders in the run folder (reused when they exist)."""
    d = cfg.data
    crops = ToyWorldObjects(d.train_domain, d.image_size, d.train_count, seed=d.seed)
    describe = {"domain": crops.domain, "seed": d.seed, "count": d.train_count, "size": d.image_size}
    return write_class_folders(
        crops, crops.classes, Path(cfg.run_dir) / "toyworld_objects" / "train", describe
    )


@register_method("kd", verbs=("distill",), tasks=("classify",))
def build_kd(cfg: TrainConfig) -> MethodRun:
    """Classification distillation: a teacher classifier's cached, temperature-softened logits + labels."""
    c = cfg.classify
    if not c.teacher:
        raise ConfigError(
            "classify.teacher: the teacher classifier is required (anydistill distill --teacher SPEC)"
        )
    classify_model_name(cfg.model.name)  # a bad student name fails before the teacher runs
    folder = _toyworld_train_folder(cfg) if cfg.data.source == "toyworld" else None
    sets = classify_sets(cfg.data, train_root=folder)
    assert sets.train_root is not None
    # The teacher pass reads a folder as the user folder format: "images/" is the image folder, and label
    # folders ("depth/", "semantic/", "instances/") are skipped, so a class of one of those names would be
    # misread. (An unlabeled folder may be in that format: then its images/ is what is read.)
    root, clash = (
        sets.train_root,
        [n for n in ("images", *LABEL_DIRS.values()) if (sets.train_root / n).is_dir()],
    )
    unlabeled = Path(c.unlabeled_root) if c.unlabeled_root else None
    if not clash and unlabeled is not None and not (unlabeled / "images").is_dir():
        root, clash = unlabeled, [n for n in LABEL_DIRS.values() if (unlabeled / n).is_dir()]
    if clash:
        raise ConfigError(
            f"{root} has a class folder named {clash[0]!r}, which the teacher pass reads as part of the user "
            "folder format (images/, depth/, semantic/, instances/); rename it"
        )
    size = {"image_size": c.teacher_image_size} if c.teacher_image_size else {}
    teacher = load_teacher(c.teacher, task="classify", **size)
    order = teacher_class_order(teacher, sets.classes, c.teacher)
    teacher.spec = c.teacher  # recorded in the caches' manifests
    cache_root = Path(cfg.distill.cache or Path(cfg.run_dir) / "teacher_cache")
    passes = {"labeled": sets.train_root}
    if c.unlabeled_root:
        passes["unlabeled"] = Path(c.unlabeled_root)
    manifests = {}
    for name, images in passes.items():
        manifests[name] = run_teacher_pass(
            teacher, images, cache_root / name, batch_size=max(16, cfg.data.batch_size),
            num_workers=cfg.data.num_workers, progress=cfg.trainer.progress_bar,
            accelerator=cfg.trainer.accelerator,
        )  # fmt: skip
        print(
            f"anydistill: teacher logits of the {name} images ({cache_root / name}): {manifests[name].summary()}"
        )
    del teacher  # its memory (a GPU's) goes back to the student
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    table, logits = cached_logits(cache_root / "labeled", order)
    train = WithTeacherLogits(sets.train, table, logits, cache_root / "labeled")
    unlabeled = None
    if "unlabeled" in manifests:
        d = cfg.data
        images = UnlabeledImages(
            manifests["unlabeled"].image_root,
            transform=classify_train_transform(d.image_size, d.crop_scale, d.hflip),
        )
        u_table, u_logits = cached_logits(cache_root / "unlabeled", order)
        unlabeled = WithTeacherLogits(images, u_table, u_logits, cache_root / "unlabeled")
    module = classify_module(cfg, sets.classes)
    datamodule = ClassifyDataModule(cfg.data, train, sets.val, unlabeled, cfg.distill.unlabeled_ratio)
    return MethodRun(module, datamodule, "val/top1", "max")
