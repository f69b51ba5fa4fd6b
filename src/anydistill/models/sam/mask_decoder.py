"""SAM's mask decoder: output tokens + prompt tokens + image embedding → mask logits and IoU scores.

Kirillov et al., "Segment Anything", ICCV 2023, https://arxiv.org/abs/2304.02643, Sec. 3 and
appendix A ("Lightweight mask decoder", "Making the model ambiguity-aware"):

1. tokens ``(B, 5 + T, C)`` = [IoU token, 4 mask tokens, T prompt tokens]. Mask token 0 gives the
   single-mask output (used for unambiguous prompts, ``multimask_output=False``); mask tokens 1-3
   give the three multimask outputs (whole / part / sub-part for an ambiguous prompt such as one
   click); the IoU token predicts each mask's IoU with its ground truth;
2. image tokens = image embedding + dense prompt embedding ``(B, C, h, w)``; a
   :class:`~anydistill.models.sam.transformer.TwoWayTransformer` updates both (image PE re-added);
3. the image tokens are upscaled 4× by two transposed convs → ``(B, C/8, 4h, 4w)``;
4. each updated mask token goes through its own 3-layer MLP (a hypernetwork) to ``(C/8,)``; its dot
   product with every upscaled pixel is the mask logit: ``mask_i = MLP_i(t_i) · U`` → ``(B, 4, 4h, 4w)``;
5. a 3-layer MLP on the updated IoU token → ``(B, 4)`` predicted IoUs.

Parameter names equal segment_anything's (``iou_token``, ``mask_tokens``, ``output_upscaling``,
``output_hypernetworks_mlps``, ``iou_prediction_head``), so ``mask_decoder.*`` loads as is.
"""

# Adapted from https://github.com/facebookresearch/segment-anything/blob/571794162e0887c15d12b809505b902c7bf8b4db/segment_anything/modeling/mask_decoder.py

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them: ``(..., in)`` → ``(..., out)``."""

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, sigmoid_output: bool = False
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class MaskDecoder(nn.Module):
    """Predicts masks from an image embedding and prompt embeddings (module docstring).

    Args:
        transformer_dim: C (256 in SAM).
        transformer: the two-way transformer, width C.
        num_multimask_outputs: masks for ambiguous prompts (3); there are ``+1`` mask tokens.
        activation: of the upscaling convs (GELU).
        iou_head_depth: layers of the IoU MLP (3).
        iou_head_hidden_dim: its hidden width (256).

    Attributes:
        accepts_batched_embeddings: True: ``image_embeddings`` may hold one embedding per prompt set
            (``B_img == B``), so prompts on different images go through one call (segment_anything's
            decoder repeats one ``(1, C, h, w)`` embedding for every prompt set and lacks this flag).
    """

    accepts_batched_embeddings: bool = True

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        c = transformer_dim
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            activation(),
            nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(c, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
    ) -> tuple[Tensor, Tensor]:
        """Predict masks.

        Args:
            image_embeddings: ``(B_img, C, h, w)``; ``B_img`` is 1 (one image, many prompts: the
                predictor's case), ``B`` (one prompt set per image) or divides ``B`` (prompt sets
                grouped per image, ``B / B_img`` consecutive sets each).
            image_pe: ``(1, C, h, w)`` from ``prompt_encoder.get_dense_pe()``.
            sparse_prompt_embeddings: ``(B, T, C)`` point and box tokens.
            dense_prompt_embeddings: ``(B, C, h, w)`` mask prompt (or no-mask) embedding.
            multimask_output: return mask tokens 1..3 (True) or mask token 0 alone (False).

        Returns:
            ``low_res_masks (B, M, 4h, 4w)`` logits and ``iou_pred (B, M)``, M = 3 or 1.
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sel], iou_pred[:, sel]

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """All ``num_mask_tokens`` masks ``(B, 4, 4h, 4w)`` and IoUs ``(B, 4)`` (see :meth:`forward`)."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)  # (5, C)
        tokens = torch.cat([output_tokens.expand(b, -1, -1), sparse_prompt_embeddings], dim=1)  # (B, 5+T, C)

        b_img = image_embeddings.shape[0]
        if b_img == 1:
            src = image_embeddings.expand(b, -1, -1, -1)
        elif b_img == b:
            src = image_embeddings
        elif b % b_img == 0:
            src = torch.repeat_interleave(image_embeddings, b // b_img, dim=0)
        else:
            raise ValueError(
                f"{b_img} image embeddings cannot be shared by {b} prompt sets "
                "(need 1, the same number, or a divisor of it)"
            )
        src = src + dense_prompt_embeddings  # (B, C, h, w)
        _, c, h, w = src.shape

        hs, src = self.transformer(src, image_pe, tokens)  # (B, 5+T, C), (B, hw, C)
        iou_token_out = hs[:, 0]  # (B, C)
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens]  # (B, 4, C)

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))  # (B, C/8, 4h, 4w)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # (B, 4, C/8)
        _, cu, hu, wu = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, cu, hu * wu)).reshape(b, -1, hu, wu)  # (B, 4, 4h, 4w)
        iou_pred = self.iou_prediction_head(iou_token_out)  # (B, 4)
        return masks, iou_pred
