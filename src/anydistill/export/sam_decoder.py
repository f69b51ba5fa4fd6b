"""SAM's prompt encoder + mask decoder + mask post-processing as one traceable module (the prompt graph).

The interface is segment-anything's exported decoder (``SamOnnxModel``; its
``scripts/export_onnx_model.py``), so code written for upstream's ``.onnx`` decoder runs on ours:

inputs
    ``image_embeddings`` float32 ``(1, C, h, w)`` (the image encoder's output, ``(1, 256, 64, 64)``);
    ``point_coords`` float32 ``(1, N, 2)`` (x, y) in the resized input frame (long side ``S``; the
    original image's pixels times ``S / max(H, W)``); ``point_labels`` float32 ``(1, N)``: 1 positive,
    0 negative, 2 / 3 a box's top-left / bottom-right corner, -1 padding (its coordinates are
    ignored; without a box, add one padding point at (0, 0), as segment-anything's own prompt encoder
    does); ``mask_input`` float32 ``(1, 1, 4h, 4w)`` logits (a previous ``low_res_masks`` entry);
    ``has_mask_input`` float32 ``(1,)``: 1 to use ``mask_input``, 0 to ignore it; ``orig_im_size``
    float32 ``(2,)``: the original image's ``(H, W)``.
outputs
    ``masks`` float32 ``(1, M, H, W)`` logits at the original size (a pixel is in the mask when its
    logit > ``mask_threshold`` = 0); ``iou_predictions`` float32 ``(1, M)``; ``low_res_masks``
    float32 ``(1, M, 4h, 4w)``. Which masks (``masks`` mode, :data:`DECODER_MASKS`):
    ``"multimask"``: M = 3, mask tokens 1-3 (whole / part / sub-part), as
    ``SamPredictor.predict(multimask_output=True)``; ``"single"``: M = 1, mask token 0, as
    ``multimask_output=False``; ``"best"``: M = 1, upstream's ``return_single_mask`` (its
    ``select_masks``: token 0 when there are more than 2 points, padding and box corners included, else
    the best-scored of tokens 1-3); ``"all"`` (``anydistill export``'s default): M = 4, every token
    (token 0 first), upstream's output without ``return_single_mask``, from which a runtime can take
    either predictor mode.

Static: the embedding grid ``(h, w)`` and ``mask_input``'s size. Dynamic: the number of points ``N``
(axis ``num_points``, as upstream) and the output masks' ``(H, W)``, read from ``orig_im_size``.

Two things differ from upstream's module, neither in the maths of the masks:

* the crop to the un-padded resized image is a slice whose ends are graph values. Upstream's
  ``masks[..., : int(prepadded_size[0]), : int(prepadded_size[1])]`` becomes constants when traced
  (torch 2.14's TorchScript exporter bakes in the example's size), so its graph crops every other
  image size wrongly;
* that resized size is ``ResizeLongestSide``'s ``int(h * S / L + 0.5)`` (``L = max(H, W)``) computed
  in int64, ``max(1, floor((2 h S + L) / (2 L)))`` (as :func:`~anydistill.preprocess.long_side_shape`,
  never 0), so a float16 graph cannot round it.
"""

# Adapted from https://github.com/facebookresearch/segment-anything/blob/571794162e0887c15d12b809505b902c7bf8b4db/segment_anything/utils/onnx.py
# (Apache-2.0): the same inputs, outputs and maths, written for our Sam.

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.models.sam.sam import Sam

__all__ = ["DECODER_INPUTS", "DECODER_MASKS", "DECODER_OUTPUTS", "SamOnnxDecoder"]

DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
#: The decoder's ``masks`` modes (module docstring).
DECODER_MASKS = ("multimask", "single", "best", "all")


class SamOnnxDecoder(nn.Module):
    """The prompt graph of :class:`~anydistill.models.sam.sam.Sam` (module docstring).

    Args:
        model: the SAM whose ``prompt_encoder`` and ``mask_decoder`` are exported (weights shared).
        masks: which masks the graph returns, one of :data:`DECODER_MASKS` (module docstring).
    """

    def __init__(self, model: Sam, masks: str = "multimask") -> None:
        super().__init__()
        if masks not in DECODER_MASKS:
            raise ValueError(f"masks: must be one of {DECODER_MASKS}, got {masks!r}")
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        self.img_size = int(model.img_size)
        self.masks = masks

    @property
    def num_masks(self) -> int:
        """``M``, the masks per prompt set the graph returns."""
        return {"multimask": 3, "all": self.mask_decoder.num_mask_tokens}.get(self.masks, 1)

    def _embed_points(self, point_coords: Tensor, point_labels: Tensor) -> Tensor:
        """``(1, N, 2)`` input-frame px, ``(1, N)`` labels → sparse tokens ``(1, N, C)``."""
        pe = self.prompt_encoder.pe_layer._pe_encoding((point_coords + 0.5) / self.img_size)  # (1, N, C)
        labels = point_labels.unsqueeze(-1).expand_as(pe)  # (1, N, C)
        emb = pe * (labels != -1) + self.prompt_encoder.not_a_point_embed.weight * (labels == -1)
        for i, point_embedding in enumerate(self.prompt_encoder.point_embeddings):  # 0, 1, 2, 3
            emb = emb + point_embedding.weight * (labels == i)
        return emb

    def _embed_masks(self, mask_input: Tensor, has_mask_input: Tensor) -> Tensor:
        """``(1, 1, 4h, 4w)`` logits, ``(1,)`` flag → dense embedding ``(1, C, h, w)``."""
        no_mask = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)  # (1, C, 1, 1)
        embedded = self.prompt_encoder.mask_downscaling(mask_input)  # (1, C, h, w)
        return has_mask_input * embedded + (1 - has_mask_input) * no_mask

    def _select(self, masks: Tensor, iou: Tensor, num_points: int | Tensor) -> tuple[Tensor, Tensor]:
        """Upstream's ``select_masks``: ``(1, 4, ·)`` → the one mask ``(1, 1, ·)`` whose score
        ``iou + (N - 2.5) · [1000, 0, 0, 0]`` is highest (token 0 for N > 2, else the best of 1-3)."""
        reweight = torch.tensor([[1000.0] + [0.0] * (iou.shape[1] - 1)], device=iou.device)  # (1, 4)
        best = torch.argmax(iou + (num_points - 2.5) * reweight, dim=1)  # (1,)
        rows = torch.arange(masks.shape[0], device=masks.device)
        return masks[rows, best].unsqueeze(1), iou[rows, best].unsqueeze(1)

    def _crop_size(self, orig_im_size: Tensor) -> Tensor:
        """``(2,)`` float original ``(H, W)`` → int64 ``(2,)`` resized size before padding,
        ``ResizeLongestSide``'s ``int(side * S / max(H, W) + 0.5)``, at least 1."""
        size = orig_im_size.to(torch.int64)  # (2,)
        longest = size.max()
        crop = torch.div(2 * size * self.img_size + longest, 2 * longest, rounding_mode="floor")
        return crop.clamp_min(1)

    def _postprocess(self, masks: Tensor, orig_im_size: Tensor) -> Tensor:
        """Low-res logits ``(1, M, 4h, 4w)`` → ``(1, M, H, W)``: bilinear to ``S x S``, crop the resized
        image, bilinear to the original size (``Sam.postprocess_masks``)."""
        s = self.img_size
        masks = F.interpolate(masks, size=(s, s), mode="bilinear", align_corners=False)  # (1, M, S, S)
        crop = self._crop_size(orig_im_size)
        masks = masks[..., : crop[0], : crop[1]]  # (1, M, h_in, w_in), ends are graph values
        size = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)

    def forward(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
        orig_im_size: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """See the module docstring: ``(masks, iou_predictions, low_res_masks)``."""
        sparse = self._embed_points(point_coords, point_labels)  # (1, N, C)
        dense = self._embed_masks(mask_input, has_mask_input)  # (1, C, h, w)
        masks, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )  # (1, 4, 4h, 4w), (1, 4)
        if self.masks == "best":
            masks, iou = self._select(masks, iou, point_coords.shape[1])  # (1, 1, 4h, 4w), (1, 1)
        elif self.masks == "multimask":
            masks, iou = masks[:, 1:], iou[:, 1:]  # (1, 3, 4h, 4w), (1, 3)
        elif self.masks == "single":
            masks, iou = masks[:, :1], iou[:, :1]  # (1, 1, 4h, 4w), (1, 1)
        return self._postprocess(masks, orig_im_size), iou, masks
