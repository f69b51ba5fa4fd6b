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

import torch
from torch import Tensor, nn

from anydistill.errors import DataError

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
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise DataError(path, "reading .safetensors needs the safetensors package (pip install safetensors)") from None
    try:
        if path.suffix == ".safetensors":
            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — any failure to unpickle is a bad user file
        first = (str(e).strip().splitlines() or [""])[0][:200]  # torch's messages run to a page
        raise DataError(
            path, f"cannot be read as a PyTorch weights file, truncated or corrupt? ({type(e).__name__}: {first})"
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):  # Lightning / common training-loop layouts
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a state dict, found a {type(obj).__name__}")
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
    from anydistill.models.sam.image_encoders import SAM_VIT_CONFIGS

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


def _normalise_type(model_type: str | None) -> str | None:
    if model_type is None:
        return None
    t = model_type.lower().removeprefix("sam_")
    return {"default": "vit_h"}.get(t, t)


def _build_assigned(build: Callable[[], nn.Module], state: dict[str, Tensor], path: Path) -> nn.Module:
    """Build on the meta device (no init, no memory) and take the checkpoint's tensors as parameters:
    a 2.5 GB ViT-H loads without a second copy."""
    with torch.device("meta"):
        model = build()
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    _check_and_load(model, state, path, assign=True)
    model.pixel_mean = torch.tensor(model._pixel_mean_values).view(-1, 1, 1)
    model.pixel_std = torch.tensor(model._pixel_std_values).view(-1, 1, 1)
    named = [*model.named_parameters(), *model.named_buffers()]
    leftover = [n for n, t in named if t.is_meta and n not in state]
    if leftover:  # a part with state outside the state dict: build it for real instead
        model = build()
        _check_and_load(model, state, path)
    return model.eval()


def load_sam_checkpoint(path: str | Path, model_type: str | None = None, **overrides: Any) -> nn.Module:
    """A :class:`~anydistill.models.sam.sam.Sam` built to fit the checkpoint in ``path``, weights loaded.

    Args:
        path: an official segment-anything ``.pth`` (a plain state dict), or an anydistill SAM
            state dict / Lightning checkpoint (``sam_vit_*``, ``sam_tiny``, ``sam_small``).
        model_type: ``None`` (detect from the tensor shapes), ``"vit_b"``/``"vit_l"``/``"vit_h"``
            (``"default"`` = vit_h; a file of another size raises a DataError saying which size it
            holds), or a student builder name (``"sam_tiny"``/``"tiny"``, ``"sam_small"``).
        **overrides: builder overrides; needed where shapes do not tell: ``decoder_num_heads`` (8),
            and for students ``img_size`` (1024) and ``backbone`` (when not a registered student's).

    Raises:
        DataError: file missing, unreadable, not a SAM state dict, or not of ``model_type``.
    """
    from anydistill.models.sam import zoo

    path = Path(path)
    state = read_sam_state_dict(path)
    want = _normalise_type(model_type)
    layout = state_dict_layout(state)
    cfg = _infer(infer_decoder_config, state, path)
    if layout in ("official", "vit"):
        official = state if layout == "official" else anydistill_to_official(state)
        vit = _infer(infer_vit_config, official, path)
        size = vit_size_name(vit)
        if want is not None and want != size:
            if want not in SAM_SIZES:
                raise DataError(
                    path, f"holds a {_describe(vit)} SAM checkpoint, not a {model_type!r} student"
                )
            raise DataError(path, f"holds a {_describe(vit)} SAM checkpoint, not {want}")
        builder = getattr(zoo, f"sam_{size or 'vit_b'}")
        kwargs = {**cfg, **vit, **overrides}
        ours = official_to_anydistill(official)
        return _build_assigned(lambda: builder(**kwargs), ours, path)

    # An anydistill student: try the registered students (or the one asked for) on the meta device.
    if want in SAM_SIZES:
        raise DataError(path, f"holds an anydistill SAM student (CNN image encoder), not a {want} ViT")
    names = [f"sam_{want}"] if want is not None else list(zoo.SAM_STUDENTS)
    for name in names:
        if name not in zoo.SAM_STUDENTS and not hasattr(zoo, name):
            raise ValueError(
                f"unknown SAM model_type {model_type!r}; known: {', '.join((*SAM_SIZES, *zoo.SAM_STUDENTS))}"
            )
        builder = getattr(zoo, name)
        kwargs = {**cfg, **overrides}
        with torch.device("meta"):
            probe = builder(**kwargs).state_dict()
        if set(probe) == set(state) and all(probe[k].shape == state[k].shape for k in probe):
            return _build_assigned(lambda b=builder, kw=kwargs: b(**kw), state, path)
    if want is not None or "backbone" in overrides:
        # Build it for real to report the first mismatch clearly.
        model = getattr(zoo, names[0])(**{**cfg, **overrides})
        _check_and_load(model, state, path)
        return model
    raise DataError(
        path,
        f"is an anydistill SAM student whose image encoder matches none of {list(zoo.SAM_STUDENTS)}; "
        "pass model_type= and backbone=",
    )
