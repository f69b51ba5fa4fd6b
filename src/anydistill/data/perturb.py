"""Strong perturbations and CutMix for the student's input on unlabeled images, batched and on-device.

Depth Anything [0] (§3.2) perturbs only the student's view of the unlabeled images, so the student must
match the teacher's pseudo label from a harder input: colour distortions (colour jitter, Gaussian blur)
and spatial distortion (CutMix with probability 0.5). The recipe and constants come from UniMatch [1],
which Depth Anything follows:

    colour jitter (brightness 0.5, contrast 0.5, saturation 0.5, hue 0.25)   p = 0.8
    random grayscale                                                        p = 0.2
    Gaussian blur, σ ~ U(0.1, 2.0)                                          p = 0.5
    CutMix box, area ~ U(0.02, 0.4) of the image, aspect ~ U(0.3, 1/0.3)    p = 0.5

Nothing here is geometric (except the CutMix paste, whose mask the loss receives): the pseudo labels
stay aligned with the perturbed images.

Both run on a whole batch ``(B, 3, H, W)`` in ``[0, 1]`` on its own device, with independent random
parameters per sample (the DESIGN rule: photometric perturbations run batched on the training
device, not per image in the loader).

- [0] Yang et al., "Depth Anything: Unleashing the Power of Large-Scale Unlabeled Data", CVPR 2024,
  https://arxiv.org/abs/2401.10891
- [1] Yang et al., "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic Segmentation"
  (UniMatch), CVPR 2023, https://github.com/LiheYoung/UniMatch (``dataset/transform.py``,
  ``obtain_cutmix_box``)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import kornia.augmentation as KA
import torch
from torch import Tensor, nn

__all__ = ["StrongPerturbation", "CutMix", "sample_cutmix_boxes", "cutmix", "roll_partner"]


def _check_images(images: Tensor, name: str = "images") -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1], got {images.dtype}")


def _check_probability(p: float, name: str) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")


@contextmanager
def _forked_rng(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """A context in which the global RNG(s) are seeded from ``generator``, then restored on exit.

    kornia draws its parameters from the global torch RNG (CPU, or the device's own RNG when the
    module was moved there) and takes no ``torch.Generator``; forking the global state around the call
    makes one draw reproducible from ``generator`` without disturbing anyone else's random stream.
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # Seed only what fork_rng restores: the CPU RNG and, for CUDA input, that device's RNG.
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


class StrongPerturbation(nn.Module):
    """Colour jitter + random grayscale + Gaussian blur on a batch, per-sample random (UniMatch [1]).

    Structure (each step decides per sample, with its own probability, whether it applies)::

        x (B, 3, H, W) in [0, 1]
          -> ColorJitter(brightness, contrast, saturation, hue)   p = jitter_p
          -> RandomGrayscale                                       p = grayscale_p
          -> RandomGaussianBlur(blur_kernel, σ ~ U(blur_sigma))   p = blur_p
          -> clamp to [0, 1]                                       (B, 3, H, W), input dtype

    Built on ``kornia.augmentation`` (torchvision semantics, batched, on the input's device). UniMatch
    blurs with PIL's ``GaussianBlur(radius=σ)``; here the kernel is a truncated Gaussian of odd size
    ``blur_kernel`` (default ``2·⌈3·σ_max⌉ + 1`` = 13 px, i.e. ±3σ at the largest σ) with reflect
    padding, so images must be larger than ``blur_kernel // 2`` on each side.

    Randomness: kornia draws from the global torch RNG, so a run seeded with ``torch.manual_seed`` (or
    Lightning's ``seed_everything``) is reproducible. ``forward(images, generator=g)`` instead seeds a
    forked copy of the global RNG from ``g`` (the global stream is left untouched), so the output is a
    function of ``g``'s state alone on a given device (the same seed gives different draws on CPU and
    CUDA).

    Half-precision inputs are perturbed in float32 and cast back. No gradient is needed through the
    perturbation (it acts on the input image), but nothing here blocks one.

    Args:
        brightness, contrast, saturation: jitter strengths; factors ~ U(1 − s, 1 + s).
        hue: hue shift ~ U(−hue, hue) in turns of the colour wheel (torchvision's convention, ≤ 0.5).
        jitter_p: probability of the colour jitter, per sample.
        grayscale_p: probability of converting to grayscale (kept 3-channel), per sample.
        blur_p: probability of the Gaussian blur, per sample.
        blur_sigma: ``(σ_min, σ_max)`` in pixels.
        blur_kernel: odd kernel size; ``None`` → ``2·⌈3·σ_max⌉ + 1``.
    """

    # Adapted from https://github.com/LiheYoung/UniMatch (dataset/semi.py strong branch: ColorJitter p=0.8,
    # RandomGrayscale p=0.2, blur p=0.5) — re-expressed with kornia so it runs batched on the GPU.

    def __init__(
        self,
        brightness: float = 0.5,
        contrast: float = 0.5,
        saturation: float = 0.5,
        hue: float = 0.25,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel: int | None = None,
    ) -> None:
        super().__init__()
        for p, name in ((jitter_p, "jitter_p"), (grayscale_p, "grayscale_p"), (blur_p, "blur_p")):
            _check_probability(p, name)
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        if not 0.0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma must be (min, max) with 0 < min <= max, got {blur_sigma}")
        if blur_kernel is None:
            blur_kernel = 2 * math.ceil(3 * blur_sigma[1]) + 1
        if blur_kernel < 1 or blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be a positive odd integer, got {blur_kernel}")
        self.blur_kernel = blur_kernel
        self.jitter = KA.ColorJitter(brightness, contrast, saturation, hue, p=jitter_p)
        self.grayscale = KA.RandomGrayscale(p=grayscale_p)
        self.blur = KA.RandomGaussianBlur(
            (blur_kernel, blur_kernel), sigma=tuple(blur_sigma), border_type="reflect", p=blur_p
        )

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Perturbs ``images`` ``(B, 3, H, W)`` in ``[0, 1]``; returns the same shape, dtype and device."""
        _check_images(images)
        half = self.blur_kernel // 2
        if self.blur.p > 0 and (images.shape[-2] <= half or images.shape[-1] <= half):
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])} are too small for a {self.blur_kernel}-px blur "
                "kernel with reflect padding; pass a smaller blur_kernel"
            )
        if images.shape[0] == 0:
            return images
        x = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
        with _forked_rng(generator, images.device):
            x = self.jitter(x)  # (B, 3, H, W)
            x = self.grayscale(x)  # (B, 3, H, W)
            x = self.blur(x)  # (B, 3, H, W)
        return x.clamp(0.0, 1.0).to(images.dtype)


def sample_cutmix_boxes(
    batch: int,
    height: int,
    width: int,
    p: float = 0.5,
    area: tuple[float, float] = (0.02, 0.4),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Samples one CutMix box per image and returns the paste mask ``(B, 1, H, W)`` bool.

    ``True`` marks the pasted region (pixels taken from the partner image); a sample whose coin flip
    (probability ``1 − p``) says "no mix" gets an all-False mask. For a mixed sample, as UniMatch's
    ``obtain_cutmix_box``: target area ``A = U(area) · H · W``, aspect ``r = h / w ~ U(ratio)``,
    ``w = √(A / r)``, ``h = √(A · r)`` rounded to whole pixels, top-left corner uniform among the
    positions where the box fits. UniMatch redraws until the box fits; here ``r`` is drawn directly from
    the part of ``ratio`` where it fits (``A / W² ≤ r ≤ H² / A``; on very elongated images where no
    ratio of the range fits, the nearest feasible ratio), so the loop is vectorized and the box area
    is ``A`` up to rounding (one row and one column).

    Args:
        batch, height, width: ``B, H, W``.
        p: probability that a sample is mixed.
        area: ``(min, max)`` box area as a fraction of ``H · W``, within ``(0, 1]``.
        ratio: ``(min, max)`` box aspect ``h / w``.
        device: device of the returned mask (the random draws are made on ``generator``'s device,
            or the default CPU RNG, then moved).
        generator: optional ``torch.Generator`` for reproducible boxes.

    Returns:
        bool mask ``(B, 1, H, W)``.
    """
    # Adapted from https://github.com/LiheYoung/UniMatch/blob/818609d195fa1079fbb67589299d9aec07acac46/dataset/transform.py (obtain_cutmix_box)
    _check_probability(p, "p")
    if not 0.0 < area[0] <= area[1] <= 1.0:
        raise ValueError(f"area must be (min, max) with 0 < min <= max <= 1, got {area}")
    if not 0.0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must be (min, max) with 0 < min <= max, got {ratio}")
    if batch < 0 or height < 1 or width < 1:
        raise ValueError(f"need batch >= 0 and a non-empty image, got B={batch}, H={height}, W={width}")
    rng_device = generator.device if generator is not None else torch.device("cpu")

    def uniform(low: Tensor | float, high: Tensor | float) -> Tensor:
        u = torch.rand(batch, generator=generator, device=rng_device, dtype=torch.float64)  # (B,)
        return low + (high - low) * u

    mixed = torch.rand(batch, generator=generator, device=rng_device) < p  # (B,)
    box_area = uniform(area[0], area[1]) * (height * width)  # (B,) in pixels
    feasible_lo = box_area / width**2  # (B,) smallest h / w with w <= W
    feasible_hi = height**2 / box_area  # (B,) largest h / w with h <= H
    lo = feasible_lo.clamp_min(ratio[0])
    hi = feasible_hi.clamp_max(ratio[1])
    # Empty intersection (very elongated image): take the feasible ratio nearest to the range.
    nearest = torch.full_like(lo, ratio[0]).clamp(feasible_lo, feasible_hi)  # (B,)
    r = torch.where(lo <= hi, uniform(lo, torch.maximum(lo, hi)), nearest)  # (B,)
    box_w = torch.sqrt(box_area / r).round().long().clamp(1, width)  # (B,)
    box_h = torch.sqrt(box_area * r).round().long().clamp(1, height)  # (B,)
    x0 = (uniform(0.0, 1.0) * (width - box_w + 1)).long().clamp_max(width - box_w)  # (B,)
    y0 = (uniform(0.0, 1.0) * (height - box_h + 1)).long().clamp_max(height - box_h)  # (B,)

    cols = torch.arange(width, device=rng_device)  # (W,)
    rows = torch.arange(height, device=rng_device)  # (H,)
    in_x = (cols[None, :] >= x0[:, None]) & (cols[None, :] < (x0 + box_w)[:, None])  # (B, W)
    in_y = (rows[None, :] >= y0[:, None]) & (rows[None, :] < (y0 + box_h)[:, None])  # (B, H)
    mask = in_y[:, :, None] & in_x[:, None, :] & mixed[:, None, None]  # (B, H, W)
    return mask[:, None].to(device if device is not None else rng_device)  # (B, 1, H, W)


def cutmix(images_a: Tensor, images_b: Tensor, mask: Tensor) -> Tensor:
    """Pastes ``images_b`` into ``images_a`` where ``mask`` is True: ``where(mask, b, a)``.

    Works for any per-pixel tensors (images ``(B, C, H, W)``, pseudo labels ``(B, 1, H, W)``, valid
    masks): ``mask`` ``(B, 1, H, W)`` bool broadcasts over the channels.

    Args:
        images_a: the base batch ``(B, C, H, W)`` (kept outside the box).
        images_b: the partner batch, same shape (pasted inside the box).
        mask: bool ``(B, 1, H, W)`` from :func:`sample_cutmix_boxes`.

    Returns:
        the mixed batch ``(B, C, H, W)``.
    """
    if images_a.shape != images_b.shape:
        raise ValueError(
            f"images_a and images_b must have the same shape, got {tuple(images_a.shape)} and "
            f"{tuple(images_b.shape)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if (
        mask.dim() != 4
        or mask.shape[1] != 1
        or mask.shape[0] != images_a.shape[0]
        or (mask.shape[-2:] != images_a.shape[-2:])
    ):
        raise ValueError(
            f"mask must be (B, 1, H, W) matching {tuple(images_a.shape)}, got {tuple(mask.shape)}"
        )
    return torch.where(mask, images_b, images_a)


def roll_partner(x: Tensor) -> Tensor:
    """The partner batch when no second batch is at hand: sample ``i`` mixes with sample ``i − 1``.

    ``torch.roll(x, 1, dims=0)``: a fixed derangement for ``B ≥ 2`` (no image pasted into itself), and
    the same permutation for images and their pseudo labels. With ``B = 1`` the partner is the image
    itself (the mix is then a no-op). UniMatch instead mixes with a second, independently loaded
    unlabeled batch; :class:`CutMix` takes either.
    """
    return torch.roll(x, shifts=1, dims=0)


class CutMix(nn.Module):
    """CutMix for unlabeled batches (Yun et al. 2019; UniMatch [1] / Depth Anything [0] settings).

    ``sample_boxes`` draws the paste mask, ``mix`` composes ``where(mask, b, a)``; the caller keeps the
    mask to compute the loss inside and outside the box separately (see
    ``anydistill.losses.cutmix.cutmix_ssi_loss``: inside → partner ``b``'s pseudo label, outside →
    ``a``'s). The partner batch ``b`` is either a second unlabeled batch (UniMatch) or
    :func:`roll_partner` of the same batch; ``forward(images_a, images_b=None)`` uses the roll when no
    partner is given.

    Shapes: images ``(B, C, H, W)``, mask ``(B, 1, H, W)`` bool (True = pasted from the partner).

    Args:
        p: probability that a sample is mixed.
        area: box area range as a fraction of the image.
        ratio: box aspect range ``h / w``.
    """

    def __init__(
        self,
        p: float = 0.5,
        area: tuple[float, float] = (0.02, 0.4),
        ratio: tuple[float, float] = (0.3, 1 / 0.3),
    ) -> None:
        super().__init__()
        _check_probability(p, "p")
        self.p = p
        self.area = tuple(area)
        self.ratio = tuple(ratio)

    def sample_boxes(
        self,
        batch: int,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Paste mask ``(B, 1, H, W)`` bool; see :func:`sample_cutmix_boxes`."""
        return sample_cutmix_boxes(
            batch,
            height,
            width,
            p=self.p,
            area=self.area,
            ratio=self.ratio,
            device=device,
            generator=generator,
        )

    @staticmethod
    def mix(images_a: Tensor, images_b: Tensor, mask: Tensor) -> Tensor:
        """``where(mask, images_b, images_a)``; see :func:`cutmix`."""
        return cutmix(images_a, images_b, mask)

    def forward(
        self, images_a: Tensor, images_b: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mixes a batch; returns ``(mixed (B, C, H, W), mask (B, 1, H, W))``.

        ``images_b=None`` mixes with :func:`roll_partner` ``(images_a)``; the caller then rolls the
        pseudo labels the same way.
        """
        if images_a.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got {tuple(images_a.shape)}")
        partner = roll_partner(images_a) if images_b is None else images_b
        b, _, h, w = images_a.shape
        mask = self.sample_boxes(b, h, w, device=images_a.device, generator=generator)
        return cutmix(images_a, partner, mask), mask

    def extra_repr(self) -> str:
        return f"p={self.p}, area={self.area}, ratio=({self.ratio[0]:.3g}, {self.ratio[1]:.3g})"
