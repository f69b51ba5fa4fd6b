"""Reading Segment Anything checkpoints: official segment-anything ``.pth`` files and our own.

An official checkpoint (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``)
is a plain state dict of ``segment_anything.modeling.Sam``. Ours differs only in the image encoder,
which is timm's ``VisionTransformerSAM`` held as ``image_encoder.trunk``. The whole mapping:

==========================================  ================================================
official                                    anydistill
==========================================  ================================================
``image_encoder.<k>``                       ``image_encoder.trunk.<k>``
``image_encoder.blocks.<i>.mlp.lin1.<p>``   ``image_encoder.trunk.blocks.<i>.mlp.fc1.<p>``
``image_encoder.blocks.<i>.mlp.lin2.<p>``   ``image_encoder.trunk.blocks.<i>.mlp.fc2.<p>``
``prompt_encoder.<k>``                      ``prompt_encoder.<k>`` (same)
``mask_decoder.<k>``                        ``mask_decoder.<k>`` (same)
==========================================  ================================================

(timm's own ``vision_transformer_sam.checkpoint_filter_fn`` does the ``lin`` → ``fc`` renaming too.)
Every shape is equal; the architecture (ViT width, depth, heads, window, global blocks, input size,
decoder sizes) is read back from the shapes by :func:`infer_sam_config`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from anydistill.checkpoints import read_state_dict
from anydistill.errors import DataError
from anydistill.models.sam.image_encoders import SAM_VIT_CONFIGS

ANCHOR_KEY = "mask_decoder.iou_token.weight"  # every SAM state dict has it, ours and official
_OFFICIAL_ENCODER = "image_encoder."
_OURS_VIT_ENCODER = "image_encoder.trunk."
_OURS_STUDENT_ENCODER = "image_encoder.backbone."
#: Renamings inside the ViT (official → timm), applied after the prefix change.
OFFICIAL_TO_TIMM_RENAMES: tuple[tuple[str, str], ...] = (
    (".mlp.lin1.", ".mlp.fc1."),
    (".mlp.lin2.", ".mlp.fc2."),
)
SAM_SIZES = ("vit_b", "vit_l", "vit_h")


# --------------------------------------------------------------------------------------------------
# Key mapping
# --------------------------------------------------------------------------------------------------


def official_to_anydistill(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an official segment-anything state dict's keys to ours (table in the module docstring)."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k.startswith(_OFFICIAL_ENCODER):
            k = _OURS_VIT_ENCODER + k[len(_OFFICIAL_ENCODER) :]
            for a, b in OFFICIAL_TO_TIMM_RENAMES:
                k = k.replace(a, b)
        out[k] = v
    return out


def anydistill_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`official_to_anydistill` (to hand a ViT SAM of ours to segment_anything)."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k.startswith(_OURS_VIT_ENCODER):
            k = _OFFICIAL_ENCODER + k[len(_OURS_VIT_ENCODER) :]
            for a, b in OFFICIAL_TO_TIMM_RENAMES:
                k = k.replace(b, a)
        elif k.startswith(_OFFICIAL_ENCODER):
            raise ValueError(f"{k!r} is not a key of an anydistill SAM ViT (image_encoder.trunk.*)")
        out[k] = v
    return out


def state_dict_layout(state: Mapping[str, Any]) -> str:
    """``"official"`` (segment-anything ViT), ``"vit"`` (ours, timm ViT) or ``"student"``."""
    if any(k.startswith(_OURS_VIT_ENCODER) for k in state):
        return "vit"
    if any(k.startswith(_OURS_STUDENT_ENCODER) for k in state):
        return "student"
    if f"{_OFFICIAL_ENCODER}patch_embed.proj.weight" in state:
        return "official"
    raise ValueError("no SAM image encoder keys (image_encoder.patch_embed.*, .trunk.* or .backbone.*)")


# --------------------------------------------------------------------------------------------------
# Reading a file
# --------------------------------------------------------------------------------------------------


def read_sam_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The SAM state dict in ``path`` (``.pth``/``.pt``/``.ckpt`` via ``torch.load(weights_only=True)``
    or ``.safetensors``), with any prefix (``student.``, ``model.``, ...) removed.

    Raises DataError when the file is missing, unreadable (truncated, corrupt, not a PyTorch file) or
    holds no SAM weights.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "SAM checkpoint file not found")
    obj: Any = read_state_dict(path)  # the one weights-only reader (anydistill.checkpoints)
    prefixes = sorted(
        (k[: -len(ANCHOR_KEY)] for k in obj if isinstance(k, str) and k.endswith(ANCHOR_KEY)), key=len
    )
    if not prefixes:
        some = [k for k in list(obj)[:4]]
        raise DataError(path, f"is not a SAM state dict: no {ANCHOR_KEY!r} key (keys start {some})")
    p = prefixes[0]
    state = {k[len(p) :]: v for k, v in obj.items() if k.startswith(p)}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise DataError(path, f"is not a SAM state dict: {bad[:3]} are not tensors")
    try:
        state_dict_layout(state)
    except ValueError as e:
        raise DataError(path, f"is not a SAM state dict: {e}") from None
    return state


# --------------------------------------------------------------------------------------------------
# Architecture from shapes
# --------------------------------------------------------------------------------------------------


def _count(state: Mapping[str, Tensor], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def infer_decoder_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Prompt encoder / mask decoder overrides (``zoo._build_sam`` names) from a state dict's shapes.

    ``decoder_num_heads`` cannot be read from shapes; SAM's 8 is assumed.
    """
    return dict(
        prompt_embed_dim=int(state["prompt_encoder.no_mask_embed.weight"].shape[1]),
        mask_in_chans=int(state["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
        decoder_depth=_count(state, "mask_decoder.transformer.layers."),
        decoder_mlp_dim=int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
        iou_head_depth=_count(state, "mask_decoder.iou_prediction_head.layers."),
        iou_head_hidden_dim=int(state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
        num_multimask_outputs=int(state["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
    )


def infer_vit_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """The ViT encoder's shape from an official-layout state dict: ``img_size``, ``embed_dim``,
    ``depth``, ``num_heads``, ``global_attn_indexes``, ``window_size`` (plus ``mlp_ratio`` when not 4).

    Heads come from the relative-position tables (``rel_pos_h (2 L - 1, D / heads)``); a block is
    global when its table spans the whole grid (L = S/16), else windowed with L = window size.
    """
    e = _OFFICIAL_ENCODER
    proj = state[f"{e}patch_embed.proj.weight"]  # (D, 3, 16, 16)
    if proj.shape[-1] != 16:
        raise ValueError(f"patch size {proj.shape[-1]}, SAM's is 16")
    embed_dim = int(proj.shape[0])
    depth = _count(state, f"{e}blocks.")
    grid = int(state[f"{e}pos_embed"].shape[1])  # (1, S/16, S/16, D)
    rel = [state[f"{e}blocks.{i}.attn.rel_pos_h"] for i in range(depth)]  # (2L - 1, D / heads)
    head_dim = int(rel[0].shape[1])
    spans = [(int(r.shape[0]) + 1) // 2 for r in rel]
    global_idx = [i for i, s in enumerate(spans) if s == grid]
    windows = {s for s in spans if s != grid}
    if len(windows) > 1:
        raise ValueError(f"blocks use several window sizes {sorted(windows)}")
    cfg: dict[str, Any] = dict(
        img_size=grid * 16,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        global_attn_indexes=tuple(global_idx),
        window_size=windows.pop() if windows else 14,
    )
    hidden = int(state[f"{e}blocks.0.mlp.lin1.weight"].shape[0])
    if hidden != 4 * embed_dim:
        cfg["mlp_ratio"] = hidden / embed_dim
    return cfg


def vit_size_name(cfg: Mapping[str, Any]) -> str | None:
    """``"vit_b"``/``"vit_l"``/``"vit_h"`` when ``cfg`` (from :func:`infer_vit_config`) is one of SAM's."""

    def key(c: Mapping[str, Any]) -> tuple[Any, ...]:
        return c["embed_dim"], c["depth"], c["num_heads"], tuple(c["global_attn_indexes"])

    for name, ref in SAM_VIT_CONFIGS.items():
        if key(cfg) == key(ref) and "mlp_ratio" not in cfg:  # any img_size
            return name
    return None


def _describe(cfg: Mapping[str, Any]) -> str:
    name = vit_size_name(cfg) or "non-standard"
    return f"{name} (embed_dim {cfg['embed_dim']}, {cfg['depth']} blocks, {cfg['num_heads']} heads)"


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _check_and_load(model: nn.Module, state: dict[str, Tensor], path: Path, assign: bool = False) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        raise DataError(
            path,
            f"does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"shape mismatch {wrong[:3]}",
        )
    model.load_state_dict(state, strict=True, assign=assign)


def load_sam_weights(model: nn.Module, checkpoint_path: str | Path) -> nn.Module:
    """Load a SAM checkpoint (official or ours, see :func:`read_sam_state_dict`) into ``model``
    strictly, in place; returns ``model``. A ViT of another size raises a DataError naming both."""
    path = Path(checkpoint_path)
    state = read_sam_state_dict(path)
    layout = state_dict_layout(state)
    own = model.state_dict()
    if layout in ("official", "vit") and any(k.startswith(_OURS_VIT_ENCODER) for k in own):
        official = state if layout == "official" else anydistill_to_official(state)
        want, have = infer_vit_config(anydistill_to_official(own)), _infer(infer_vit_config, official, path)
        if want != have:
            raise DataError(path, f"holds a {_describe(have)} SAM checkpoint, the model is {_describe(want)}")
    if layout == "official":
        state = official_to_anydistill(state)
    _check_and_load(model, state, path)
    return model


def _infer(
    fn: Callable[[Mapping[str, Tensor]], dict[str, Any]], state: Mapping[str, Tensor], path: Path
) -> dict[str, Any]:
    try:
        return fn(state)
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(path, f"is not a complete SAM state dict ({type(e).__name__}: {e})") from None
