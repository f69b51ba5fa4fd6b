"""Teacher targets (pseudo-label disparity, logits) move with the image like the labels do."""

import numpy as np
import torch

from anydistill.data.sample_ops import ToTensorSample
from anydistill.data.transforms import PadToSize, RandomHorizontalFlip, train_transforms


def sample(h: int = 24, w: int = 32) -> dict:
    xs = np.tile(np.arange(w, dtype=np.float32), (h, 1))  # (H, W): value = column index
    image = np.repeat((xs * 7 % 256).astype(np.uint8)[..., None], 3, axis=2)
    disparity = xs.copy()
    disparity[0, 0] = np.nan  # invalid
    logits = np.stack([xs, -xs])  # (2, H, W)
    return {"image": image, "disparity": disparity, "logits": logits, "id": "a"}


def test_disparity_zero_is_valid_and_nan_is_not():
    t = ToTensorSample()(sample())
    assert t["disparity"].shape == (1, 24, 32) and t["logits"].shape == (2, 24, 32)
    assert t["disparity_valid"][0, 0, 1]  # column 0 → disparity 0 (at infinity): valid
    assert not t["disparity_valid"][0, 0, 0]  # NaN: invalid, and stored as 0
    assert t["disparity"][0, 0, 0] == 0


def test_flip_and_crop_keep_targets_aligned_with_the_image():
    torch.manual_seed(0)
    out = RandomHorizontalFlip(p=1.0)(sample())
    np.testing.assert_array_equal(out["disparity"][0, 5].numpy(), np.arange(32)[::-1])
    for seed in range(5):
        torch.manual_seed(seed)
        out = train_transforms(16, 16, scale=(0.3, 0.6))(sample())
        # Image grey level and both targets were all made from the column index: they must agree.
        column_from_logits = out["logits"][0]
        assert torch.allclose(out["logits"][1], -column_from_logits)
        valid = out["disparity_valid"][0]
        disparity = out["disparity"][0]
        # Disparity is resampled nearest (values exist in the source), logits bilinearly: within one column.
        assert torch.all((disparity[valid] - column_from_logits[valid]).abs() <= 1.5)
        assert set(torch.unique(disparity[valid]).tolist()) <= set(range(32))


def test_padding_fills_targets_invalid():
    out = PadToSize(30, 40)(sample())
    assert out["disparity"].shape == (1, 30, 40) and out["logits"].shape == (2, 30, 40)
    assert not out["disparity_valid"][0, 29, 39] and out["logits"][:, 29, 39].abs().sum() == 0
