"""A tiny stand-in teacher for the cache tests (and their subprocess scripts).

It follows the teacher protocol of :mod:`anydistill.teachers`: ``task``, ``fingerprint``,
``predict(images01 (B, 3, H, W)) -> (B, C, H, W)`` at the input size, ``features(images01) -> (B, C, h, w)``.
Structure: a fixed random 3x3 conv net, ``softplus`` for disparity; features are the first conv's
activations average-pooled by 4.
"""

from __future__ import annotations

import hashlib
import time

import torch
from torch import nn


class StandInTeacher(nn.Module):
    """Deterministic from ``seed``; ``delay`` seconds of sleep per call (to be killed mid-pass)."""

    feature_stride = 4

    def __init__(self, seed: int = 0, task: str = "depth", num_classes: int = 3, delay: float = 0.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        out = 1 if task == "depth" else num_classes
        self.task = task
        self.delay = delay
        self.feature_dim = 8
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, out, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        h = hashlib.sha256(f"stand-in/{task}/{num_classes}".encode())
        for p in self.parameters():
            h.update(p.detach().numpy().tobytes())
        self.fingerprint = h.hexdigest()
        self.spec = f"stand-in:{seed}"
        self.eval()

    @torch.no_grad()
    def predict(self, images01: torch.Tensor) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        y = self.conv2(torch.relu(self.conv1(images01 - 0.5)))  # (B, C, H, W)
        return nn.functional.softplus(y) if self.task == "depth" else y

    @torch.no_grad()
    def features(self, images01: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(torch.relu(self.conv1(images01 - 0.5)), 4)  # (B, 8, H/4, W/4)
