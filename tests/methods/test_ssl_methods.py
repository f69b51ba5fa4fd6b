"""The self-supervised methods (issue 12): MoCo's momentum encoder and queue, DINO's teacher and centre,
SimCLR and MAE steps, the ``pretrain`` command end to end, the exported backbone, and the bad settings
that must fail before the first step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from anydistill.cli import main
from anydistill.config import load_config
from anydistill.errors import ConfigError, DataError
from anydistill.methods.base import get_method

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_VIT = ["pretrain.backbone=vit_tiny_patch16_224", "pretrain.backbone_kwargs.patch_size=8",
            "pretrain.backbone_kwargs.depth=2", "pretrain.backbone_kwargs.embed_dim=48",
            "pretrain.backbone_kwargs.num_heads=2"]  # fmt: skip
TINY_CNN = ["pretrain.backbone=resnet18_cifar", "pretrain.backbone_kwargs.channels=[8,16,32,64]"]
SMALL = ["data.image_size=32", "data.batch_size=8", "data.train_count=16", "data.val_count=8",
         "pretrain.knn_count=16", "data.num_workers=0", "pretrain.proj_hidden_dim=32", "pretrain.proj_dim=16",
         "pretrain.dino_out_dim=64", "pretrain.dino_hidden_dim=32", "pretrain.dino_bottleneck_dim=16",
         "pretrain.queue_size=20", "pretrain.bn_splits=2", "pretrain.decoder_dim=32", "pretrain.decoder_depth=1",
         "pretrain.decoder_heads=2", "pretrain.n_local_crops=2", "pretrain.local_size=16"]  # fmt: skip


def _cfg(method: str, *extra: str):
    backbone = TINY_VIT if method in ("dino", "mae") else TINY_CNN
    return load_config(overrides=[f"method={method}", "task=embed", *SMALL, *backbone, *extra])


def _run(method: str, *extra: str):
    cfg = _cfg(method, *extra)
    return cfg, get_method(method)(cfg)


def _batch(run, n: int = 8) -> dict:
    loader = run.datamodule.train_dataloader()
    return next(iter(loader))


# --------------------------------------------------------------------------------------------- MoCo
def test_moco_key_encoder_is_an_ema_of_the_query_encoder_and_gets_no_gradient() -> None:
    torch.manual_seed(0)
    _, run = _run("moco", "pretrain.momentum=0.9")
    module = run.module.train()
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.5)
    batch = _batch(run)
    keys = [p for p in module.key_encoder.parameters()]
    assert all(not p.requires_grad for p in keys)
    query0 = [p.detach().clone() for p in module.encoder.parameters()]
    key0 = [p.detach().clone() for p in keys]
    for a, b in zip(query0, key0, strict=True):
        assert torch.equal(a, b)  # the key encoder starts as a copy
    module.ssl_loss(batch["views"])["loss"].backward()
    assert all(p.grad is None for p in keys)  # no gradient into the key encoder
    opt.step()
    opt.zero_grad()
    query1 = [p.detach().clone() for p in module.encoder.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(query0, query1, strict=True))
    module.ssl_loss(batch["views"])  # the update happens before the keys of this step are computed
    for k, k0, q1 in zip(keys, key0, query1, strict=True):  # θ_k ← 0.9 θ_k + 0.1 θ_q (θ_k = θ_q0 here)
        torch.testing.assert_close(k.detach(), 0.9 * k0 + 0.1 * q1, rtol=1e-5, atol=1e-6)


def test_moco_queue_takes_the_normalised_keys_of_each_batch_oldest_first() -> None:
    torch.manual_seed(0)
    _, run = _run("moco")
    module = run.module.train()
    batch = _batch(run)
    start = module.queue.keys.clone()  # (20, 16)
    module.ssl_loss(batch["views"])
    after_one = module.queue.keys.clone()
    assert torch.equal(after_one[8:], start[8:]) and not torch.equal(after_one[:8], start[:8])
    torch.testing.assert_close(after_one[:8].norm(dim=1), torch.ones(8))
    with torch.no_grad():
        torch.manual_seed(5)
        expected = torch.nn.functional.normalize(module.keys(batch["views"][1]), dim=1)
    torch.manual_seed(5)
    module.ssl_loss(batch["views"])
    torch.testing.assert_close(module.queue.keys[8:16], expected, rtol=1e-5, atol=1e-6)
    module.ssl_loss(batch["views"])  # 24 keys into 20 places: the first 4 written are the oldest, replaced
    assert torch.equal(module.queue.keys[4:8], after_one[4:8]) and not torch.equal(
        module.queue.keys[:4], after_one[:4]
    )


def test_moco_keys_do_not_depend_on_the_shuffle_when_batch_norm_sees_the_whole_batch() -> None:
    _, run = _run("moco", "pretrain.bn_splits=1")
    module = run.module.train()
    view = _batch(run)["views"][1]
    torch.manual_seed(1)
    a = module.keys(view)
    torch.manual_seed(2)
    b = module.keys(view)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # shuffled and un-shuffled back in order
    _, split = _run("moco", "pretrain.bn_splits=2")
    split.module.load_state_dict(module.state_dict())  # split BN keeps BatchNorm's state_dict
    split.module.train()
    torch.manual_seed(1)
    c = split.module.keys(view)
    torch.manual_seed(2)
    d = split.module.keys(view)
    assert not torch.allclose(c, d, atol=1e-4)  # the shuffle decides which images share statistics
    from anydistill.models.split_bn import SplitBatchNorm2d

    splits = [m for m in split.module.modules() if isinstance(m, SplitBatchNorm2d)]
    assert splits and all(m.num_splits == 2 for m in splits)
    assert any(isinstance(m, SplitBatchNorm2d) for m in split.module.key_encoder.modules())


# --------------------------------------------------------------------------------------------- DINO
def test_dino_teacher_gets_no_gradient_follows_the_student_and_its_centre_moves() -> None:
    torch.manual_seed(0)
    _, run = _run("dino", "pretrain.momentum=0.5", "pretrain.freeze_last_layer=0")
    module = run.module.train()
    batch = _batch(run)
    assert len(batch["views"]) == 4 and batch["views"][2].shape[-1] == 16  # 2 global + 2 local crops
    centre0 = module.criterion.center.clone()
    loss = module.ssl_loss(batch["views"])["loss"]
    loss.backward()
    assert all(p.grad is None for p in module.teacher_encoder.parameters())
    assert all(p.grad is None for p in module.teacher_head.parameters())
    assert module.encoder.model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert not torch.equal(module.criterion.center, centre0) and not module.criterion.center.requires_grad
    student = [p.detach().clone() for p in module.encoder.parameters()]
    with torch.no_grad():
        for p in module.encoder.parameters():
            p.add_(1.0)
    teacher0 = [p.detach().clone() for p in module.teacher_encoder.parameters()]
    module.total_steps = lambda: 0  # type: ignore[method-assign]  (momentum schedule ends: m = final = 1)
    module.on_train_batch_end(None, batch, 0)
    for t, t0 in zip(module.teacher_encoder.parameters(), teacher0, strict=True):
        assert torch.equal(t, t0)
    module.total_steps = lambda: 10**6  # type: ignore[method-assign]  (step 0: m = base = 0.5)
    module.on_train_batch_end(None, batch, 0)
    for t, t0, s in zip(module.teacher_encoder.parameters(), teacher0, student, strict=True):
        torch.testing.assert_close(t.detach(), 0.5 * t0 + 0.5 * (s + 1.0))


def test_dino_teacher_keeps_the_batchnorm_statistics_of_its_own_passes() -> None:
    torch.manual_seed(0)
    run = get_method("dino")(load_config(overrides=["method=dino", "task=embed", *SMALL, *TINY_CNN]))
    module = run.module.train()
    batch = _batch(run)
    module.ssl_loss(batch["views"])  # the teacher sees the global views, the student all views
    module.on_train_batch_end(None, batch, 0)
    t_bn = [m for m in module.teacher_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    s_bn = [m for m in module.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    assert not torch.allclose(t_bn.running_mean, s_bn.running_mean)  # not copied from the student


def test_dino_freezes_the_last_layer_during_the_first_epoch() -> None:
    _, run = _run("dino")
    module = run.module.train()
    module.ssl_loss(_batch(run)["views"])["loss"].backward()
    module.on_after_backward()  # current_epoch is 0 outside a Trainer
    assert all(p.grad is None for p in module.head.last_layer.parameters())
    assert module.head.mlp[0].weight.grad is not None


# --------------------------------------------------------------------------------------- SimCLR, MAE
@pytest.mark.parametrize("method", ["simclr", "mae"])
def test_a_step_gives_a_finite_loss_with_gradients_in_the_backbone(method: str) -> None:
    torch.manual_seed(0)
    _, run = _run(method)
    module = run.module.train()
    loss = module.ssl_loss(_batch(run)["views"])["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in module.encoder.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


# ------------------------------------------------------------------------------------ collapse
def test_embedding_spread_is_one_for_spread_directions_and_zero_for_a_collapse() -> None:
    from anydistill.methods.ssl_common import embedding_spread

    g = torch.Generator().manual_seed(0)
    h = torch.randn(4096, 64, generator=g) * 7 + 0.0  # isotropic: directions uniform on the sphere
    assert float(embedding_spread(h)) == pytest.approx(1.0, abs=0.02)
    same = torch.randn(1, 64, generator=g).expand(32, 64) * torch.rand(32, 1, generator=g)  # one direction
    assert float(embedding_spread(same)) == pytest.approx(0.0, abs=1e-5)
    x = torch.randn(16, 8, generator=g)  # the formula, written out
    u = x / x.norm(dim=1, keepdim=True)
    expected = ((u - u.mean(0)) ** 2).sum(0).div(15).sqrt().mean() * 8**0.5
    assert float(embedding_spread(x)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("method", ["simclr", "moco", "dino"])
def test_each_step_reports_the_spread_of_the_backbone_embedding(method: str) -> None:
    from anydistill.methods.ssl_common import embedding_spread

    torch.manual_seed(0)
    _, run = _run(method)
    module = run.module.train()
    views = _batch(run)["views"]
    out = module.ssl_loss(views)
    n = views[0].shape[0]
    with torch.no_grad():  # the same pass as the method's (train mode: BatchNorm on the batch it sees)
        batch = views[0] if method == "moco" else torch.cat(views[:2])
        reference = float(embedding_spread(module.encoder(batch)[:n]))
    assert float(out["embedding_spread"]) == pytest.approx(reference, rel=1e-5) and reference > 0.05


def test_a_collapsed_run_ends_with_a_warning(capsys) -> None:
    from types import SimpleNamespace

    _, run = _run("simclr")
    module = run.module
    module._trainer = SimpleNamespace(is_global_zero=True)
    module.last_spread = 0.3
    module.on_train_end()
    assert capsys.readouterr().err == ""
    module.last_spread = 0.001
    module.on_train_end()
    err = capsys.readouterr().err
    assert (
        err.startswith("anydistill: warning: the embedding collapsed (spread 0.001") and err.count("\n") == 1
    )


# ------------------------------------------------------------------------------------ the command
def _images(root, count: int = 12, classes: tuple[str, ...] = ("a", "b")):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = (rng.random((40, 40, 3)) * 80 + 120 * c).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("method", ["simclr", "moco", "dino", "mae"])
def test_pretrain_runs_two_steps_writes_a_backbone_and_resumes(tmp_path, capsys, method: str) -> None:
    run_dir = tmp_path / "run"
    backbone = TINY_VIT if method in ("dino", "mae") else TINY_CNN
    argv = ["pretrain", "--method", method, f"run_dir={run_dir}", *SMALL, *backbone, "trainer.max_steps=2",
            "trainer.progress_bar=false"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["global_step"] == 2
    assert 0.0 <= metrics["val"]["val/knn_top1"] <= 1.0  # toyworld's object crops: the kNN monitor
    weights = torch.load(run_dir / "backbone.pth", weights_only=True)
    if method == "mae":
        assert "patch_embed.proj.weight" in weights
    # the exported backbone is the encoder the checkpoint holds (DINO: the teacher's)
    state = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=False)["state_dict"]
    prefix = {"dino": "teacher_encoder.model.", "mae": "mae.encoder.model."}.get(method, "encoder.model.")
    for key, value in weights.items():
        assert torch.equal(state[prefix + key], value), key
    assert main([*argv[:-2], "trainer.max_steps=3", "trainer.progress_bar=false"]) == 0  # resumes: 1 more
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 3


def test_pretrain_on_a_folder_validates_on_held_out_images_and_the_backbone_loads_as_a_frozen_encoder(
    tmp_path,
) -> None:
    images = _images(tmp_path / "images")
    run_dir = tmp_path / "run"
    argv = ["pretrain", "--images", str(images), f"run_dir={run_dir}", *SMALL, *TINY_CNN, "trainer.max_steps=2",
            "trainer.progress_bar=false", "data.val_fraction=0.25"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == "simclr" and np.isfinite(metrics["val"]["val/loss"])
    weights = run_dir / "backbone.pth"
    saved = torch.load(weights, weights_only=True)
    assert saved["layer4.1.conv2.weight"].shape[0] == 64  # the narrow test network's last stage
    # as distill.frozen_encoder (timm:resnet18_cifar@backbone.pth: the same loader, these timm kwargs)
    from anydistill.teachers.encoders import TimmEncoder

    frozen = TimmEncoder("resnet18_cifar", checkpoint_path=weights, channels=[8, 16, 32, 64])
    for key, value in saved.items():
        assert torch.equal(frozen.model.state_dict()[key], value), key
    # as a student's backbone (model.kwargs.pretrained=true, backbone_checkpoint_path=backbone.pth)
    from anydistill.models import build_model

    student = build_model("depth_tiny", backbone="resnet18_cifar", pretrained=True,
                          backbone_checkpoint_path=str(weights),
                          backbone_kwargs={"channels": [8, 16, 32, 64]})  # fmt: skip
    own = student.backbone.model.state_dict()
    assert torch.equal(own["conv1.weight"], saved["conv1.weight"])
    assert torch.equal(own["layer4.1.conv2.weight"], saved["layer4.1.conv2.weight"])


def test_labeled_knn_sets_from_folders(tmp_path) -> None:
    train, val = _images(tmp_path / "train", 6), _images(tmp_path / "val", 3)
    _, run = _run("simclr", f"pretrain.knn_train={train}", f"pretrain.knn_val={val}")
    assert run.monitor == "val/knn_top1" and len(run.datamodule.val_dataloader()) == 2


def test_knn_monitor_gathers_every_rank_bank_and_queries(monkeypatch) -> None:
    """Under DDP the kNN monitor must vote with every rank's bank and score every rank's queries."""
    from types import SimpleNamespace

    from anydistill.eval.features import knn_predict

    _, run = _run("simclr")
    module = run.module
    g = torch.Generator().manual_seed(0)
    ranks = [  # per rank: bank (features, labels), queries (features, labels)
        ((torch.randn(4, 5, generator=g), torch.tensor([0, 1, 0, 1])),
         (torch.randn(2, 5, generator=g), torch.tensor([1, 0])))
        for _ in range(2)
    ]  # fmt: skip
    logged = {}
    monkeypatch.setattr(module, "log_dict", lambda d, **kw: logged.update(d))
    monkeypatch.setattr(module, "log", lambda *a, **kw: None)
    module._trainer = SimpleNamespace(world_size=2)  # rank 0's view of a 2-process run
    which = iter(range(4))  # all_gather calls in order: bank f, bank y, query f, query y

    def all_gather(t):
        i = next(which)
        part = 0 if i < 2 else 1
        return torch.stack([ranks[r][part][i % 2] for r in range(2)])  # (W, n, ...)

    monkeypatch.setattr(module, "all_gather", all_gather)
    module._bank, module._queries = [ranks[0][0]], [ranks[0][1]]
    module.on_validation_epoch_end()
    bank_f = torch.cat([ranks[r][0][0] for r in range(2)])
    bank_y = torch.cat([ranks[r][0][1] for r in range(2)])
    query_f = torch.cat([ranks[r][1][0] for r in range(2)])
    query_y = torch.cat([ranks[r][1][1] for r in range(2)])
    k = min(module.pretrain_cfg.knn_k, 8)
    pred = knn_predict(bank_f, bank_y, query_f, 2, k=k, temperature=module.pretrain_cfg.knn_temperature)
    assert logged["val/knn_top1"] == pytest.approx(float((pred.argmax(1) == query_y).float().mean()))
    assert next(which, None) is None  # all four gathered


# ----------------------------------------------------------------------------------- bad settings
@pytest.mark.parametrize(
    ("method", "extra", "error", "words"),
    [
        ("simclr", ["data.batch_size=1"], ConfigError, "data.batch_size=1"),
        ("dino", ["data.image_size=36"], ConfigError, "patch size 8"),
        ("dino", ["pretrain.local_size=12"], ConfigError, "pretrain.local_size=12"),
        ("simclr", ["pretrain.backbone=no_such_net"], ConfigError, "pretrain.backbone"),
        ("simclr", ["pretrain.knn_train=/nonexistent"], ConfigError, "give both"),
    ],
)
def test_bad_settings_fail_before_the_first_step(method, extra, error, words) -> None:
    with pytest.raises(error, match=words.replace("[", r"\[")):
        _run(method, *extra)


def test_mae_on_a_cnn_is_refused() -> None:
    cfg = load_config(overrides=["method=mae", "task=embed", *SMALL, "pretrain.backbone=resnet18"])
    with pytest.raises(ConfigError, match="needs a ViT"):
        get_method("mae")(cfg)


def test_one_class_knn_set_and_an_empty_image_folder_are_one_line_errors(tmp_path) -> None:
    one = _images(tmp_path / "one", 3, classes=("only",))
    with pytest.raises(DataError, match="class"):
        _run("simclr", f"pretrain.knn_train={one}", f"pretrain.knn_val={one}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        _run("simclr", "data.source=folder", f"data.train_root={tmp_path / 'empty'}")


def test_a_queue_not_divisible_by_the_batch_trains() -> None:
    torch.manual_seed(0)
    _, run = _run("moco", "pretrain.queue_size=13")  # 13 places, batches of 8: wraps around
    module = run.module.train()
    batch = _batch(run)
    for _ in range(3):
        assert torch.isfinite(module.ssl_loss(batch["views"])["loss"])
    assert int(module.queue.ptr) == 24 % 13


def test_device_augment_moves_the_photometric_part_to_the_batch() -> None:
    torch.manual_seed(0)
    _, run = _run("simclr", "pretrain.device_augment=true")
    batch = _batch(run)
    assert batch["views"][0].dtype == torch.uint8  # the loader only crops and flips
    out = run.module.on_after_batch_transfer(batch, 0)
    assert out["views"][0].dtype == torch.float32 and out["views"][0].shape == (8, 3, 32, 32)
    assert abs(float(out["views"][0].mean())) < 3.0  # normalised, not 0..255
    assert torch.isfinite(run.module.ssl_loss(out["views"])["loss"])
    assert not any("device_views" in k for k in run.module.state_dict())
