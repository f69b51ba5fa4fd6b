"""SAM's prompt encoder: points, boxes and a low-resolution mask → sparse tokens and a dense map.

Kirillov et al., "Segment Anything", ICCV 2023, https://arxiv.org/abs/2304.02643, Sec. 3 and
appendix A ("Prompt encoder"):

* a point ``(x, y)`` (input-frame pixels, +0.5 to the pixel centre) becomes
  ``PE(x / W_in, y / H_in) + e_label`` where ``PE`` is a random-Fourier positional encoding
  (Tancik et al., NeurIPS 2020, https://arxiv.org/abs/2006.10739):
  ``PE(p) = [sin(2π (2p - 1) G), cos(2π (2p - 1) G)]`` with a fixed Gaussian ``G (2, C/2)``;
  ``e_label`` is ``point_embeddings[1]`` (positive, label 1) or ``point_embeddings[0]`` (negative,
  label 0); a padding point (label -1) is ``not_a_point_embed`` alone (no PE);
* a box ``(x0, y0, x1, y1)`` becomes two tokens, its corners, ``PE(corner) + point_embeddings[2|3]``;
* a mask prompt ``(B, 1, 4h, 4w)`` of logits (e.g. a previous low-res prediction) is downscaled 4×
  by two stride-2 convs (LayerNorm2d + GELU) and a 1x1 conv to ``(B, C, h, w)``; without one the
  dense embedding is ``no_mask_embed`` broadcast to ``(B, C, h, w)``.

When points are given without a box, a padding point is appended (SAM was trained so).
Parameter names equal segment_anything's, so ``prompt_encoder.*`` of an official checkpoint loads as is.
"""

# Adapted from https://github.com/facebookresearch/segment-anything/blob/f89f35aedc93adc8a106215883650c7c47c13448/segment_anything/modeling/prompt_encoder.py

from __future__ import annotations

import math

import torch
from timm.layers import LayerNorm2d
from torch import Tensor, nn


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding of 2D points in ``[0, 1]²``.

    ``PE(p) = [sin(2π (2p - 1) G), cos(2π (2p - 1) G)]``, ``G ~ N(0, scale²)`` of shape
    ``(2, num_pos_feats)``, kept as the (persistent) buffer ``positional_encoding_gaussian_matrix``.
    Output width: ``2 * num_pos_feats``.
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(2, num_pos_feats))

    def _pe_encoding(self, coords: Tensor) -> Tensor:
        """``coords (..., 2)`` in ``[0, 1]`` (x, y) → ``(..., 2 * num_pos_feats)``."""
        proj = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)  # (..., F)
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def forward(self, size: tuple[int, int]) -> Tensor:
        """The encoding of every cell centre of an ``(h, w)`` grid: ``(C, h, w)``."""
        h, w = size
        device, dtype = (
            self.positional_encoding_gaussian_matrix.device,
            self.positional_encoding_gaussian_matrix.dtype,
        )
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h  # (h,)
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w  # (w,)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        return self._pe_encoding(grid).permute(2, 0, 1)  # (C, h, w)

    def forward_with_coords(self, coords_input: Tensor, image_size: tuple[int, int]) -> Tensor:
        """``coords (B, N, 2)`` in pixels (x, y) of an ``image_size = (H, W)`` frame → ``(B, N, C)``."""
        h, w = image_size
        size = torch.tensor([w, h], dtype=torch.float32, device=coords_input.device)
        return self._pe_encoding(coords_input.float() / size)


class PromptEncoder(nn.Module):
    """Encodes prompts for :class:`~anydistill.models.sam.mask_decoder.MaskDecoder`.

    Args:
        embed_dim: C, the token width (256 in SAM).
        image_embedding_size: ``(h, w)`` of the image embedding (64, 64 at 1024²).
        input_image_size: ``(H_in, W_in)`` padded model input (1024, 1024); point and box coordinates
            are pixels of this frame.
        mask_in_chans: hidden channels of the mask downscaler (16 in SAM).
        activation: of the mask downscaler (GELU).

    Attributes: ``mask_input_size = (4h, 4w)`` (256, 256 at 1024²), the mask prompt's size.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: negative point, 1: positive point, 2: box top-left corner, 3: box bottom-right corner.
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the image embedding's grid, ``(1, C, h, w)``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        """``points (B, N, 2)`` input-frame px, ``labels (B, N)`` → ``(B, N (+1 if pad), C)``."""
        points = points.float() + 0.5  # the centre of the pixel
        labels = labels.to(points.device)
        if pad:
            b = points.shape[0]
            points = torch.cat([points, points.new_zeros(b, 1, 2)], dim=1)  # (B, N+1, 2)
            labels = torch.cat([labels, labels.new_full((b, 1), -1)], dim=1)  # (B, N+1)
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)  # (B, N, C)
        lab = labels[..., None]  # (B, N, 1)
        # Labels other than -1, 0, 1 get the positional encoding alone (as upstream).
        emb = torch.where(lab == -1, self.not_a_point_embed.weight, pe)
        emb = (
            emb + (lab == 0) * self.point_embeddings[0].weight + (lab == 1) * self.point_embeddings[1].weight
        )
        return emb

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        """``boxes (B, 4)`` XYXY input-frame px → two corner tokens ``(B, 2, C)``."""
        corners = boxes.float().reshape(-1, 2, 2) + 0.5  # (B, 2, 2) the centre of the pixel
        pe = self.pe_layer.forward_with_coords(corners, self.input_image_size)  # (B, 2, C)
        corner_type = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])  # (2, C)
        return pe + corner_type

    def _embed_masks(self, masks: Tensor) -> Tensor:
        """``masks (B, 1, 4h, 4w)`` logits → ``(B, C, h, w)``."""
        return self.mask_downscaling(masks)

    @staticmethod
    def _batch_size(points: tuple[Tensor, Tensor] | None, boxes: Tensor | None, masks: Tensor | None) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: tuple[Tensor, Tensor] | None,
        boxes: Tensor | None,
        masks: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Embed the prompts (any may be None; all given ones share the batch size B).

        Args:
            points: ``(coords (B, N, 2), labels (B, N))``: coords ``(x, y)`` in input-frame pixels;
                labels 1 positive, 0 negative, -1 padding.
            boxes: ``(B, 4)`` XYXY in input-frame pixels.
            masks: ``(B, 1, 4h, 4w)`` mask logits.

        Returns:
            ``sparse (B, T, C)``: point tokens (plus a padding token when there is no box), then the
            two box-corner tokens; ``T = 0`` without points and boxes.
            ``dense (B, C, h, w)``: the embedded mask, or ``no_mask_embed`` broadcast.
        """
        bs = self._batch_size(points, boxes, masks)
        device = self.no_mask_embed.weight.device
        sparse = [torch.empty(bs, 0, self.embed_dim, device=device)]
        if points is not None:
            coords, labels = points
            sparse.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        sparse_embeddings = torch.cat(sparse, dim=1)
        if masks is not None:
            dense_embeddings = self._embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense_embeddings = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse_embeddings, dense_embeddings
