"""MAE (He et al. [0]): reconstruct the pixels of the 75% of patches a ViT did not see.

    (pred, mask) = MAE(x),   L = Σ_i mask_i · ‖pred_i − t_i‖² / (p²·3) / Σ_i mask_i

with ``t_i`` the pixels of patch ``i`` of the (normalised) input, each patch normalised by its own mean
and variance when ``pretrain.norm_pix`` (the official recipe's ``norm_pix_loss``)
(:func:`~anydistill.losses.mae.mae_loss`); the model is :class:`~anydistill.models.mae.MaskedAutoencoder`
on the timm ViT ``pretrain.backbone`` (``mask_ratio`` 0.75, a ``decoder_depth`` × ``decoder_dim``
decoder with ``decoder_heads`` heads: 8 × 512 × 16 in the paper). One view per image
(:class:`~anydistill.data.views.MAEView`: random resized crop 0.2–1 and flip, MAE's only augmentation).

- [0] He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022,
  https://arxiv.org/abs/2111.06377
"""

from __future__ import annotations

from torch import Tensor

from anydistill.config import TrainConfig
from anydistill.data.views import MAEView
from anydistill.errors import ConfigError
from anydistill.losses.mae import mae_loss, patchify
from anydistill.methods.base import MethodRun, register_method
from anydistill.methods.ssl_common import SelfSupervisedModule, check_encoder, ssl_run
from anydistill.models.mae import MaskedAutoencoder
from anydistill.models.ssl_heads import EmbeddingEncoder

__all__ = ["MAEModule", "mae_view"]


def mae_view(cfg: TrainConfig, mean: tuple[float, ...], std: tuple[float, ...]) -> MAEView:
    """MAE's augmentation: random resized crop (``pretrain.crop_scale``, default 0.2–1) and flip."""
    p = cfg.pretrain
    scale = tuple(p.crop_scale) if p.crop_scale else (0.2, 1.0)
    return MAEView(cfg.data.image_size, scale=scale, mean=mean, std=std)


class MAEModule(SelfSupervisedModule):
    """MAE on the ViT ``cfg.pretrain.backbone``; ``ssl_loss(views=[v])`` with ``v (B, 3, S, S)``."""

    def __init__(self, cfg: TrainConfig, knn_monitor: bool = False) -> None:
        super().__init__(cfg, knn_monitor)
        p = cfg.pretrain
        _, kwargs = check_encoder(p, cfg.data.image_size)
        kwargs.pop("img_size", None)
        kwargs.pop("dynamic_img_size", None)
        self.mae = MaskedAutoencoder(
            p.backbone, cfg.data.image_size, p.mask_ratio, p.decoder_dim, p.decoder_depth, p.decoder_heads,
            **kwargs,
        )  # fmt: skip
        self.norm_pix = p.norm_pix

    @property
    def encoder(self) -> EmbeddingEncoder:  # type: ignore[override]
        return self.mae.encoder

    def encoder_prefix(self) -> str:
        return "mae.encoder."

    def ssl_loss(self, views: list[Tensor]) -> dict[str, Tensor]:
        if len(views) != 1:
            raise ValueError(f"MAE takes 1 view, got {len(views)}")
        x = views[0]
        pred, mask = self.mae(x)  # (B, L, p²·3), (B, L)
        target = patchify(x, self.mae.patch_size)
        return {"loss": mae_loss(pred, target, mask, norm_pix=self.norm_pix)}


@register_method("mae", tasks=("embed",))
def build_mae(cfg: TrainConfig) -> MethodRun:
    """MAE: a ViT reconstructs 75% masked patches through a light decoder (self-supervised)."""
    probe, _ = check_encoder(cfg.pretrain, cfg.data.image_size)
    if not probe.is_vit:
        raise ConfigError(
            f"pretrain.backbone: MAE needs a ViT (e.g. vit_small_patch16_224), not {cfg.pretrain.backbone!r}"
        )
    return ssl_run(cfg, MAEModule, mae_view, min_batch=1)
