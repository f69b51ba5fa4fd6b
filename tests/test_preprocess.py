"""``anydistill.preprocess``: the one pre-processing spec, against the upstream code it stands for.

* :func:`long_side_shape` is segment-anything's ``ResizeLongestSide.get_preprocess_shape`` (a side never 0);
* :func:`lower_bound_shape` is ``transformers``' DPT ``get_resize_output_image_size`` (keep aspect, /14);
* ``Preprocess.sam(S)`` is segment-anything's ``SamPredictor.set_image`` input (resize as a uint8 image,
  ``Sam.preprocess``);
* a dense student's ``preprocess_spec(S)`` is ``eval_transforms(S, m)`` + ``model.normalize``;
* the teachers' modes (``long_side_multiple``, ``nearest_multiple``, the uint8 emulation), serialisation
  and validation.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sam_upstream import tiny_upstream_sam
from segment_anything.utils.transforms import ResizeLongestSide

from anydistill.data.transforms import eval_transforms
from anydistill.errors import ConfigError
from anydistill.models import build_model
from anydistill.preprocess import (
    RESIZE_MODES,
    SAM_PIXEL_STD,
    Preprocess,
    long_side_shape,
    lower_bound_shape,
    multiple_shape,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _sizes(n: int, seed: int, low: int = 1, high: int = 2500) -> list[tuple[int, int]]:
    """``n`` random ``(H, W)`` plus slivers, squares and off-by-one shapes."""
    rng = np.random.default_rng(seed)
    fixed = [(1, 1), (1, 2100), (2100, 1), (3, 500), (480, 640), (640, 480), (1080, 1920), (333, 500)]
    fixed += [(1023, 1024), (1024, 1025), (517, 519), (13, 14), (40, 70), (7, 7)]
    fixed += [(5, 2048), (2048, 5), (5, 256), (7, 2048)]  # x.5 ties at 1024 / 128: rounded half up
    return fixed + [tuple(int(v) for v in rng.integers(low, high, 2)) for _ in range(n)]


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _to01(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("long_side", [1024, 128, 77, 1])
def test_long_side_shape_is_segment_anythings_rule_but_never_zero(long_side: int) -> None:
    zeros = 0
    for h, w in _sizes(400, seed=long_side):
        upstream = ResizeLongestSide.get_preprocess_shape(h, w, long_side)
        ours = long_side_shape(h, w, long_side)
        assert ours == tuple(max(1, v) for v in upstream), (h, w, long_side)
        assert max(ours) == long_side
        zeros += 0 in upstream
    if long_side == 1024:
        assert zeros  # the slivers really round to 0 upstream
        assert ResizeLongestSide.get_preprocess_shape(1, 2100, 1024)[0] == 0
        assert long_side_shape(1, 2100, 1024) == (1, 1024)
        assert long_side_shape(5, 2048, 1024) == (3, 1024)  # 2.5 rounds up (not to even)


@pytest.mark.parametrize("size", [518, 56, 70])
def test_lower_bound_shape_is_dpts_keep_aspect_rule(size: int) -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.dpt.image_processing_dpt import get_resize_output_image_size

    for h, w in _sizes(400, seed=size, high=1500):
        out = get_resize_output_image_size(torch.empty(3, h, w), (size, size), True, 14)
        upstream = (int(out.height), int(out.width))
        ours = lower_bound_shape(h, w, size, 14)
        assert ours == tuple(max(14, v) for v in upstream), (h, w, size)
        assert Preprocess(size, resize="lower_bound", pad="none", multiple=14).input_shape(h, w) == ours
    # Upscaling: the scale closer to 1 leaves one side below ``size``; a sliver is 0 upstream, 14 here.
    assert lower_bound_shape(40, 70, 56, 14) == (28, 56)
    assert get_resize_output_image_size(torch.empty(3, 3, 500), (56, 56), True, 14).height == 0
    assert lower_bound_shape(3, 500, 56, 14) == (14, 56)
    # And the processor itself (not only its helper) produces those sizes.
    from PIL import Image

    processor = transformers.DPTImageProcessor(
        size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14, do_pad=False
    )
    for h, w in [(40, 70), (90, 60), (30, 100), (200, 57)]:
        pixels = processor(images=[Image.fromarray(_image(h, w))], return_tensors="pt")["pixel_values"]
        assert tuple(pixels.shape[-2:]) == lower_bound_shape(h, w, 56, 14), (h, w)


def test_multiple_modes_round_half_to_even_and_never_below_one_multiple() -> None:
    def shape(resize: str, h: int, w: int, m: int, size: int = 1) -> tuple[int, int]:
        return Preprocess(size, resize=resize, pad="none", multiple=m).resized_shape(h, w)

    assert shape("long_side_multiple", 50, 80, 32, 96) == (64, 96)  # 60 → 64
    assert shape("long_side_multiple", 480, 640, 14, 518) == (392, 518)  # 388.5 → 392
    assert shape("long_side_multiple", 5, 1000, 14, 140) == (14, 140)  # 0.7 → 0 → one multiple
    assert shape("nearest_multiple", 50, 75, 14) == (56, 70)  # the input's own scale
    assert shape("nearest_multiple", 35, 21, 14) == (28, 28)  # 2.5 → 2 and 1.5 → 2 (half to even)
    assert shape("nearest_multiple", 35, 21, 14, size=999) == (28, 28)  # size unused
    for h, w in _sizes(200, seed=3, high=800):
        assert multiple_shape(h, w, 14, 518) == shape("long_side_multiple", h, w, 14, 518)
        sh, sw = shape("long_side_multiple", h, w, 14, 518)
        assert sh % 14 == 0 and sw % 14 == 0 and abs(max(sh, sw) - 518) <= 7
    assert shape("none", 37, 41, 14) == (37, 41)
    assert shape("fixed", 37, 41, 1, size=64) == (64, 64)


def test_input_shape_pads_bottom_right_to_square_or_multiple() -> None:
    sam = Preprocess.sam(1024)
    assert sam.input_shape(480, 640) == (1024, 1024)
    spec = Preprocess(64, resize="long_side", pad="multiple", multiple=32)
    assert spec.resized_shape(30, 50) == (38, 64) and spec.input_shape(30, 50) == (64, 64)
    x = torch.ones(2, 3, 38, 64)
    padded = spec.pad_batch(x)
    assert (
        padded.shape == (2, 3, 64, 64) and padded[..., :38, :].eq(1).all() and padded[..., 38:, :].eq(0).all()
    )
    masks = torch.ones(5, 3, 4, dtype=torch.bool)  # any dtype, any leading dimensions
    assert Preprocess(8).pad_batch(masks).shape == (5, 8, 8)
    assert Preprocess(8, pad="none").pad_batch(x) is x


# ----------------------------------------------------------------------------------- SAM's frame
@pytest.mark.parametrize("hw", [(96, 160), (160, 96), (128, 100), (37, 41), (200, 200)])
def test_sam_spec_is_segment_anythings_preprocess_of_the_uint8_resized_image(hw: tuple[int, int]) -> None:
    """``SamPredictor.set_image``: resize the uint8 image (long side S), then ``Sam.preprocess`` (normalise
    with mean/std on 0..255, pad bottom/right with zeros). Upstream resizes with PIL; our frame resizes
    with torch's antialiased bilinear and rounds to uint8 values (what our SAM path does): the same on that
    uint8 image to 1e-4, and within one grey level of upstream's PIL resize."""
    S = 128
    upstream = tiny_upstream_sam(0, img_size=S)
    image = _image(*hw, seed=hw[0])
    h, w = ResizeLongestSide.get_preprocess_shape(*hw, S)
    chw = torch.from_numpy(image).permute(2, 0, 1)[None].float()  # (1, 3, H, W) on 0..255
    if (h, w) != hw:
        chw = F.interpolate(chw, (h, w), mode="bilinear", align_corners=False, antialias=True)
    resized_u8 = chw.round().clamp(0, 255).to(torch.uint8)  # (1, 3, h, w): the uint8 image
    ours = Preprocess.sam(S)(_to01(image))
    with torch.no_grad():
        expected = upstream.preprocess(resized_u8.float())
    assert ours.shape == (1, 3, S, S)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
    assert ours[..., h:, :].eq(0).all() and ours[..., :, w:].eq(0).all()  # padded after normalising
    # Upstream's own path (PIL resize of the uint8 image): at most one grey level apart.
    pil = ResizeLongestSide(S).apply_image(image)  # (h, w, 3) uint8
    with torch.no_grad():
        via_pil = upstream.preprocess(torch.as_tensor(pil).permute(2, 0, 1)[None].float())
    grey = (ours - via_pil).abs() * torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
    assert grey.max() <= 1.0 + 1e-3
    if (h, w) == hw:  # no resize: exactly upstream's set_image input
        torch.testing.assert_close(ours, via_pil, rtol=0, atol=1e-4)


def test_sam_resize_rounds_like_a_uint8_image() -> None:
    spec = Preprocess.sam(64)
    x = torch.rand(2, 3, 50, 90, generator=torch.Generator().manual_seed(0))
    resized = spec.resize_batch(x)  # (2, 3, 36, 64) on 0..255
    assert resized.shape == (2, 3, 36, 64)
    assert torch.equal(resized, resized.round()) and resized.min() >= 0 and resized.max() <= 255
    exact = F.interpolate(x * 255, (36, 64), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(resized, exact.round())
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.equal(spec.resize_pixels(u8), spec.resize_batch(u8.float() / 255))  # uint8 in, same values


# ---------------------------------------------------------------------------------- dense students
def _eval_input(model: torch.nn.Module, image: np.ndarray, size: int) -> torch.Tensor:
    sample = eval_transforms(size, model.input_multiple)({"image": image})
    return model.normalize(sample["image"][None])  # (1, 3, S, S)


@pytest.mark.parametrize("name", ["depth_tiny", "seg_tiny"])
@pytest.mark.parametrize("hw", [(48, 80), (80, 48), (100, 130), (64, 64), (30, 31), (97, 61)])
def test_dense_spec_is_eval_transforms_plus_normalize(name: str, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(name, **({"num_classes": 3} if name == "seg_tiny" else {})).eval()
    image = _image(*hw, seed=sum(hw))
    ours = model.preprocess_spec(64)(_to01(image))
    expected = _eval_input(model, image, 64)
    assert ours.shape == expected.shape == (1, 3, 64, 64)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_dense_spec_and_eval_transforms_agree_on_a_rounding_tie() -> None:
    """A 5x128 image at 64: 2.5 rounds up to 3 in both (one long-side rule)."""
    model = build_model("depth_tiny").eval()
    image = _image(5, 128)
    assert model.preprocess_spec(64).resized_shape(5, 128) == (3, 64)
    torch.testing.assert_close(model.preprocess_spec(64)(_to01(image)), _eval_input(model, image, 64))


# ------------------------------------------------------------------------- teachers' modes (uint8)
def test_separable_uint8_resize_rounds_after_each_pass_and_clamps() -> None:
    spec = Preprocess(
        28, resize="lower_bound", pad="none", multiple=14, interpolation="bicubic", round_to_uint8=True,
        clamp=True, separable=True,
    )  # fmt: skip
    x = torch.rand(1, 3, 40, 70, generator=torch.Generator().manual_seed(1))
    h, w = spec.resized_shape(40, 70)
    assert (h, w) == (28, 56)

    def bicubic(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(t, size, mode="bicubic", align_corners=False, antialias=True)

    wide = bicubic(x * 255, (40, w)).clamp(0, 255).round()  # width pass, rounded
    expected = bicubic(wide, (h, w)).clamp(0, 255).round()  # height pass, rounded
    assert torch.equal(spec.resize_batch(x), expected * (1 / 255))  # as the processor's rescale_factor
    one_pass = replace(spec, separable=False).resize_batch(x)
    assert not torch.equal(one_pass, spec.resize_batch(x))  # the two-pass rounding is really different
    step = torch.zeros(1, 3, 14, 14)
    step[..., 7:] = 1.0  # a hard edge: bicubic overshoots on both sides when upscaling it
    floats = replace(spec, separable=False, round_to_uint8=False).resize_batch(step)  # clamp only
    assert floats.shape[-2:] == (28, 28) and floats.min() == 0 and floats.max() == 1
    assert not torch.equal(floats, floats.mul(255).round() / 255)  # not rounded
    overshoot = replace(spec, separable=False, round_to_uint8=False, clamp=False).resize_batch(step)
    assert overshoot.min() < 0 and overshoot.max() > 1


def test_nearest_exact_interpolation_takes_no_antialias() -> None:
    spec = Preprocess(
        4, resize="fixed", pad="none", interpolation="nearest-exact", mean=(0,) * 3, std=(1,) * 3
    )
    x = torch.arange(64.0).view(1, 1, 8, 8).expand(1, 3, 8, 8)
    assert torch.equal(spec(x), F.interpolate(x, (4, 4), mode="nearest-exact"))


# ---------------------------------------------------------------------------------- serialisation
SPECS = [
    Preprocess.sam(1024),
    Preprocess(64, resize="long_side", pad="square", multiple=32, pad_before_normalize=True),
    Preprocess(
        518,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        resize="lower_bound",
        pad="none",
        multiple=14,
        interpolation="bicubic",
        round_to_uint8=True,
        clamp=True,
        separable=True,
    ),  # fmt: skip
    *(Preprocess(96, resize=mode, pad="none", multiple=14) for mode in RESIZE_MODES),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.resize}-{s.pad}-{s.size}")
def test_to_dict_round_trips_as_plain_data(spec: Preprocess) -> None:
    data = spec.to_dict()
    assert Preprocess.from_dict(data) == spec
    assert json.loads(json.dumps(data)) == data  # lists, numbers, strings, bools only
    buffer = io.BytesIO()
    torch.save({"preprocess": data}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["preprocess"]
    assert Preprocess.from_dict(loaded) == spec


def test_from_dict_reads_older_and_newer_dicts() -> None:
    data = Preprocess.sam(1024).to_dict()
    older = {k: v for k, v in data.items() if k not in ("clamp", "separable")}  # before those fields
    assert Preprocess.from_dict(older) == Preprocess.sam(1024)
    assert Preprocess.from_dict({**data, "a_future_field": 1}) == Preprocess.sam(1024)


# ------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"size": 0}, "size"),
        ({"multiple": 0}, "multiple"),
        ({"resize": "longest"}, "preprocess.resize"),
        ({"pad": "center"}, "preprocess.pad"),
        ({"interpolation": "area"}, "preprocess.interpolation"),
        ({"input_range": 2.0}, "preprocess.input_range"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
        ({"separable": True}, "preprocess.separable"),
    ],
)
def test_invalid_specs_raise_config_error_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        Preprocess(**{"size": 64, **change})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        Preprocess.from_dict({**Preprocess(64).to_dict(), **change})


def test_separable_with_rounding_is_valid() -> None:
    assert Preprocess(64, round_to_uint8=True, separable=True).separable


# --------------------------------------------------------------------------- teachers carry theirs
def test_depth_anything_settings_make_a_lower_bound_spec() -> None:
    from anydistill.errors import DataError
    from anydistill.teachers.hf_depth_anything import (
        DEPTH_ANYTHING_PREPROCESS,
        depth_anything_preprocess,
        dpt_output_size,
    )

    spec = depth_anything_preprocess(dict(DEPTH_ANYTHING_PREPROCESS))
    assert (spec.size, spec.resize, spec.pad, spec.multiple) == (518, "lower_bound", "none", 14)
    assert (spec.interpolation, spec.antialias, spec.input_range) == ("bicubic", True, 1.0)
    assert spec.round_to_uint8 and spec.separable and spec.clamp
    assert not depth_anything_preprocess(dict(DEPTH_ANYTHING_PREPROCESS), emulate_uint8=False).round_to_uint8
    assert spec.resized_shape(480, 640) == dpt_output_size(480, 640, (518, 518), True, 14) == (518, 686)
    fixed = depth_anything_preprocess({**DEPTH_ANYTHING_PREPROCESS, "keep_aspect_ratio": False})
    assert fixed.resized_shape(480, 640) == (518, 518)
    assert depth_anything_preprocess({**DEPTH_ANYTHING_PREPROCESS, "do_resize": False}).resized_shape(
        5, 7
    ) == (5, 7)
    with pytest.raises(DataError, match="not square"):
        depth_anything_preprocess({**DEPTH_ANYTHING_PREPROCESS, "size": (518, 700)})


@pytest.mark.parametrize("image_size", [None, 96])
def test_timm_encoder_runs_its_spec(image_size: int | None) -> None:
    from anydistill.teachers.encoders import TimmEncoder

    torch.manual_seed(0)
    teacher = TimmEncoder("resnet18", image_size=image_size)
    spec = teacher.preprocess
    assert spec.resize == ("nearest_multiple" if image_size is None else "long_side_multiple")
    assert (spec.pad, spec.multiple, spec.mean) == ("none", 32, (0.485, 0.456, 0.406))
    x = torch.rand(1, 3, 50, 70, generator=torch.Generator().manual_seed(2))
    assert (
        teacher.working_size(50, 70)
        == spec.input_shape(50, 70)
        == ((64, 64) if image_size is None else (64, 96))
    )
    with torch.no_grad():
        expected = teacher.model.forward_features(spec(x))
    torch.testing.assert_close(teacher.features(x), expected)
