"""Contrastive losses of self-supervised pre-training: SimCLR's NT-Xent [0] (:func:`nt_xent_loss` /
:class:`NTXentLoss`) and MoCo's InfoNCE [1] (:func:`info_nce_loss` / :class:`InfoNCELoss`) with its FIFO
dictionary of keys (:class:`KeyQueue`, :func:`gather_keys`).

- [0] Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
  Representations" (SimCLR), ICML 2020, https://arxiv.org/abs/2002.05709; the distributed form follows
  lightly 1.6.0, https://github.com/lightly-ai/lightly/blob/v1.6.0/lightly/loss/ntx_ent_loss.py
- [1] He, Fan, Wu, Xie, Girshick, "Momentum Contrast for Unsupervised Visual Representation Learning"
  (MoCo), CVPR 2020, https://arxiv.org/abs/1911.05722; reference code
  https://github.com/facebookresearch/moco/blob/7397dfe146c7ca6bbb58e9c382498069178ba764/moco/builder.py
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from anydistill.losses.segmentation import _upcast

__all__ = ["nt_xent_loss", "info_nce_loss", "gather_keys", "NTXentLoss", "InfoNCELoss", "KeyQueue"]


def _rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group; ``(0, 1)`` outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherWithGrad(torch.autograd.Function):
    """``all_gather`` concatenated along dim 0, whose backward hands each rank the sum over the ranks of
    the gradients of its own slice (as lightly's ``GatherLayer``). Written here rather than taken from
    ``torch.distributed.nn.functional.all_gather``, which warns (deprecated) on every call in torch 2.14."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)  # (W·N, D)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on every slice
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]  # (N, D)


@torch.no_grad()
def gather_keys(x: Tensor) -> Tensor:
    """The keys of every rank, concatenated in rank order, without gradient (MoCo's ``concat_all_gather``).

    Under DDP every rank must call it with a batch of the same shape, and pass the result to
    :meth:`KeyQueue.enqueue` so that the queues of all ranks stay identical; outside ``torch.distributed``
    (or with one process) it returns ``x`` detached.

    Args:
        x: ``(B, D)`` keys of this rank.

    Returns:
        ``(W·B, D)``, ``W`` the world size.
    """
    _, world = _rank_and_world()
    if world == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)  # (W·B, D)


def _check_pair(a: Tensor, b: Tensor, names: str) -> None:
    if a.dim() != 2 or a.shape[0] == 0:
        raise ValueError(f"{names} must be non-empty (N, D) tensors, got {tuple(a.shape)}")
    if b.shape != a.shape:
        raise ValueError(f"{names} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def nt_xent_loss(
    z1: Tensor, z2: Tensor, temperature: float = 0.5, *, gather_distributed: bool = False
) -> Tensor:
    """SimCLR's normalized-temperature cross entropy (NT-Xent) [0] over both views.

        ℓ(i, j) = −log( exp(s_ij / τ) / Σ_{k ≠ i} exp(s_ik / τ) ),   s_ik = u_i·u_k,  u = z / ‖z‖
        L = 1/(2N) · Σ_{n=1}^{N} [ ℓ(n, N + n) + ℓ(N + n, n) ]

    over the 2N projections ``u = [z1; z2]``: each of the 2N anchors has its other view as the positive
    and the other 2N − 2 projections as negatives. Equals lightly's ``NTXentLoss(temperature,
    memory_bank_size=0)``.

    With ``gather_distributed`` under ``torch.distributed``, the projections of every rank are gathered
    *with* gradient and serve as extra negatives (2·W·N − 2 per anchor, W the world size); the loss is
    still the mean over this rank's 2N anchors (DDP averages the ranks' gradients), as lightly's
    ``gather_distributed=True``. Every rank must then pass batches of the same shape.

    Args:
        z1: ``(N, D)`` projections of the first view.
        z2: ``(N, D)`` projections of the second view (sample ``n`` of both views is one image).
        temperature: ``τ > 0``.
        gather_distributed: use the other ranks' projections as negatives (no effect without
            ``torch.distributed``).

    Returns:
        scalar loss.
    """
    _check_pair(z1, z2, "z1 and z2")
    _check_temperature(temperature)
    rank, world = _rank_and_world() if gather_distributed else (0, 1)
    n = z1.shape[0]
    if n * world < 2:
        raise ValueError("NT-Xent needs at least 2 samples: a batch of 1 has no negatives")
    u1 = F.normalize(_upcast(z1), dim=1)  # (N, D)
    u2 = F.normalize(_upcast(z2), dim=1)  # (N, D)
    anchors = torch.cat([u1, u2])  # (2N, D)
    if world > 1:
        u1, u2 = _AllGatherWithGrad.apply(u1), _AllGatherWithGrad.apply(u2)  # (W·N, D) each
    candidates = torch.cat([u1, u2])  # (2·W·N, D): view 1 of every rank, then view 2
    logits = anchors @ candidates.T / temperature  # (2N, 2·W·N)
    own = torch.arange(n, device=logits.device) + rank * n  # this rank's samples in each view block
    self_cols = torch.cat([own, own + world * n])  # (2N,)
    positive_cols = torch.cat([own + world * n, own])  # (2N,)
    rows = torch.arange(2 * n, device=logits.device)
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, self_cols] = True
    logits = logits.masked_fill(is_self, float("-inf"))  # an anchor is not its own negative
    return F.cross_entropy(logits, positive_cols)


def info_nce_loss(
    query: Tensor, key: Tensor, queue: Tensor | None = None, temperature: float = 0.2
) -> Tensor:
    """MoCo's InfoNCE loss [1]: each query against its positive key and a dictionary of negative keys.

        L = −1/N · Σ_n log( exp(q_n·k_n / τ) / ( exp(q_n·k_n / τ) + Σ_{j=1}^{K} exp(q_n·m_j / τ) ) )

    i.e. cross-entropy over the logits ``[q·k⁺, q·queueᵀ] / τ`` with the positive at index 0, all vectors
    L2-normalised here. The keys and the queue are detached: no gradient reaches the key encoder (MoCo
    computes them under ``no_grad``). Without a queue the other keys of the batch are the negatives
    (MoCo v3's form, without its ``2τ`` factor): ``logits = q·kᵀ / τ`` with the positive on the diagonal.

    The default τ = 0.2 is MoCo v2's (MoCo v1: 0.07).

    Args:
        query: ``(N, D)`` queries (gradient flows).
        key: ``(N, D)`` positive keys, ``key[n]`` another view of ``query[n]``.
        queue: optional ``(K, D)`` earlier keys (e.g. :attr:`KeyQueue.keys`), the negatives.
        temperature: ``τ > 0``.

    Returns:
        scalar loss.
    """
    _check_pair(query, key, "query and key")
    _check_temperature(temperature)
    q = F.normalize(_upcast(query), dim=1)  # (N, D)
    k = F.normalize(_upcast(key.detach()).to(q.dtype), dim=1)  # (N, D)
    if queue is None:
        if q.shape[0] < 2:
            raise ValueError(
                "InfoNCE without a queue needs a batch of 2 or more: the other keys are the negatives"
            )
        logits = q @ k.T / temperature  # (N, N), positives on the diagonal
        return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))
    if queue.dim() != 2 or queue.shape[0] == 0 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue must be (K, {q.shape[1]}) with K >= 1, got {tuple(queue.shape)}")
    negatives = F.normalize(queue.detach().to(q), dim=1)  # (K, D)
    positive = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    logits = torch.cat([positive, q @ negatives.T], dim=1) / temperature  # (N, 1 + K)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


class NTXentLoss(nn.Module):
    """SimCLR's NT-Xent [0]; see :func:`nt_xent_loss`.

    Shapes: ``z1``, ``z2`` ``(N, D)`` projections of two views of the same N images.

    Args:
        temperature: ``τ > 0``.
        gather_distributed: under ``torch.distributed``, use every rank's projections as negatives.
    """

    def __init__(self, temperature: float = 0.5, gather_distributed: bool = False) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.gather_distributed = gather_distributed

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return nt_xent_loss(z1, z2, self.temperature, gather_distributed=self.gather_distributed)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather_distributed={self.gather_distributed}"


class InfoNCELoss(nn.Module):
    """MoCo's InfoNCE [1]; see :func:`info_nce_loss`.

    Shapes: ``query``, ``key`` ``(N, D)``; ``queue`` optional ``(K, D)``.

    Args:
        temperature: ``τ > 0``.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def forward(self, query: Tensor, key: Tensor, queue: Tensor | None = None) -> Tensor:
        return info_nce_loss(query, key, queue, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class KeyQueue(nn.Module):
    """MoCo's dictionary [1]: a FIFO queue of the ``size`` most recent L2-normalised keys.

    Initialised, as MoCo, with random normal vectors, L2-normalised. :meth:`enqueue` overwrites the
    oldest keys, whatever the batch size (MoCo asserts ``size % B == 0``; here a batch wraps around the
    end, and a batch larger than the queue keeps its newest ``size`` keys). The keys and the pointer are
    persistent buffers, so a checkpoint resumes with the same queue.

    Use: ``loss = info_nce_loss(q, k, queue.keys)``, then ``queue.enqueue(gather_keys(k))`` — the queue
    is read before the batch's own keys enter it. Under DDP every rank holds a queue: enqueue the keys
    gathered from every rank (:func:`gather_keys`) so that the queues stay identical.

    Args:
        dim: ``D``, the key dimension.
        size: ``K``, the number of keys kept.

    Buffers:
        keys: ``(K, D)``.
        ptr: long scalar, the row the next key goes to (= the oldest key).
    """

    keys: Tensor
    ptr: Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if dim < 1 or size < 1:
            raise ValueError(f"dim and size must be >= 1, got dim={dim}, size={size}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @property
    def dim(self) -> int:
        return self.keys.shape[1]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Writes a batch of keys (detached, L2-normalised) over the oldest ones.

        Args:
            keys: ``(B, D)``, in order (the last one the newest); gathered from every rank under DDP.
        """
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must be (B, {self.dim}), got {tuple(keys.shape)}")
        keys = keys.detach()[-self.size :]  # a batch longer than the queue: only its newest keys survive
        rows = (self.ptr + torch.arange(keys.shape[0], device=self.ptr.device)) % self.size  # (B,)
        self.keys.index_copy_(0, rows.to(self.keys.device), F.normalize(_upcast(keys), dim=1).to(self.keys))
        self.ptr.copy_((self.ptr + keys.shape[0]) % self.size)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}"
