"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Kirillov et al., "Segment Anything", ICCV 2023, https://arxiv.org/abs/2304.02643, Sec. 3 and
appendix A ("Lightweight mask decoder"). Every block does, in order:

1. self-attention of the tokens ``(B, T, C)``;
2. cross-attention tokens → image (queries: tokens, keys/values: the ``(B, HW, C)`` image tokens);
3. a point-wise MLP on the tokens;
4. cross-attention image → tokens (queries: image tokens, keys/values: the updated tokens).

Positional encodings are re-added to queries and keys at every attention (never to values); the
first block's self-attention skips them (its tokens *are* their positional encodings plus type
embeddings). After the blocks a last token → image attention and a LayerNorm finish the tokens.
Cross-attentions project to ``C / attention_downsample_rate`` channels (128 of 256) to save compute.

The module and parameter names equal segment_anything's (``layers.{i}.self_attn.q_proj``,
``layers.{i}.mlp.lin1``, ``final_attn_token_to_image``, ``norm_final_attn``, ...), so an official
checkpoint's ``mask_decoder.transformer.*`` loads without renaming.
"""

# Adapted from https://github.com/facebookresearch/segment-anything/blob/571794162e0887c15d12b809505b902c7bf8b4db/segment_anything/modeling/transformer.py

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MLPBlock(nn.Module):
    """``lin2(act(lin1(x)))``: ``(..., C)`` → ``(..., C)`` through ``mlp_dim`` hidden units."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may shrink the width to ``C / downsample_rate``.

    ``softmax(q_h k_hᵀ / sqrt(d_h)) v_h`` per head ``h`` (d_h = internal_dim / num_heads), heads
    concatenated and projected back to ``C`` by ``out_proj``.

    Args:
        embedding_dim: C, the width of inputs and output.
        num_heads: must divide ``embedding_dim // downsample_rate``.
        downsample_rate: internal width = ``embedding_dim // downsample_rate``.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(
                f"num_heads {num_heads} must divide the internal width {self.internal_dim} "
                f"(embedding_dim {embedding_dim} / downsample_rate {downsample_rate})"
            )
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)  # (B, h, N, d_h)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``q (B, Nq, C)``, ``k (B, Nk, C)``, ``v (B, Nk, C)`` → ``(B, Nq, C)``."""
        qh = self._heads(self.q_proj(q))  # (B, h, Nq, d_h)
        kh = self._heads(self.k_proj(k))  # (B, h, Nk, d_h)
        vh = self._heads(self.v_proj(v))  # (B, h, Nk, d_h)
        out = F.scaled_dot_product_attention(qh, kh, vh)  # (B, h, Nq, d_h)
        b, _, nq, _ = out.shape
        out = out.transpose(1, 2).reshape(b, nq, self.internal_dim)  # (B, Nq, C_int)
        return self.out_proj(out)


class TwoWayAttentionBlock(nn.Module):
    """One block: token self-attention, tokens → image, token MLP, image → tokens (module docstring).

    Args:
        embedding_dim: C.
        num_heads: heads of every attention.
        mlp_dim: hidden width of the token MLP (2048 in SAM).
        activation: of the MLP (ReLU in SAM).
        attention_downsample_rate: width reduction of the two cross-attentions.
        skip_first_layer_pe: no positional encoding and no residual in the self-attention (first block).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``queries (B, T, C)`` tokens, ``keys (B, HW, C)`` image tokens, with their positional
        encodings of the same shapes → updated ``(queries, keys)``."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)  # replaces: no residual (as upstream)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks, then a final token → image attention and LayerNorm.

    Args:
        depth: number of :class:`TwoWayAttentionBlock` (2 in SAM).
        embedding_dim: C (256 in SAM).
        num_heads: heads of every attention (8 in SAM).
        mlp_dim: hidden width of the token MLPs (2048 in SAM).
        activation: of the MLPs.
        attention_downsample_rate: width reduction of the cross-attentions (2 in SAM).
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                activation,
                attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Run the transformer.

        Args:
            image_embedding: ``(B, C, H, W)``.
            image_pe: ``(B, C, H, W)`` positional encoding of the image (or ``(1, C, H, W)``).
            point_embedding: ``(B, T, C)`` tokens (output tokens then prompt tokens); also their PE.

        Returns:
            ``(tokens (B, T, C), image tokens (B, HW, C))``.
        """
        b = image_embedding.shape[0]
        keys = image_embedding.flatten(2).transpose(1, 2)  # (B, HW, C)
        key_pe = image_pe.flatten(2).transpose(1, 2).expand(b, -1, -1)  # (B, HW, C)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        attn = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        queries = self.norm_final_attn(queries + attn)
        return queries, keys
