"""task=classify data: the train/eval transforms, the train/val sets of a config, class folders on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anydistill.config import load_config
from anydistill.data.classify import OBJECT_CLASSES, ClassFolderDataset, ToyWorldObjects
from anydistill.data.classify_sets import (
    classify_eval_transform,
    classify_sets,
    classify_train_transform,
    write_class_folders,
)
from anydistill.errors import ConfigError


def test_transforms_give_float_images_of_the_size_in_0_1():
    image = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8)
    for tf, size in ((classify_train_transform(32), 32), (classify_train_transform(96), 96),
                     (classify_eval_transform(24), 24)):  # fmt: skip
        out = tf(image)
        assert out.shape == (3, size, size) and out.dtype == torch.float32
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    # small images: pad by S/8 = 4 px and crop back: the content shifts by at most 4 px
    ones = torch.full((3, 32, 32), 255, dtype=torch.uint8)
    torch.manual_seed(0)
    kept = [classify_train_transform(32, hflip=False)(ones)[0] > 0 for _ in range(30)]  # (32, 32) each
    rows = [int(k.any(1).sum()) for k in kept]
    cols = [int(k.any(0).sum()) for k in kept]
    assert min(rows + cols) >= 28 and min(rows + cols) < 32
    assert torch.equal(classify_eval_transform(32)(ones), torch.ones(3, 32, 32))


def _folder(root, classes=("a", "b"), n=5):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


def test_folder_sets_hold_out_a_fraction_or_need_a_validation_folder(tmp_path):
    root = _folder(tmp_path / "train")
    cfg = load_config(None, ["task=classify", "data.source=folder", f"data.train_root={root}",
                             "data.image_size=8", "data.val_fraction=0.2"])  # fmt: skip
    sets = classify_sets(cfg.data)
    assert sets.classes == ["a", "b"] and len(sets.train) == 8 and len(sets.val) == 2
    assert sets.val[0]["image"].shape == (3, 8, 8)
    cfg.data.val_fraction = 0.0
    with pytest.raises(ConfigError, match="validation set"):
        classify_sets(cfg.data)


def test_class_folders_are_written_once_and_rewritten_when_their_description_changes(tmp_path):
    crops = ToyWorldObjects("narrow", 8, 4, seed=0)
    root = write_class_folders(crops, crops.classes, tmp_path / "objs", {"count": 4})
    files = sorted(root.rglob("*.png"))
    assert len(files) == 4
    written = ClassFolderDataset(root, classes=OBJECT_CLASSES)
    for i in range(4):  # the same images and labels as the crops
        assert written.targets[i] == int(crops[int(written.paths[i].stem)]["label"])
        assert torch.equal(written[i]["image"], crops[int(written.paths[i].stem)]["image"])
    stamps = [f.stat().st_mtime_ns for f in files]
    write_class_folders(crops, crops.classes, root, {"count": 4})
    assert [f.stat().st_mtime_ns for f in files] == stamps
    fewer = ToyWorldObjects("narrow", 8, 2, seed=0)
    write_class_folders(fewer, fewer.classes, root, {"count": 2})
    assert len(list(root.rglob("*.png"))) == 2
    assert not list(tmp_path.glob("objs.tmp-*"))
