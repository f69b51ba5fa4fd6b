"""Reading official segment-anything checkpoints (and ours): key mapping, size detection, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sam_upstream import tiny_upstream_sam
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

from anydistill.errors import DataError
from anydistill.models import build_model
from anydistill.models.sam import (
    anydistill_to_official,
    infer_vit_config,
    load_sam_checkpoint,
    official_to_anydistill,
)
from anydistill.models.sam.checkpoint import infer_decoder_config, vit_size_name

C = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def _upstream_tiny(seed: int = 0) -> Sam:
    return tiny_upstream_sam(seed, img_size=128, width=C)


@pytest.fixture(scope="module")
def official_tiny(tmp_path_factory) -> tuple[Sam, Path]:
    sam = _upstream_tiny()
    path = tmp_path_factory.mktemp("sam") / "sam_tiny_official.pth"
    torch.save(sam.state_dict(), path)  # exactly what segment-anything's checkpoints are
    return sam, path


def _outputs(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 128, 128, generator=g)
    with torch.no_grad():
        emb = model.image_encoder(x)
        sparse, dense = model.prompt_encoder(
            points=(torch.tensor([[[20.0, 30.0], [90.0, 70.0]]]), torch.tensor([[1, 0]])),
            boxes=torch.tensor([[10.0, 12.0, 100.0, 110.0]]),
            masks=None,
        )
        masks, iou = model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, True)
    return emb, masks, iou


def test_mapping_is_explicit_and_invertible(official_tiny) -> None:
    sam, _ = official_tiny
    official = sam.state_dict()
    ours = official_to_anydistill(official)
    assert "image_encoder.trunk.blocks.0.mlp.fc1.weight" in ours
    assert "image_encoder.trunk.neck.3.bias" in ours
    assert not any(".lin1." in k or ".lin2." in k for k in ours if k.startswith("image_encoder."))
    # Decoder keys (mlp.lin1 in the two-way transformer) are untouched.
    assert "mask_decoder.transformer.layers.0.mlp.lin1.weight" in ours
    assert {k for k in ours if not k.startswith("image_encoder.")} == {
        k for k in official if not k.startswith("image_encoder.")
    }
    back = anydistill_to_official(ours)
    assert back.keys() == official.keys() and all(back[k] is official[k] for k in official)


def test_official_checkpoint_loads_and_matches_upstream(official_tiny) -> None:
    sam, path = official_tiny
    ours = load_sam_checkpoint(path, decoder_num_heads=2)  # the one thing shapes cannot tell
    assert ours.image_encoder.img_size == 128 and not ours.training
    assert ours.prompt_encoder.image_embedding_size == (8, 8)
    for a, b in zip(_outputs(ours), _outputs(sam), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # Our weights exported back load strictly into segment_anything.
    up = _upstream_tiny(seed=1)
    up.load_state_dict(anydistill_to_official(ours.state_dict()), strict=True)
    torch.testing.assert_close(_outputs(up)[1], _outputs(sam)[1])


def test_builder_checkpoint_path_reads_official_and_ours(official_tiny, tmp_path) -> None:
    sam, path = official_tiny
    cfg = dict(
        img_size=128,
        embed_dim=48,
        depth=2,
        num_heads=2,
        global_attn_indexes=(1,),
        window_size=4,
        prompt_embed_dim=C,
        mask_in_chans=8,
        decoder_depth=1,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_depth=2,
        iou_head_hidden_dim=24,
    )
    from_official = build_model("sam_vit_b", checkpoint_path=path, **cfg)
    torch.testing.assert_close(_outputs(from_official)[1], _outputs(sam)[1], atol=1e-4, rtol=1e-4)
    # Our own state dict inside a Lightning checkpoint with a prefix.
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"student.{k}": v for k, v in from_official.state_dict().items()}}, ckpt)
    again = load_sam_checkpoint(ckpt, decoder_num_heads=2)
    torch.testing.assert_close(_outputs(again)[1], _outputs(from_official)[1])


def test_infer_config_from_shapes(official_tiny) -> None:
    sam, _ = official_tiny
    vit = infer_vit_config(sam.state_dict())
    assert vit == dict(
        img_size=128, embed_dim=48, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4
    )
    assert vit_size_name(vit) is None
    assert infer_decoder_config(sam.state_dict()) == dict(
        prompt_embed_dim=C,
        mask_in_chans=8,
        decoder_depth=1,
        decoder_mlp_dim=64,
        iou_head_depth=2,
        iou_head_hidden_dim=24,
        num_multimask_outputs=3,
    )


@pytest.fixture(scope="module")
def official_meta_files(tmp_path_factory) -> dict[str, Path]:
    """Official vit_b/l/h state dicts with meta tensors: every shape of the real file, 64 KB on disk."""
    folder = tmp_path_factory.mktemp("meta")
    files = {}
    for size in ("vit_b", "vit_l", "vit_h"):
        with torch.device("meta"):
            state = sam_model_registry[size]().state_dict()
        files[size] = folder / f"sam_{size}.pth"
        torch.save(state, files[size])
    return files


@pytest.mark.parametrize("size", ["vit_b", "vit_l", "vit_h"])
def test_full_size_detection(official_meta_files, size: str) -> None:
    state = torch.load(official_meta_files[size], weights_only=True)
    cfg = infer_vit_config(state)
    assert vit_size_name(cfg) == size and cfg["img_size"] == 1024 and cfg["window_size"] == 14
    model = load_sam_checkpoint(official_meta_files[size])  # built on meta, tensors assigned
    assert (
        model.image_encoder.timm_name
        == {"vit_b": "samvit_base_patch16", "vit_l": "samvit_large_patch16", "vit_h": "samvit_huge_patch16"}[
            size
        ]
    )
    assert model.image_encoder.trunk.pos_embed.shape == state["image_encoder.pos_embed"].shape
    assert len(model.image_encoder.trunk.blocks) == cfg["depth"]


def test_wrong_size_names_the_file_size(official_meta_files, official_tiny) -> None:
    with pytest.raises(DataError, match="holds a vit_l .*embed_dim 1024, 24 blocks.* not vit_b"):
        load_sam_checkpoint(official_meta_files["vit_l"], model_type="vit_b")
    with pytest.raises(DataError, match="holds a vit_h .* not vit_l"):
        load_sam_checkpoint(official_meta_files["vit_h"], model_type="sam_vit_l")
    with pytest.raises(DataError, match="holds a vit_b .* the model is vit_h"):
        with torch.device("meta"):
            build_model("sam_vit_h", checkpoint_path=official_meta_files["vit_b"])
    with pytest.raises(DataError, match="non-standard .*embed_dim 48.* not vit_b"):
        load_sam_checkpoint(official_tiny[1], model_type="vit_b")


def test_bad_files(tmp_path, official_tiny) -> None:
    with pytest.raises(DataError, match="not found"):
        load_sam_checkpoint(tmp_path / "absent.pth")
    truncated = tmp_path / "truncated.pth"
    data = official_tiny[1].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_sam_checkpoint(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(DataError, match="cannot be read"):
        load_sam_checkpoint(garbage)
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 1, 1), "fc.bias": torch.zeros(2)}, other)
    with pytest.raises(DataError, match="not a SAM state dict"):
        load_sam_checkpoint(other)
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(DataError, match="expected a state dict"):
        load_sam_checkpoint(a_list)
    state = official_tiny[0].state_dict()
    for dropped, message in [
        ("image_encoder.pos_embed", "not a complete SAM state dict"),
        ("mask_decoder.iou_prediction_head.layers.1.bias", "missing .*iou_prediction_head.layers.1.bias"),
    ]:
        partial_sam = tmp_path / "partial.pth"
        torch.save({k: v for k, v in state.items() if k != dropped}, partial_sam)
        with pytest.raises(DataError, match=message):
            load_sam_checkpoint(partial_sam, decoder_num_heads=2)


def test_student_state_dict_roundtrip(tmp_path) -> None:
    torch.manual_seed(0)
    student = build_model(
        "sam_tiny", img_size=128, prompt_embed_dim=C, decoder_mlp_dim=64, decoder_num_heads=2
    )
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "sam_tiny.pth"
    torch.save(student.state_dict(), path)
    loaded = load_sam_checkpoint(path, img_size=128, decoder_num_heads=2)  # recognised as sam_tiny
    assert loaded.image_encoder.backbone_name == "mobilenetv4_conv_small"
    for a, b in zip(_outputs(loaded), _outputs(student), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(DataError, match="student .* not a vit_b"):
        load_sam_checkpoint(path, model_type="vit_b")
    with pytest.raises(DataError, match="does not match"):
        load_sam_checkpoint(path, model_type="sam_small", img_size=128, decoder_num_heads=2)
