"""benchmarks/peer_models.py: smp's U-Net / FPN inside anydistill's SegmentationModel compute exactly
what smp computes, and go through the registry, checkpoint loading and the training path's interface."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

smp = pytest.importorskip("segmentation_models_pytorch")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import peer_models  # noqa: E402

from anydistill.models.zoo import MODELS, build_model  # noqa: E402


@pytest.mark.parametrize("arch", ["Unet", "FPN"])
def test_wrapped_model_equals_smp(arch):
    torch.manual_seed(0)
    wrapped = peer_models.build_smp(arch, num_classes=3, encoder="resnet18").eval()
    reference = getattr(smp, arch)(encoder_name="resnet18", encoder_weights=None, classes=3).eval()
    # Same weights: the wrapper's encoder / decoder / head are smp's modules under other names.
    state = {
        k.replace("backbone.encoder.", "encoder.").removeprefix("head."): v
        for k, v in wrapped.state_dict().items()
        if not k.startswith("pixel_")
    }
    reference.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), reference(x), rtol=0, atol=0)
    assert wrapped.num_classes == 3
    assert wrapped.input_multiple == 32
    assert wrapped.feature_reductions == [1, 2, 4, 8, 16, 32]


def test_registered_builders_load_their_own_checkpoint(tmp_path, monkeypatch):
    # Register into a copy: the zoo's own registry is left as it was for the other tests.
    monkeypatch.setattr(MODELS, "_builders", dict(MODELS._builders))
    peer_models.register()
    peer_models.register()  # idempotent
    assert {"smp_unet", "smp_fpn"} <= set(MODELS.names())
    model = build_model("smp_fpn", num_classes=2, encoder="resnet18")
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    again = build_model("smp_fpn", num_classes=2, encoder="resnet18", checkpoint_path=str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), again.eval()(x))
    with pytest.raises(ValueError, match="random initialisation"):
        build_model("smp_unet", num_classes=2, encoder="resnet18", pretrained=True)


def test_gradients_reach_encoder_and_decoder():
    model = peer_models.build_smp("Unet", num_classes=2, encoder="resnet18")
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
    for part in (model.backbone, model.head):
        assert all(
            p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters() if p.requires_grad
        )


def test_bench_row_syntax():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_semantic_peer as bench

    assert bench.parse_row("seg_tiny") == ("seg_tiny", {}, [])
    assert bench.parse_row("smp_unet:resnet18+optim.lr=0.004") == (
        "smp_unet",
        {"encoder": "resnet18"},
        ["optim.lr=0.004"],
    )
    with pytest.raises(SystemExit, match="names its encoder"):
        bench.parse_row("smp_fpn")
    model = bench.build_row("seg_tiny+model.kwargs.fpn_channels=16", num_classes=4)
    assert model.head.fpn.inner_blocks[0][0].out_channels == 16
