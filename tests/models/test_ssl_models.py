"""The self-supervised models: the CIFAR ResNet as a timm model, the projection / DINO heads and the
masked autoencoder, against lightly's implementations with the same weights, and on their own."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from anydistill.models.mae import MaskedAutoencoder, random_masking
from anydistill.models.ssl_heads import DINOHead, EmbeddingEncoder, ProjectionHead

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------- CIFAR ResNet
def test_cifar_resnet_keeps_32px_resolution_in_its_first_stage_and_is_a_timm_model(tmp_path) -> None:
    import anydistill.models  # noqa: F401  (registers resnet*_cifar with timm)

    model = timm.create_model("resnet18_cifar", num_classes=0)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 512) and model.forward_features(x).shape == (2, 512, 4, 4)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert 11.1e6 < sum(p.numel() for p in model.parameters()) < 11.2e6  # ResNet-18 without fc
    features = timm.create_model("resnet18_cifar", features_only=True)
    assert features.feature_info.reduction() == [1, 1, 2, 4, 8]
    assert [f.shape[-1] for f in features(x)] == [32, 32, 16, 8, 4]
    # its weights go through timm's own file loader, as students and frozen encoders load them
    encoder = EmbeddingEncoder("resnet18_cifar")
    path = encoder.save_timm_weights(tmp_path / "backbone.pth")
    again = EmbeddingEncoder("resnet18_cifar", checkpoint_path=path)
    for (k, a), (_, b) in zip(encoder.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert encoder.pixel_mean == pytest.approx((0.4914, 0.4822, 0.4465))


def test_resnet8_cifar_is_the_small_cifar_student() -> None:
    import anydistill.models  # noqa: F401

    model = timm.create_model("resnet8_cifar", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10) and model.forward_features(x).shape == (2, 128, 4, 4)
    assert model.conv1.stride == (1, 1) and [
        getattr(model, f"layer{i}")[0].conv1.out_channels for i in range(1, 5)
    ] == [16, 32, 64, 128]
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    assert 0.31e6 < sum(p.numel() for p in model.parameters()) < 0.32e6


# ------------------------------------------------------------------------------------------- heads
def _copy_linear_bn(ours: nn.Module, theirs: nn.Module) -> None:
    """Load ``theirs``' Linear/BatchNorm weights into ``ours`` in module order (same layer layout)."""
    a = [m for m in ours.modules() if isinstance(m, (nn.Linear, nn.BatchNorm1d))]
    b = [m for m in theirs.modules() if isinstance(m, (nn.Linear, nn.BatchNorm1d))]
    assert [type(m) for m in a] == [type(m) for m in b]
    for x, y in zip(a, b, strict=True):
        x.load_state_dict(y.state_dict())


@pytest.mark.parametrize("kind", ["simclr", "moco"])
def test_projection_heads_match_lightly(kind: str) -> None:
    heads = pytest.importorskip("lightly.models.modules.heads")
    torch.manual_seed(0)
    if kind == "simclr":
        theirs, ours = heads.SimCLRProjectionHead(32, 64, 16), ProjectionHead(32, 64, 16, last_bn=True)
    else:
        theirs, ours = heads.MoCoProjectionHead(32, 64, 16), ProjectionHead(32, 64, 16, batch_norm=False)
    _copy_linear_bn(ours, theirs)
    x = torch.randn(8, 32)
    torch.testing.assert_close(ours(x), theirs(x))  # train mode: batch statistics
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.filterwarnings("ignore:.*weight_norm.* is deprecated")  # lightly's head, not ours
def test_dino_head_matches_lightly_and_its_last_layer_is_normalised_and_frozen_at_first() -> None:
    heads = pytest.importorskip("lightly.models.modules.heads")
    torch.manual_seed(0)
    # without BatchNorm: with it, lightly drops the hidden layers' biases, the official DINOHead keeps them
    theirs = heads.DINOProjectionHead(32, 64, 16, 100, batch_norm=False, freeze_last_layer=1)
    ours = DINOHead(32, 100, 64, 16, batch_norm=False, freeze_last_layer=1)
    _copy_linear_bn(ours.mlp, theirs.layers)
    with torch.no_grad():
        ours.last_layer.parametrizations.weight.original1.copy_(theirs.last_layer.weight_v)
    x = torch.randn(8, 32)
    torch.testing.assert_close(ours(x), theirs(x))
    # ‖W_k‖ = γ_k = 1 for every prototype, and γ is not trained (norm_last_layer)
    torch.testing.assert_close(ours.last_layer.weight.norm(dim=1), torch.ones(100))
    assert not ours.last_layer.parametrizations.weight.original0.requires_grad
    ours(x).sum().backward()
    assert ours.last_layer.parametrizations.weight.original1.grad is not None
    ours.cancel_last_layer_gradients(epoch=0)
    assert all(p.grad is None for p in ours.last_layer.parameters())
    assert ours.mlp[0].weight.grad is not None  # the rest of the head still learns
    ours(x).sum().backward()
    ours.cancel_last_layer_gradients(epoch=1)  # from epoch 1 on, the last layer learns too
    assert ours.last_layer.parametrizations.weight.original1.grad is not None


# --------------------------------------------------------------------------------------------- MAE
def test_random_masking_keeps_a_quarter_and_restores_the_order() -> None:
    g = torch.Generator().manual_seed(0)
    keep, mask, restore = random_masking(3, 16, 0.75, generator=g)
    assert keep.shape == (3, 4) and mask.shape == (3, 16) and restore.shape == (3, 16)
    assert torch.equal(mask.sum(1), torch.full((3,), 12.0))
    for b in range(3):  # the kept patches are exactly the unmasked ones, each once
        assert sorted(keep[b].tolist()) == torch.nonzero(mask[b] == 0).flatten().tolist()
    g2 = torch.Generator().manual_seed(1)
    assert not torch.equal(random_masking(3, 16, 0.75, generator=g2)[1], mask)  # random per call
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(1, 16, 1.0)


def _tiny_mae(**kwargs) -> MaskedAutoencoder:
    torch.manual_seed(0)
    defaults = dict(img_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=2, patch_size=8,
                    embed_dim=48, depth=2, num_heads=2)  # fmt: skip
    return MaskedAutoencoder("vit_tiny_patch16_224", **{**defaults, **kwargs})


def test_mae_encoder_equals_lightly_masked_vit_on_the_same_kept_patches() -> None:
    masked_vit = pytest.importorskip("lightly.models.modules.masked_vision_transformer_timm")
    mae = _tiny_mae().eval()
    theirs = masked_vit.MaskedVisionTransformerTIMM(vit=mae.encoder.model)
    x = torch.randn(2, 3, 32, 32)
    keep, _, _ = random_masking(2, 16, 0.75, generator=torch.Generator().manual_seed(0))
    ours = mae.forward_encoder(x, keep)  # (2, 1 + 4, 48): class token + kept patches
    # lightly counts the class token as index 0 of the sequence and always keeps it
    idx_keep = torch.cat([torch.zeros(2, 1, dtype=torch.long), keep + 1], dim=1)
    torch.testing.assert_close(ours, theirs.encode(x, idx_keep=idx_keep), rtol=1e-5, atol=1e-5)


def test_mae_predicts_every_patch_and_each_prediction_depends_only_on_kept_patches() -> None:
    mae = _tiny_mae().eval()
    x = torch.randn(2, 3, 32, 32)
    pred, mask = mae(x, generator=torch.Generator().manual_seed(0))
    assert pred.shape == (2, 16, 8 * 8 * 3) and mask.shape == (2, 16)
    # change the pixels of a removed patch: nothing the model outputs may change (it never saw them)
    b, i = 0, int(torch.nonzero(mask[0]).flatten()[0])
    row, col = divmod(i, 4)
    y = x.clone()
    y[b, :, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] += 5.0
    pred2, mask2 = mae(y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, mask2)
    torch.testing.assert_close(pred2, pred)
    # a kept patch does change the outputs
    j = int(torch.nonzero(mask[0] == 0).flatten()[0])
    row, col = divmod(j, 4)
    y[b, :, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] += 5.0
    assert not torch.allclose(mae(y, generator=torch.Generator().manual_seed(0))[0][b], pred[b])


def test_mae_encoder_position_embedding_is_fixed_sine_cosine() -> None:
    from timm.layers import build_sincos2d_pos_embed

    mae = _tiny_mae()
    pos = mae.encoder.model.pos_embed
    assert not pos.requires_grad and pos.shape == (1, 1 + 16, 48)
    torch.testing.assert_close(pos[0, 1:], build_sincos2d_pos_embed((4, 4), 48))
    assert torch.equal(pos[0, 0], torch.zeros(48))  # the class token's
    assert pos not in {p for p in mae.parameters() if p.requires_grad}


def test_mae_gradients_reach_encoder_decoder_and_mask_token_and_bad_sizes_are_refused() -> None:
    mae = _tiny_mae()
    pred, mask = mae(torch.randn(2, 3, 32, 32))
    (pred * mask[..., None]).pow(2).mean().backward()
    assert mae.mask_token.grad is not None and mae.mask_token.grad.abs().sum() > 0
    assert mae.encoder.model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert mae.decoder_blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="32"):
        mae(torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        _tiny_mae(img_size=36)
    with pytest.raises(ValueError, match="plain ViT"):
        MaskedAutoencoder("resnet18", img_size=32)


# --------------------------------------------------------------------------------------- split BN
def test_split_batch_norm_normalises_each_group_and_keeps_batchnorm_state() -> None:
    from anydistill.models.split_bn import SplitBatchNorm2d, convert_split_bn

    torch.manual_seed(0)
    x = torch.randn(12, 4, 3, 3) * 3 + 1
    bn = SplitBatchNorm2d(4, 3, momentum=0.5)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    y = bn(x)
    ref = torch.empty_like(x)
    means, variances = [], []
    for g in range(3):  # sample i is in group i mod 3
        xs = x[g::3]
        m, v = xs.mean((0, 2, 3)), xs.var((0, 2, 3), unbiased=False)
        ref[g::3] = (xs - m[:, None, None]) / torch.sqrt(v[:, None, None] + 1e-5) * bn.weight[
            :, None, None
        ] + bn.bias[:, None, None]
        means.append(m)
        variances.append(xs.var((0, 2, 3), unbiased=True))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, 0.5 * torch.stack(means).mean(0))
    torch.testing.assert_close(bn.running_var, 0.5 + 0.5 * torch.stack(variances).mean(0))
    plain = nn.BatchNorm2d(4)
    plain.load_state_dict(bn.state_dict())  # the same buffers and shapes as BatchNorm2d
    bn.eval(), plain.eval()
    torch.testing.assert_close(bn(x), plain(x))
    y.sum().backward()
    assert bn.weight.grad is not None
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    convert_split_bn(net, 2)
    assert isinstance(net[1], SplitBatchNorm2d) and isinstance(net[2][0], SplitBatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenetv4_conv_small", "vit_tiny_patch16_224"])
def test_embedding_encoder_dim_is_the_width_of_its_output(name: str) -> None:
    # MobileNetV4's head convolution follows the pool (960 -> 1280): a head sized by num_features failed.
    kwargs = {"img_size": 32, "patch_size": 8} if name.startswith("vit") else {}
    encoder = EmbeddingEncoder(name, **kwargs).eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, encoder.dim)
    assert EmbeddingEncoder.probe(name, **kwargs).dim == encoder.dim


def test_split_batch_norm_keeps_the_activation_of_timm_batch_norm_act_layers() -> None:
    # MobileNetV4's 46 BatchNormAct2d layers carry its ReLUs: replacing them by plain split BN made the
    # network linear, and MoCo collapsed on it.
    import copy

    from timm.layers import BatchNormAct2d

    from anydistill.models.split_bn import SplitBatchNorm2d, SplitBatchNormAct2d, convert_split_bn

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv4_conv_small", num_classes=0).eval()
    split = convert_split_bn(copy.deepcopy(model), 4).eval()
    assert not any(isinstance(m, BatchNormAct2d) for m in split.modules())
    assert sum(isinstance(m, SplitBatchNormAct2d) for m in split.modules()) == 46
    assert split.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(8, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(split(x), model(x))  # eval: the same layers, activations included
    layer = SplitBatchNormAct2d(3, 2, nn.Identity(), nn.ReLU()).train()
    assert (layer(torch.randn(4, 3, 2, 2)) >= 0).all()  # the activation runs in training too

    class Custom(nn.BatchNorm2d):  # a forward of its own: refused, not silently replaced
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(ValueError, match="'1', a Custom whose forward .*pretrain.bn_splits=1"):
        convert_split_bn(nn.Sequential(nn.Conv2d(3, 3, 1), Custom(3)), 2)
    assert isinstance(convert_split_bn(nn.Sequential(nn.BatchNorm2d(3)), 2)[0], SplitBatchNorm2d)
