"""A learning smoke test: SAM's training recipe must actually fit a tiny scene, not just move weights."""

import pytest
import torch

from anydistill.config import PromptConfig
from anydistill.methods.promptable import PromptableModule
from anydistill.models import build_model

S = 64


def _scene() -> dict:
    """Two 64² images, two rectangles each, coloured apart from a grey background."""
    img = torch.full((2, 3, S, S), 60, dtype=torch.uint8)
    masks = torch.zeros(2, 2, S, S, dtype=torch.bool)
    masks[0, 0, 10:40, 8:30] = masks[0, 1, 45:60, 35:60] = True
    masks[1, 0, 5:25, 30:60] = masks[1, 1, 30:55, 5:25] = True
    for b in range(2):
        for k in range(2):
            img[b, :, masks[b, k]] = torch.tensor([200, 40 * k, 100 * b], dtype=torch.uint8)[:, None]
    sizes = torch.tensor([[S, S], [S, S]])
    return {"image": img, "masks": masks, "valid": torch.ones(2, 2, dtype=torch.bool),
            "instance_ids": torch.zeros(2, 2, dtype=torch.long), "input_size": sizes,
            "original_size": sizes, "id": ["a", "b"]}  # fmt: skip


@pytest.mark.slow
def test_simulated_click_training_fits_a_tiny_scene():
    """From IoU ≈ 0.1 (random init) to > 0.6 in 100 steps of the full recipe (3 rounds, 20:1
    focal:dice). ~30 s on one thread; run with -m slow."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        module = PromptableModule(
            build_model("sam_tiny", img_size=S), PromptConfig(num_rounds=3, refine_rounds=1)
        )
        params = [p for p in module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=8e-4, weight_decay=0.1)
        batch = _scene()
        ious = []
        for _ in range(100):
            out = module.rounds(batch)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            ious.append(float(out["iou"]))
        first, last = sum(ious[:5]) / 5, sum(ious[-10:]) / 10  # IoU averaged over rounds and objects
        assert first < 0.3 and last > 0.6, (first, last)
    finally:
        torch.set_num_threads(n)
