"""AnydistillTeacher: an anydistill checkpoint's network with keep-aspect, unpadded resizing."""

import pytest
import torch
import torch.nn.functional as F

from anydistill.errors import DataError
from anydistill.inference import load_student
from anydistill.teachers.anydistill_ckpt import AnydistillTeacher


def _student(path):
    """The loaded student as a function of [0, 1] images (its stored pre-processing's normalisation)."""
    loaded = load_student(path)
    return lambda x01: loaded.model(loaded.preprocess.normalize(x01))


def _reference(module, x: torch.Tensor, work: tuple[int, int]) -> torch.Tensor:
    """The student's own forward at ``work``, resized back (independent of the adapter's helpers)."""
    resized = F.interpolate(x, size=work, mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        out = module(resized)
    return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def depth_teacher(depth_ckpt):
    return AnydistillTeacher(depth_ckpt, image_size=96)


def test_depth_predict_matches_student_forward(depth_teacher, depth_ckpt):
    module = _student(depth_ckpt)
    x = torch.rand(2, 3, 50, 80)  # long side 80 → 96 (scale 1.2); 60 → 64 (nearest multiple of 32)
    assert depth_teacher.working_size(50, 80) == (64, 96)
    out = depth_teacher.predict(x)
    assert depth_teacher.task == "depth" and out.shape == (2, 1, 50, 80)
    torch.testing.assert_close(out, _reference(module, x, (64, 96)), rtol=1e-5, atol=1e-5)


def test_no_resize_at_working_size(depth_teacher, depth_ckpt):
    module = _student(depth_ckpt)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ref = module(x)
    torch.testing.assert_close(depth_teacher.predict(x), ref, rtol=1e-5, atol=1e-6)


def test_semantic_logits_and_class_names(semantic_ckpt):
    teacher = AnydistillTeacher(semantic_ckpt, image_size=64)
    module = _student(semantic_ckpt)
    x = torch.rand(1, 3, 40, 30)  # → 64 x 48 → (64, 64) after rounding 48 to /32
    out = teacher.predict(x)
    assert teacher.task == "semantic" and teacher.class_names == ["floor", "wall", "thing"]
    assert out.shape == (1, 3, 40, 30)
    torch.testing.assert_close(out, _reference(module, x, teacher.working_size(40, 30)), rtol=1e-5, atol=1e-5)


def test_features_are_the_deepest_backbone_map(depth_teacher, depth_ckpt):
    model = load_student(depth_ckpt).model
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        ref = model.forward_features(model.normalize(x))[-1]
    feats = depth_teacher.features(x)
    assert feats.shape == (2, depth_teacher.feature_dim, 64 // depth_teacher.feature_stride, 96 // 32)
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-6)


def test_predict_many_keeps_order_and_sizes(depth_teacher):
    images = [torch.rand(3, 50, 80), torch.rand(3, 64, 64), torch.rand(3, 50, 80)]
    outs = depth_teacher.predict_many(images, batch_size=4)
    assert [tuple(o.shape) for o in outs] == [(1, 50, 80), (1, 64, 64), (1, 50, 80)]
    for img, out in zip(images, outs, strict=True):
        torch.testing.assert_close(out, depth_teacher.predict(img[None])[0], rtol=1e-4, atol=1e-5)


def test_frozen(depth_teacher):
    assert not any(p.requires_grad for p in depth_teacher.parameters())
    depth_teacher.train()
    assert not depth_teacher.training and not depth_teacher.model.training


def test_fingerprint(tmp_path, depth_ckpt, depth_teacher, make_anydistill_ckpt):
    assert AnydistillTeacher(depth_ckpt, image_size=96).fingerprint == depth_teacher.fingerprint
    other = make_anydistill_ckpt(tmp_path / "other.ckpt", "depth", seed=1)
    assert AnydistillTeacher(other, image_size=96).fingerprint != depth_teacher.fingerprint
    assert AnydistillTeacher(depth_ckpt, image_size=128).fingerprint != depth_teacher.fingerprint


def test_bad_checkpoint_is_data_error(tmp_path, depth_ckpt):
    truncated = tmp_path / "trunc.ckpt"
    truncated.write_bytes(depth_ckpt.read_bytes()[:2000])
    with pytest.raises(DataError, match="trunc.ckpt"):
        AnydistillTeacher(truncated)
