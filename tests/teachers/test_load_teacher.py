"""load_teacher: every spec kind dispatches to its adapter; anything else is a DataError naming the path."""

import json

import pytest
import timm
import torch

from anydistill.errors import DataError
from anydistill.teachers import (
    AnydistillTeacher,
    HFDepthAnythingTeacher,
    HFDinov2Encoder,
    Teacher,
    TimmEncoder,
    load_teacher,
)

TINY_VIT = dict(depth=2, embed_dim=32, num_heads=2, img_size=56)


def test_checkpoint_file(depth_ckpt):
    teacher = load_teacher(depth_ckpt, image_size=64)
    assert isinstance(teacher, AnydistillTeacher) and isinstance(teacher, Teacher)
    assert teacher.image_size == 64
    assert teacher.predict(torch.rand(1, 3, 20, 30)).shape == (1, 1, 20, 30)


def test_hf_folders(da_folder, dinov2_folder):
    teacher = load_teacher(str(da_folder))
    assert isinstance(teacher, HFDepthAnythingTeacher) and teacher.task == "depth"
    assert teacher.fingerprint == HFDepthAnythingTeacher(da_folder).fingerprint
    encoder = load_teacher(dinov2_folder, image_size=28)
    assert isinstance(encoder, HFDinov2Encoder) and encoder.task == "features"
    assert encoder.features(torch.rand(1, 3, 60, 60)).shape == (1, 32, 2, 2)


def test_timm_specs(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2", num_classes=0, **TINY_VIT)
    weights = tmp_path / "dinov2_s.pth"
    torch.save(model.state_dict(), weights)
    enc = load_teacher(f"timm:vit_small_patch14_dinov2@{weights}", **TINY_VIT)
    assert isinstance(enc, TimmEncoder)
    torch.testing.assert_close(enc.model.pos_embed, model.pos_embed)  # the file's weights, not a new init
    random_init = load_teacher("timm:vit_small_patch14_dinov2@random", **TINY_VIT)
    assert random_init.fingerprint != enc.fingerprint
    with pytest.raises(DataError, match="missing.pth"):
        load_teacher(f"timm:vit_small_patch14_dinov2@{tmp_path / 'missing.pth'}", **TINY_VIT)
    with pytest.raises(DataError, match="no timm model name"):
        load_teacher("timm:")


def test_unknown_or_missing_specs(tmp_path):
    with pytest.raises(DataError, match="no such file or folder") as err:
        load_teacher(tmp_path / "nope")
    assert err.value.path == tmp_path / "nope"
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"x")
    with pytest.raises(DataError, match="timm:<model_name>"):
        load_teacher(weights)
    garbage = tmp_path / "model.pth"  # .pth is read as a segment-anything checkpoint
    garbage.write_bytes(b"x")
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        load_teacher(garbage)
    assert "\n" not in str(err.value)  # one line, not torch's page of advice
    with pytest.raises(DataError, match="config.json"):
        load_teacher(tmp_path)  # a folder without config.json
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(DataError, match="unsupported model_type 'bert'"):
        load_teacher(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_teacher(tmp_path)


def test_truncated_checkpoint(tmp_path, depth_ckpt):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(depth_ckpt.read_bytes()[:100])
    with pytest.raises(DataError, match="bad.ckpt"):
        load_teacher(bad)


@pytest.mark.parametrize("spec", ["timm:vit_small_patch14_dinov2", "timm:vit_small_patch14_dinov2@"])
def test_timm_spec_without_weights_is_refused(spec):
    """A bare ``timm:NAME`` would be a random encoder without a word (feature alignment to noise)."""
    with pytest.raises(DataError, match="names no weights") as err:
        load_teacher(spec, **TINY_VIT)
    message = str(err.value)
    assert "\n" not in message
    assert "timm:vit_small_patch14_dinov2@<weights file>" in message
    assert "timm:vit_small_patch14_dinov2@random" in message


def test_timm_random_spec_is_a_random_encoder():
    torch.manual_seed(0)
    enc = load_teacher("timm:vit_small_patch14_dinov2@random", **TINY_VIT)
    assert isinstance(enc, TimmEncoder) and enc.task == "features"
    assert enc.features(torch.rand(1, 3, 56, 56)).shape == (1, 32, 4, 4)


def test_timm_weights_file_is_loaded(tmp_path):
    """``@path`` still reads the file: every weight equals the saved model's."""
    torch.manual_seed(1)
    model = timm.create_model("vit_small_patch14_dinov2", num_classes=0, **TINY_VIT)
    weights = tmp_path / "random"  # a file called "random" is reached through a path, not the keyword
    torch.save(model.state_dict(), weights)
    enc = load_teacher(f"timm:vit_small_patch14_dinov2@{weights}", **TINY_VIT)
    loaded = enc.model.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded[key], value)
