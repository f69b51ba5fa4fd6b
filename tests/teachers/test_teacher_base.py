"""The Teacher protocol: fingerprints, resizing helpers, input checks, grouping by size, freezing."""

import pytest
import torch
from torch import Tensor, nn

from anydistill.teachers.base import Teacher, check_images, fit_to_multiple, resize, state_dict_sha256


class ToyTeacher(Teacher):
    """Depth = a 1x1 conv of the image; records the batch shapes it saw."""

    task = "depth"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 1, 1)
        self.drop = nn.Dropout(0.5)
        self.seen: list[tuple[int, ...]] = []
        self._freeze({"toy": True})

    def _predict(self, images01: Tensor) -> Tensor:
        self.seen.append(tuple(images01.shape))
        return self.drop(self.conv(images01))


def test_fit_to_multiple():
    assert fit_to_multiple(50, 80, 32, 96) == (64, 96)
    assert fit_to_multiple(480, 640, 14, 518) == (392, 518)  # 388.5 → 392
    assert fit_to_multiple(50, 75, 14) == (56, 70)  # own scale, nearest multiples
    assert fit_to_multiple(5, 1000, 14, 140) == (14, 140)  # never below one multiple


def test_state_dict_sha256_sensitivity():
    a = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(2)}
    base = state_dict_sha256(a, {"x": 1})
    assert base == state_dict_sha256(dict(reversed(list(a.items()))), {"x": 1})  # key order irrelevant
    changed = {k: v.clone() for k, v in a.items()}
    changed["w"][1, 2] += 1e-6
    assert state_dict_sha256(changed, {"x": 1}) != base
    assert state_dict_sha256({**a, "w": a["w"].view(3, 2)}, {"x": 1}) != base  # shape
    assert state_dict_sha256({**a, "w": a["w"].double()}, {"x": 1}) != base  # dtype
    assert state_dict_sha256(a, {"x": 2}) != base  # config
    assert state_dict_sha256({**a, "w": a["w"].bfloat16()}) != state_dict_sha256({**a, "w": a["w"].half()})


def test_teacher_fingerprint_weights_and_init():
    assert ToyTeacher(0).fingerprint == ToyTeacher(0).fingerprint
    assert ToyTeacher(0).fingerprint != ToyTeacher(1).fingerprint


def test_frozen_eval_and_dropout_off():
    t = ToyTeacher()
    t.train()
    assert not t.training and not t.drop.training
    assert not any(p.requires_grad for p in t.parameters())
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(t.predict(x), t.predict(x))


def test_predict_many_groups_equal_sizes_without_padding():
    t = ToyTeacher()
    images = [torch.rand(3, 4, 6), torch.rand(3, 5, 5), torch.rand(3, 4, 6), torch.rand(3, 4, 6)]
    outs = t.predict_many(images, batch_size=2)
    assert sorted(t.seen) == sorted([(2, 3, 4, 6), (1, 3, 4, 6), (1, 3, 5, 5)])
    for img, out in zip(images, outs, strict=True):
        torch.testing.assert_close(out, t.conv(img[None])[0].detach())
    assert t.predict_many([]) == []
    with pytest.raises(ValueError, match="batch_size"):
        t.predict_many(images, batch_size=0)


def test_input_checks_and_missing_capabilities():
    t = ToyTeacher()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        t.predict(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="uint8"):
        check_images(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="feature"):
        t.features(torch.rand(1, 3, 8, 8))


def test_forgetting_freeze_is_caught():
    class Forgetful(Teacher):
        task = "depth"

    with pytest.raises(RuntimeError, match="_freeze"):
        _ = Forgetful().fingerprint


def test_resize_is_noop_at_same_size_and_antialiased_when_shrinking():
    x = torch.rand(1, 1, 8, 8)
    assert resize(x, (8, 8)) is x
    stripes = (torch.arange(144).view(1, 1, 12, 12) % 2).float()  # 1-pixel stripes, shrunk 3x
    assert resize(stripes, (4, 4), antialias=False).std() > 0.4  # point samples: aliased 0/1 columns
    assert resize(stripes, (4, 4)).std() < 0.2  # low-pass filtered: close to the 0.5 average
