"""The Depth Anything recipe as a LightningModule: labeled + pseudo-labeled batches, strong
perturbations and CutMix on the student's unlabeled input, feature alignment to a frozen encoder.

Adapted from the recipe of Depth Anything V1 (Yang et al., CVPR 2024, §3.2–3.3) and V2 (§4); the
official repositories release no training code for relative depth, so this follows the papers and
UniMatch (https://github.com/LiheYoung/UniMatch), which the authors point to for the perturbations.

One training step (shapes for a labeled batch of B and an unlabeled batch of ``ratio``·B):

1. labeled: ``L_l = SSI(student(x_l), 1/depth_l) (+ gradient matching)`` — clean images;
2. unlabeled: the teacher's disparity ``d_u`` comes from the cache (computed on *clean* images);
   the student sees ``x̂_u = CutMix(perturb(x_u))``; with CutMix the loss is computed per region
   against each source image's pseudo-label, each with its own scale/shift (``cutmix_ssi_loss``);
   the largest ``trim`` fraction of per-pixel losses is ignored (V2);
3. feature alignment: ``L_feat = mean over kept pixels of (1 − cos(proj(f_student), f_frozen))``,
   pixels with ``cos > 1 − α`` are not kept (tolerance margin α);
4. ``L = L_l + w_u · L_u + w_f · L_feat``.

Semantic students distill the teacher's logits with temperature T (Hinton et al. 2015); CutMix
mixes the soft labels with the same mask as the images.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor, nn
from torch.utils.data import DataLoader

from anydistill.cache import PseudoLabelDataset
from anydistill.config import DataConfig, DistillConfig, TrainConfig
from anydistill.data.classes import class_info
from anydistill.data.datamodule import SupervisedDataModule
from anydistill.data.perturb import CutMix, StrongPerturbation
from anydistill.data.transforms import collate_samples
from anydistill.errors import ConfigError
from anydistill.losses import FeatureAlignmentLoss, cutmix_ssi_loss, kd_loss
from anydistill.losses.depth import ssi_loss
from anydistill.methods.base import MethodRun, register_method
from anydistill.methods.supervised import DENSE_MONITOR, SupervisedModule, dense_callbacks, module_args
from anydistill.teachers import load_teacher


class DistillModule(SupervisedModule):
    """:class:`SupervisedModule` plus the unlabeled half of the recipe.

    Args:
        distill: the recipe's switches and weights.
        frozen_encoder: a teacher (the feature API: ``forward_intermediates(images01, indices=1)`` gives its
            deepest map ``(B, C, h, w)``) with an attribute
            ``feature_dim`` (or ``None`` when ``distill.feature_align`` is off). Not saved in
            the checkpoint: it is frozen and rebuilt from ``distill.frozen_encoder``.
        **kwargs: as :class:`SupervisedModule`.
    """

    def __init__(
        self, distill: DistillConfig | None = None, frozen_encoder: nn.Module | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.dcfg = distill or DistillConfig()
        self.hparams["distill"] = asdict(self.dcfg)
        self.perturb = StrongPerturbation() if self.dcfg.perturb else None
        self.cutmix = CutMix(p=self.dcfg.cutmix_p) if self.dcfg.cutmix else None
        self.frozen = frozen_encoder
        if self.frozen is not None:
            self.frozen.requires_grad_(False).eval()
        self.align = None
        if self.dcfg.feature_align:
            if frozen_encoder is None:
                raise ValueError("distill.feature_align needs a frozen encoder (distill.frozen_encoder)")
            self.align = FeatureAlignmentLoss(
                student_dim=self.model.feature_channels[-1],
                frozen_dim=int(frozen_encoder.feature_dim),
                margin=self.dcfg.feature_margin,
            )

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        if self.frozen is not None:
            self.frozen.eval()  # frozen: BatchNorm/Dropout stay in inference mode
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # The frozen encoder is rebuilt from its spec; do not copy a large frozen model into every checkpoint.
        state = super().state_dict(*args, **kwargs)
        return {k: v for k, v in state.items() if not k.startswith("frozen.")}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False):
        if self.frozen is not None:
            state_dict = {**state_dict, **{f"frozen.{k}": v for k, v in self.frozen.state_dict().items()}}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ------------------------------------------------------------------ student pass
    def _student(self, image01: Tensor) -> tuple[Tensor, Tensor]:
        """Prediction at input size and the deepest backbone map ``(B, C, h, w)`` from one pass."""
        pred, feats = self.model.forward_intermediates(self.model.normalize(image01), indices=1)
        return pred, feats[-1]

    # ------------------------------------------------------------------ unlabeled losses
    def unlabeled_loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        image = batch["image"]  # (B, 3, H, W) clean, in [0, 1]
        if self.perturb is not None:
            image = self.perturb(image)
        mask = None
        if self.cutmix is not None:
            mask = self.cutmix.sample_boxes(
                image.shape[0], image.shape[-2], image.shape[-1], device=image.device
            )
            image = self.cutmix.mix(image, image.roll(1, dims=0), mask)  # partner = the next image
        pred, student_feat = self._student(image)
        parts: dict[str, Tensor] = {}
        if self.task == "depth":
            target, valid = batch["disparity"], batch["disparity_valid"]
            trim = self.dcfg.trim
            alignment = self.ssi.alignment
            if mask is not None:
                parts["pseudo"] = cutmix_ssi_loss(
                    pred,
                    target,
                    target.roll(1, 0),
                    valid,
                    valid.roll(1, 0),
                    mask,
                    alignment=alignment,
                    trim=trim,
                )
            else:
                parts["pseudo"] = ssi_loss(pred, target, valid, alignment=alignment, trim=trim)
        else:
            # Teacher probabilities at temperature 1 (kd_loss softens them by T itself); CutMix mixes
            # the soft labels with the same mask as the images.
            probs = F.softmax(batch["logits"].float(), dim=1)  # (B, K, H, W)
            if mask is not None:
                probs = torch.where(mask, probs.roll(1, 0), probs)
            parts["pseudo"] = kd_loss(pred, None, temperature=self.dcfg.kd_temperature, teacher_probs=probs)
        if self.align is not None:
            with torch.no_grad():
                # the deepest tap of the frozen encoder, (B, C', h', w'), on the student's own input
                frozen_feat = self.frozen.forward_intermediates(image, indices=1, intermediates_only=True)[-1]
            parts["feat"] = self.align(student_feat, frozen_feat)
        return parts

    def training_step(self, batch: dict[str, dict[str, Tensor]], batch_idx: int) -> Tensor:
        logs: dict[str, Tensor] = {}
        total = None
        labeled = batch.get("labeled")
        if labeled is not None and self.dcfg.use_labeled:
            lab = self.compute_loss(self(labeled["image"]), labeled)
            total = lab["loss"]
            logs.update({f"train/labeled_{k}": v.detach() for k, v in lab.items()})
        unlabeled = batch.get("unlabeled")
        if unlabeled is not None:
            parts = self.unlabeled_loss(unlabeled)
            u = self.dcfg.unlabeled_weight * parts["pseudo"]
            if "feat" in parts:
                u = u + self.dcfg.feature_align_weight * parts["feat"]
            total = u if total is None else total + u
            logs.update({f"train/unlabeled_{k}": v.detach() for k, v in parts.items()})
        if total is None:
            raise ValueError("a training batch needs 'labeled' or 'unlabeled' data")
        logs["train/loss"] = total.detach()
        self.log_dict(logs)
        self.log("loss", total.detach(), prog_bar=True, logger=False)
        return total


class DistillDataModule(SupervisedDataModule):
    """Labeled batches (as :class:`~anydistill.data.datamodule.SupervisedDataModule`) plus pseudo-labeled
    batches from the teacher-pass cache, ``distill.unlabeled_ratio`` times larger (Depth Anything: 1:2).

    ``train_dataloader`` returns a Lightning ``CombinedLoader`` yielding
    ``{"labeled": batch, "unlabeled": batch}`` (``max_size_cycle``: an epoch is the longer of the
    two; the shorter one cycles). The unlabeled samples carry the teacher's ``disparity`` (depth) or
    ``logits`` (semantic) through the same joint transforms as labels.
    """

    def __init__(self, cfg: DataConfig, distill: DistillConfig, task: str, input_multiple: int = 32) -> None:
        super().__init__(cfg, task, input_multiple)
        if not distill.cache:
            raise ConfigError(
                "distill.cache: the teacher-pass cache folder is required (make it with anydistill pseudo-label)"
            )
        self.distill = distill
        self.unlabeled_set = PseudoLabelDataset(distill.cache, transform=self.train_tf)
        teacher_task = self.unlabeled_set.cache.manifest.task
        if teacher_task != task:  # before the first step, not a KeyError inside it
            raise ConfigError(
                f"distill.cache: {distill.cache} holds a {teacher_task!r} teacher's targets; this student's "
                f"task is {task!r} (a {teacher_task} teacher labels a {teacher_task} student)"
            )

    def train_dataloader(self) -> CombinedLoader:
        workers = self.cfg.num_workers
        batch = self.cfg.batch_size * self.distill.unlabeled_ratio
        loaders = {
            "unlabeled": DataLoader(
                self.unlabeled_set,
                batch_size=batch,
                shuffle=True,
                drop_last=len(self.unlabeled_set) >= batch,
                num_workers=workers,
                persistent_workers=workers > 0,
                collate_fn=collate_samples,
            )  # fmt: skip
        }
        if self.distill.use_labeled:
            loaders["labeled"] = super().train_dataloader()
        return CombinedLoader(loaders, mode="max_size_cycle")


def frozen_encoder(distill: DistillConfig) -> nn.Module | None:
    """The frozen semantic encoder of feature alignment (``distill.frozen_encoder``), or None when off.

    Raises:
        ConfigError: alignment is on without an encoder, or the encoder provides no features.
    """
    if not distill.feature_align:
        return None
    if not distill.frozen_encoder:
        raise ConfigError("distill.frozen_encoder: required when distill.feature_align is true")
    frozen = load_teacher(distill.frozen_encoder)
    if frozen.feature_dim is None:
        raise ConfigError(
            f"distill.frozen_encoder: {distill.frozen_encoder} provides no features to align to"
        )
    return frozen


@register_method("distill", verbs=("distill",), tasks=("depth", "semantic"))
def build_distill(cfg: TrainConfig) -> MethodRun:
    """The Depth Anything recipe: labeled + cached pseudo-labeled images, perturbations, CutMix, alignment.

    Needs ``distill.cache`` (``anydistill pseudo-label``); ``distill.*`` switches every piece."""
    if not cfg.distill.cache:
        raise ConfigError(
            "distill.cache: the teacher-pass cache folder is required (make it with anydistill pseudo-label)"
        )
    classes = class_info(cfg.data)
    module = DistillModule(
        distill=cfg.distill, frozen_encoder=frozen_encoder(cfg.distill), **module_args(cfg, classes)
    )
    datamodule = DistillDataModule(
        cfg.data, cfg.distill, cfg.task, input_multiple=module.model.input_multiple
    )
    return MethodRun(module, datamodule, DENSE_MONITOR[cfg.task], "max", dense_callbacks(cfg, classes))
