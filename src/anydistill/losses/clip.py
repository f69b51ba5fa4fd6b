"""CLIP's symmetric contrastive loss [0] over paired image and text embeddings: :func:`clip_loss` /
:class:`CLIPLoss` (with CLIP's learnable temperature).

- [0] Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (CLIP),
  ICML 2021, https://arxiv.org/abs/2103.00020 (the loss: its Figure 3; the temperature: §2.5); the
  ``logit_scale`` parameter as in
  https://github.com/openai/CLIP/blob/ea41722f9fe6bb81189f41ab6c306e77e930c2af/clip/model.py
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.losses.segmentation import _upcast

__all__ = ["clip_loss", "CLIPLoss"]


def clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric cross-entropy of CLIP [0]: image ``n`` should pick text ``n`` among the batch's texts,
    and text ``n`` image ``n``.

        logits = exp(s) · î · t̂ᵀ   (N, N),   î = i / ‖i‖,  t̂ = t / ‖t‖
        L = ( CE(logits, arange(N)) + CE(logitsᵀ, arange(N)) ) / 2

    with ``CE`` the mean cross-entropy over the rows. ``logit_scale`` is ``s = log(1/τ)``, the *log* of
    the scale (CLIP's parameter; open_clip's ``ClipLoss`` takes ``exp(s)`` instead).

    Args:
        image_emb: ``(N, D)`` image embeddings.
        text_emb: ``(N, D)`` embeddings of the paired texts.
        logit_scale: ``s``, a scalar tensor (gradient flows) or a float.

    Returns:
        scalar loss.
    """
    if image_emb.dim() != 2 or image_emb.shape[0] == 0:
        raise ValueError(
            f"image_emb and text_emb must be non-empty (N, D) tensors, got {tuple(image_emb.shape)}"
        )
    if text_emb.shape != image_emb.shape:
        raise ValueError(
            f"image_emb and text_emb must have the same shape, got {tuple(image_emb.shape)} and "
            f"{tuple(text_emb.shape)}"
        )
    if isinstance(logit_scale, Tensor) and logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
    image = F.normalize(_upcast(image_emb), dim=1)  # (N, D)
    text = F.normalize(_upcast(text_emb), dim=1).to(image.dtype)  # (N, D)
    scale = (
        _upcast(logit_scale).exp().reshape(()) if isinstance(logit_scale, Tensor) else math.exp(logit_scale)
    )
    logits = scale * image @ text.T  # (N, N), rows: images, columns: texts
    target = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class CLIPLoss(nn.Module):
    """CLIP's loss [0] with its learnable temperature; see :func:`clip_loss`.

    ``logit_scale`` is a parameter ``s``, initialised to ``log(1 / init_temperature)`` (CLIP: τ = 0.07)
    and clipped so that ``exp(s) <= max_logit_scale`` (CLIP: 100, "to prevent scaling the logits by more
    than 100"). The clip is applied in ``forward`` (``s.clamp(max=log(max_logit_scale))``): beyond it
    ``s`` gets no gradient; the stored value is left as it is.

    Shapes: ``image_emb``, ``text_emb`` ``(N, D)``.

    Args:
        init_temperature: ``τ`` at the start (> 0).
        max_logit_scale: the largest ``exp(s)`` used (> 0).
    """

    def __init__(self, init_temperature: float = 0.07, max_logit_scale: float = 100.0) -> None:
        super().__init__()
        if init_temperature <= 0 or max_logit_scale <= 0:
            raise ValueError(
                f"init_temperature and max_logit_scale must be > 0, got {init_temperature}, {max_logit_scale}"
            )
        self.init_temperature = init_temperature
        self.max_logit_scale = max_logit_scale
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        scale = self.logit_scale.clamp(max=math.log(self.max_logit_scale))
        return clip_loss(image_emb, text_emb, scale)

    def extra_repr(self) -> str:
        return f"init_temperature={self.init_temperature}, max_logit_scale={self.max_logit_scale}"
