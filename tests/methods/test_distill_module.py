"""DistillModule: the Depth Anything recipe's training step, each switch on and off."""

import pytest
import torch
from torch import nn

from anydistill.config import DistillConfig
from anydistill.losses.depth import ssi_loss
from anydistill.methods.distill import DistillModule

H = W = 64


class FrozenEncoder(nn.Module):
    """A stand-in frozen semantic encoder with the teachers' feature API: one tap ``(B, 24, H/8, W/8)``."""

    feature_dim = 24

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 8, stride=8)

    def forward_intermediates(
        self, x: torch.Tensor, indices=None, output_fmt="NCHW", intermediates_only=True
    ):
        assert (indices, output_fmt, intermediates_only) == (1, "NCHW", True)
        return [self.conv(x)]


def batch(task: str, b: int = 2, ratio: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    labeled = {"image": torch.rand(b, 3, H, W, generator=g)}
    unlabeled = {"image": torch.rand(b * ratio, 3, H, W, generator=g)}
    if task == "depth":
        labeled["depth"] = torch.rand(b, 1, H, W, generator=g) * 10 + 0.5
        labeled["depth_valid"] = torch.ones(b, 1, H, W, dtype=torch.bool)
        unlabeled["disparity"] = torch.rand(b * ratio, 1, H, W, generator=g)
        unlabeled["disparity_valid"] = torch.ones(b * ratio, 1, H, W, dtype=torch.bool)
    else:
        labeled["semantic"] = torch.randint(0, 4, (b, H, W), generator=g)
        unlabeled["logits"] = torch.randn(b * ratio, 4, H, W, generator=g)
    return {"labeled": labeled, "unlabeled": unlabeled}


def module(task: str = "depth", frozen: bool = True, **distill) -> DistillModule:
    cfg = DistillConfig(
        **{"perturb": True, "cutmix": True, "cutmix_p": 1.0, "trim": 0.1, "feature_align": frozen, **distill}
    )
    model = "depth_tiny" if task == "depth" else "seg_tiny"
    return DistillModule(
        distill=cfg,
        frozen_encoder=FrozenEncoder() if frozen else None,
        task=task,
        model_name=model,
        num_classes=4 if task == "semantic" else None,
    )


@pytest.mark.parametrize("task", ["depth", "semantic"])
def test_step_trains_student_and_projection_not_frozen(task):
    torch.manual_seed(0)
    m = module(task)
    m.train()
    loss = m.training_step(batch(task), 0)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.model.backbone.parameters())
    assert m.align.proj.weight.grad is not None and m.align.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.frozen.parameters())
    assert not any(k.startswith("frozen.") for k in m.state_dict())


def test_without_cutmix_and_perturbation_the_pseudo_loss_is_plain_trimmed_ssi():
    torch.manual_seed(0)
    m = module(perturb=False, cutmix=False, frozen=False)
    m.eval()  # BatchNorm in inference mode, so the two forward passes agree
    b = batch("depth")
    parts = m.unlabeled_loss(b["unlabeled"])
    u = b["unlabeled"]
    with torch.no_grad():
        expected = ssi_loss(m(u["image"]), u["disparity"], u["disparity_valid"], alignment="median", trim=0.1)
    assert parts["pseudo"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(parts) == {"pseudo"}


def test_perturbation_changes_only_the_student_input():
    torch.manual_seed(0)
    m = module(cutmix=False, frozen=False)
    m.eval()
    b = batch("depth")
    clean = b["unlabeled"]["image"].clone()
    with_perturb = m.unlabeled_loss(b["unlabeled"])["pseudo"]
    assert torch.equal(b["unlabeled"]["image"], clean)  # the batch (and the teacher's view) is untouched
    m.perturb = None
    assert m.unlabeled_loss(b["unlabeled"])["pseudo"] != with_perturb


def test_feature_alignment_needs_an_encoder():
    with pytest.raises(ValueError, match="frozen encoder"):
        DistillModule(distill=DistillConfig(feature_align=True), task="depth", model_name="depth_tiny")


def _seeded_step(m: DistillModule, b: dict) -> torch.Tensor:
    torch.manual_seed(3)  # the same perturbation and CutMix draws for every call
    return m.training_step(b, 0).detach()


def test_unlabeled_only_and_labeled_only_batches():
    m = module(frozen=False)
    m.eval()  # no dropout / batch statistics: equal inputs give equal losses
    b = batch("depth")
    unlabeled_only = _seeded_step(m, {"unlabeled": b["unlabeled"]})
    both = _seeded_step(m, b)
    assert torch.isfinite(unlabeled_only) and not torch.allclose(both, unlabeled_only)
    m.dcfg.use_labeled = False  # the labeled batch is then ignored: the loss is the unlabeled part alone
    torch.testing.assert_close(_seeded_step(m, b), unlabeled_only)
    with pytest.raises(ValueError, match="labeled"):
        m.training_step({}, 0)


def test_unlabeled_weight_scales_the_unlabeled_loss():
    m = module(frozen=False)
    m.eval()
    u = {"unlabeled": batch("depth")["unlabeled"]}
    base = _seeded_step(m, u)
    m.dcfg.unlabeled_weight = 0.25
    torch.testing.assert_close(_seeded_step(m, u), 0.25 * base)


def test_cutmix_loss_uses_each_regions_own_pseudo_label():
    """With CutMix the pseudo loss is the per-region loss against the pasted image's own label."""
    from anydistill.losses import cutmix_ssi_loss

    torch.manual_seed(0)
    m = module(perturb=False, frozen=False)
    m.eval()
    u = batch("depth")["unlabeled"]
    mask = torch.zeros(4, 1, H, W, dtype=torch.bool)
    mask[:, :, 8:40, 16:48] = True
    m.cutmix.sample_boxes = lambda *a, **k: mask
    got = m.unlabeled_loss(u)["pseudo"]
    mixed = torch.where(mask, u["image"].roll(1, 0), u["image"])
    d, v = u["disparity"], u["disparity_valid"]
    with torch.no_grad():
        expected = cutmix_ssi_loss(
            m(mixed), d, d.roll(1, 0), v, v.roll(1, 0), mask, alignment="median", trim=0.1
        )
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
