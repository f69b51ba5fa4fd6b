"""HFDepthAnythingTeacher against the upstream transformers pipeline on a tiny random-init model.

Upstream = ``AutoImageProcessor`` on PIL images → ``AutoModelForDepthEstimation`` →
``post_process_depth_estimation(target_sizes)``. Tolerances: pixel values within 2 grey levels (the
upstream CPU uint8 resize uses fixed-point weights) on < 2 % of elements, exact when no resize is
needed; the model + post-processing part exact (1e-5 relative) on the same pixel values; end to end
within 5e-3 of the depth range when the image is resized.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from anydistill.errors import DataError
from anydistill.teachers.hf_depth_anything import (
    DEPTH_ANYTHING_PREPROCESS,
    HFDepthAnythingTeacher,
    dpt_output_size,
)

transformers = pytest.importorskip("transformers")

DA_SIZE = 56  # the tiny model's processor size (conftest.DA_SIZE)
IMAGENET_STD = [0.229, 0.224, 0.225]
SIZES = [(40, 70), (90, 60), (30, 100), (42, 56)]  # (42, 56) is already a working size: no resize


@pytest.fixture(scope="module")
def upstream(da_folder):
    processor = transformers.AutoImageProcessor.from_pretrained(da_folder, local_files_only=True)
    model = transformers.AutoModelForDepthEstimation.from_pretrained(da_folder, local_files_only=True).eval()
    return processor, model


@pytest.fixture(scope="module")
def teacher(da_folder):
    return HFDepthAnythingTeacher(da_folder)


def _images(h: int, w: int, n: int = 2, seed: int = 0) -> tuple[list[Image.Image], torch.Tensor]:
    """``n`` random RGB images as PIL (upstream input) and as a [0, 1] batch (ours)."""
    arr = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    return [Image.fromarray(a) for a in arr], torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255


def _upstream_depth(upstream, pil: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    processor, model = upstream
    inputs = processor(images=pil, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    sizes = [(im.height, im.width) for im in pil]
    post = processor.post_process_depth_estimation(outputs, target_sizes=sizes)
    return inputs["pixel_values"], torch.stack([r["predicted_depth"] for r in post])  # (B, H, W)


@pytest.mark.parametrize("size", SIZES)
def test_pixel_values_match_upstream_processor(teacher, upstream, size):
    pil, x = _images(*size)
    ref, _ = _upstream_depth(upstream, pil)
    ours = teacher.pixel_values(x)
    assert ours.shape == ref.shape
    diff = (ours - ref).abs() * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255  # in grey levels
    if dpt_output_size(*size, (DA_SIZE, DA_SIZE), True, 14) == size:
        assert diff.max() < 1e-3
    else:
        assert diff.max() <= 2.0 + 1e-3
        assert (diff > 0.5).float().mean() < 0.02


@pytest.mark.parametrize("size", SIZES)
def test_predict_matches_upstream_end_to_end(teacher, upstream, size):
    pil, x = _images(*size, seed=1)
    _, ref = _upstream_depth(upstream, pil)
    ours = teacher.predict(x)
    assert ours.shape == (2, 1, *size)
    span = ref.abs().max()
    tol = 1e-5 if dpt_output_size(*size, (DA_SIZE, DA_SIZE), True, 14) == size else 5e-3
    assert (ours[:, 0] - ref).abs().max() <= tol * span


def test_model_and_postprocessing_exact_on_same_pixel_values(teacher, upstream, monkeypatch):
    pil, x = _images(40, 70, seed=2)
    pixel_values, ref = _upstream_depth(upstream, pil)
    monkeypatch.setattr(teacher, "pixel_values", lambda images01: pixel_values)
    ours = teacher.predict(x)
    torch.testing.assert_close(ours[:, 0], ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())


def test_float_resizing_is_close_but_not_uint8(da_folder, upstream):
    teacher = HFDepthAnythingTeacher(da_folder, emulate_uint8=False)
    pil, x = _images(40, 70, seed=3)
    ref_pv, ref = _upstream_depth(upstream, pil)
    assert (teacher.pixel_values(x) - ref_pv).abs().max() > 0.02  # really a different resize
    assert (teacher.predict(x)[:, 0] - ref).abs().max() <= 5e-2 * ref.abs().max()


def test_working_size_is_dpt_rule():
    # keep_aspect_ratio: the scale closer to 1 wins; sides rounded to multiples of 14.
    assert dpt_output_size(40, 70, (56, 56), True, 14) == (28, 56)  # width scale 0.8 beats height 1.4
    assert dpt_output_size(480, 640, (518, 518), True, 14) == (518, 686)  # 518 * 640 / 480 = 690.7 → 686
    assert dpt_output_size(1080, 1920, (518, 518), True, 14) == (518, 924)  # shorter side to 518
    assert dpt_output_size(40, 70, (56, 56), False, 14) == (56, 56)
    assert dpt_output_size(3, 500, (56, 56), True, 14) == (14, 56)  # never 0


def test_batch_equals_single_images_and_mixed_sizes(teacher):
    _, x = _images(30, 100, n=3, seed=4)
    batch = teacher.predict(x)
    for i in range(3):
        torch.testing.assert_close(batch[i : i + 1], teacher.predict(x[i : i + 1]), rtol=1e-4, atol=1e-4)
    _, y = _images(50, 50, n=1, seed=5)
    mixed = teacher.predict_many([x[0], y[0], x[1]], batch_size=2)
    assert [tuple(m.shape) for m in mixed] == [(1, 30, 100), (1, 50, 50), (1, 30, 100)]
    torch.testing.assert_close(mixed[1], teacher.predict(y)[0], rtol=1e-4, atol=1e-4)


def test_metric_model_returns_disparity(tmp_path, make_depth_anything):
    folder = make_depth_anything(tmp_path / "metric", metric=True)
    teacher = HFDepthAnythingTeacher(folder)
    assert teacher.metric
    _, x = _images(42, 56, n=1, seed=6)  # no resize
    model = transformers.AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        depth = model(pixel_values=teacher.pixel_values(x)).predicted_depth  # (1, 42, 56) metres
    torch.testing.assert_close(teacher.predict(x)[0, 0], 1.0 / depth[0], rtol=1e-4, atol=1e-4)
    _, y = _images(40, 70, n=1, seed=7)  # resized: bicubic overshoot must not create huge disparities
    disparity = teacher.predict(y)
    with torch.no_grad():
        depth = model(pixel_values=teacher.pixel_values(y)).predicted_depth
    assert torch.isfinite(disparity).all() and disparity.max() <= 1.0 / depth.min() + 1e-4


def test_frozen_and_targets_usable_in_a_loss(teacher):
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.model.training
    _, x = _images(28, 28, n=1)
    target = teacher.predict(x)
    student = torch.nn.Conv2d(3, 1, 1)
    loss = ((student(x) - target) ** 2).mean()  # an inference_mode() target could not be saved here
    loss.backward()
    assert student.weight.grad is not None


def test_fingerprint_same_weights_equal_other_init_differs(tmp_path, da_folder, teacher, make_depth_anything):
    again = HFDepthAnythingTeacher(da_folder)
    assert again.fingerprint == teacher.fingerprint and len(teacher.fingerprint) == 64
    # The same weights saved again elsewhere (new path, fresh config.json) keep the fingerprint.
    resaved = tmp_path / "resaved"
    teacher.model.save_pretrained(resaved)
    (resaved / "preprocessor_config.json").write_text((da_folder / "preprocessor_config.json").read_text())
    assert HFDepthAnythingTeacher(resaved).fingerprint == teacher.fingerprint
    other = make_depth_anything(tmp_path / "other", seed=1)
    assert HFDepthAnythingTeacher(other).fingerprint != teacher.fingerprint
    assert HFDepthAnythingTeacher(da_folder, image_size=70).fingerprint != teacher.fingerprint


def test_missing_processor_uses_depth_anything_defaults(tmp_path, make_depth_anything):
    folder = make_depth_anything(tmp_path / "noproc", processor=False)
    teacher = HFDepthAnythingTeacher(folder)
    assert teacher.settings == DEPTH_ANYTHING_PREPROCESS
    assert teacher.working_size(480, 640) == (518, 686)


def test_broken_folders_raise_data_error_naming_the_file(tmp_path, da_folder):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (broken / name).write_text((da_folder / name).read_text())
    data = (da_folder / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="model.safetensors"):
        HFDepthAnythingTeacher(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(DataError, match="no weights file"):
        HFDepthAnythingTeacher(broken)
    with pytest.raises(DataError, match="config.json"):
        HFDepthAnythingTeacher(tmp_path / "empty_dir_missing")


def test_weights_of_another_model_are_refused(tmp_path, dinov2_folder, da_folder):
    """A folder whose weights lack the depth head must not load with a silently random head."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "config.json").write_text((da_folder / "config.json").read_text())
    (mixed / "model.safetensors").write_bytes((dinov2_folder / "model.safetensors").read_bytes())
    with pytest.raises(DataError, match="model.safetensors"):
        HFDepthAnythingTeacher(mixed)
