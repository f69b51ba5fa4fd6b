"""MobileSAM-style encoder distillation: the loss terms, what is frozen, what is saved."""

import pytest
import torch

from anydistill.config import OptimConfig, PromptConfig
from anydistill.methods.sam_distill import SamEncoderDistillModule, random_points
from anydistill.models import build_model

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(model, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    grid = SIZE // 16
    feat = torch.randn(b, model.prompt_encoder.embed_dim, grid, grid, generator=g)
    return {"image": images, "input_size": torch.tensor([[SIZE, SIZE], [40, SIZE]])[:b], "feat": feat}


def test_random_points_lie_inside_each_unpadded_image():
    sizes = torch.tensor([[10, 30], [25, 5]])  # (h, w)
    pts = random_points(sizes, 500, torch.Generator().manual_seed(0))  # (2, 500, 2) (x, y)
    for b, (h, w) in enumerate(sizes.tolist()):
        assert pts[b, :, 0].min() == 0 and pts[b, :, 0].max() == w - 1  # integer pixel indices
        assert pts[b, :, 1].min() == 0 and pts[b, :, 1].max() == h - 1
        assert torch.equal(pts, pts.floor())


def test_embedding_loss_is_the_mse_to_the_cached_embedding_and_only_the_encoder_learns():
    torch.manual_seed(0)
    model = build_model("sam_tiny", img_size=SIZE)
    module = SamEncoderDistillModule(model, optim=OptimConfig(lr=0.001))
    module.log_dict = module.log = lambda *a, **k: None  # no trainer attached
    batch = _batch(model)
    loss = module.training_step(batch, 0)
    from anydistill.promptable.batched import embed_images

    with torch.no_grad():
        expected = ((embed_images(model, batch["image"], batch["input_size"]) - batch["feat"]) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.image_encoder.parameters() if p.requires_grad)
    assert not any(p.requires_grad for p in model.mask_decoder.parameters())
    assert not any(p.requires_grad for p in model.prompt_encoder.parameters())


def test_mask_loss_targets_the_teachers_masks_from_the_cached_embedding():
    """Student embedding == cached embedding: the student's masks are the teacher's, so the loss is
    that of logits against their own binarisation, below the loss of an unrelated embedding."""
    torch.manual_seed(0)
    model = build_model("sam_tiny", img_size=SIZE)
    module = SamEncoderDistillModule(model, PromptConfig(embed_weight=0.0, mask_weight=1.0, mask_points=6))
    batch = _batch(model)
    feat, sizes = batch["feat"], batch["input_size"]
    torch.manual_seed(1)
    same = module.mask_loss(feat, feat, sizes)
    torch.manual_seed(1)  # the same prompts
    other = module.mask_loss(torch.randn_like(feat) * 3, feat, sizes)
    assert same < other


def test_mask_loss_trains_the_encoder_through_the_frozen_decoder():
    torch.manual_seed(0)
    model = build_model("sam_tiny", img_size=SIZE)
    module = SamEncoderDistillModule(model, PromptConfig(embed_weight=0.0, mask_weight=1.0, mask_points=3))
    module.log_dict = module.log = lambda *a, **k: None
    loss = module.training_step(_batch(model), 0)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in model.image_encoder.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_finetuned_decoder_keeps_a_frozen_teacher_copy_out_of_the_checkpoint():
    torch.manual_seed(0)
    model = build_model("sam_tiny", img_size=SIZE)
    module = SamEncoderDistillModule(model, PromptConfig(mask_weight=1.0, finetune_decoder=True))
    assert any(p.requires_grad for p in model.mask_decoder.parameters())
    assert module.teacher_head is not None and not any(
        p.requires_grad for p in module.teacher_head.parameters()
    )
    state = module.state_dict()
    assert not any(k.startswith("teacher_head.") for k in state)
    with torch.no_grad():  # the student's decoder drifts; the teacher copy must not
        next(model.mask_decoder.parameters()).add_(1.0)
    module.load_state_dict(state)  # strict, although teacher_head.* is not in the state
    assert torch.equal(
        next(module.teacher_head["mask_decoder"].parameters()) + 1.0, next(model.mask_decoder.parameters())
    )


def test_bad_weights_are_refused():
    model = build_model("sam_tiny", img_size=SIZE)
    with pytest.raises(ValueError, match="not both 0"):
        SamEncoderDistillModule(model, PromptConfig(embed_weight=0.0, mask_weight=0.0))
    with pytest.raises(ValueError, match="mask_points"):
        SamEncoderDistillModule(model, PromptConfig(mask_points=0))


def _recording(module):
    """Wraps ``module._decode`` to record (decoded the student's embedding?, prompts, output) per call;
    the embeddings given to ``mask_loss`` are told apart by their first value's sign (see callers)."""
    calls = []
    original = module._decode

    def record(head, emb, prompts, index):
        out = original(head, emb, prompts, index)
        calls.append((bool(emb.flatten()[0] < 0), prompts, out.detach()))
        return out

    module._decode = record
    return calls


def test_refinement_clicks_come_from_where_student_and_teacher_disagree():
    """EdgeSAM's loop: each round adds one click in the student-vs-teacher error region (positive where
    the teacher's mask is, negative elsewhere), and both decoders see the same, growing prompts."""
    torch.manual_seed(0)
    model = build_model("sam_tiny", img_size=SIZE)
    module = SamEncoderDistillModule(
        model, PromptConfig(embed_weight=0.0, mask_weight=1.0, mask_points=5, mask_rounds=3, p_box=0.0)
    )
    batch = _batch(model)
    calls = _recording(module)
    student_emb = torch.randn_like(batch["feat"])  # far from the teacher: masks disagree
    teacher_emb = batch["feat"]
    student_emb.view(-1)[0], teacher_emb.view(-1)[0] = -1.0, 1.0  # tells the recorder which is which
    module.mask_loss(student_emb, teacher_emb, batch["input_size"])
    assert len(calls) == 2 * 4  # teacher then student, 1 + 3 rounds
    scale = SIZE / calls[0][2].shape[-1]
    for r in range(4):
        (t_is_student, t_prompts, _), (s_is_student, s_prompts, _) = calls[2 * r], calls[2 * r + 1]
        assert not t_is_student and s_is_student
        assert t_prompts is s_prompts and t_prompts.coords.shape[1] == 1 + r
        if r == 0:
            continue
        prev_target = calls[2 * (r - 1)][2][:, 0] > 0
        prev_pred = calls[2 * (r - 1) + 1][2][:, 0] > 0
        click = t_prompts.coords[:, -1]  # (N, 2) (x, y) input pixels
        label = t_prompts.labels[:, -1]
        cx, cy = (click[:, 0] // scale).long(), (click[:, 1] // scale).long()
        rows = torch.arange(click.shape[0])
        wrong = prev_pred[rows, cy, cx] != prev_target[rows, cy, cx]
        has_error = (prev_pred != prev_target).flatten(1).any(dim=1)
        assert torch.equal(wrong, has_error)  # the click is on an error cell whenever there is one
        assert torch.equal(label[has_error] == 1, prev_target[rows, cy, cx][has_error])


def test_box_prompts_are_the_boxes_of_the_teachers_masks():
    torch.manual_seed(0)
    model = build_model("sam_tiny", img_size=SIZE)
    module = SamEncoderDistillModule(
        model,
        PromptConfig(
            embed_weight=0.0, mask_weight=1.0, mask_points=6, mask_rounds=0, p_box=1.0, box_noise_std=0.0
        ),
    )
    batch = _batch(model)
    calls = _recording(module)
    module.mask_loss(batch["feat"], batch["feat"], batch["input_size"])
    seed = calls[0][2][:, 0] > 0  # the teacher's mask for the random click
    prompts = calls[1][1]
    assert len(calls) == 3 and torch.equal(prompts.has_box, seed.flatten(1).any(dim=1))
    scale = SIZE / seed.shape[-1]
    for i in torch.nonzero(prompts.has_box).flatten().tolist():
        ys, xs = torch.nonzero(seed[i], as_tuple=True)
        expected = torch.tensor(
            [xs.min() * scale, ys.min() * scale, xs.max() * scale + scale - 1, ys.max() * scale + scale - 1]
        )
        h, w = batch["input_size"][i // 6].tolist()
        expected = torch.minimum(expected, torch.tensor([w - 1, h - 1, w - 1, h - 1]).float())
        assert torch.allclose(prompts.boxes[i], expected)
        assert prompts.labels[i, 0] == -1  # the click is replaced by the box
