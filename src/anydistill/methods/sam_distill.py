"""Segment Anything encoder distillation (MobileSAM's decoupled distillation, optional EdgeSAM loss).

The student is a whole SAM (``model``): a small image encoder plus the teacher's prompt encoder and
mask decoder, copied in. The teacher's image embeddings were computed once by the teacher pass
(``anydistill pseudo-label --teacher sam_vit_b.pth``) and are read from the cache, so the big encoder
never runs here. Per batch of unlabeled images:

    L = embed_weight · ‖E_s(x) − E_t(x)‖² (mean over (B, 256, h', w'), MobileSAM [0] eq. 2)
      + mask_weight · mean_prompts( w_f·focal + w_d·dice )(D(E_s(x), p), 1[D_t(E_t(x), p) > 0])

The second term (``mask_weight > 0``) is EdgeSAM's "prompt-in-the-loop" distillation [1]. There are no
labels, so each of the ``mask_points`` objects per image is what the teacher segments for a random
click (uniform in the unpadded image). Its first prompt is that click, or with probability ``p_box``
the jittered box of the teacher's mask for it (EdgeSAM samples boxes and points alike). Then
``mask_rounds`` refinement rounds each add one click drawn uniformly from where the student's current
mask and the teacher's disagree (positive where the teacher says object, negative where it does not;
:func:`~anydistill.data.clicks.error_clicks`), as EdgeSAM does. Every round decodes the prompts so far
twice, from the student's embedding through the student's decoder ``D`` and from the cached teacher
embedding through the teacher's frozen decoder ``D_t``, and the student's mask logits learn the
teacher's binarised mask with SAM's mask loss on the low-res grid (no mask prompt is fed back;
``w_f : w_d`` are ``loss``'s ``focal_weight : dice_weight``, SAM's 20 : 1 by default).

The prompt encoder and mask decoder are frozen (MobileSAM: "the decoder can be directly used") unless
``finetune_decoder``; then a frozen copy ``teacher_head`` keeps the teacher's decoder for ``D_t``.
Validation is the interactive protocol of :class:`~anydistill.methods.promptable.PromptableModule`.

- [0] Zhang et al., "Faster Segment Anything: Towards Lightweight SAM for Mobile Applications", 2023,
  https://arxiv.org/abs/2306.14289
- [1] Zhou et al., "EdgeSAM: Prompt-In-the-Loop Distillation for On-Device Deployment of SAM", 2023,
  https://arxiv.org/abs/2312.06660
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from anydistill.cache import PseudoLabelDataset
from anydistill.config import DataConfig, ModelConfig, OptimConfig, PromptConfig, TrainConfig
from anydistill.data.clicks import Prompts, error_clicks, jitter_boxes, masks_to_boxes, prompt_groups
from anydistill.data.datamodule import InstanceDataModule
from anydistill.data.instances import resize_longest_side
from anydistill.errors import ConfigError
from anydistill.loading import sam_model_name
from anydistill.losses.promptable import sam_loss
from anydistill.methods.base import MethodRun, register_method
from anydistill.methods.promptable import PromptableModule
from anydistill.models import build_model
from anydistill.promptable.batched import decode_prompts, embed_images
from anydistill.teachers.sam import SamTeacher

__all__ = ["SamDistillDataModule", "SamEncoderDistillModule", "SamInputTransform", "random_points"]


def random_points(input_sizes: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``(B, n, 2)`` (x, y) pixel indices drawn uniformly inside each image's unpadded ``(h, w)`` (the
    prompt encoder adds the half-pixel offset, as for every click in training and evaluation)."""
    u = torch.rand((input_sizes.shape[0], n, 2), generator=generator)  # (B, n, 2)
    wh = input_sizes.flip(-1).to(u)[:, None, :]  # (B, 1, 2): (w, h)
    return (u * wh).floor()


class SamEncoderDistillModule(PromptableModule):
    """MobileSAM-style distillation of ``model.image_encoder`` from cached teacher embeddings.

    Batches (:class:`SamDistillDataModule`): ``image`` uint8 ``(B, 3, S, S)``
    padded, ``input_size`` ``(B, 2)``, ``feat`` float ``(B, 256, S/16, S/16)`` teacher embeddings.

    Args:
        model: the student SAM; its prompt encoder and mask decoder hold the teacher's weights.
        prompt: :class:`~anydistill.config.PromptConfig`; this method reads ``embed_weight`` (the
            embedding MSE), ``mask_weight`` (the prompt-in-the-loop mask loss; 0: off, MobileSAM),
            ``mask_points`` (objects, i.e. random clicks, per image), ``mask_rounds`` (refinement rounds,
            each adding a click where the student's mask and the teacher's disagree),
            ``finetune_decoder`` (train the prompt encoder and mask decoder too), and, as
            :class:`PromptableModule`, ``p_box``, the box noise, the focal/dice weights and validation.
        optim, arch: as :class:`PromptableModule`.
    """

    def __init__(
        self,
        model: nn.Module,
        prompt: PromptConfig | None = None,
        optim: OptimConfig | None = None,
        arch: dict[str, Any] | None = None,
    ) -> None:
        prompt = prompt or PromptConfig()
        super().__init__(model, prompt, optim, arch)
        embed_weight, mask_weight, mask_points = prompt.embed_weight, prompt.mask_weight, prompt.mask_points
        mask_rounds, finetune_decoder = prompt.mask_rounds, prompt.finetune_decoder
        if embed_weight < 0 or mask_weight < 0 or embed_weight + mask_weight == 0:
            raise ValueError(
                f"need embed_weight, mask_weight >= 0, not both 0; got {embed_weight}, {mask_weight}"
            )
        if mask_points < 1 or mask_rounds < 0:
            raise ValueError(f"need mask_points >= 1 and mask_rounds >= 0, got {mask_points}, {mask_rounds}")
        self.embed_weight, self.mask_weight, self.mask_points = embed_weight, mask_weight, mask_points
        self.mask_rounds = mask_rounds
        self.finetune_decoder = finetune_decoder
        self.teacher_head: nn.ModuleDict | None = None
        if mask_weight > 0 and finetune_decoder:
            head = {"prompt_encoder": model.prompt_encoder, "mask_decoder": model.mask_decoder}
            self.teacher_head = copy.deepcopy(nn.ModuleDict(head)).requires_grad_(False).eval()
        if not finetune_decoder:
            model.prompt_encoder.requires_grad_(False)
            model.mask_decoder.requires_grad_(False)

    def train(self, mode: bool = True) -> SamEncoderDistillModule:
        super().train(mode)
        if self.teacher_head is not None:
            self.teacher_head.eval()
        return self

    # The frozen teacher decoder copy is rebuilt from the teacher at construction (the student's decoder
    # is initialised from it); do not store it in every checkpoint.
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)
        return {k: v for k, v in state.items() if not k.startswith("teacher_head.")}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False):
        if self.teacher_head is not None:
            own = {f"teacher_head.{k}": v for k, v in self.teacher_head.state_dict().items()}
            state_dict = {**state_dict, **own}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _decode(self, head: nn.Module, emb: Tensor, prompts: Prompts, index: Tensor) -> Tensor:
        """Single-mask low-res logits ``(N, 1, 4h', 4w')`` for N prompt sets, set ``i`` on image
        ``index[i]`` of ``emb (B, C, h', w')``: one decoder call per prompt kind (points / box), each
        batched over images when the decoder allows it."""
        pe = head.prompt_encoder.get_dense_pe()  # (1, C, h', w')
        rows_all, outs = [], []
        for rows, points, boxes in prompt_groups(prompts):
            logits, _ = decode_prompts(head, emb, pe, points, boxes, None, False, index[rows])
            rows_all.append(rows)
            outs.append(logits)
        order = torch.cat(rows_all).argsort()
        return torch.cat(outs)[order]

    def mask_loss(self, student_emb: Tensor, teacher_emb: Tensor, input_sizes: Tensor) -> Tensor:
        """Prompt-in-the-loop loss, averaged over ``B · mask_points`` objects and ``1 + mask_rounds``
        rounds (see the module docstring)."""
        b, n = student_emb.shape[0], self.mask_points
        device = student_emb.device
        index = torch.arange(b, device=device).repeat_interleave(n)  # (N,): image of each object
        hw = input_sizes.to(device)[index]  # (N, 2) unpadded (h, w) in input pixels
        teacher = self.teacher_head if self.teacher_head is not None else self.model
        # Masks are compared on the decoder's low-res grid; a cell covers scale x scale input pixels and
        # counts when its top-left pixel is inside the image (not padding).
        low = student_emb.shape[-1] * 4
        scale = self.model.image_encoder.img_size / low
        cells = torch.arange(low, device=device) * scale  # (4w',)
        valid = (cells[None, :, None] < hw[:, 0, None, None]) & (cells[None, None, :] < hw[:, 1, None, None])

        coords = random_points(input_sizes.cpu(), n).to(device).reshape(b * n, 1, 2)  # (N, 1, 2)
        ones = torch.ones(b * n, 1, dtype=torch.long, device=device)
        prompts = Prompts(
            coords, ones, coords.new_zeros(b * n, 4), torch.zeros(b * n, dtype=torch.bool, device=device)
        )
        if self.p_box > 0:
            # The "object" of a random click is the teacher's mask for it; its jittered box is the box prompt.
            with torch.no_grad():
                seed = self._decode(teacher, teacher_emb, prompts, index)[:, 0] > 0  # (N, 4h', 4w')
            seed = seed & valid
            boxes = masks_to_boxes(seed) * scale + torch.tensor(
                [0.0, 0.0, scale - 1, scale - 1], device=device
            )
            boxes = jitter_boxes(boxes, hw, self.box_noise_std, self.box_noise_max)
            has_box = (torch.rand(b * n, device=device) < self.p_box) & seed.flatten(1).any(dim=1)
            labels = torch.where(has_box[:, None], -ones, ones)  # a box-prompted object's click is padding
            prompts = Prompts(coords, labels, boxes, has_box)

        weights = {"focal_weight": self.loss_fn.focal_weight, "dice_weight": self.loss_fn.dice_weight}
        total = student_emb.new_zeros(())
        pred = target = None
        for r in range(1 + self.mask_rounds):
            if r > 0:
                assert pred is not None and target is not None
                click, label = error_clicks(pred, target, valid)  # (N, 1, 2) on the low-res grid
                prompts = prompts.append((click * scale + scale // 2).floor(), label)  # input pixels
            with torch.no_grad():
                target = self._decode(teacher, teacher_emb, prompts, index)[:, 0] > 0  # (N, 4h', 4w')
            logits = self._decode(self.model, student_emb, prompts, index)  # (N, 1, 4h', 4w')
            iou = logits.new_zeros(logits.shape[:2])  # the IoU head is not distilled here
            total = total + sam_loss(logits, target, iou, valid=valid, iou_weight=0.0, **weights).loss
            pred = logits[:, 0].detach() > 0
        return total / (1 + self.mask_rounds)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        target = batch["feat"].float()  # (B, C, h', w') cached teacher embeddings
        emb = embed_images(self.model, batch["image"], batch["input_size"])  # (B, C, h', w')
        if emb.shape != target.shape:
            raise ValueError(
                f"student embedding {tuple(emb.shape)} vs cached teacher embedding {tuple(target.shape)}: "
                "the student's img_size must equal the teacher's"
            )
        logs = {"train/embed_mse": F.mse_loss(emb, target)}
        loss = self.embed_weight * logs["train/embed_mse"]
        if self.mask_weight > 0:
            logs["train/mask_loss"] = self.mask_loss(emb, target, batch["input_size"])
            loss = loss + self.mask_weight * logs["train/mask_loss"]
        logs["train/loss"] = loss
        n = batch["image"].shape[0]
        self.log_dict({k: v.detach() for k, v in logs.items()}, batch_size=n)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=n)
        return loss


class SamInputTransform:
    """A pseudo-label-cache sample → SAM's input frame: ``image`` uint8 ``(3, S, S)`` (longest side ``S``,
    zero-padded), ``input_size`` ``(2,)``, ``feat`` float ``(C, S/16, S/16)`` (the cached teacher
    embedding), ``id``. Picklable, for DataLoader workers."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, sample: dict) -> dict:
        image, _, (h, w) = resize_longest_side(sample["image"], np.zeros((0, 1, 1), bool), self.size)
        return {
            "image": image,
            "input_size": torch.tensor([h, w]),
            "feat": torch.from_numpy(sample["feat"]),
            "id": sample["id"],
        }


class SamDistillDataModule(InstanceDataModule):
    """Unlabeled images + cached SAM teacher embeddings (``distill.cache``) for training; validation on
    labeled instances (as :class:`~anydistill.data.datamodule.InstanceDataModule`) by the interactive
    protocol."""

    def __init__(
        self, cfg: DataConfig, prompt: PromptConfig, cache: str, teacher_fingerprint: str | None = None
    ) -> None:
        p = prompt
        super().__init__(cfg, p.max_instances, p.min_area, p.val_instances, p.coco_json, p.val_coco_json)
        self.unlabeled = PseudoLabelDataset(
            cache,
            transform=SamInputTransform(cfg.image_size),
            teacher_fingerprint=teacher_fingerprint,
            features=True,
        )

    def train_dataloader(self) -> DataLoader:
        workers = self.cfg.num_workers
        return DataLoader(
            self.unlabeled, batch_size=self.cfg.batch_size, shuffle=True, num_workers=workers,
            drop_last=len(self.unlabeled) > self.cfg.batch_size, persistent_workers=workers > 0,
        )  # fmt: skip


@register_method("sam_distill", verbs=("distill",), tasks=("promptable",))
def build_sam_distill(cfg: TrainConfig) -> MethodRun:
    """MobileSAM encoder distillation from cached SAM embeddings (+ EdgeSAM's prompt-in-the-loop loss).

    ``model.name``'s image encoder regresses the cached embeddings of ``prompt.teacher``, whose prompt
    encoder and mask decoder the student takes over."""
    p = cfg.prompt
    if not cfg.distill.cache:
        raise ConfigError(
            "distill.cache: the teacher-pass cache folder is required (make it with anydistill pseudo-label)"
        )
    if not p.teacher:
        raise ConfigError("prompt.teacher: the SAM checkpoint whose embeddings are cached is required")
    teacher = SamTeacher(p.teacher)  # its fingerprint must be the cache's
    if teacher.img_size != cfg.data.image_size:
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} must equal the teacher's input size {teacher.img_size}"
        )
    datamodule = SamDistillDataModule(cfg.data, p, cfg.distill.cache, teacher_fingerprint=teacher.fingerprint)
    name = sam_model_name(cfg.model.name, ModelConfig().name)
    kwargs = {"img_size": teacher.img_size, **dict(cfg.model.kwargs)}
    student = build_model(name, **kwargs)
    for part in ("prompt_encoder", "mask_decoder"):
        getattr(student, part).load_state_dict(getattr(teacher.model, part).state_dict())
    del teacher
    module = SamEncoderDistillModule(student, p, cfg.optim, {"model_name": name, "model_kwargs": kwargs})
    return MethodRun(module, datamodule, "val/miou@1", "max", find_unused_parameters=True)
