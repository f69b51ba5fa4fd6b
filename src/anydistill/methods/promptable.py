"""Promptable segmentation training (Segment Anything's simulated interactive training).

The image embeddings of a batch are computed in one encoder pass; then the objects of all images go
together through ``num_rounds`` decoder rounds (SAM [0], appendix A: 11):

- round 0: the first prompt of :func:`~anydistill.data.clicks.first_prompts` (a jittered box with
  probability ``p_box``, else a positive point drawn from the mask), no mask prompt;
- rounds 1..R-1: every round feeds the previous round's low-resolution logits as the mask prompt
  (unthresholded, as SAM); ``R - 1 - refine_rounds`` of them also add a click drawn uniformly from the
  error region of the previous prediction (:func:`~anydistill.data.clicks.error_clicks`); the
  ``refine_rounds`` others add nothing: one is always the last round, the rest are placed at random
  among the middle rounds (SAM: 1 + 8 click rounds + 2 refinement rounds = 11).

Multimask output (three masks, best-of-three loss) is used on round 0 for point prompts only. The SAM
paper returns three masks "for a single prompt" and one for more than one prompt, and every later
round carries at least two prompts (clicks and the mask). Whether a box alone counts as ambiguous the
paper does not say; SAM 2's training code counts a box as two points (one mask), and so do we by
default (``multimask_box=False``). When three masks are returned, the one with the highest predicted
IoU is the one fed to the next round and used to sample the next click (SAM).

The loss (:func:`~anydistill.losses.promptable.sam_loss`, 20·focal + dice on the best mask + IoU-head
MSE) is computed at the model's input resolution on logits upsampled bilinearly from the 4x-downsampled
decoder output (as SAM 2's training code; ``loss_resolution="low_res"`` instead area-downsamples the
ground truth, for memory), on the unpadded pixels only, averaged over objects and rounds.

Each round decodes every object of the batch in one mask-decoder call when the decoder takes one image
embedding per prompt set (our :class:`~anydistill.models.sam.MaskDecoder`: each object gets its image's
embedding), else in one call per image (segment_anything's decoder); the results are the same. Point-
and box-prompted objects are encoded apart (a prompt encoder takes boxes for all rows or none) but
carry the same number of tokens (P clicks + a padding point, or P - 1 clicks + two box corners), so
their tokens are concatenated into one call; only round 0 splits them when their multimask flags
differ. Prompts are drawn for all objects at once, so the random draws do not depend on how the
decoder is called.

The mask prompt is not detached between rounds by default (SAM 2's training code feeds the previous
logits as they are, so a round's loss also trains earlier rounds through the mask encoder;
``detach_mask_prompt=True`` cuts that path). With ``freeze_image_encoder`` (fine-tuning an official
checkpoint) the encoder runs under ``no_grad`` in eval mode and is left out of the optimiser.

- [0] Kirillov et al., "Segment Anything", ICCV 2023, https://arxiv.org/abs/2304.02643
- [1] Ravi et al., "SAM 2", 2024, https://arxiv.org/abs/2408.00714 (training/model/sam2.py)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.config import ModelConfig, OptimConfig, PromptConfig, TrainConfig
from anydistill.data.clicks import Prompts, error_clicks, first_prompts, prompt_groups
from anydistill.data.datamodule import InstanceDataModule
from anydistill.errors import ConfigError
from anydistill.eval.interactive import InteractiveMetrics, evaluate_batch
from anydistill.loading import model_record, sam_model_name
from anydistill.losses.promptable import SamLoss, mask_ious
from anydistill.methods.base import MethodRun, register_method
from anydistill.models import build_model
from anydistill.optim import build_optimizer, build_scheduler
from anydistill.promptable.batched import decode_embedded, embed_images
from anydistill.promptable.loading import load_promptable

__all__ = ["PromptableModule", "build_promptable_model", "round_plan"]


def round_plan(
    num_rounds: int, refine_rounds: int = 2, generator: torch.Generator | None = None
) -> list[bool]:
    """Which rounds add a prompt: ``plan[r]`` is True for round 0 (the first prompt) and for click rounds.

    The last round is a refinement round (no new prompt) when ``refine_rounds >= 1``; the other
    ``refine_rounds - 1`` are drawn among rounds ``1..R-2``.
    """
    if num_rounds < 1 or refine_rounds < 0:
        raise ValueError(f"num_rounds must be >= 1 and refine_rounds >= 0, got {num_rounds}, {refine_rounds}")
    plan = [True] * num_rounds
    if num_rounds >= 2 and refine_rounds >= 1:
        plan[-1] = False
        middle = list(range(1, num_rounds - 1))
        for k in torch.randperm(len(middle), generator=generator)[: refine_rounds - 1].tolist():
            plan[middle[k]] = False
    return plan


@dataclass
class _Objects:
    """The objects of all images of a batch (N in all, image by image) during a training step."""

    image: Tensor  # (N,) int64 index of each object's image in the batch
    gt: Tensor  # (N, S, S) bool
    valid: Tensor  # (N, S, S) bool, False on padding
    size: Tensor  # (N, 2) int64 (h, w) unpadded
    prompts: Prompts | None = None
    low: Tensor | None = None  # (N, 1, s, s) kept low-resolution logits
    pred: Tensor | None = None  # (N, S, S) bool kept prediction


class PromptableModule(L.LightningModule):
    """LightningModule training a Sam-like model on :func:`~anydistill.data.instances.collate_instances`
    batches (``image`` uint8 ``(B, 3, S, S)``, ``masks`` ``(B, K, S, S)``, ``valid`` ``(B, K)``,
    ``input_size`` ``(B, 2)``), with ``S`` the model's ``image_encoder.img_size``.

    Args:
        model: a Sam-like model (``image_encoder``, ``prompt_encoder``, ``mask_decoder``, ``preprocess``,
            ``postprocess_masks``), e.g. ``anydistill.models.sam.Sam``.
        prompt: the simulated interaction and its loss (:class:`~anydistill.config.PromptConfig`:
            ``num_rounds``, ``refine_rounds``, ``p_box``, box noise, multimask flags, ``detach_mask_prompt``,
            ``loss_resolution``, ``focal_weight``/``dice_weight``/``iou_weight``/``iou_supervision``,
            ``freeze_image_encoder``, ``val_max_clicks``, ``val_instances``).
        optim: optimiser and schedule; ``backbone_lr_mult`` is the image encoder's lr multiplier.
        arch: how the model was built, for the checkpoint's model record (``{"model_name",
            "model_kwargs"}``, or ``{"from_shapes": True}`` for a model loaded from a SAM checkpoint).
    """

    def __init__(
        self,
        model: nn.Module,
        prompt: PromptConfig | None = None,
        optim: OptimConfig | None = None,
        arch: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        prompt = prompt or PromptConfig()
        optim = optim or OptimConfig()
        self.save_hyperparameters(
            {"prompt": asdict(prompt), "optim": asdict(optim), "arch": dict(arch or {})}
        )
        num_rounds, refine_rounds, p_box = prompt.num_rounds, prompt.refine_rounds, prompt.p_box
        round_plan(num_rounds, refine_rounds)  # validates both
        if not 0.0 <= p_box <= 1.0:
            raise ValueError(f"p_box must be in [0, 1], got {p_box}")
        if prompt.loss_resolution not in ("input", "low_res"):
            raise ValueError(f"loss_resolution must be 'input' or 'low_res', got {prompt.loss_resolution!r}")
        # Builders return eval-mode models (as segment-anything's); Lightning does not call .train()
        # at the start of fit, so BatchNorm would train with frozen statistics.
        self.model = model.train()
        self.optim_cfg = optim
        self.arch = dict(arch or {"from_shapes": True})
        self.loss_fn = SamLoss(
            focal_weight=prompt.focal_weight, dice_weight=prompt.dice_weight, iou_weight=prompt.iou_weight,
            iou_supervision=prompt.iou_supervision,
        )  # fmt: skip
        self.num_rounds, self.refine_rounds = num_rounds, refine_rounds
        self.p_box, self.box_noise_std, self.box_noise_max = p_box, prompt.box_noise_std, prompt.box_noise_max
        self.multimask_first_round, self.multimask_box = prompt.multimask_first_round, prompt.multimask_box
        self.detach_mask_prompt = prompt.detach_mask_prompt
        self.loss_resolution = prompt.loss_resolution
        self.freeze_image_encoder = prompt.freeze_image_encoder
        self.val_max_clicks, self.val_instances = prompt.val_max_clicks, prompt.val_instances
        self.val_metrics = InteractiveMetrics()
        if self.freeze_image_encoder:
            self.model.image_encoder.requires_grad_(False)
            self.model.image_encoder.eval()

    def train(self, mode: bool = True) -> PromptableModule:
        super().train(mode)
        if self.freeze_image_encoder:
            self.model.image_encoder.eval()  # frozen: dropout / norm statistics stay in eval mode
        return self

    # ------------------------------------------------------------------ forward pieces
    def encode(self, images: Tensor, input_sizes: Tensor) -> Tensor:
        """Image embeddings ``(B, C, h', w')`` of a batch (no gradient when the encoder is frozen)."""
        size = getattr(self.model.image_encoder, "img_size", images.shape[-1])
        if images.shape[-2:] != (size, size):
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but the model's input size is {size}; build the "
                "InstanceDataset with size equal to the image encoder's img_size"
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_image_encoder):
            return embed_images(self.model, images, input_sizes)

    def _objects(self, batch: dict[str, Tensor]) -> _Objects:
        image, slot = torch.nonzero(batch["valid"], as_tuple=True)  # (N,), (N,)
        gt = batch["masks"][image, slot]  # (N, S, S)
        size = batch["input_size"].to(gt.device)[image]  # (N, 2)
        grid = torch.arange(gt.shape[-1], device=gt.device)
        valid = (grid[:, None] < size[:, :1, None]) & (grid < size[:, 1:, None])  # (N, S, S)
        return _Objects(image, gt, valid, size)

    def _decode(
        self, obj: _Objects, embeddings: Tensor, image_pe: Tensor, r: int
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Encodes every object's prompts and decodes them: ``[(rows, low, iou_pred)]``, one entry per
        decoder call (``low (n, M, s, s)``, ``iou_pred (n, M)`` for the objects ``rows``)."""
        assert obj.prompts is not None
        mask_prompt = obj.low.detach() if (obj.low is not None and self.detach_mask_prompt) else obj.low
        calls: dict[tuple[bool, int], list[tuple[Tensor, Tensor, Tensor]]] = {}
        for rows, points, boxes in prompt_groups(obj.prompts):
            multimask = r == 0 and self.multimask_first_round and (boxes is None or self.multimask_box)
            mask_in = mask_prompt[rows] if mask_prompt is not None else None
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_in)
            calls.setdefault((multimask, sparse.shape[1]), []).append((rows, sparse, dense))
        out = []
        for (multimask, _), parts in calls.items():
            rows, sparse, dense = (torch.cat(x) if len(x) > 1 else x[0] for x in zip(*parts, strict=True))
            low, iou_pred = decode_embedded(
                self.model, embeddings, image_pe, sparse, dense, multimask, obj.image[rows]
            )
            out.append((rows, low, iou_pred))
        return out

    def _round(
        self, obj: _Objects, embeddings: Tensor, image_pe: Tensor, r: int, add: bool
    ) -> dict[str, Tensor]:
        """One decoder round for all objects; returns the loss terms and kept-mask IoU summed over them."""
        if r == 0:
            obj.prompts = first_prompts(obj.gt, self.p_box, obj.size, self.box_noise_std, self.box_noise_max)
        elif add:
            assert obj.prompts is not None and obj.pred is not None
            obj.prompts = obj.prompts.append(*error_clicks(obj.pred, obj.gt, obj.valid))
        side = obj.gt.shape[-1]
        threshold = getattr(self.model, "mask_threshold", 0.0)
        sums: dict[str, Tensor] = {}
        rows_all, lows, preds = [], [], []
        for rows, low, iou_pred in self._decode(obj, embeddings, image_pe, r):
            gt, valid = obj.gt[rows], obj.valid[rows]  # (n, S, S)
            up = F.interpolate(low, (side, side), mode="bilinear", align_corners=False)  # (n, M, S, S)
            if self.loss_resolution == "input":
                out = self.loss_fn(up, gt, iou_pred, valid, reduction="none")
            else:
                gt_low, valid_low = (
                    F.interpolate(x[:, None].float(), low.shape[-2:], mode="area")[:, 0] >= 0.5
                    for x in (gt, valid)
                )  # (n, s, s)
                out = self.loss_fn(low, gt_low, iou_pred, valid_low, reduction="none")
            keep = iou_pred.detach().argmax(dim=1)  # (n,) the mask passed on (highest predicted IoU)
            ar = torch.arange(len(rows), device=low.device)
            kept_iou = mask_ious(up[ar, keep][:, None], gt, valid, threshold)[:, 0]
            terms = {
                "loss": out.loss,
                "focal": out.focal,
                "dice": out.dice,
                "iou_loss": out.iou,
                "iou": kept_iou,
            }
            for key, value in terms.items():
                sums[key] = sums.get(key, 0) + value.sum()
            rows_all.append(rows)
            lows.append(low[ar, keep][:, None])  # (n, 1, s, s)
            preds.append(up[ar, keep].detach() > threshold)  # (n, S, S)
        order = torch.cat(rows_all).argsort()
        obj.low, obj.pred = torch.cat(lows)[order], torch.cat(preds)[order]
        return sums

    def rounds(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Runs the simulated interaction on a batch; returns the mean loss terms over objects and rounds
        (``loss``, ``focal``, ``dice``, ``iou_loss``) and the IoU of the kept mask after the first and
        last rounds (``iou_first``, ``iou``)."""
        obj = self._objects(batch)
        count = obj.gt.shape[0]
        if count == 0:  # no object in the batch: nothing to learn from
            return {"loss": torch.zeros((), device=self.device, requires_grad=True)}
        embeddings = self.encode(batch["image"], batch["input_size"])  # (B, C, h', w')
        image_pe = self.model.prompt_encoder.get_dense_pe()
        totals: dict[str, Tensor] = {}
        for r, add in enumerate(round_plan(self.num_rounds, self.refine_rounds)):
            sums = self._round(obj, embeddings, image_pe, r, add)
            for key in ("loss", "focal", "dice", "iou_loss"):
                totals[key] = totals.get(key, 0) + sums[key]
            if r == 0:
                totals["iou_first"] = sums["iou"] / count
            totals["iou"] = sums["iou"] / count
        for key in ("loss", "focal", "dice", "iou_loss"):
            totals[key] = totals[key] / (count * self.num_rounds)
        totals["num_objects"] = torch.tensor(float(count))
        return totals

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.rounds(batch)
        n = int(out.get("num_objects", torch.tensor(1.0)).item()) or 1
        logs = {f"train/{k}": v.detach() for k, v in out.items() if k != "num_objects"}
        self.log_dict(logs, batch_size=n)
        self.log("loss", out["loss"].detach(), prog_bar=True, logger=False, batch_size=n)
        return out["loss"]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        sizes = batch["input_size"]
        gts = [
            batch["masks"][b][batch["valid"][b]][: self.val_instances, :h, :w]  # (n, h, w)
            for b, (h, w) in enumerate(sizes.tolist())
        ]
        if any(g.shape[0] for g in gts):
            result = evaluate_batch(self.model, batch["image"], sizes, gts, self.val_max_clicks)
            self.val_metrics.update(result)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        if values.get("num_objects", 0) > 0:
            self.log_dict({f"val/{k}": float(v) for k, v in values.items()})
            self.log("miou", values[f"miou@{self.val_max_clicks}"], prog_bar=True, logger=False)

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW (no weight decay on norms and biases), the image encoder at ``lr · backbone_lr_mult``,
        warm-up then cosine decay over the run (:mod:`anydistill.optim`)."""
        optimizer = build_optimizer(self, self.optim_cfg, encoder=self.model.image_encoder)
        # inf when only a time budget bounds the run: build_scheduler then waits for ScheduleLength's estimate
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1000
        scheduler, _ = build_scheduler(optimizer, self.optim_cfg, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoint description
    def model_record(self) -> dict[str, Any]:
        """What :func:`anydistill.loading.load_model` rebuilds the model from (stored in checkpoints)."""
        return model_record("promptable", self.model.preprocess_spec(), self.arch)


def build_promptable_model(cfg: TrainConfig) -> tuple[nn.Module, dict[str, Any]]:
    """The model a promptable config trains and how it was built: ``prompt.init_checkpoint`` when set (an
    official SAM ``.pth``, e.g. to fine-tune with a frozen encoder, or an anydistill checkpoint), else
    ``build_model(model.name, img_size=data.image_size, **model.kwargs)``.

    Raises:
        ConfigError: the checkpoint's input size differs from ``data.image_size``.
    """
    if cfg.prompt.init_checkpoint:
        model, arch = load_promptable(cfg.prompt.init_checkpoint), {"from_shapes": True}
    else:
        name = sam_model_name(cfg.model.name, ModelConfig().name)
        kwargs = {"img_size": cfg.data.image_size, **dict(cfg.model.kwargs)}
        model, arch = build_model(name, **kwargs), {"model_name": name, "model_kwargs": kwargs}
    if int(model.image_encoder.img_size) != cfg.data.image_size:
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} but the model's image encoder takes "
            f"{model.image_encoder.img_size}² inputs; set data.image_size={model.image_encoder.img_size}"
        )
    return model, arch


def instance_datamodule(cfg: TrainConfig) -> InstanceDataModule:
    """Images with object instances, as the prompt section selects them."""
    p = cfg.prompt
    return InstanceDataModule(
        cfg.data, p.max_instances, p.min_area, p.val_instances, p.coco_json, p.val_coco_json
    )


def take_decoder(model: nn.Module, teacher: str, frozen: bool) -> None:
    """Copy the prompt encoder and mask decoder of the SAM checkpoint ``teacher`` (official ``.pth`` or
    anydistill) into ``model``, and freeze them when ``frozen`` (their parameters then get no gradient and
    no optimizer state).

    Raises:
        DataError: ``teacher`` cannot be loaded as a promptable model.
        ConfigError: its prompt encoder or mask decoder has other shapes than ``model``'s.
    """
    source = load_promptable(teacher)
    for part in ("prompt_encoder", "mask_decoder"):
        own, theirs = getattr(model, part), getattr(source, part)
        try:
            own.load_state_dict(theirs.state_dict())
        except RuntimeError:
            raise ConfigError(
                f"prompt.teacher: {teacher}'s {part} does not fit the model's (another embedding width or "
                "decoder depth)"
            ) from None
        if frozen:
            own.requires_grad_(False)


@register_method("promptable", verbs=("train",), tasks=("promptable",))
def build_promptable(cfg: TrainConfig) -> MethodRun:
    """Segment Anything's simulated interactive training (points, boxes, error clicks, mask feedback)."""
    model, arch = build_promptable_model(cfg)
    if cfg.prompt.teacher:
        take_decoder(model, cfg.prompt.teacher, frozen=not cfg.prompt.finetune_decoder)
    module = PromptableModule(model, cfg.prompt, cfg.optim, arch)
    # A step leaves parameters without gradient by design (box embeddings when no object got a box, the
    # mask encoder with one round, the multimask tokens when no round asks for three masks).
    return MethodRun(module, instance_datamodule(cfg), "val/miou@1", "max", find_unused_parameters=True)
