"""SamTeacher: a Segment Anything image encoder as a feature teacher (MobileSAM's encoder distillation).

Parity with segment_anything: on the same resized uint8 image the teacher's ``features`` are upstream's
``image_encoder(preprocess(x))``; through upstream's own ``SamPredictor`` (PIL resize) they agree to
within what a ±1 grey level of resize rounding changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sam_upstream import tiny_upstream_sam
from segment_anything import SamPredictor as UpstreamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from anydistill.config import DataConfig, ModelConfig, TrainConfig
from anydistill.models import build_model
from anydistill.promptable.loading import load_promptable
from anydistill.teachers import load_teacher
from anydistill.teachers.anydistill_ckpt import AnydistillTeacher
from anydistill.teachers.sam import SamTeacher, sam_resize

S = 128  # the tiny upstream model's input size (SAM: 1024)
C = 32  # its embedding width (SAM: 256)


pytestmark = pytest.mark.usefixtures("one_thread")


def _upstream_tiny(seed: int) -> Sam:
    """8 decoder heads, so ``load_sam_checkpoint``'s default ``decoder_num_heads`` fits."""
    return tiny_upstream_sam(seed, img_size=S, width=C, decoder_heads=8)


def _save_pth(sam: Sam, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sam_tiny_official.pth"
    torch.save(sam.state_dict(), path)  # exactly the layout of segment-anything's checkpoints
    return path


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> tuple[Sam, Path]:
    sam = _upstream_tiny(seed=0)
    return sam, _save_pth(sam, tmp_path_factory.mktemp("sam_a"))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A non-square (H, W, 3) uint8 image, noise: the worst case for resize rounding."""
    return np.random.default_rng(0).integers(0, 256, (96, 160, 3), dtype=np.uint8)


def _to01(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)


def _promptable_ckpt(path: Path, image_size: int = 64) -> Path:
    """An anydistill ``task=promptable`` checkpoint in the layout training writes (``model.*`` weights
    + the resolved config), without training: a seeded ``sam_tiny``."""
    torch.manual_seed(1)
    model = build_model("sam_tiny", img_size=image_size)
    cfg = TrainConfig(
        task="promptable", model=ModelConfig(name="sam_tiny"), data=DataConfig(image_size=image_size)
    )
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "anydistill_config": cfg.to_dict()}, path)
    return path


def test_features_equal_upstream_encoder_on_the_same_resized_image(official, image) -> None:
    sam, path = official
    teacher = load_teacher(path)
    assert isinstance(teacher, SamTeacher)
    x01 = _to01(image)
    resized = sam_resize(x01, S)
    assert resized.shape == (1, 3, 77, S)  # longest side 160 -> 128, 96 -> int(76.8 + 0.5)
    assert torch.equal(resized, resized.round()) and 0 <= resized.min() and resized.max() <= 255
    with torch.no_grad():
        expected = sam.image_encoder(sam.preprocess(resized))  # upstream normalises, then pads
    ours = teacher.features(x01)
    assert ours.shape == (1, C, S // 16, S // 16)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)  # timm samvit vs upstream ViT


def test_features_match_upstream_predictor_up_to_resize_rounding(official, image) -> None:
    """Upstream resizes with PIL (uint8 bilinear), we with torch's antialiased bilinear + rounding: the
    resized images differ by at most one grey level; the embeddings then differ by less than adding
    independent ±1 noise to every pixel changes them."""
    sam, path = official
    teacher = load_teacher(path)
    x01 = _to01(image)
    ours_resized = sam_resize(x01, S)
    pil = ResizeLongestSide(S).apply_image(image)  # (77, 128, 3) uint8
    pil_resized = torch.from_numpy(pil).permute(2, 0, 1)[None].float()
    assert pil_resized.shape == ours_resized.shape
    assert (ours_resized - pil_resized).abs().max() <= 1

    predictor = UpstreamPredictor(sam)
    predictor.set_image(image)
    upstream = predictor.get_image_embedding()  # (1, C, 8, 8)
    ours = teacher.features(x01)
    assert ours.shape == upstream.shape
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(-1, 2, ours_resized.shape, generator=g).float()
    with torch.no_grad():
        clean = sam.image_encoder(sam.preprocess(ours_resized))
        noisy = sam.image_encoder(sam.preprocess((ours_resized + noise).clamp(0, 255)))
    bound = float((noisy - clean).norm() / clean.norm())
    error = float((ours - upstream).norm() / upstream.norm())
    assert 0 < bound < 0.1  # the model is sensitive to one grey level, but not chaotic
    assert error < bound


def test_sam_resize_keeps_an_image_already_at_size() -> None:
    img = np.random.default_rng(1).integers(0, 256, (S, 80, 3), dtype=np.uint8)
    out = sam_resize(_to01(img), S)
    assert torch.equal(out, torch.from_numpy(img).permute(2, 0, 1)[None].float())


def test_batch_equals_single_images(official) -> None:
    _, path = official
    teacher = load_teacher(path)
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(2))
    both = teacher.features(x)
    torch.testing.assert_close(both[1:], teacher.features(x[1:]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[0], both[1])


def test_fingerprint_is_stable_and_tells_weights_apart(official, tmp_path) -> None:
    _, path = official
    a, b = load_teacher(path), load_teacher(path)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    # Different weights under the very same file name: only the weights differ.
    other = load_teacher(_save_pth(_upstream_tiny(seed=1), tmp_path / "other"))
    assert other.fingerprint != a.fingerprint
    # Frozen: no gradients, eval mode whatever a parent asks.
    assert not any(p.requires_grad for p in a.parameters())
    assert not a.train().training and not a.model.training


def test_feature_dim_stride_and_task(official, tmp_path) -> None:
    _, path = official
    teacher = load_teacher(path)
    assert teacher.task == "features" and teacher.img_size == S
    assert (teacher.feature_dim, teacher.feature_stride) == (C, 16)
    assert teacher.features(torch.rand(1, 3, 40, 100)).shape == (1, C, S // 16, S // 16)  # always padded to S
    with pytest.raises(TypeError, match="feature encoder"):
        teacher.predict(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        teacher.features(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    student = load_teacher(_promptable_ckpt(tmp_path / "sam.ckpt"))
    assert (student.feature_dim, student.feature_stride, student.img_size) == (256, 16, 64)


def test_load_teacher_dispatches_on_the_checkpoints_task(tmp_path, make_anydistill_ckpt) -> None:
    ckpt = _promptable_ckpt(tmp_path / "promptable.ckpt")
    teacher = load_teacher(ckpt)
    assert isinstance(teacher, SamTeacher)
    x01 = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(3))
    model = load_promptable(ckpt)
    with torch.no_grad():
        expected = model.image_encoder(model.preprocess(sam_resize(x01, 64)))  # (1, 256, 4, 4)
    torch.testing.assert_close(teacher.features(x01), expected)
    # A depth checkpoint with the config training stores is not a SAM: the student adapter.
    depth = make_anydistill_ckpt(tmp_path / "depth.ckpt", "depth")
    raw = torch.load(depth, weights_only=False)
    raw["anydistill_config"] = TrainConfig(task="depth").to_dict()
    torch.save(raw, depth)
    assert isinstance(load_teacher(depth), AnydistillTeacher)
