"""Tests of the self-supervised losses (NT-Xent, InfoNCE and its key queue, DINO, MAE) and CLIP's loss:
parity with lightly where it has the loss, otherwise independent loop references written here."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightly.loss.dino_loss import DINOLoss as LightlyDINOLoss
from lightly.loss.ntx_ent_loss import NTXentLoss as LightlyNTXentLoss

import anydistill.losses.contrastive as contrastive
from anydistill.losses import (
    CLIPLoss,
    DINOLoss,
    InfoNCELoss,
    KeyQueue,
    MAELoss,
    NTXentLoss,
    clip_loss,
    dino_loss,
    gather_keys,
    info_nce_loss,
    mae_loss,
    nt_xent_loss,
    patchify,
    unpatchify,
)


def _randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _logsumexp(v: list[float] | np.ndarray) -> float:
    v = np.asarray(v, dtype=np.float64)
    return float(v.max() + np.log(np.exp(v - v.max()).sum()))


# ---------------------------------------------------------------- NT-Xent (SimCLR)


def _np_nt_xent(z1: np.ndarray, z2: np.ndarray, t: float, anchors: list[int] | None = None) -> float:
    """Mean over the anchors (rows of [z1; z2], all by default) of −log softmax of the other view, every
    other row a negative, by an explicit loop."""
    u = _unit(np.concatenate([z1, z2]))
    n = len(z1)
    total = 0.0
    anchors = list(range(2 * n)) if anchors is None else anchors
    for i in anchors:
        positive = (i + n) % (2 * n)
        logits = {k: float(u[i] @ u[k]) / t for k in range(2 * n) if k != i}
        total -= logits[positive] - _logsumexp(list(logits.values()))
    return total / len(anchors)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_lightly_and_a_loop(temperature: float) -> None:
    z1, z2 = _randn(6, 5, seed=0), _randn(6, 5, seed=1, scale=3.0)
    out = nt_xent_loss(z1, z2, temperature)
    ref = LightlyNTXentLoss(temperature, memory_bank_size=0)(z1, z2)
    assert out.item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-12)
    assert out.item() == pytest.approx(_np_nt_xent(z1.numpy(), z2.numpy(), temperature), rel=1e-10)
    # symmetric in the two views; scale-free (normalised inside)
    assert nt_xent_loss(z2, z1, temperature).item() == pytest.approx(out.item(), rel=1e-12)
    assert nt_xent_loss(4 * z1, 0.5 * z2, temperature).item() == pytest.approx(out.item(), rel=1e-12)


def test_nt_xent_gradients_match_lightly() -> None:
    z1 = _randn(5, 4, seed=2).requires_grad_(True)
    z2 = _randn(5, 4, seed=3).requires_grad_(True)
    NTXentLoss(temperature=0.3)(z1, z2).backward()
    l1, l2 = z1.detach().clone().requires_grad_(True), z2.detach().clone().requires_grad_(True)
    LightlyNTXentLoss(temperature=0.3)(l1, l2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
    torch.testing.assert_close(z1.grad, l1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(z2.grad, l2.grad, rtol=1e-10, atol=1e-12)


def test_nt_xent_two_samples_and_aligned_views() -> None:
    # N = 2: each anchor has exactly 2 negatives
    z1, z2 = _randn(2, 3, seed=4), _randn(2, 3, seed=5)
    assert nt_xent_loss(z1, z2).item() == pytest.approx(_np_nt_xent(z1.numpy(), z2.numpy(), 0.5), rel=1e-12)
    # identical views of orthogonal samples: log(e^{1/τ} + 2) − 1/τ for every anchor
    e = torch.eye(2, 3, dtype=torch.float64)
    assert nt_xent_loss(e, e, 0.5).item() == pytest.approx(math.log(math.exp(2) + 2) - 2, rel=1e-12)


class _FakeGather:
    """Stands in for the autograd all_gather of a 2-rank run: returns this rank's rows and the other
    rank's (normalised) rows of the same view, in rank order."""

    def __init__(self, rank: int, local: tuple[torch.Tensor, torch.Tensor], other: tuple[torch.Tensor, ...]):
        self.rank = rank
        self.local = [F.normalize(x, dim=1) for x in local]
        self.other = [F.normalize(x, dim=1) for x in other]

    def apply(self, u: torch.Tensor) -> torch.Tensor:
        view = 0 if torch.allclose(u, self.local[0]) else 1
        assert torch.allclose(u, self.local[view])
        parts = [u, self.other[view]] if self.rank == 0 else [self.other[view], u]
        return torch.cat(parts)


@pytest.mark.parametrize("rank", [0, 1])
def test_nt_xent_gathered_negatives_use_the_global_batch(monkeypatch: pytest.MonkeyPatch, rank: int) -> None:
    """Two ranks of 3 samples: this rank's 6 anchors against the 12 projections of both ranks."""
    z1, z2 = _randn(6, 4, seed=6), _randn(6, 4, seed=7)  # the global batch, rank r holds rows 3r..3r+2
    mine, theirs = slice(3 * rank, 3 * rank + 3), slice(3 - 3 * rank, 6 - 3 * rank)
    fake = _FakeGather(rank, (z1[mine], z2[mine]), (z1[theirs], z2[theirs]))
    monkeypatch.setattr(contrastive, "_rank_and_world", lambda: (rank, 2))
    monkeypatch.setattr(contrastive, "_AllGatherWithGrad", fake)
    out = nt_xent_loss(z1[mine], z2[mine], 0.5, gather_distributed=True)
    anchors = [3 * rank + i for i in range(3)] + [6 + 3 * rank + i for i in range(3)]
    expected = _np_nt_xent(z1.numpy(), z2.numpy(), 0.5, anchors)
    assert out.item() == pytest.approx(expected, rel=1e-12)
    # without gathering, only the local batch: a different value
    local = nt_xent_loss(z1[mine], z2[mine], 0.5, gather_distributed=False)
    assert local.item() == pytest.approx(_np_nt_xent(z1[mine].numpy(), z2[mine].numpy(), 0.5), rel=1e-12)
    assert local.item() != pytest.approx(out.item(), rel=1e-3)
    # a batch of 1 per rank still has the other rank's 2 projections as negatives
    one = _FakeGather(rank, (z1[:1], z2[:1]), (z1[1:2], z2[1:2]))
    monkeypatch.setattr(contrastive, "_AllGatherWithGrad", one)
    assert torch.isfinite(nt_xent_loss(z1[:1], z2[:1], gather_distributed=True))


def test_nt_xent_validation_and_half_precision() -> None:
    with pytest.raises(ValueError, match="batch of 1"):
        nt_xent_loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="same shape"):
        nt_xent_loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        nt_xent_loss(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=0.0)
    z1, z2 = _randn(8, 16, seed=8), _randn(8, 16, seed=9)
    ref = nt_xent_loss(z1, z2, 0.1)
    for dtype in (torch.float16, torch.bfloat16):
        out = nt_xent_loss(z1.to(dtype), z2.to(dtype), 0.1)
        assert out.dtype == torch.float32 and torch.isfinite(out)
        assert out.item() == pytest.approx(ref.item(), rel=2e-2)


# ---------------------------------------------------------------- InfoNCE (MoCo) and the key queue


def _np_info_nce(q: np.ndarray, k: np.ndarray, queue: np.ndarray | None, t: float) -> float:
    q, k = _unit(q), _unit(k)
    total = 0.0
    for n in range(len(q)):
        negatives = [k[j] for j in range(len(k)) if j != n] if queue is None else list(_unit(queue))
        logits = [float(q[n] @ k[n]) / t] + [float(q[n] @ m) / t for m in negatives]
        total -= logits[0] - _logsumexp(logits)
    return total / len(q)


def test_info_nce_matches_a_loop_with_and_without_queue() -> None:
    q, k, queue = _randn(4, 6, seed=10), _randn(4, 6, seed=11), _randn(9, 6, seed=12, scale=2.0)
    for t in (0.07, 0.2, 1.0):
        out = info_nce_loss(q, k, queue, t)
        assert out.item() == pytest.approx(_np_info_nce(q.numpy(), k.numpy(), queue.numpy(), t), rel=1e-10)
        in_batch = info_nce_loss(q, k, None, t)
        assert in_batch.item() == pytest.approx(_np_info_nce(q.numpy(), k.numpy(), None, t), rel=1e-10)
    assert InfoNCELoss()(q, k, queue).item() == pytest.approx(info_nce_loss(q, k, queue, 0.2).item())
    assert InfoNCELoss(0.07)(q, k).item() == pytest.approx(info_nce_loss(q, k, None, 0.07).item())


def test_info_nce_and_queue_match_lightly_memory_bank_over_steps() -> None:
    """lightly's NTXentLoss with a memory bank is MoCo's loss when the bank size is a multiple of the
    batch (its bank drops the end of a batch that does not fit, so other sizes are checked against the
    loop reference instead): three steps, the bank wrapping around once."""
    torch.manual_seed(0)
    ref = LightlyNTXentLoss(temperature=0.2, memory_bank_size=(8, 6))  # a float32 bank
    queue = KeyQueue(dim=6, size=8)
    queue.keys.copy_(ref.memory_bank.bank)  # the same random initial dictionary
    for step in range(3):
        q = _randn(4, 6, seed=20 + step).float().requires_grad_(True)
        k = _randn(4, 6, seed=30 + step).float()
        expected = ref(q, k)  # reads the bank, then enqueues k (q requires grad)
        out = info_nce_loss(q, k, queue.keys, 0.2)
        assert out.item() == pytest.approx(expected.item(), rel=1e-6)
        reference = _np_info_nce(
            q.detach().double().numpy(), k.double().numpy(), queue.keys.double().numpy(), 0.2
        )
        assert out.item() == pytest.approx(reference, rel=1e-5)
        queue.enqueue(k)
        torch.testing.assert_close(queue.keys, ref.memory_bank.bank, rtol=0, atol=1e-6)


def test_info_nce_gradient_reaches_only_the_query() -> None:
    q = _randn(3, 5, seed=13).requires_grad_(True)
    k = _randn(3, 5, seed=14).requires_grad_(True)
    queue = _randn(7, 5, seed=15).requires_grad_(True)
    info_nce_loss(q, k, queue).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None
    info_nce_loss(q, k).backward()
    assert k.grad is None


def test_info_nce_validation_and_half_precision() -> None:
    q = torch.randn(3, 5)
    with pytest.raises(ValueError, match="batch of 2"):
        info_nce_loss(q[:1], q[:1])
    info_nce_loss(q[:1], q[:1], torch.randn(4, 5))  # one query with a queue is fine
    with pytest.raises(ValueError, match="queue"):
        info_nce_loss(q, q, torch.randn(4, 6))
    with pytest.raises(ValueError, match="queue"):
        info_nce_loss(q, q, torch.randn(0, 5))
    with pytest.raises(ValueError, match="same shape"):
        info_nce_loss(q, torch.randn(4, 5))
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(-0.1)
    qd, kd, queue = _randn(6, 8, seed=16), _randn(6, 8, seed=17), _randn(16, 8, seed=18)
    ref = info_nce_loss(qd, kd, queue)
    for dtype in (torch.float16, torch.bfloat16):
        out = info_nce_loss(qd.to(dtype), kd.to(dtype), queue.to(dtype))
        assert out.dtype == torch.float32 and out.item() == pytest.approx(ref.item(), rel=2e-2)


def test_key_queue_replaces_exactly_the_oldest_keys() -> None:
    queue = KeyQueue(dim=8, size=5)
    initial = queue.keys.clone()
    torch.testing.assert_close(queue.keys.norm(dim=1), torch.ones(5))  # L2-normalised at init
    assert queue.keys.std() > 0.1  # random, not a constant
    e = torch.eye(8)  # distinguishable keys: key i is the unit vector e_i
    a, b, c, d = e[0:2], e[2:4], e[4:6], e[6:8]
    queue.enqueue(a)
    queue.enqueue(b)
    torch.testing.assert_close(queue.keys[4], initial[4])  # the last initial key is still there
    queue.enqueue(c)  # c0 takes the last initial slot, c1 wraps around over a0 (the oldest)
    torch.testing.assert_close(queue.keys, torch.stack([e[5], e[1], e[2], e[3], e[4]]))
    assert queue.ptr.item() == 1
    queue.enqueue(d)  # then a1 and b0 go
    torch.testing.assert_close(queue.keys, torch.stack([e[5], e[6], e[7], e[3], e[4]]))
    assert queue.ptr.item() == 3
    # a batch longer than the queue keeps its newest 5 keys, the oldest of them at ptr
    queue.enqueue(e[0:7])  # e_2 .. e_6 written at rows 3, 4, 0, 1, 2
    torch.testing.assert_close(queue.keys, torch.stack([e[4], e[5], e[6], e[2], e[3]]))
    assert queue.ptr.item() == 3
    queue.enqueue(e[7:8])  # the next key replaces the oldest, e_2
    torch.testing.assert_close(queue.keys, torch.stack([e[4], e[5], e[6], e[7], e[3]]))


def test_key_queue_detaches_normalises_and_persists() -> None:
    queue = KeyQueue(dim=4, size=6)
    keys = (3 * torch.randn(4, 4)).requires_grad_(True)
    queue.enqueue(keys)
    assert not queue.keys.requires_grad
    torch.testing.assert_close(queue.keys[:4], F.normalize(keys.detach(), dim=1))
    state = queue.state_dict()
    assert set(state) == {"keys", "ptr"}
    resumed = KeyQueue(dim=4, size=6)
    assert not torch.equal(resumed.keys, queue.keys)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.keys, queue.keys)
    assert resumed.ptr.item() == queue.ptr.item() == 4 and resumed.ptr.dtype == torch.long
    more = torch.randn(3, 4)
    queue.enqueue(more)
    resumed.enqueue(more)
    torch.testing.assert_close(resumed.keys, queue.keys)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        queue.enqueue(torch.randn(2, 5))
    with pytest.raises(ValueError, match="size"):
        KeyQueue(dim=4, size=0)
    # outside torch.distributed, gathering is the identity, without gradient
    x = torch.randn(3, 4, requires_grad=True)
    gathered = gather_keys(x)
    assert torch.equal(gathered, x.detach()) and not gathered.requires_grad


# ---------------------------------------------------------------- DINO


def _np_dino(
    student: list[np.ndarray], teacher: list[np.ndarray], center: np.ndarray, tt: float, ts: float
) -> float:
    total, terms = 0.0, 0
    for i, t in enumerate(teacher):
        logits_t = (t - center) / tt
        p = np.exp(logits_t - logits_t.max(-1, keepdims=True))
        p = p / p.sum(-1, keepdims=True)
        for v, s in enumerate(student):
            if v == i:
                continue
            per_sample = [-(p[b] * (s[b] / ts - _logsumexp(s[b] / ts))).sum() for b in range(s.shape[0])]
            total += float(np.mean(per_sample))
            terms += 1
    return total / terms


def _dino_views(step: int, b: int = 4, k: int = 16, n_local: int = 3) -> tuple[list, list]:
    teacher = [_randn(b, k, seed=100 * step + i, scale=2.0) + 0.5 * i for i in range(2)]
    student = [_randn(b, k, seed=100 * step + 10 + i) for i in range(2 + n_local)]
    return student, teacher


def test_dino_matches_lightly_loss_and_center_over_steps() -> None:
    ours = DINOLoss(16, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=3).double()
    ref = LightlyDINOLoss(16, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3)
    for step in range(5):  # epochs 0..4: through the warm-up and past it
        student, teacher = _dino_views(step)
        out = ours(student, teacher, epoch=step)
        expected = ref(teacher, student, epoch=step)  # lightly takes the teacher first
        # lightly's temperatures are float32 (torch.linspace / torch.tensor): 1e-8 relative
        assert out.item() == pytest.approx(expected.item(), rel=1e-7)
        torch.testing.assert_close(ours.center, ref.center.reshape(1, 16).double(), rtol=1e-9, atol=1e-12)
    assert ours.center.abs().sum() > 0


def test_dino_matches_a_loop_over_view_pairs() -> None:
    student, teacher = _dino_views(7, n_local=2)
    center = _randn(1, 16, seed=8, scale=0.3)
    out = dino_loss(student, teacher, center, teacher_temp=0.05, student_temp=0.2)
    expected = _np_dino([s.numpy() for s in student], [t.numpy() for t in teacher], center.numpy(), 0.05, 0.2)
    assert out.item() == pytest.approx(expected, rel=1e-10)
    # only global views: the 2 cross pairs; 3 teacher views against 2 student views: 4 pairs
    out2 = dino_loss(student[:2], teacher, center, 0.05, 0.2)
    expected2 = _np_dino(
        [s.numpy() for s in student[:2]], [t.numpy() for t in teacher], center.numpy(), 0.05, 0.2
    )
    assert out2.item() == pytest.approx(expected2, rel=1e-10)
    three = [*teacher, student[3]]
    out3 = dino_loss(student[:2], three, center, 0.05, 0.2)
    expected3 = _np_dino(
        [s.numpy() for s in student[:2]], [t.numpy() for t in three], center.numpy(), 0.05, 0.2
    )
    assert out3.item() == pytest.approx(expected3, rel=1e-10)


def test_dino_center_is_the_hand_ema_and_gets_no_gradient() -> None:
    loss_fn = DINOLoss(16, center_momentum=0.8).double()
    expected_center = np.zeros((1, 16))
    for step in range(3):
        student, teacher = _dino_views(step)
        student = [s.requires_grad_(True) for s in student]
        teacher = [t.requires_grad_(True) for t in teacher]
        # the loss uses the centre from before this step's update
        expected = _np_dino([s.detach().numpy() for s in student], [t.detach().numpy() for t in teacher],
                            expected_center, 0.04, 0.1)  # fmt: skip
        out = loss_fn(student, teacher)
        assert out.item() == pytest.approx(expected, rel=1e-10)
        batch_mean = np.concatenate([t.detach().numpy() for t in teacher]).mean(axis=0, keepdims=True)
        expected_center = 0.8 * expected_center + 0.2 * batch_mean
        np.testing.assert_allclose(loss_fn.center.numpy(), expected_center, rtol=1e-12, atol=1e-14)
        out.backward()  # after the in-place centre update
        assert all(t.grad is None for t in teacher)
        assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert not loss_fn.center.requires_grad and loss_fn.center.grad is None
    # the centre is saved with a checkpoint
    resumed = DINOLoss(16).double()
    resumed.load_state_dict(loss_fn.state_dict())
    torch.testing.assert_close(resumed.center, loss_fn.center)


def test_dino_teacher_temperature_warmup() -> None:
    warm = DINOLoss(8, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=30)
    official = np.concatenate([np.linspace(0.04, 0.07, 30), np.full(70, 0.07)])  # DINO's schedule
    for epoch in (0, 1, 7, 15, 28, 29, 30, 31, 99):
        assert warm.teacher_temperature(epoch) == pytest.approx(official[epoch], rel=1e-12)
    assert warm.teacher_temperature(1.5) == pytest.approx((official[1] + official[2]) / 2, rel=1e-12)
    assert warm.teacher_temperature(40.5) == pytest.approx(0.07, rel=1e-12)
    one = DINOLoss(8, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=1)
    assert [one.teacher_temperature(e) for e in (0, 1, 2)] == pytest.approx([0.04, 0.07, 0.07])
    none = DINOLoss(8, teacher_temp=0.07, warmup_teacher_temp=0.04)  # no warm-up: τ_t from epoch 0
    assert none.teacher_temperature(0) == 0.07
    # the epoch reaches the loss: epoch 0 of the warm-up sharpens with 0.04
    student, teacher = _dino_views(1, k=8)
    center = torch.zeros(1, 8, dtype=torch.float64)
    assert warm.double()(student, teacher, epoch=0).item() == pytest.approx(
        dino_loss(student, teacher, center, 0.04).item(), rel=1e-12
    )


def test_dino_validation_and_half_precision() -> None:
    loss_fn = DINOLoss(8)
    views = [torch.randn(4, 8) for _ in range(3)]
    with pytest.raises(ValueError, match="pair"):
        loss_fn(views[:1], views[:1])
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        loss_fn(views, [torch.randn(4, 9)])
    with pytest.raises(ValueError, match="one shape"):
        loss_fn([views[0], torch.randn(3, 8)], views[:1])
    with pytest.raises(ValueError, match="batch"):
        loss_fn(views, [torch.randn(5, 8)])
    with pytest.raises(ValueError, match="list"):
        loss_fn(torch.randn(4, 8), views[:1])
    with pytest.raises(ValueError, match="epoch"):
        loss_fn(views, views[:2], epoch=-1)
    with pytest.raises(ValueError, match="center_momentum"):
        DINOLoss(8, center_momentum=1.5)
    assert loss_fn.center.abs().sum() == 0  # refused calls do not move the centre
    student = [_randn(4, 32, seed=i, scale=3.0) for i in range(4)]
    teacher = [_randn(4, 32, seed=10 + i, scale=3.0) for i in range(2)]
    ref = DINOLoss(32).double()(student, teacher)
    for dtype in (torch.float16, torch.bfloat16):
        half = DINOLoss(32)
        out = half([s.to(dtype) for s in student], [t.to(dtype) for t in teacher])
        assert out.dtype == torch.float32 and out.item() == pytest.approx(ref.item(), rel=3e-2)
        assert half.center.dtype == torch.float32 and torch.isfinite(half.center).all()


# ---------------------------------------------------------------- MAE


def _official_patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """facebookresearch/mae models_mae.py's patchify (square, 3-channel images)."""
    h = w = imgs.shape[2] // p
    x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(shape=(imgs.shape[0], h * w, p**2 * 3))


def test_patchify_matches_the_official_order_and_a_loop() -> None:
    imgs = _randn(2, 3, 8, 8, seed=40)
    torch.testing.assert_close(patchify(imgs, 4), _official_patchify(imgs, 4), rtol=0, atol=0)
    x = _randn(2, 2, 6, 9, seed=41)  # non-square, 2 channels
    p = 3
    patches = patchify(x, p)
    assert patches.shape == (2, 6, 18)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                for pp in range(p):
                    for qq in range(p):
                        for c in range(2):
                            assert (
                                patches[b, i * 3 + j, (pp * p + qq) * 2 + c]
                                == x[b, c, i * p + pp, j * p + qq]
                            )
    torch.testing.assert_close(unpatchify(patches, p, size=(6, 9)), x, rtol=0, atol=0)
    torch.testing.assert_close(unpatchify(patchify(imgs, 2), 2), imgs, rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiple"):
        patchify(x, 4)
    with pytest.raises(ValueError, match="tile"):
        unpatchify(patches, p)  # 6 patches are not a square grid


def _np_mae(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, norm_pix: bool) -> float:
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        for l in range(pred.shape[1]):  # noqa: E741
            if not mask[b, l]:
                continue
            t = target[b, l]
            if norm_pix:
                t = (t - t.mean()) / math.sqrt(t.var(ddof=1) + 1e-6)
            total += float(np.mean((pred[b, l] - t) ** 2))
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_matches_a_loop_over_masked_patches(norm_pix: bool) -> None:
    target = patchify(_randn(2, 3, 8, 8, seed=42, scale=2.0) + 1.0, 2)  # (2, 16, 12)
    pred = _randn(2, 16, 12, seed=43)
    mask = torch.rand(2, 16, generator=torch.Generator().manual_seed(0)) < 0.75
    expected = _np_mae(pred.numpy(), target.numpy(), mask.numpy(), norm_pix)
    assert mae_loss(pred, target, mask, norm_pix).item() == pytest.approx(expected, rel=1e-10)
    assert mae_loss(pred, target, mask.double(), norm_pix).item() == pytest.approx(expected, rel=1e-10)
    assert MAELoss(norm_pix)(pred, target, mask).item() == pytest.approx(expected, rel=1e-10)
    # the visible patches do not count: changing their prediction changes nothing
    other = pred.clone()
    other[~mask] += 5.0
    assert mae_loss(other, target, mask, norm_pix).item() == pytest.approx(expected, rel=1e-10)


def test_mae_loss_gradients_reach_only_masked_predictions() -> None:
    target = _randn(2, 4, 12, seed=44).requires_grad_(True)
    pred = _randn(2, 4, 12, seed=45).requires_grad_(True)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]])
    mae_loss(pred, target, mask).backward()
    assert target.grad is None
    per_patch = pred.grad.abs().sum(dim=-1)  # (B, L)
    assert (per_patch[mask == 1] > 0).all() and (per_patch[mask == 0] == 0).all()
    # a perfect normalised prediction gives 0
    t = target.detach()
    perfect = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
    assert mae_loss(perfect, t, mask).item() == pytest.approx(0.0, abs=1e-20)
    assert mae_loss(t, t, mask, norm_pix=False).item() == 0.0


def test_mae_loss_validation_and_half_precision() -> None:
    pred, target = torch.randn(2, 4, 12), torch.randn(2, 4, 12)
    with pytest.raises(ValueError, match="no masked patch"):
        mae_loss(pred, target, torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="same shape"):
        mae_loss(pred, target[:, :3], torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"mask must be \(B, L\)"):
        mae_loss(pred, target, torch.ones(2, 5))
    with pytest.raises(ValueError, match="variance"):
        mae_loss(pred[..., :1], target[..., :1], torch.ones(2, 4))
    mae_loss(pred[..., :1], target[..., :1], torch.ones(2, 4), norm_pix=False)
    pd, td = _randn(2, 8, 48, seed=46), _randn(2, 8, 48, seed=47, scale=3.0)
    mask = torch.ones(2, 8)
    ref = mae_loss(pd, td, mask)
    for dtype in (torch.float16, torch.bfloat16):
        out = mae_loss(pd.to(dtype), td.to(dtype), mask.to(dtype))
        assert out.dtype == torch.float32 and out.item() == pytest.approx(ref.item(), rel=2e-2)


# ---------------------------------------------------------------- CLIP


def _np_clip(image: np.ndarray, text: np.ndarray, s: float) -> float:
    i, t, scale = _unit(image), _unit(text), math.exp(s)
    n = len(i)
    per_image = per_text = 0.0
    for a in range(n):
        row = [scale * float(i[a] @ t[b]) for b in range(n)]  # image a against every text
        per_image -= row[a] - _logsumexp(row)
        col = [scale * float(t[a] @ i[b]) for b in range(n)]  # text a against every image
        per_text -= col[a] - _logsumexp(col)
    return (per_image / n + per_text / n) / 2


def test_clip_loss_matches_a_loop() -> None:
    image, text = _randn(5, 8, seed=50), _randn(5, 8, seed=51)
    for s in (0.0, math.log(1 / 0.07), 2.0):
        expected = _np_clip(image.numpy(), text.numpy(), s)
        assert clip_loss(image, text, s).item() == pytest.approx(expected, rel=1e-10)
        assert clip_loss(image, text, torch.tensor(s, dtype=torch.float64)).item() == pytest.approx(
            expected, rel=1e-10
        )
    # the two directions differ in general: a one-directional loss would not match
    i = F.normalize(image, dim=1)
    t = F.normalize(text, dim=1)
    logits = 2.0 * i @ t.T
    one_way = F.cross_entropy(logits, torch.arange(5)).item()
    assert one_way != pytest.approx(clip_loss(image, text, math.log(2.0)).item(), rel=1e-3)


def test_clip_module_temperature_parameter_and_clip() -> None:
    image = _randn(4, 6, seed=52).requires_grad_(True)
    text = _randn(4, 6, seed=53).requires_grad_(True)
    module = CLIPLoss().double()
    assert module.logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-7)
    out = module(image, text)
    assert out.item() == pytest.approx(
        _np_clip(image.detach().numpy(), text.detach().numpy(), math.log(1 / 0.07)), rel=1e-6
    )
    out.backward()
    assert module.logit_scale.grad is not None and module.logit_scale.grad.abs() > 0
    assert image.grad.abs().sum() > 0 and text.grad.abs().sum() > 0
    # beyond the cap exp(s) = 100 is used, and s gets no gradient
    with torch.no_grad():
        module.logit_scale.fill_(math.log(500.0))
    module.zero_grad()
    capped = module(image, text)
    assert capped.item() == pytest.approx(
        _np_clip(image.detach().numpy(), text.detach().numpy(), math.log(100.0)), rel=1e-10
    )
    capped.backward()
    assert module.logit_scale.grad.item() == 0.0
    small = CLIPLoss(init_temperature=0.5, max_logit_scale=10.0).double()
    assert small.logit_scale.item() == pytest.approx(math.log(2.0))
    with torch.no_grad():
        small.logit_scale.fill_(5.0)
    assert small(image, text).item() == pytest.approx(
        clip_loss(image, text, math.log(10.0)).item(), rel=1e-12
    )


def test_clip_validation_and_half_precision() -> None:
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(torch.randn(3, 4), torch.randn(4, 4), 1.0)
    with pytest.raises(ValueError, match="scalar"):
        clip_loss(torch.randn(3, 4), torch.randn(3, 4), torch.ones(2))
    with pytest.raises(ValueError, match="init_temperature"):
        CLIPLoss(init_temperature=0.0)
    image, text = _randn(8, 16, seed=54), _randn(8, 16, seed=55)
    ref = clip_loss(image, text, math.log(1 / 0.07))
    for dtype in (torch.float16, torch.bfloat16):
        out = CLIPLoss()(image.to(dtype), text.to(dtype))
        assert out.dtype == torch.float32 and out.item() == pytest.approx(ref.item(), rel=3e-2)


# ---------------------------------------------------------------- two real processes (gloo)

DISTRIBUTED_SCRIPT = """
import os, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run(rank, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    from lightly.loss.dino_loss import DINOLoss as LightlyDINOLoss
    from lightly.loss.ntx_ent_loss import NTXentLoss as LightlyNTXentLoss
    from anydistill.losses import DINOLoss, KeyQueue, gather_keys, nt_xent_loss

    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    z2 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    mine = slice(3 * rank, 3 * rank + 3)
    a1, a2 = z1[mine].clone().requires_grad_(True), z2[mine].clone().requires_grad_(True)
    ours = nt_xent_loss(a1, a2, 0.5, gather_distributed=True)
    ours.backward()
    b1, b2 = z1[mine].clone().requires_grad_(True), z2[mine].clone().requires_grad_(True)
    ref = LightlyNTXentLoss(0.5, gather_distributed=True)(b1, b2)
    ref.backward()
    print(f"RANK{rank} ntxent_vs_lightly {abs(ours.item() - ref.item()):.3e}", flush=True)
    assert abs(ours.item() - ref.item()) < 1e-12
    assert torch.allclose(a1.grad, b1.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(a2.grad, b2.grad, rtol=1e-10, atol=1e-12)
    # the ranks' mean loss is the loss of the whole batch in one process; DDP's mean of the gradients is
    # its gradient
    f1, f2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    full = nt_xent_loss(f1, f2, 0.5)
    full.backward()
    mean = ours.detach().clone()
    dist.all_reduce(mean)
    assert abs(mean.item() / 2 - full.item()) < 1e-12, (mean.item() / 2, full.item())
    assert torch.allclose(a1.grad / 2, f1.grad[mine], rtol=1e-10, atol=1e-12)
    assert torch.allclose(a2.grad / 2, f2.grad[mine], rtol=1e-10, atol=1e-12)

    # keys of both ranks, in rank order, without gradient; identical queues on both ranks
    keys = torch.randn(8, 5, generator=g)
    gathered = gather_keys(keys[4 * rank : 4 * rank + 4].requires_grad_(True))
    assert torch.equal(gathered, keys) and not gathered.requires_grad
    torch.manual_seed(1)
    queue = KeyQueue(5, 12)
    queue.enqueue(gathered)
    both = [torch.empty_like(queue.keys) for _ in range(2)]
    dist.all_gather(both, queue.keys)
    assert torch.equal(both[0], both[1])

    # DINO's centre: the mean over both ranks' teacher outputs
    teacher = [torch.randn(8, 16, generator=g, dtype=torch.float64) for _ in range(2)]
    student = [torch.randn(8, 16, generator=g, dtype=torch.float64) for _ in range(4)]
    part = slice(4 * rank, 4 * rank + 4)
    loss_fn = DINOLoss(16).double()
    ref_fn = LightlyDINOLoss(16, warmup_teacher_temp_epochs=0)
    loss_fn([s[part] for s in student], [t[part] for t in teacher])
    ref_fn([t[part] for t in teacher], [s[part] for s in student])
    expected = 0.1 * torch.cat(teacher).mean(dim=0, keepdim=True)
    assert torch.allclose(loss_fn.center, expected, rtol=1e-12, atol=1e-14)
    assert torch.allclose(loss_fn.center, ref_fn.center.reshape(1, 16).double(), rtol=1e-9, atol=1e-12)
    print(f"RANK{rank} OK", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(int(sys.argv[1]),), nprocs=2)
"""


@pytest.mark.slow
def test_two_gloo_processes_gather_negatives_keys_and_centre(tmp_path: Path) -> None:
    script = tmp_path / "two_ranks.py"
    script.write_text(textwrap.dedent(DISTRIBUTED_SCRIPT))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [sys.executable, str(script), str(port)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "RANK0 OK" in done.stdout and "RANK1 OK" in done.stdout
