"""The team's small real image sets (../shared/data); skipped in a user's clone, where it is absent."""

import numpy as np

from anydistill.data.folder import FolderDataset, UnlabeledImageFolder
from anydistill.data.importer import import_pairs
from anydistill.data.transforms import collate_samples, eval_transforms


def test_em_membranes_import_and_load(shared_data, tmp_path):
    em = shared_data / "em-membranes"
    out = import_pairs(
        em / "image", em / "label", tmp_path / "em", {255: 0, 0: 1}, ["cell", "membrane"], holdout=6
    )
    train = FolderDataset(out / "train", task="semantic")
    val = FolderDataset(out / "val", task="semantic", transform=eval_transforms(256, 32))
    assert (len(train), len(val)) == (24, 6)
    raw = train[0]
    assert raw["image"].shape == (512, 512, 3) and set(np.unique(raw["semantic"])) == {0, 1}
    assert 0.1 < (raw["semantic"] == 1).mean() < 0.4  # membranes are the thin minority
    batch = collate_samples([val[i] for i in range(2)])
    assert batch["image"].shape == (2, 3, 256, 256) and batch["semantic"].max() <= 1


def test_ants_bees_real_photos_load_and_batch(shared_data):
    folder = UnlabeledImageFolder(
        shared_data / "ants-bees" / "train" / "ants", transform=eval_transforms(128, 32)
    )
    assert len(folder) > 100
    batch = collate_samples([folder[i] for i in range(8)])
    assert batch["image"].shape == (8, 3, 128, 128)
    assert 0.05 < batch["image"].mean() < 0.95
