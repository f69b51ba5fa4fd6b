"""Bad input for self-supervised pre-training (``anydistill pretrain``) fails at start with one line, exit 2,
naming the key and the problem, never mid-run; the inputs that look bad but are fine train.

Each error case runs the command in process on a folder of a few random PNGs and checks that the run
folder was never made (the method is built, and refuses, before :func:`anydistill.training.fit` starts)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from anydistill.cli import main
from anydistill.config import load_config
from anydistill.errors import ConfigError
from anydistill.losses.contrastive import KeyQueue
from anydistill.methods.base import get_method

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["data.num_workers=0", "trainer.max_steps=2", "trainer.progress_bar=false", "data.image_size=32",
        "pretrain.proj_hidden_dim=32", "pretrain.proj_dim=16", "pretrain.dino_out_dim=64",
        "pretrain.dino_hidden_dim=32", "pretrain.dino_bottleneck_dim=16", "pretrain.decoder_dim=32",
        "pretrain.decoder_depth=1", "pretrain.decoder_heads=2", "pretrain.n_local_crops=2"]  # fmt: skip
CNN = ["pretrain.backbone=resnet18_cifar", "pretrain.backbone_kwargs.channels=[8,16,32,64]"]
VIT = ["pretrain.backbone=vit_tiny_patch16_224", "pretrain.backbone_kwargs.patch_size=8",
       "pretrain.backbone_kwargs.depth=2", "pretrain.backbone_kwargs.embed_dim=48",
       "pretrain.backbone_kwargs.num_heads=2"]  # fmt: skip


def _pngs(folder, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """6 unlabeled images; class folders: one class, and classes of one image each."""
    root = tmp_path_factory.mktemp("ssl_bad")
    _pngs(root / "one" / "only", 3, 1)
    _pngs(root / "singles" / "a", 1, 2)
    _pngs(root / "singles" / "b", 1, 3)
    return SimpleNamespace(images=_pngs(root / "images", 6), one=root / "one", singles=root / "singles")


def _pretrain(method: str, images, run_dir, *extra: str) -> list[str]:
    backbone = VIT if method == "mae" or "vit" in " ".join(extra) else CNN
    return ["pretrain", "--method", method, "--images", str(images), f"run_dir={run_dir}", *TINY, *backbone,
            *extra]  # fmt: skip


def _refused(argv: list[str], run_dir, capsys) -> str:
    """The command exits 2 with one ``anydistill: error:`` line, no traceback, before the run starts."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("anydistill: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not run_dir.exists()  # refused at start: no run folder, no step
    return lines[0]


@pytest.mark.parametrize(
    ("method", "extra", "words"),
    [
        # (1) one class only in the kNN monitor's labeled sets
        ("simclr", ["pretrain.knn_train={one}", "pretrain.knn_val={one}"], ["only one class", "two or more"]),
        # (3) a batch too small for the negatives; a held-out set too small for NT-Xent (was a crash at the
        # end of the first epoch: "NT-Xent needs at least 2 samples")
        ("simclr", ["data.batch_size=1"], ["data.batch_size=1", "at least 2"]),
        ("simclr", ["data.batch_size=64"], ["data.val_fraction=0.2", "holds out 1 of 6", "at least 2"]),
        ("simclr", ["data.batch_size=4", "data.val_fraction=0.1"], ["data.val_fraction=0.1", "at least 2"]),
        # (4) MoCo's split BatchNorm on a batch it cannot split (was silent: whole-batch statistics)
        (
            "moco",
            ["data.batch_size=4", "data.val_fraction=0.34"],
            ["pretrain.bn_splits=8", "data.batch_size=4"],
        ),
        (
            "moco",
            ["data.batch_size=64", "pretrain.bn_splits=3", "data.val_fraction=0.34"],
            ["pretrain.bn_splits=3", "all 4 training images"],
        ),
        # ... and groups of one image (BatchNorm cannot normalise one value: MobileNetV4's pooled head)
        (
            "moco",
            ["data.batch_size=4", "pretrain.bn_splits=4", "data.val_fraction=0.34"],
            ["pretrain.bn_splits=4", "groups of 1", "at least 8"],
        ),
        # (5) a ViT patch that does not divide the crop: global crops (MAE, DINO) and DINO's local crops
        (
            "mae",
            ["data.image_size=36", "data.batch_size=4"],
            ["data.image_size=36", "patch size 8", "use 32"],
        ),
        ("dino", ["data.image_size=36", "data.batch_size=4", *VIT], ["data.image_size=36", "patch size 8"]),
        ("dino", ["data.batch_size=4", "pretrain.local_size=12", *VIT], ["pretrain.local_size=12", "patch"]),
    ],
)
def test_bad_input_is_one_line_at_start(data, tmp_path, capsys, method, extra, words) -> None:
    run_dir = tmp_path / "run"
    extra = [e.format(one=data.one) for e in extra]
    line = _refused(_pretrain(method, data.images, run_dir, *extra), run_dir, capsys)
    for word in words:
        assert word in line, line


def test_a_batch_larger_than_the_training_set_still_takes_every_step(data, tmp_path) -> None:
    """(3) 4 training images, batch 64: each epoch is one batch of all 4 (not zero steps by drop_last)."""
    run_dir = tmp_path / "run"
    argv = _pretrain("simclr", data.images, run_dir, "data.batch_size=64", "data.val_fraction=0.34")
    assert main(argv) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and np.isfinite(metrics["val"]["val/loss"])


def test_a_moco_queue_of_any_size_trains(data, tmp_path) -> None:
    """(4) queue_size 3 < batch 4 (and not a multiple of it): accepted, by design (see the FIFO test)."""
    run_dir = tmp_path / "run"
    argv = _pretrain("moco", data.images, run_dir, "data.batch_size=4", "data.val_fraction=0.34",
                     "pretrain.queue_size=3", "pretrain.bn_splits=2")  # fmt: skip
    assert main(argv) == 0
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state["queue.keys"].shape == (3, 16)  # each step's 4 keys: the newest 3 kept (FIFO test below)
    torch.testing.assert_close(state["queue.keys"].norm(dim=1), torch.ones(3))


@pytest.mark.parametrize(("size", "batches"), [(13, [8, 8, 8]), (5, [16, 16]), (3, [4, 1, 7]), (7, [7, 7])])
def test_the_key_queue_is_a_fifo_of_any_size_whatever_the_global_batch(size, batches) -> None:
    """(4) after any sequence of batches the queue, read from its oldest row (``ptr``), holds the newest
    ``size`` keys in arrival order, whether ``size`` divides the batch or not, and when the global batch
    (batch × world size: the keys gathered from every rank) is larger than the queue; a batch no larger
    than the queue leaves it row for row as enqueueing its keys one by one would."""
    torch.manual_seed(0)
    queue, one_by_one = KeyQueue(4, size), KeyQueue(4, size)
    one_by_one.load_state_dict(queue.state_dict())
    seen = list(queue.keys)  # the initial keys are the oldest
    for b in batches:
        keys = torch.nn.functional.normalize(torch.randn(b, 4), dim=1)
        queue.enqueue(keys)
        for key in keys:
            one_by_one.enqueue(key[None])
        seen += list(keys)
        ptr = int(queue.ptr)  # the row of the oldest key
        torch.testing.assert_close(torch.cat([queue.keys[ptr:], queue.keys[:ptr]]), torch.stack(seen[-size:]))
        if all(x <= size for x in batches):  # (a larger batch rotates the rows: same FIFO, other ptr)
            torch.testing.assert_close(queue.keys, one_by_one.keys)


def _datamodule(method: str, images, *extra: str):
    cfg = load_config(overrides=[f"method={method}", "task=embed", "data.source=folder",
                                 f"data.train_root={images}", *TINY, *CNN, *extra])  # fmt: skip
    return get_method(method)(cfg).datamodule


def test_classes_of_one_image_are_fine_for_the_knn_monitor(data) -> None:
    """(2) the kNN monitor holds nothing out of its labeled sets: a class of one image is a valid bank."""
    dm = _datamodule(
        "simclr", data.images, f"pretrain.knn_train={data.singles}", f"pretrain.knn_val={data.singles}"
    )
    assert dm.knn_sets is not None and len(dm.knn_sets[0]) == 2


def test_the_last_held_out_batch_too_small_for_the_loss_is_left_out(tmp_path) -> None:
    """(3) 9 held-out images in batches of 8: SimCLR drops the last batch of 1 (NT-Xent has no negative
    there); MoCo's InfoNCE (negatives from its queue) keeps it."""
    images = _pngs(tmp_path / "images", 30)
    extra = ["data.batch_size=8", "data.val_fraction=0.3", "pretrain.bn_splits=2"]
    simclr, moco = (_datamodule(m, images, *extra) for m in ("simclr", "moco"))
    assert len(simclr.val_sets[0]) == 9
    assert [len(b["views"][0]) for b in simclr.val_dataloader()[0]] == [8]
    assert [len(b["views"][0]) for b in moco.val_dataloader()[0]] == [8, 1]


def test_each_device_gets_a_batch_under_ddp(tmp_path) -> None:
    """(3) under DDP a device's share is ⌈N / world⌉ images: drop_last only when that share holds a full
    batch (else zero steps), and a share below the method's minimum batch is refused by name."""
    images = _pngs(tmp_path / "images", 10)
    dm = _datamodule("simclr", images, "data.batch_size=4", "data.val_fraction=0")  # 10 training images
    # shares 10, 5, 4 hold a batch of 4 (full batches); 3 and 2 do not (one batch of the share per epoch)
    for world, drop_last in ((1, True), (2, True), (3, True), (4, False), (8, False)):
        dm.trainer = SimpleNamespace(world_size=world)
        assert dm.train_dataloader().drop_last is drop_last, world
    dm.trainer = SimpleNamespace(world_size=10)  # a share of 1: nothing to compare with
    with pytest.raises(ConfigError, match=r"^data.batch_size=4 on 10 devices: each device gets 1 of the 10"):
        dm.train_dataloader()
