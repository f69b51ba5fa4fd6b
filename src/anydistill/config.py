"""Typed training configuration: defaults ← YAML file ← command-line overrides.

The dataclasses below are the single source of defaults. A YAML file and ``key.sub=value`` overrides
are merged onto them with OmegaConf, which rejects unknown keys and values of the wrong type; we
re-raise those as :class:`~anydistill.errors.ConfigError` naming the file and the key. The resolved
config is written into the run folder (``config.yaml``) so every run can be reproduced.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from anydistill.errors import ConfigError

TASKS = ("depth", "semantic", "promptable", "embed", "classify", "detect")
#: Lightning's precision names (``Trainer(precision=...)``).
PRECISIONS = (
    "32-true",
    "32",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "64-true",
    "64",
    "transformer-engine",
)


@dataclass
class DataConfig:
    """Where the images and labels come from and how they are cropped and batched.

    ``source="toyworld"`` renders the procedural world on the fly (no disk): the labeled train set
    is ``train_count`` images of ``train_domain`` and the validation set ``val_count`` images of
    ``val_domain`` from a different seed. ``source="folder"`` reads the folder format of DESIGN.md
    from ``train_root`` (and ``val_root``, or a deterministic ``val_fraction`` held out of it).
    """

    source: str = "toyworld"
    train_domain: str = "narrow"
    val_domain: str = "wide"
    train_count: int = 2000
    val_count: int = 128
    seed: int = 0
    train_root: str | None = None
    val_root: str | None = None
    val_fraction: float = 0.2
    depth_scale: float | None = None
    on_bad_image: str = "error"
    on_missing_label: str = "error"
    on_bad_class: str = "error"
    image_size: int = 128
    eval_size: int | None = None
    crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    hflip: bool = True
    batch_size: int = 16
    num_workers: int = 2


@dataclass
class ModelConfig:
    """A model from the zoo by name (``anydistill.models.list_models()``) plus builder overrides."""

    name: str = "depth_tiny"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """Loss weights. Depth: scale-and-shift-invariant loss in disparity + gradient matching.
    Semantic: cross-entropy (+ optional dice)."""

    ssi_weight: float = 1.0
    ssi_alignment: str = "median"
    ssi_trim: float = 0.0
    gradient_weight: float = 0.5
    gradient_scales: int = 4
    ce_weight: float = 1.0
    dice_weight: float = 0.0
    label_smoothing: float = 0.0


@dataclass
class OptimConfig:
    """AdamW (or ``optimizer: sgd``, with Nesterov-free ``momentum``: the self-supervised CIFAR recipes)
    with linear warm-up and cosine decay; the (pre-trained) backbone may get a lower lr."""

    lr: float = 2e-3
    backbone_lr_mult: float = 1.0
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.01
    optimizer: str = "adamw"
    momentum: float = 0.9


@dataclass
class TrainerConfig:
    """Lightning Trainer settings. ``gradient_clip_val``: clip the global gradient norm to this value
    (None: no clipping; SAM 2's training clips at 0.1)."""

    max_epochs: int = 10
    max_steps: int = -1
    max_time_minutes: float | None = None
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    gradient_clip_val: float | None = None
    log_every_n_steps: int = 10
    val_every_n_epochs: int = 1
    checkpoint_every_n_steps: int = 100
    progress_bar: bool = True
    grid_images: int = 6


@dataclass
class DistillConfig:
    """The Depth Anything recipe (``anydistill distill``); every piece is a switch, so an ablation is a
    config change.

    The student trains on labeled batches (``data``) and, ``unlabeled_ratio`` times larger,
    pseudo-labeled batches read from the teacher-pass ``cache`` (Depth Anything: 1:2). On the
    unlabeled images only, and on the student's input only: colour jitter + blur (``perturb``) and
    CutMix with probability ``cutmix_p`` (loss computed per region, each with its own alignment);
    ``trim`` ignores the largest-loss fraction of pixels of each pseudo-labeled image (V2: 10%).
    ``feature_align`` adds ``1 − cos`` to a frozen encoder (``frozen_encoder``: a teacher spec,
    e.g. an anydistill checkpoint or a DINOv2 folder) with tolerance margin ``feature_margin``.
    Semantic students learn the teacher's logits with temperature ``kd_temperature``.
    """

    cache: str | None = None
    use_labeled: bool = True
    unlabeled_ratio: int = 2
    unlabeled_weight: float = 1.0
    perturb: bool = True
    cutmix: bool = True
    cutmix_p: float = 0.5
    trim: float = 0.1
    feature_align: bool = False
    feature_align_weight: float = 1.0
    feature_margin: float = 0.15
    frozen_encoder: str | None = None
    kd_temperature: float = 1.0


@dataclass
class ClassifyConfig:
    """Image classification (``task: classify``): a timm classifier student (``model.name``: any timm
    name, e.g. ``resnet18_cifar``; the default ``depth_tiny`` means ``resnet18_cifar``) on class-per-folder
    images (``data.train_root``/``val_root``) or toyworld object crops.

    ``anydistill train``: cross-entropy with ``loss.label_smoothing``. ``anydistill distill``
    (Hinton et al. 2015): the ``teacher`` (an anydistill classify checkpoint, ``timm:<name>@<weights>``
    or a transformers image-classification folder) labels the training images once (its logits are
    cached under ``distill.cache``, default ``<run_dir>/teacher_cache``, in ``labeled/`` and ``unlabeled/``),
    and also ``unlabeled_root`` when
    given; labeled images learn ``alpha · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − alpha) · CE``
    with ``T = temperature``, unlabeled ones the KD term alone (weight ``distill.unlabeled_weight``,
    batches ``distill.unlabeled_ratio`` times larger). ``cutmix_p``: probability of CutMix per image
    (soft targets and labels mixed by area; 0 = off). ``teacher_image_size``: the side the teacher sees
    (null: its own choice: a ``timm:`` teacher each image's own size, right for one trained at the data's
    size; a transformers teacher its processor's; an anydistill checkpoint its recorded size). Set it for
    a ``timm:`` teacher fine-tuned at another size, e.g. 224 for an ImageNet-size model on CIFAR.
    """

    teacher: str | None = None
    temperature: float = 4.0
    alpha: float = 0.9
    unlabeled_root: str | None = None
    cutmix_p: float = 0.0
    teacher_image_size: int | None = None


@dataclass
class PromptConfig:
    """Promptable segmentation (``task=promptable``, Segment Anything's recipe).

    Training (``anydistill train``): per image, up to ``max_instances`` objects of at least
    ``min_area`` pixels; ``num_rounds`` simulated interaction rounds (SAM: 11 = a first prompt, a box
    with probability ``p_box`` else a point, + 8 rounds with a click from the error region + 2
    ``refine_rounds`` with no new click, the previous low-res logits always fed back as the mask
    prompt); loss ``focal_weight``·focal + ``dice_weight``·dice on the best of the masks +
    ``iou_weight``·MSE of the IoU head (on the selected mask, or on all masks with
    ``iou_supervision=all``). Box prompts are jittered by ``box_noise_std`` of the box side, at most
    ``box_noise_max`` pixels (SAM: 0.1, 20); round 0 returns three masks for a point
    (``multimask_first_round``) and for a box too with ``multimask_box``; ``detach_mask_prompt`` stops
    gradients through the mask fed back between rounds. ``init_checkpoint``: start from an official segment-anything
    ``.pth`` or an anydistill checkpoint; ``freeze_image_encoder``: fine-tune prompt encoder and mask
    decoder only. Instances come from toyworld, a folder (``instances/`` PNGs beside ``images/``) or a
    COCO JSON (``data.source=coco``, ``coco_json``, images under ``data.train_root``).

    Encoder distillation (``anydistill distill``, MobileSAM): the student's image encoder regresses the
    ``teacher``'s cached image embeddings (``distill.cache``, made by ``anydistill pseudo-label
    --teacher <sam checkpoint>``) with weight ``embed_weight``; the teacher's prompt encoder and mask
    decoder are copied into the student, frozen unless ``finetune_decoder``; ``mask_weight > 0`` adds
    EdgeSAM's prompt-in-the-loop loss: for ``mask_points`` random clicks per image (or, with
    probability ``p_box``, the box of the teacher's mask for the click) plus ``mask_rounds`` clicks where
    student and teacher disagree, the student's masks (through the same decoder) learn the teacher's
    masks decoded from the cached embedding.

    With ``anydistill train`` (labels, no cache), ``teacher`` copies that SAM's prompt encoder and mask
    decoder into the model, frozen unless ``finetune_decoder``, so only the image encoder learns from the
    labels: the labels-only counterpart of the distilled student, which takes over the same decoder.
    """

    init_checkpoint: str | None = None
    freeze_image_encoder: bool = False
    num_rounds: int = 11
    refine_rounds: int = 2
    p_box: float = 0.5
    box_noise_std: float = 0.1
    box_noise_max: float = 20.0
    multimask_first_round: bool = True
    multimask_box: bool = False
    detach_mask_prompt: bool = False
    max_instances: int = 8
    min_area: int = 64
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    iou_supervision: str = "selected"
    loss_resolution: str = "input"
    val_max_clicks: int = 5
    val_instances: int = 8
    coco_json: str | None = None
    val_coco_json: str | None = None
    teacher: str | None = None
    embed_weight: float = 1.0
    mask_weight: float = 0.0
    mask_points: int = 8
    mask_rounds: int = 2
    finetune_decoder: bool = False


@dataclass
class DetectConfig:
    """Object detection (``task=detect``): a detector student (``model.name``: ``det_tiny``, …) on boxes.

    Data: toyworld (every object's exact box, ``min_area`` visible pixels at least; labeled
    ``data.train_domain``, validated on ``data.val_domain``) or a COCO JSON (``data.source=coco``,
    ``coco_json`` with images under ``data.train_root``, ``val_coco_json`` under ``data.val_root``).
    Images are resized to longest side ``data.image_size`` (the detector's input), flipped with
    ``data.hflip`` and colour-jittered by ``color_jitter``. ``classification_loss`` (RetinaNet students):
    ``focal`` (α = ``focal_alpha``, γ = ``focal_gamma``), ``ce`` or ``ce_hard_negatives`` (``neg_pos_ratio``
    negatives per positive). ``best.ckpt`` is chosen on the validation COCO mAP@[.5:.95].

    ``anydistill distill`` (a box teacher's boxes, cached once by ``anydistill pseudo-label --task
    detect`` into ``distill.cache``): the teacher's detections with score ≥ ``pseudo_score``, after
    class-wise NMS at IoU ``pseudo_nms`` (both applied here, not baked into the cache), are the unlabeled
    images' boxes; with ``distill.use_labeled`` the labeled images join them. The unlabeled images get the
    strong perturbations of ``distill.perturb`` (colour jitter + Gaussian blur).
    """

    min_area: int = 16
    color_jitter: float = 0.4
    coco_json: str | None = None
    val_coco_json: str | None = None
    pseudo_score: float = 0.3
    pseudo_nms: float = 0.5
    classification_loss: str = "focal"
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    neg_pos_ratio: float = 3.0


@dataclass
class PretrainConfig:
    """Self-supervised pre-training (``anydistill pretrain``, ``task: embed``) of a timm ``backbone``.

    Methods (the config's ``method``; ``simclr`` by default): ``simclr`` (two views, projection MLP ``proj_hidden_dim → proj_dim``, NT-Xent),
    ``moco`` (v2: momentum key encoder ``momentum``, a FIFO ``queue_size`` of keys, InfoNCE, keys
    shuffled and both encoders' BatchNorm statistics taken in ``bn_splits`` groups per device), ``dino``
    (momentum teacher on a cosine schedule from ``momentum`` to 1, ``n_local_crops`` local views of
    ``local_size`` px, centring ``center_momentum`` and sharpening ``teacher_temp`` after a warm-up from
    ``warmup_teacher_temp`` over ``warmup_teacher_temp_epochs``, student ``student_temp``, head to
    ``dino_out_dim`` prototypes) and ``mae`` (a ViT with ``mask_ratio`` of its patches removed, a
    ``decoder_depth`` × ``decoder_dim`` decoder, per-patch normalised targets with ``norm_pix``).
    ``temperature``: of NT-Xent / InfoNCE (null: 0.1 for SimCLR (ImageNet; its CIFAR value is 0.5),
    0.2 for MoCo v2). View augmentations: ``crop_scale`` (null: the method's: 0.08–1 SimCLR/MoCo,
    0.4–1 DINO's global crops, 0.2–1 MAE), ``blur_p`` (SimCLR / MoCo; null: 0.5, or 0 for views of
    32 px or less, SimCLR's CIFAR setting), ``device_augment``: the photometric part batched on the training device.

    Validation: with ``knn_train`` and ``knn_val`` (class-per-folder image sets; with toyworld data the
    labeled object crops are used), weighted kNN top-1 (DINO's protocol, ``knn_k``, ``knn_temperature``)
    chooses ``best.ckpt``; otherwise the method's loss on held-out images (``data.val_fraction``).
    """

    backbone: str = "resnet18_cifar"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    temperature: float | None = None
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    momentum: float | None = None
    queue_size: int = 4096
    bn_splits: int = 8
    dino_out_dim: int = 4096
    dino_hidden_dim: int = 2048
    dino_bottleneck_dim: int = 256
    dino_batch_norm: bool | None = None
    norm_last_layer: bool = True
    freeze_last_layer: int = 1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    n_local_crops: int = 6
    local_size: int | None = None
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix: bool = True
    crop_scale: list[float] | None = None
    blur_p: float | None = None
    device_augment: bool = False
    knn_train: str | None = None
    knn_val: str | None = None
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_count: int = 1000


@dataclass
class TrainConfig:
    """Everything ``anydistill train`` / ``distill`` needs.

    ``method`` names the training method (:mod:`anydistill.methods`: ``supervised``, ``distill``,
    ``promptable``, ``sam_distill``, or one registered by a plugin); ``None`` lets the CLI verb and
    ``task`` choose (``train`` → supervised / promptable, ``distill`` → distill / sam_distill). Sections of
    plugin methods are added with :func:`register_config_section`.
    """

    task: str = "depth"
    method: str | None = None
    run_dir: str = "runs/depth"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_EXTRA_SECTIONS: dict[str, type] = {}
_SCHEMAS: dict[tuple[tuple[str, type], ...], type] = {}


def register_config_section(name: str, cls: type) -> None:
    """Add a typed section ``name`` (a dataclass with defaults) to every config, for a method registered
    outside this module; its keys are then checked like the built-in ones (``name.key=value``).

    Raises:
        ValueError: ``name`` is taken (a built-in section or another registration) or ``cls`` is not a
            dataclass.
    """
    taken = {f.name for f in fields(TrainConfig)} | set(_EXTRA_SECTIONS)
    if name in taken:
        raise ValueError(f"config section {name!r} is already defined")
    if not hasattr(cls, "__dataclass_fields__"):
        raise ValueError(f"config section {name!r}: {cls!r} is not a dataclass")
    _EXTRA_SECTIONS[name] = cls


def config_schema() -> type:
    """:class:`TrainConfig` plus every registered section (the class configs are built as)."""
    if not _EXTRA_SECTIONS:
        return TrainConfig
    key = tuple(sorted(_EXTRA_SECTIONS.items(), key=lambda item: item[0]))
    if key not in _SCHEMAS:
        extra = [(n, c, field(default_factory=c)) for n, c in key]
        _SCHEMAS[key] = make_dataclass("TrainConfig", extra, bases=(TrainConfig,))
    return _SCHEMAS[key]


def _flat_fields(cfg: TrainConfig) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` of every top-level field and every field of every section."""
    items: list[tuple[str, Any]] = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            items += [(f"{f.name}.{g.name}", getattr(value, g.name)) for g in fields(value)]
        else:
            items.append((f.name, value))
    return items


def _validate(cfg: TrainConfig, origin: str) -> TrainConfig:
    def bad(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{origin}: {key}: {problem}")

    for key, value in _flat_fields(cfg):  # nan/inf would be trained on silently (optim.lr=nan: a NaN run)
        if isinstance(value, float) and not math.isfinite(value):
            raise bad(key, f"must be a finite number, got {value}")
    for key, value in (("seed", cfg.seed), ("data.seed", cfg.data.seed)):
        if value < 0:
            raise bad(key, f"must be >= 0, got {value}")
    if cfg.data.depth_scale is not None and cfg.data.depth_scale <= 0:
        raise bad(
            "data.depth_scale",
            f"must be positive (or null: meta.json's, else 1000), got {cfg.data.depth_scale}",
        )
    if cfg.task not in TASKS:
        raise bad("task", f"must be one of {TASKS}, got {cfg.task!r}")
    if cfg.data.source not in ("toyworld", "folder", "coco"):
        raise bad("data.source", f"must be 'toyworld', 'folder' or 'coco', got {cfg.data.source!r}")
    if cfg.data.source in ("folder", "coco") and not cfg.data.train_root:
        raise bad("data.train_root", f"is required when data.source is {cfg.data.source!r}")
    if cfg.data.source == "coco":
        if cfg.task not in ("promptable", "detect"):
            raise bad(
                "data.source",
                "'coco' is for task=promptable (prompt.coco_json) or task=detect (detect.coco_json)",
            )
        if cfg.task == "promptable" and not cfg.prompt.coco_json:
            raise bad("data.source", "'coco' with task=promptable needs prompt.coco_json")
        if cfg.task == "detect" and not cfg.detect.coco_json:
            raise bad("data.source", "'coco' with task=detect needs detect.coco_json")
    d = cfg.detect
    if d.classification_loss not in ("focal", "ce", "ce_hard_negatives"):
        raise bad(
            "detect.classification_loss",
            f"must be 'focal', 'ce' or 'ce_hard_negatives', got {d.classification_loss!r}",
        )
    if not 0 <= d.pseudo_score <= 1 or not 0 < d.pseudo_nms <= 1:
        raise bad(
            "detect",
            f"pseudo_score must be in [0, 1] and pseudo_nms in (0, 1], got {d.pseudo_score}, {d.pseudo_nms}",
        )
    if d.min_area < 0 or d.color_jitter < 0 or d.neg_pos_ratio <= 0 or d.focal_gamma < 0:
        raise bad("detect", "min_area, color_jitter and focal_gamma must be >= 0 and neg_pos_ratio > 0")
    p = cfg.prompt
    if not 0 <= p.p_box <= 1:
        raise bad("prompt.p_box", "must be in [0, 1]")
    if p.num_rounds < 1:
        raise bad("prompt.num_rounds", f"must be >= 1, got {p.num_rounds}")
    if not 0 <= p.refine_rounds < p.num_rounds:
        raise bad("prompt.refine_rounds", f"must be in [0, num_rounds={p.num_rounds}), got {p.refine_rounds}")
    if p.iou_supervision not in ("selected", "all"):
        raise bad("prompt.iou_supervision", "must be 'selected' or 'all'")
    for key in ("box_noise_std", "box_noise_max"):
        if getattr(p, key) < 0:
            raise bad(f"prompt.{key}", f"must be >= 0, got {getattr(p, key)}")
    if p.loss_resolution not in ("input", "low_res"):
        raise bad("prompt.loss_resolution", "must be 'input' or 'low_res'")
    for key, minimum in (("mask_points", 1), ("mask_rounds", 0), ("max_instances", 1), ("val_max_clicks", 1)):
        if getattr(p, key) < minimum:
            raise bad(f"prompt.{key}", f"must be >= {minimum}, got {getattr(p, key)}")
    if cfg.data.image_size <= 0:
        raise bad("data.image_size", "must be positive")
    if cfg.data.eval_size is not None and cfg.data.eval_size <= 0:
        raise bad("data.eval_size", "must be positive")
    if cfg.data.batch_size <= 0:
        raise bad("data.batch_size", "must be positive")
    if len(cfg.data.crop_scale) != 2 or not 0 < cfg.data.crop_scale[0] <= cfg.data.crop_scale[1] <= 1:
        raise bad(
            "data.crop_scale", f"must be [min, max] with 0 < min <= max <= 1, got {cfg.data.crop_scale}"
        )
    if not 0 <= cfg.data.val_fraction < 1:
        raise bad("data.val_fraction", "must be in [0, 1)")
    for key in ("on_bad_image", "on_missing_label"):
        if getattr(cfg.data, key) not in ("error", "skip"):
            raise bad(f"data.{key}", "must be 'error' or 'skip'")
    if cfg.data.on_bad_class not in ("error", "ignore"):
        raise bad(
            "data.on_bad_class", "must be 'error' or 'ignore' (ids outside the class table → ignore index)"
        )
    for key in ("train_count", "val_count"):
        if getattr(cfg.data, key) < 1:
            raise bad(f"data.{key}", f"must be >= 1, got {getattr(cfg.data, key)}")
    if cfg.data.num_workers < 0:
        raise bad("data.num_workers", f"must be >= 0, got {cfg.data.num_workers}")
    t = cfg.trainer
    if t.precision not in PRECISIONS:
        raise bad("trainer.precision", f"must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    for key in ("checkpoint_every_n_steps", "log_every_n_steps", "val_every_n_epochs", "num_nodes"):
        if getattr(t, key) < 1:
            raise bad(f"trainer.{key}", f"must be >= 1, got {getattr(t, key)}")
    for key in ("max_epochs", "max_steps"):
        if getattr(t, key) < -1 or getattr(t, key) == 0:
            raise bad(f"trainer.{key}", f"must be positive, or -1 for no limit, got {getattr(t, key)}")
    if t.max_time_minutes is not None and t.max_time_minutes <= 0:
        raise bad("trainer.max_time_minutes", "must be positive (or null for no time limit)")
    if cfg.loss.ssi_alignment not in ("median", "lstsq"):
        raise bad("loss.ssi_alignment", "must be 'median' or 'lstsq'")
    d = cfg.distill
    if d.unlabeled_ratio < 1:
        raise bad("distill.unlabeled_ratio", "must be >= 1")
    if not 0 <= d.cutmix_p <= 1:
        raise bad("distill.cutmix_p", f"must be in [0, 1], got {d.cutmix_p}")
    if not 0 <= d.trim < 1:
        raise bad("distill.trim", f"must be in [0, 1), got {d.trim}")
    if not 0 <= d.feature_margin < 2:
        raise bad("distill.feature_margin", "must be in [0, 2)")
    if d.kd_temperature <= 0:
        raise bad("distill.kd_temperature", "must be positive")
    c = cfg.classify
    if c.temperature <= 0:
        raise bad("classify.temperature", f"must be positive, got {c.temperature}")
    if c.teacher_image_size is not None and c.teacher_image_size < 1:
        raise bad("classify.teacher_image_size", f"must be >= 1 (or null), got {c.teacher_image_size}")
    for key in ("alpha", "cutmix_p"):
        if not 0 <= getattr(c, key) <= 1:
            raise bad(f"classify.{key}", f"must be in [0, 1], got {getattr(c, key)}")
    if not 0 <= cfg.loss.label_smoothing < 1:
        raise bad("loss.label_smoothing", f"must be in [0, 1), got {cfg.loss.label_smoothing}")
    if cfg.trainer.gradient_clip_val is not None and cfg.trainer.gradient_clip_val <= 0:
        raise bad("trainer.gradient_clip_val", "must be positive (or null for no clipping)")
    if cfg.optim.lr <= 0:
        raise bad("optim.lr", "must be positive")
    if cfg.optim.optimizer not in ("adamw", "sgd"):
        raise bad("optim.optimizer", f"must be 'adamw' or 'sgd', got {cfg.optim.optimizer!r}")
    if not 0 <= cfg.optim.momentum < 1:
        raise bad("optim.momentum", f"must be in [0, 1), got {cfg.optim.momentum}")
    _validate_pretrain(cfg.pretrain, bad)
    return cfg


def _validate_pretrain(p: PretrainConfig, bad: Any) -> None:
    for key in ("temperature", "teacher_temp", "warmup_teacher_temp", "student_temp", "knn_temperature"):
        value = getattr(p, key)
        if value is not None and value <= 0:
            raise bad(f"pretrain.{key}", f"must be positive, got {value}")
    for key in ("proj_hidden_dim", "proj_dim", "queue_size", "bn_splits", "dino_out_dim", "dino_hidden_dim",
                "dino_bottleneck_dim", "decoder_dim", "decoder_heads", "knn_k", "knn_count"):  # fmt: skip
        if getattr(p, key) < 1:
            raise bad(f"pretrain.{key}", f"must be >= 1, got {getattr(p, key)}")
    for key in ("n_local_crops", "decoder_depth", "freeze_last_layer", "warmup_teacher_temp_epochs"):
        if getattr(p, key) < 0:
            raise bad(f"pretrain.{key}", f"must be >= 0, got {getattr(p, key)}")
    if p.momentum is not None and not 0 <= p.momentum <= 1:
        raise bad("pretrain.momentum", f"must be in [0, 1], got {p.momentum}")
    if not 0 <= p.center_momentum <= 1:
        raise bad("pretrain.center_momentum", f"must be in [0, 1], got {p.center_momentum}")
    if not 0 <= p.mask_ratio < 1:
        raise bad("pretrain.mask_ratio", f"must be in [0, 1), got {p.mask_ratio}")
    if p.blur_p is not None and not 0 <= p.blur_p <= 1:
        raise bad("pretrain.blur_p", f"must be in [0, 1], got {p.blur_p}")
    for key in ("crop_scale", "local_scale"):
        scale = getattr(p, key)
        if scale is not None and (len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1):
            raise bad(f"pretrain.{key}", f"must be [min, max] with 0 < min <= max <= 1, got {scale}")
    if p.local_size is not None and p.local_size < 1:
        raise bad("pretrain.local_size", f"must be >= 1, got {p.local_size}")


def _yaml_problem(exc: Exception) -> str:
    """PyYAML's error in one line: ``line L, column C: <problem>`` (its own text spans several lines,
    with a caret under the spot); another error's first line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from defaults, an optional YAML file and ``a.b=value`` overrides.

    Raises:
        ConfigError: unknown key, wrong type, unreadable YAML, or an invalid value; the message names
            the file (or "command line") and the key.
    """
    schema = OmegaConf.structured(config_schema())
    origin = "defaults"
    try:
        if path is not None:
            path = Path(path)
            origin = str(path)
            if not path.is_file():
                raise ConfigError(f"{path}: config file not found")
            try:
                raw = yaml.safe_load(path.read_text())
            except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer of over 4300 digits
                raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
            if raw is None:
                raw = {}
            if not isinstance(raw, dict):
                raise ConfigError(
                    f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}"
                )
            schema = OmegaConf.merge(schema, OmegaConf.create(raw))
        if overrides:
            origin = "command line" if path is None else f"{path} + command line"
            for item in overrides:
                if "=" not in item:
                    raise ConfigError(f"command line: override {item!r} must look like key.sub=value")
                try:  # each value parsed on its own first, so a malformed one is named with its override
                    OmegaConf.from_dotlist([item])
                except (yaml.YAMLError, ValueError) as exc:
                    raise ConfigError(
                        f"command line: override {item!r}: not a valid value ({_yaml_problem(exc)})"
                    ) from None
            schema = OmegaConf.merge(schema, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(schema)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"{origin}: {key + ': ' if key else ''}{msg}") from None
    assert isinstance(cfg, TrainConfig)
    return _validate(cfg, origin)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (the run folder's ``config.yaml``), atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a config from :meth:`TrainConfig.to_dict` output (e.g. stored in a checkpoint)."""
    try:
        cfg = OmegaConf.to_object(
            OmegaConf.merge(OmegaConf.structured(config_schema()), OmegaConf.create(data))
        )
    except OmegaConfBaseException as exc:
        raise ConfigError(f"stored config: {str(exc).splitlines()[0]}") from None
    assert isinstance(cfg, TrainConfig)
    return cfg
