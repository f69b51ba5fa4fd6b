"""Tiny untrained students saved as training saves them, for tests that need a checkpoint but no training."""

from __future__ import annotations

from pathlib import Path


def save_tiny_depth_student(path: Path, size: int = 64) -> Path:
    """A tiny untrained ``depth_tiny`` saved the way training saves a student (``model.*`` weights and the
    model record ``anydistill.loading.load_model`` reads), at pre-processing size ``size``: no training."""
    import torch

    from anydistill.loading import model_record
    from anydistill.models import build_model

    torch.manual_seed(0)
    model = build_model("depth_tiny")
    arch = {"model_name": "depth_tiny", "model_kwargs": {}, "num_classes": None}
    record = model_record("depth", model.preprocess_spec(size), arch)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "anydistill_model": record}, path)
    return path


def save_tiny_semantic_student(path: Path, size: int = 64) -> Path:
    """A tiny untrained ``seg_tiny`` over toyworld's classes (names and colours in its record), saved as
    training saves a semantic student, at pre-processing size ``size``: no training."""
    import torch

    from anydistill.data.classes import ClassInfo
    from anydistill.data.toyworld import class_table
    from anydistill.loading import model_record
    from anydistill.models import build_model

    classes = ClassInfo.from_table(class_table())
    torch.manual_seed(0)
    model = build_model("seg_tiny", num_classes=classes.num_classes)
    arch = {"model_name": "seg_tiny", "model_kwargs": {}, "num_classes": classes.num_classes}
    record = model_record("semantic", model.preprocess_spec(size), arch, classes)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "anydistill_model": record}, path)
    return path


def save_tiny_sam(path: Path, size: int = 64) -> Path:
    """A tiny random SAM (ViT 48 wide, 2 blocks, decoder 32 wide; 0.6 MB) as a plain state dict ``.pth``,
    the way a segment-anything checkpoint is a file: ``anydistill.loading.load_model`` tells its shapes.
    Weights are randomised (+0.1·N(0, 1)) so the masks are not all empty; input size ``size``."""
    import torch

    from anydistill.models import build_model

    torch.manual_seed(0)
    model = build_model(
        "sam_vit_b", img_size=size, embed_dim=48, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4,
        prompt_embed_dim=32, mask_in_chans=8, decoder_depth=1, decoder_mlp_dim=64, iou_head_hidden_dim=24,
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.save(model.state_dict(), path)
    return path


def save_tiny_promptable_student(path: Path, size: int = 64) -> Path:
    """A tiny untrained ``sam_tiny`` (CNN image encoder at input ``size``, a 32-wide one-block decoder)
    saved as promptable training saves it (``model.*`` weights and the model record naming the builder
    and its arguments)."""
    import torch

    from anydistill.loading import model_record
    from anydistill.models import build_model

    torch.manual_seed(0)
    kwargs = dict(img_size=size, prompt_embed_dim=32, mask_in_chans=8, decoder_depth=1, decoder_mlp_dim=64,
                  iou_head_hidden_dim=32)  # fmt: skip
    model = build_model("sam_tiny", **kwargs)
    arch = {"model_name": "sam_tiny", "model_kwargs": kwargs}
    record = model_record("promptable", model.preprocess_spec(), arch)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "anydistill_model": record}, path)
    return path


def save_tiny_detector(path: Path, size: int = 96, name: str = "det_tiny") -> Path:
    """A tiny untrained detector over toyworld's five object kinds, saved as ``task=detect`` training saves
    it (the model record carries ``input_size`` and ``num_classes``), at input size ``size``: no training."""
    import torch

    from anydistill.data.classes import ClassInfo
    from anydistill.data.detection import TOYWORLD_DETECTION_CLASSES
    from anydistill.loading import model_record
    from anydistill.models import build_model

    torch.manual_seed(0)
    model = build_model(name, num_classes=len(TOYWORLD_DETECTION_CLASSES), input_size=size)
    arch = {
        "model_name": name,
        "model_kwargs": {"input_size": size},
        "num_classes": len(TOYWORLD_DETECTION_CLASSES),
    }
    record = model_record(
        "detect", model.preprocess_spec(), arch, ClassInfo(list(TOYWORLD_DETECTION_CLASSES))
    )
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "anydistill_model": record}, path)
    return path
