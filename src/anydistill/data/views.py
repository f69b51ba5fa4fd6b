"""The multi-view augmentations of self-supervised methods (SimCLR, MoCo v2, DINO, MAE).

Each view is described by a :class:`ViewSpec` (its crop and its photometric distortions) and can be made
two ways, with the same distribution of parameters:

- per image in the loader: :class:`SimCLRViews`, :class:`DINOViews`, :class:`MAEView` are
  ``torchvision.transforms.v2`` pipelines; uint8 ``(3, H, W)`` in, a list of float normalised views
  ``(3, h_v, w_v)`` out (MAE: one view);
- crop in the loader, photometry on the batch's device: ``views.crops()`` makes only the uint8 crops
  (random resized crop + flip), :func:`collate_views` stacks them, and ``views.batched()`` (a
  :class:`BatchedViews` of :class:`BatchedViewAugment`, ``kornia.augmentation``) applies colour jitter,
  grayscale, blur, solarisation and normalisation to each ``(B, 3, h, w)`` batch with per-sample random
  parameters, where the model runs (the DESIGN rule: photometric perturbations run batched on the
  training device). ``benchmarks/bench_views.py`` compares the two.

Per view, in order (each step drawn independently, with its own probability)::

    uint8 (3, H, W) -> RandomResizedCrop(size, scale, ratio) -> HorizontalFlip(flip_p)   [geometric]
      -> float [0, 1] -> ColorJitter(b, c, s, h) p=jitter_p -> Grayscale p=gray_p
      -> GaussianBlur(kernel, σ ~ U(0.1, 2.0)) p=blur_p -> Solarize(0.5) p=solarize_p
      -> Normalize(mean, std)                                                          [photometric]

The recipes:

- SimCLR [0] (appendix A) / MoCo v2 [1]: crop scale (0.08, 1), flip, jitter (0.8s, 0.8s, 0.8s, 0.2s)
  p=0.8 with strength s (0.5: MoCo v2's 0.4/0.4/0.4/0.1; SimCLR's ImageNet setting is s=1), grayscale
  p=0.2, blur p=0.5 with a kernel 10 % of the image side (none in SimCLR's CIFAR-10 setting).
- DINO [2] (``main_dino.py`` ``DataAugmentationDINO``): two global crops (scale (0.4, 1), bicubic) and
  ``n_local`` local ones (scale (0.05, 0.4)), flip, jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.2;
  blur p = 1.0 / 0.1 / 0.5 and solarisation p = 0 / 0.2 / 0 for global 1 / global 2 / locals.
- MAE [3]: random resized crop (scale (0.2, 1), bicubic) and flip only.

Blur: torchvision's ``GaussianBlur`` with an odd kernel of about 10 % of the view's side (SimCLR's rule;
at least 3) and reflect padding, σ ~ U(0.1, 2.0) px; the references blur with PIL's
``GaussianBlur(radius=σ)``, whose support is not truncated, so at small sizes (a 9-px kernel for a 96-px
local view) large σ blur a little less here.

- [0] Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020,
  https://arxiv.org/abs/2002.05709
- [1] Chen et al., "Improved Baselines with Momentum Contrastive Learning", 2020,
  https://arxiv.org/abs/2003.04297
- [2] Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021,
  https://github.com/facebookresearch/dino/blob/7c446df5b9f45747937fb0d72314eb9f7b66930a/main_dino.py
- [3] He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022,
  https://github.com/facebookresearch/mae/blob/efb2a8062c206524e35e47d04501ed4f544c0ae8/main_pretrain.py
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import kornia.augmentation as KA
import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode, v2

from anydistill.errors import ConfigError
from anydistill.preprocess import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "BatchedViewAugment",
    "BatchedViews",
    "DINOViews",
    "MAEView",
    "MultiViews",
    "SimCLRViews",
    "ViewSpec",
    "blur_kernel_size",
    "collate_views",
]

Triple = tuple[float, float, float]
Jitter = tuple[float, float, float, float]
#: SimCLR's colour-jitter strengths at s = 1 (brightness, contrast, saturation, hue); multiplied by s.
SIMCLR_JITTER: Jitter = (0.8, 0.8, 0.8, 0.2)
DINO_JITTER: Jitter = (0.4, 0.4, 0.2, 0.1)
_INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def blur_kernel_size(side: int) -> int:
    """SimCLR's blur kernel: an odd size of about 10 % of the image side, at least 3 (224 → 23, 96 → 9)."""
    return max(3, int(0.1 * side) // 2 * 2 + 1)


def _range(
    value: Sequence[float], name: str, low: float = 0.0, high: float = float("inf")
) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
        raise ConfigError(f"{name} must be (min, max) with {low} <= min <= max <= {high}, got {tuple(value)}")
    return pair[0], pair[1]


def _probability(p: float, name: str) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")
    return float(p)


@dataclass(frozen=True)
class ViewSpec:
    """One view's augmentation: its crop (made in the loader) and photometric distortions (either side).

    Args:
        size: output side (square views) or ``(h, w)``.
        scale: area fraction of the random resized crop, ``(min, max)`` in ``(0, 1]``.
        ratio: aspect-ratio range of the crop.
        interpolation: ``"bilinear"`` or ``"bicubic"`` (antialiased).
        flip_p: probability of a horizontal flip.
        jitter: colour-jitter strengths ``(brightness, contrast, saturation, hue)``: factors
            ``U(max(0, 1 - s), 1 + s)``, hue shift ``U(-h, h)`` turns (``h <= 0.5``).
        jitter_p, gray_p, blur_p, solarize_p: probabilities of each step.
        blur_sigma: σ range of the Gaussian blur, in pixels.
        blur_kernel: odd kernel size; ``None`` → :func:`blur_kernel_size` of the view's shorter side.
        mean, std: per-channel normalisation of the ``[0, 1]`` image.
    """

    size: int | tuple[int, int]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    flip_p: float = 0.5
    jitter: Jitter = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None
    solarize_p: float = 0.0
    mean: Triple = field(default=IMAGENET_MEAN)
    std: Triple = field(default=IMAGENET_STD)

    def __post_init__(self) -> None:
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ConfigError(f"size must be a positive int or (h, w), got {self.size!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "scale", _range(self.scale, "scale", 0.0, 1.0))
        if self.scale[1] <= 0:
            raise ConfigError(f"scale must be (min, max) with max > 0, got {self.scale}")
        object.__setattr__(self, "ratio", _range(self.ratio, "ratio"))
        if self.ratio[0] <= 0:
            raise ConfigError(f"ratio must be (min, max) with min > 0, got {self.ratio}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ConfigError(
                f"interpolation must be one of {tuple(_INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            object.__setattr__(self, name, _probability(getattr(self, name), name))
        jitter = tuple(float(j) for j in self.jitter)
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise ConfigError(
                "jitter must be (brightness, contrast, saturation, hue) >= 0 with hue <= 0.5, "
                f"got {tuple(self.jitter)}"
            )
        object.__setattr__(self, "jitter", jitter)
        sigma = _range(self.blur_sigma, "blur_sigma")
        if sigma[0] <= 0:
            raise ConfigError(f"blur_sigma must be (min, max) with min > 0, got {self.blur_sigma}")
        object.__setattr__(self, "blur_sigma", sigma)
        kernel = self.blur_kernel
        if kernel is not None and (not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0):
            raise ConfigError(f"blur_kernel must be a positive odd int or None, got {kernel!r}")
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3 or (name == "std" and min(values) <= 0):
                raise ConfigError(f"{name} must be three numbers (std > 0), got {getattr(self, name)!r}")
            object.__setattr__(self, name, values)

    @property
    def kernel(self) -> int:
        """The blur kernel used: ``blur_kernel``, or :func:`blur_kernel_size` of the view's shorter side."""
        return blur_kernel_size(min(self.size)) if self.blur_kernel is None else self.blur_kernel

    def geometric(self) -> v2.Compose:
        """The loader part: uint8 ``(3, H, W)`` → uint8 ``(3, h, w)``, random resized crop + flip."""
        steps: list[Callable[..., Any]] = [
            v2.RandomResizedCrop(
                self.size,
                scale=self.scale,
                ratio=self.ratio,
                interpolation=_INTERPOLATIONS[self.interpolation],
                antialias=True,
            )
        ]
        if self.flip_p > 0:
            steps.append(v2.RandomHorizontalFlip(self.flip_p))
        return v2.Compose(steps)

    def photometric(self) -> v2.Compose:
        """The per-image photometric part: uint8 ``(3, h, w)`` → float32 normalised ``(3, h, w)``.

        Steps with probability 0 are left out (they change nothing, nor draw random numbers)."""
        steps: list[Callable[..., Any]] = [v2.ToDtype(torch.float32, scale=True)]
        if self.jitter_p > 0 and any(self.jitter):
            steps.append(v2.RandomApply([v2.ColorJitter(*self.jitter)], p=self.jitter_p))
        if self.gray_p > 0:
            steps.append(v2.RandomGrayscale(self.gray_p))
        if self.blur_p > 0:
            steps.append(v2.RandomApply([v2.GaussianBlur(self.kernel, self.blur_sigma)], p=self.blur_p))
        if self.solarize_p > 0:
            steps.append(v2.RandomSolarize(0.5, p=self.solarize_p))
        steps.append(v2.Normalize(list(self.mean), list(self.std)))
        return v2.Compose(steps)


def _as_chw_uint8(image: Tensor | np.ndarray) -> Tensor:
    """A uint8 ``(3, H, W)`` tensor from itself or from a uint8 ``(H, W, 3)`` array (read_image's)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a numpy image must be (H, W, 3), got {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W)
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if hasattr(image, "shape") else type(image).__name__
        raise ValueError(f"views need a uint8 (3, H, W) image tensor, got {shape}")
    if image.dtype != torch.uint8:
        raise TypeError(f"views need a uint8 (3, H, W) image tensor, got {image.dtype}")
    return image


class MultiViews:
    """Several augmented views of one image, each from its own :class:`ViewSpec`.

    ``views(image)`` → ``[view_0, ..., view_{n-1}]``, float32 normalised ``(3, h_k, w_k)``; randomness from
    torch's global RNG (DataLoader workers are seeded per worker; ``torch.manual_seed`` makes a call
    reproducible).

    Args:
        specs: one spec per view.
        photometric: ``False`` makes only the geometric part (uint8 crops, for :meth:`batched`); see
            :meth:`crops`.
    """

    def __init__(self, specs: Sequence[ViewSpec], photometric: bool = True) -> None:
        if not specs:
            raise ConfigError("a multi-view transform needs at least one view")
        self.specs: tuple[ViewSpec, ...] = tuple(specs)
        self.photometric = photometric
        self._pipelines = [
            v2.Compose([s.geometric(), s.photometric()]) if photometric else s.geometric() for s in self.specs
        ]

    def __len__(self) -> int:
        return len(self.specs)

    def __call__(self, image: Tensor | np.ndarray) -> list[Tensor]:
        image = _as_chw_uint8(image)
        return [pipeline(image) for pipeline in self._pipelines]

    def crops(self) -> MultiViews:
        """The same views without the photometric part: uint8 ``(3, h_k, w_k)`` crops, to be finished on
        the batch by :meth:`batched`."""
        return MultiViews(self.specs, photometric=False)

    def batched(self) -> BatchedViews:
        """The photometric part of every view as one module on batches (see :class:`BatchedViews`)."""
        return BatchedViews(self.specs)

    def __repr__(self) -> str:
        kind = "views" if self.photometric else "crops"
        return f"{type(self).__name__}({len(self)} {kind}: {', '.join(str(s.size) for s in self.specs)})"


class SimCLRViews(MultiViews):
    """SimCLR [0] / MoCo v2 [1] views: ``n_views`` views drawn from one distribution.

    Args:
        size: view side (CIFAR: 32, ImageNet: 224).
        scale: crop area range.
        jitter_strength: s in SimCLR's jitter (0.8s, 0.8s, 0.8s, 0.2s), p = 0.8; 0.5 (default) gives MoCo
            v2's 0.4/0.4/0.4/0.1, 1.0 SimCLR's ImageNet setting.
        p_gray: grayscale probability.
        blur_p: blur probability; ``None`` → 0.5, or 0 for views of 32 px or less (SimCLR's CIFAR
            setting has no blur).
        solarize_p: solarisation probability (BYOL's second view uses 0.2).
        mean, std: normalisation.
        n_views: number of views.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.08, 1.0),
        jitter_strength: float = 0.5,
        p_gray: float = 0.2,
        blur_p: float | None = None,
        solarize_p: float = 0.0,
        mean: Triple = IMAGENET_MEAN,
        std: Triple = IMAGENET_STD,
        n_views: int = 2,
    ) -> None:
        if n_views < 1:
            raise ConfigError(f"n_views must be >= 1, got {n_views}")
        if jitter_strength < 0:
            raise ConfigError(f"jitter_strength must be >= 0, got {jitter_strength}")
        side = size if isinstance(size, int) else min(size)
        if blur_p is None:
            blur_p = 0.0 if side <= 32 else 0.5
        jitter = tuple(jitter_strength * j for j in SIMCLR_JITTER)
        spec = ViewSpec(
            size,
            scale=scale,
            jitter=jitter,  # type: ignore[arg-type]
            jitter_p=0.8,
            gray_p=p_gray,
            blur_p=blur_p,
            solarize_p=solarize_p,
            mean=mean,
            std=std,
        )
        super().__init__([spec] * n_views)


class DINOViews(MultiViews):
    """DINO's multi-crop [2]: ``[global_1, global_2, local_1, ..., local_n]``.

    Global views ``global_size``², local views ``local_size``², bicubic crops, flip, jitter
    (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.2; blur with probabilities ``blur_p`` and solarisation
    with ``solarize_p`` for (global 1, global 2, local), DINO's asymmetric (1.0, 0.1, 0.5) and
    (0, 0.2, 0).

    Args:
        global_size, local_size: view sides (DINO: 224 and 96).
        n_local: number of local views (DINO: 8 for ViT-S/16; 0 for two global views only).
        global_scale, local_scale: crop area ranges.
        jitter, jitter_p, gray_p: colour distortions (shared by all views).
        blur_p, solarize_p: per view kind, ``(global 1, global 2, local)``.
        mean, std: normalisation.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_local: int = 8,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        jitter: Jitter = DINO_JITTER,
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5),
        solarize_p: tuple[float, float, float] = (0.0, 0.2, 0.0),
        mean: Triple = IMAGENET_MEAN,
        std: Triple = IMAGENET_STD,
    ) -> None:
        if n_local < 0:
            raise ConfigError(f"n_local must be >= 0, got {n_local}")
        for name, value in (("blur_p", blur_p), ("solarize_p", solarize_p)):
            if len(value) != 3:
                raise ConfigError(f"{name} must be (global 1, global 2, local), got {value!r}")
        base = ViewSpec(
            global_size,
            scale=global_scale,
            interpolation="bicubic",
            jitter=jitter,
            jitter_p=jitter_p,
            gray_p=gray_p,
            mean=mean,
            std=std,
        )
        global_1 = replace(base, blur_p=blur_p[0], solarize_p=solarize_p[0])
        global_2 = replace(base, blur_p=blur_p[1], solarize_p=solarize_p[1])
        local = replace(base, size=local_size, scale=local_scale, blur_p=blur_p[2], solarize_p=solarize_p[2])
        super().__init__([global_1, global_2] + [local] * n_local)
        self.n_global, self.n_local = 2, n_local


class MAEView:
    """MAE's only augmentation [3]: random resized crop (bicubic) + flip, then normalisation.

    ``MAEView(size)(image)`` → float32 ``(3, size, size)``, one tensor (a one-view ``list`` for
    :func:`collate_views`, which takes either).
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.2, 1.0),
        mean: Triple = IMAGENET_MEAN,
        std: Triple = IMAGENET_STD,
    ) -> None:
        self.spec = ViewSpec(
            size, scale=scale, interpolation="bicubic", jitter_p=0.0, gray_p=0.0, mean=mean, std=std
        )
        self._pipeline = v2.Compose([self.spec.geometric(), self.spec.photometric()])

    def __call__(self, image: Tensor | np.ndarray) -> Tensor:
        return self._pipeline(_as_chw_uint8(image))

    def __repr__(self) -> str:
        return f"MAEView(size={self.spec.size}, scale={self.spec.scale})"


def collate_views(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batches items whose ``"image"`` is a list of views (a :class:`MultiViews` transform's output) or one
    tensor (:class:`MAEView`, or no transform).

    Args:
        samples: ``B`` dicts ``{"image": [ (3, h_v, w_v) ] * V or (3, h, w), "label"?: int, "id"?: str}``;
            every sample must have the same number of views and shapes.

    Returns:
        ``{"views": [ (B, 3, h_v, w_v) ] * V, "label": int64 (B,) (when the samples have labels),
        "id": [str] * B}``.
    """
    if not samples:
        raise ValueError("collate_views needs at least one sample")
    per_sample = []
    for sample in samples:
        views = sample["image"]
        per_sample.append([views] if isinstance(views, Tensor) else list(views))
    n = len(per_sample[0])
    if any(len(v) != n for v in per_sample):
        raise ValueError(f"samples have different numbers of views: {sorted({len(v) for v in per_sample})}")
    out: dict[str, Any] = {
        "views": [torch.stack([v[k] for v in per_sample]) for k in range(n)]
    }  # V x (B, 3, h, w)
    has_label = ["label" in s for s in samples]
    if any(has_label):
        if not all(has_label):
            raise ValueError("some samples have a label and some do not")
        out["label"] = torch.as_tensor([int(s["label"]) for s in samples], dtype=torch.int64)  # (B,)
    out["id"] = [s.get("id") for s in samples]
    return out


class BatchedViewAugment(nn.Module):
    """The photometric part of one view on a batch, per-sample random, on the batch's device (kornia).

    ``(B, 3, h, w)`` uint8 (0..255) or float (``[0, 1]``) crops → float32 normalised ``(B, 3, h, w)``::

        -> ColorJitter(b, c, s, h) p=jitter_p -> Grayscale p=gray_p
        -> GaussianBlur(kernel, σ ~ U(blur_sigma)) p=blur_p -> Solarize(0.5) p=solarize_p -> Normalize

    Same distribution of parameters as the per-image :meth:`ViewSpec.photometric` (torchvision): each
    sample draws its own coin per step, jitter factors ``U(max(0, 1 - s), 1 + s)`` and hue ``U(-h, h)``
    (kornia's ``ColorJitter`` uses torchvision's formulas), σ ~ U per sample, solarisation of values >= 0.5.
    Two differences, both small: the order of the four jitter adjustments is drawn once per batch (per
    image in torchvision), and kornia's grayscale weights are (0.299, 0.587, 0.114) (torchvision's
    0.2989). Randomness comes from torch's global RNG of the batch's device (kornia's convention).

    Args:
        jitter, jitter_p, gray_p, blur_p, blur_sigma, solarize_p, mean, std: as :class:`ViewSpec`.
        blur_kernel: odd kernel size; ``None`` → :func:`blur_kernel_size` of each batch's shorter side.
    """

    def __init__(
        self,
        jitter: Jitter = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel: int | None = None,
        solarize_p: float = 0.0,
        mean: Triple = IMAGENET_MEAN,
        std: Triple = IMAGENET_STD,
    ) -> None:
        super().__init__()
        # Validated through a spec (one place for the rules); its size is a placeholder.
        spec = ViewSpec(
            1,
            jitter=jitter,
            jitter_p=jitter_p,
            gray_p=gray_p,
            blur_p=blur_p,
            blur_sigma=blur_sigma,
            blur_kernel=blur_kernel,
            solarize_p=solarize_p,
            mean=mean,
            std=std,
        )
        self.blur_kernel = blur_kernel
        self.jitter = (
            KA.ColorJitter(*spec.jitter, p=spec.jitter_p) if spec.jitter_p > 0 and any(spec.jitter) else None
        )
        self.grayscale = KA.RandomGrayscale(p=spec.gray_p) if spec.gray_p > 0 else None
        self.blur_p, self.blur_sigma = spec.blur_p, spec.blur_sigma
        self._blurs: dict[int, KA.RandomGaussianBlur] = {}
        self.solarize = (
            KA.RandomSolarize(thresholds=0.0, additions=0.0, p=spec.solarize_p)
            if spec.solarize_p > 0
            else None
        )
        self.register_buffer(
            "mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False
        )  # (1, 3, 1, 1)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)  # (1, 3, 1, 1)

    @classmethod
    def from_spec(cls, spec: ViewSpec) -> BatchedViewAugment:
        """The batched photometric part of ``spec`` (``blur_kernel=None`` resolves to the same kernel,
        :func:`blur_kernel_size` of the crops' side)."""
        return cls(
            spec.jitter,
            spec.jitter_p,
            spec.gray_p,
            spec.blur_p,
            spec.blur_sigma,
            spec.blur_kernel,
            spec.solarize_p,
            spec.mean,
            spec.std,
        )

    def _blur(self, side: int) -> KA.RandomGaussianBlur:
        kernel = self.blur_kernel if self.blur_kernel is not None else blur_kernel_size(side)
        if kernel not in self._blurs:
            self._blurs[kernel] = KA.RandomGaussianBlur(
                (kernel, kernel), sigma=self.blur_sigma, border_type="reflect", p=self.blur_p
            )
        return self._blurs[kernel]

    def forward(self, crops: Tensor) -> Tensor:
        """``crops`` uint8 or float ``(B, 3, h, w)`` → float32 normalised ``(B, 3, h, w)``, same device."""
        if crops.dim() != 4 or crops.shape[1] != 3:
            raise ValueError(f"crops must be (B, 3, h, w), got {tuple(crops.shape)}")
        if crops.dtype == torch.uint8:
            x = crops.float().div_(255.0)  # (B, 3, h, w) in [0, 1]
        elif crops.is_floating_point():
            x = crops.float()
        else:
            raise TypeError(f"crops must be uint8 or float, got {crops.dtype}")
        if x.shape[0] > 0:
            if self.jitter is not None:
                x = self.jitter(x)
            if self.grayscale is not None:
                x = self.grayscale(x)
            if self.blur_p > 0:
                x = self._blur(min(x.shape[-2:]))(x)
            if self.solarize is not None:
                x = self.solarize(x)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)  # (B, 3, h, w)


class BatchedViews(nn.Module):
    """One :class:`BatchedViewAugment` per view: ``[ (B, 3, h_k, w_k) ] * V`` → normalised views."""

    def __init__(self, specs: Sequence[ViewSpec]) -> None:
        super().__init__()
        self.views = nn.ModuleList(BatchedViewAugment.from_spec(s) for s in specs)

    def forward(self, crops: Sequence[Tensor]) -> list[Tensor]:
        if len(crops) != len(self.views):
            raise ValueError(f"expected {len(self.views)} views, got {len(crops)}")
        return [augment(c) for augment, c in zip(self.views, crops, strict=True)]
