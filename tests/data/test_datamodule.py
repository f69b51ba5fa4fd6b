import pytest
import torch

from anydistill.config import load_config
from anydistill.data.classes import ClassInfo, class_info
from anydistill.data.datamodule import SupervisedDataModule, split_indices
from anydistill.data.toyworld import class_table, write_toyworld
from anydistill.errors import ConfigError


def test_split_is_deterministic_disjoint_and_complete():
    train, val = split_indices(30, 0.2, seed=1)
    assert len(val) == 6 and len(train) == 24
    assert sorted(train + val) == list(range(30))
    assert split_indices(30, 0.2, seed=1) == (train, val)
    assert split_indices(30, 0.2, seed=2) != (train, val)
    with pytest.raises(ConfigError):
        split_indices(1, 0.5, seed=0)


def test_toyworld_datamodule_batches():
    cfg = load_config(None, ["data.train_count=4", "data.val_count=2", "data.image_size=64", "data.batch_size=2",
                             "data.num_workers=0"])  # fmt: skip
    dm = SupervisedDataModule(cfg.data, "depth", input_multiple=32)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["depth_valid"].dtype == torch.bool
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (2, 3, 64, 64)
    assert dm.classes.names == [c["name"] for c in class_table()]


def test_folder_datamodule_holds_out_and_reads_classes(tmp_path):
    write_toyworld(tmp_path / "d", count=5, size=32, domain="narrow", seed=0, progress=False)
    cfg = load_config(None, [f"data.train_root={tmp_path / 'd'}", "data.source=folder", "data.image_size=32",
                             "data.val_fraction=0.4", "data.num_workers=0"])  # fmt: skip
    dm = SupervisedDataModule(cfg.data, "semantic", input_multiple=32)
    assert len(dm.train_set) == 3 and len(dm.val_set) == 2
    assert class_info(cfg.data).num_classes == len(class_table())


def test_image_size_must_fit_the_model():
    cfg = load_config(None, ["data.image_size=100"])
    with pytest.raises(ConfigError, match="multiple"):
        SupervisedDataModule(cfg.data, "depth", input_multiple=32)


def test_class_ids_must_be_contiguous():
    with pytest.raises(ConfigError, match="without gaps"):
        ClassInfo.from_table([{"id": 0, "name": "a"}, {"id": 2, "name": "b"}])
