"""The pass with a real teacher adapter: ``partial(load_teacher, spec)`` on a tiny anydistill checkpoint."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from anydistill.cache import PseudoLabelDataset, open_cache, run_teacher_pass
from anydistill.data.io import read_image
from anydistill.data.toyworld import write_toyworld

teachers = pytest.importorskip("anydistill.teachers", reason="the teachers package is not available")
if not hasattr(teachers, "load_teacher"):
    pytest.skip("anydistill.teachers has no load_teacher yet", allow_module_level=True)


def test_pass_with_an_anydistill_checkpoint_teacher(tmp_path: Path) -> None:
    from anydistill import api
    from anydistill.config import load_config

    overrides = [
        "task=depth", f"run_dir={tmp_path / 'run'}", "model.name=depth_tiny", "data.train_count=8",
        "data.val_count=2", "data.image_size=64", "data.batch_size=4", "data.num_workers=0",
        "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.grid_images=1",
    ]  # fmt: skip
    ckpt = api.train(load_config(None, overrides)).best_checkpoint
    images = tmp_path / "toy"
    write_toyworld(images, count=5, size=48, domain="wide", seed=5, progress=False)
    out = tmp_path / "cache"
    manifest = run_teacher_pass(
        functools.partial(teachers.load_teacher, str(ckpt)),  # loaded in each process, spec recorded
        images,
        out,
        batch_size=2,
        shard_size=3,
        features=True,
        num_workers=0,
        progress=False,
    )
    teacher = teachers.load_teacher(ckpt)
    assert manifest.teacher_fingerprint == teacher.fingerprint and manifest.teacher_spec == str(ckpt)
    assert manifest.count == 5 and manifest.targets == ["disp", "feat"] and manifest.task == "depth"
    cache = open_cache(out, teacher_fingerprint=teacher.fingerprint, verify=True)
    for path in sorted((images / "images").glob("*.png")):
        x = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)
        got = cache.read(path.stem)
        want = teacher.predict(x)[0, 0].numpy()
        assert got["disp"].shape == (48, 48)
        np.testing.assert_allclose(
            got["disp"].astype(np.float32), want, rtol=5e-3, atol=5e-3 * np.abs(want).max()
        )
        feat = teacher.features(x)[0].numpy()
        assert got["feat"].shape == feat.shape
        np.testing.assert_allclose(
            got["feat"].astype(np.float32), feat, rtol=5e-3, atol=5e-3 * np.abs(feat).max()
        )
    sample = PseudoLabelDataset(out)[0]
    assert sample["disparity"].shape == (48, 48)
