"""The Segment Anything model: an image encoder, a prompt encoder and a mask decoder, handed in.

Kirillov et al., "Segment Anything", ICCV 2023, https://arxiv.org/abs/2304.02643. The interface is
segment_anything's ``Sam`` (so either can stand in for the other):

* ``preprocess(x)``: ``(B, 3, H, W)`` pixels in [0, 255] (long side already resized to ``img_size``)
  → normalised with SAM's ImageNet mean/std ×255, zero-padded bottom/right to ``(img_size, img_size)``;
* ``image_encoder(x)``: → ``(B, 256, img_size/16, img_size/16)``;
* ``prompt_encoder(points, boxes, masks)``, ``mask_decoder(...)``: see their modules;
* ``postprocess_masks(masks, input_size, original_size)``: low-res logits → bilinear up to
  ``img_size``, crop the un-padded ``input_size``, bilinear to ``original_size``;
* ``mask_threshold = 0.0`` (a pixel is in the mask when its logit > 0), ``image_format = "RGB"``.

``forward`` takes pre-processed images and prompts in the input frame (it never pre-processes);
:class:`anydistill.promptable.SamPredictor` is the numpy-in, masks-out front end.
"""

# Adapted from https://github.com/facebookresearch/segment-anything/blob/571794162e0887c15d12b809505b902c7bf8b4db/segment_anything/modeling/sam.py

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.models.sam.mask_decoder import MaskDecoder
from anydistill.models.sam.prompt_encoder import PromptEncoder
from anydistill.preprocess import SAM_PIXEL_MEAN, SAM_PIXEL_STD, Preprocess

__all__ = ["SAM_PIXEL_MEAN", "SAM_PIXEL_STD", "Sam"]


class Sam(nn.Module):
    """SAM: ``image_encoder`` + ``prompt_encoder`` + ``mask_decoder`` (module docstring).

    Args:
        image_encoder: ``(B, 3, S, S)`` → ``(B, C, S/16, S/16)``, with an ``img_size`` (S) attribute.
        prompt_encoder: its ``image_embedding_size`` must be ``(S/16, S/16)`` and its
            ``input_image_size`` ``(S, S)``.
        mask_decoder: width C.
        pixel_mean, pixel_std: per-channel normalisation of [0, 255] pixels (buffers, not saved in
            the state dict, as upstream).
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = SAM_PIXEL_MEAN,
        pixel_std: Sequence[float] = SAM_PIXEL_STD,
    ) -> None:
        super().__init__()
        size = int(image_encoder.img_size)
        if tuple(prompt_encoder.input_image_size) != (size, size):
            raise ValueError(
                f"prompt encoder input_image_size {prompt_encoder.input_image_size} != image encoder "
                f"img_size {size}"
            )
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self._pixel_mean_values = tuple(float(v) for v in pixel_mean)  # to rebuild the buffers
        self._pixel_std_values = tuple(float(v) for v in pixel_std)
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False
        )
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def img_size(self) -> int:
        """S, the padded square input size of the image encoder (1024 for SAM)."""
        return int(self.image_encoder.img_size)

    def preprocess_spec(self, size: int | None = None) -> Preprocess:
        """SAM's input frame as a :class:`~anydistill.preprocess.Preprocess` (long side ``img_size``,
        0..255 pixels, this model's mean/std, zero padding bottom/right)."""
        spec = Preprocess.sam(int(size or self.img_size))
        return replace(spec, mean=self._pixel_mean_values, std=self._pixel_std_values)

    def preprocess(self, x: Tensor) -> Tensor:
        """``x (B, 3, H, W)`` or ``(3, H, W)``, values in [0, 255], ``max(H, W) <= img_size`` →
        normalised and zero-padded bottom/right to ``(B?, 3, S, S)``: segment-anything's method, doing
        :meth:`preprocess_spec`'s ``normalize`` and ``pad_batch`` (its resize is the caller's)."""
        h, w = x.shape[-2:]
        s = self.img_size
        if h > s or w > s:
            raise ValueError(f"image {h}x{w} is larger than img_size {s}; resize its long side to {s} first")
        spec = self.preprocess_spec()
        return spec.pad_batch(spec.normalize(x.float()))

    def postprocess_masks(
        self, masks: Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> Tensor:
        """Low-res mask logits ``(B, M, 4h, 4w)`` → ``(B, M, H_orig, W_orig)`` logits.

        Bilinear to ``(S, S)``, crop the top-left ``input_size`` (the resized image without its
        padding), bilinear to ``original_size``.
        """
        s = self.img_size
        masks = F.interpolate(masks, (s, s), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def forward(
        self,
        images: Tensor,
        point_coords: Tensor | None = None,
        point_labels: Tensor | None = None,
        boxes: Tensor | None = None,
        mask_inputs: Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Masks for pre-processed images and prompts (training and export path; no pre-processing).

        Args:
            images: ``(B_img, 3, S, S)`` from :meth:`preprocess`.
            point_coords: ``(B, N, 2)`` (x, y) in input-frame pixels, with ``point_labels (B, N)``
                (1 positive, 0 negative, -1 padding).
            boxes: ``(B, 4)`` XYXY input-frame pixels.
            mask_inputs: ``(B, 1, 4h, 4w)`` mask logits.
            multimask_output: 3 masks per prompt set (True) or 1.

        ``B`` prompt sets go with ``B_img`` images: ``B == B_img`` (one each), ``B_img == 1``, or
        ``B / B_img`` consecutive sets per image.

        Returns:
            ``low_res_masks (B, M, 4h, 4w)`` logits and ``iou_predictions (B, M)``.
        """
        embeddings = self.image_encoder(images)  # (B_img, C, h, w)
        points = None if point_coords is None else (point_coords, point_labels)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_inputs)
        return self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
