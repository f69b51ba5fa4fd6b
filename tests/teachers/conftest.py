"""Tiny random-init upstream models saved to temp folders (Hugging Face, timm) and anydistill checkpoints.

Nothing here touches the network: ``HF_HUB_OFFLINE=1`` and every load is ``local_files_only``.
"""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DA_SIZE = 56  # the processor's target size (upstream: 518)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _spread(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every weight with a fan-in scale so a random net's outputs are O(1), not ~1e-7."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else p.numel()
            p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)


def save_depth_anything(folder: Path, seed: int = 0, metric: bool = False, processor: bool = True) -> Path:
    """A 4-block, width-32 Depth Anything (V2 layout) + its DPT processor at ``DA_SIZE``, saved to ``folder``."""
    transformers = pytest.importorskip("transformers")
    backbone = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=DA_SIZE,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    config = transformers.DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="metric" if metric else "relative",
        max_depth=20,
    )
    model = transformers.DepthAnythingForDepthEstimation(config).eval()
    _spread(model, seed)
    model.save_pretrained(folder)
    if processor:
        transformers.DPTImageProcessor(
            size={"height": DA_SIZE, "width": DA_SIZE},
            keep_aspect_ratio=True,
            ensure_multiple_of=14,
            do_pad=False,
            resample=3,
            image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
        ).save_pretrained(folder)
    return folder


def save_dinov2(folder: Path, seed: int = 0, registers: int = 0) -> Path:
    """A 2-block, width-32 DINOv2 (``Dinov2Model`` or ``Dinov2WithRegistersModel``) saved to ``folder``."""
    transformers = pytest.importorskip("transformers")
    kwargs = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=56,
    )
    if registers:
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **kwargs)
        )
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**kwargs))
    _spread(model.eval(), seed)
    model.save_pretrained(folder)
    return folder


def save_anydistill_ckpt(path: Path, task: str = "depth", seed: int = 0) -> Path:
    """A tiny untrained anydistill checkpoint in the layout ``load_student`` reads."""
    from anydistill.methods.supervised import SupervisedModule

    torch.manual_seed(seed)
    if task == "depth":
        module = SupervisedModule(task="depth", model_name="depth_tiny")
    else:
        module = SupervisedModule(
            task="semantic", model_name="seg_tiny", num_classes=3, class_names=["floor", "wall", "thing"]
        )
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "anydistill_model": module.model_record(),
        },
        path,
    )
    return path


@pytest.fixture(scope="session")
def make_depth_anything():
    """The :func:`save_depth_anything` builder, for tests that need their own variant."""
    return save_depth_anything


@pytest.fixture(scope="session")
def make_dinov2():
    """The :func:`save_dinov2` builder."""
    return save_dinov2


@pytest.fixture(scope="session")
def make_anydistill_ckpt():
    """The :func:`save_anydistill_ckpt` builder."""
    return save_anydistill_ckpt


@pytest.fixture(scope="session")
def da_folder(tmp_path_factory) -> Path:
    return save_depth_anything(tmp_path_factory.mktemp("depth_anything"))


@pytest.fixture(scope="session")
def dinov2_folder(tmp_path_factory) -> Path:
    return save_dinov2(tmp_path_factory.mktemp("dinov2"))


@pytest.fixture(scope="session")
def depth_ckpt(tmp_path_factory) -> Path:
    return save_anydistill_ckpt(tmp_path_factory.mktemp("ckpt") / "depth.ckpt", "depth")


@pytest.fixture(scope="session")
def semantic_ckpt(tmp_path_factory) -> Path:
    return save_anydistill_ckpt(tmp_path_factory.mktemp("ckpt") / "semantic.ckpt", "semantic")
