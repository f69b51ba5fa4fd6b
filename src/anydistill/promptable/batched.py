"""Batched SAM decoding: embed a batch of padded images in one encoder pass, and decode prompt sets
that lie on different images of the batch in as few mask-decoder calls as the decoder allows.

Shared by training (:mod:`anydistill.methods.promptable`, :mod:`anydistill.methods.sam_distill`) and
the interactive evaluation (:mod:`anydistill.eval.interactive`). Any Sam-like model works
(``image_encoder``, ``prompt_encoder``, ``mask_decoder``, ``preprocess``): ours, whose
:class:`~anydistill.models.sam.MaskDecoder` takes one image embedding per prompt set
(``accepts_batched_embeddings``), is called once for all prompt sets; segment_anything's, which repeats
one ``(1, C, h, w)`` embedding for all its prompts, once per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from anydistill.promptable.transforms import ResizeLongestSide

__all__ = [
    "decode_embedded",
    "decode_prompts",
    "decodes_batched",
    "embed_images",
    "embed_rgb_images",
    "prepare_images",
]


def prepare_images(model: nn.Module, images: Tensor, input_sizes: Tensor) -> Tensor:
    """Normalises and pads images the way the model expects (``model.preprocess`` per image: for our
    :class:`~anydistill.models.sam.Sam`, its :class:`~anydistill.preprocess.Preprocess`'s ``normalize``
    and bottom/right ``pad_batch``; segment_anything's ``Sam`` does the same).

    Args:
        images: ``(B, 3, H, W)`` uint8 or float in 0..255, each valid in its top-left ``input_sizes[b]``
            (an :class:`~anydistill.data.instances.InstanceDataset` batch), the rest padding.
        input_sizes: int ``(B, 2)`` ``(h, w)``.

    Returns:
        ``(B, 3, S, S)`` normalised, zero-padded after normalisation (as ``Sam.preprocess``).
    """
    out = []
    for img, (h, w) in zip(images, input_sizes.tolist(), strict=True):
        out.append(model.preprocess(img[None, :, :h, :w].float()))  # (1, 3, S, S)
    return torch.cat(out)


def embed_images(model: nn.Module, images: Tensor, input_sizes: Tensor) -> Tensor:
    """Image embeddings ``(B, C, h', w')`` of :func:`prepare_images`'s output (one encoder pass)."""
    return model.image_encoder(prepare_images(model, images, input_sizes))


@torch.no_grad()
def embed_rgb_images(model: nn.Module, images: Sequence[np.ndarray]) -> tuple[Tensor, list[tuple[int, int]]]:
    """Embeddings of numpy RGB images of any sizes in one image-encoder pass, each exactly as
    :meth:`~anydistill.promptable.SamPredictor.set_image` would embed it alone (same PIL resize of the
    long side to ``img_size``, same normalisation and bottom/right padding; only the batch differs).

    Args:
        images: ``B`` arrays ``(H_b, W_b, 3)`` uint8, RGB.

    Returns:
        ``(B, C, S/16, S/16)`` embeddings and the ``B`` resized input sizes ``(h, w)`` (before padding).
    """
    s = int(model.image_encoder.img_size)
    transform = ResizeLongestSide(s)
    batch = torch.zeros(len(images), 3, s, s, dtype=torch.uint8)  # (B, 3, S, S), valid top-left
    sizes: list[tuple[int, int]] = []
    for b, image in enumerate(images):
        if getattr(model, "image_format", "RGB") != "RGB":
            image = image[..., ::-1]
        resized = transform.apply_image(image)  # (h, w, 3) uint8
        h, w = resized.shape[:2]
        batch[b, :, :h, :w] = torch.from_numpy(resized).permute(2, 0, 1)  # (3, h, w)
        sizes.append((h, w))
    device = next(model.parameters()).device
    return embed_images(model, batch.to(device), torch.tensor(sizes)), sizes


def decodes_batched(model: nn.Module) -> bool:
    """Whether ``model.mask_decoder`` takes one image embedding per prompt set (``B_img == B``), which our
    :class:`~anydistill.models.sam.MaskDecoder` declares with ``accepts_batched_embeddings``;
    segment_anything's repeats a single ``(1, C, h, w)`` embedding for every prompt set."""
    return bool(getattr(model.mask_decoder, "accepts_batched_embeddings", False))


def decode_embedded(
    model: nn.Module,
    embeddings: Tensor,
    image_pe: Tensor,
    sparse: Tensor,
    dense: Tensor,
    multimask: bool,
    image_index: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The mask decoder for N embedded prompt sets, each on one image of a batch.

    With ``image_index`` and a decoder that :func:`decodes_batched`, one call on the per-prompt-set
    embeddings ``embeddings[image_index]`` ``(N, C, h', w')``; otherwise one call per image on its prompt
    sets (the outputs put back in order). Both give the same outputs: the decoder treats the N rows
    independently (attention within a row, norms and MLPs per token).

    Args:
        embeddings: ``(B, C, h', w')`` image embeddings.
        image_pe: ``(1, C, h', w')`` dense positional encoding (``prompt_encoder.get_dense_pe()``).
        sparse: ``(N, T, C)`` point / box tokens; dense: ``(N, C, h', w')`` mask-prompt embedding.
        multimask: three masks (True) or one.
        image_index: int64 ``(N,)``, the image of each prompt set; None: ``B`` is 1.

    Returns:
        ``(low_res_logits (N, M, 4h', 4w'), iou_pred (N, M))``.
    """

    def decode(emb: Tensor, sp: Tensor, de: Tensor) -> tuple[Tensor, Tensor]:
        return model.mask_decoder(
            image_embeddings=emb,
            image_pe=image_pe,
            sparse_prompt_embeddings=sp,
            dense_prompt_embeddings=de,
            multimask_output=multimask,
        )

    if image_index is None or embeddings.shape[0] == 1:
        return decode(embeddings, sparse, dense)
    if decodes_batched(model):
        # index_select, not embeddings[image_index]: the backward of advanced indexing accumulates the
        # rows that share an image with atomic float adds on CPU (index_put_ accumulate), whose order,
        # and so the gradient's last bits, changes from run to run on a busy machine; index_select's
        # backward (index_add_) adds them in index order.
        return decode(embeddings.index_select(0, image_index), sparse, dense)  # (N, C, h', w')
    rows = [torch.nonzero(image_index == b).flatten() for b in image_index.unique().tolist()]
    if len(rows) == 1:
        return decode(embeddings[image_index[:1]], sparse, dense)
    outs = [decode(embeddings[image_index[r[:1]]], sparse[r], dense[r]) for r in rows]
    inverse = torch.cat(rows).argsort()  # (N,) back to the prompt sets' order
    return torch.cat([o[0] for o in outs])[inverse], torch.cat([o[1] for o in outs])[inverse]


def decode_prompts(
    model: nn.Module,
    embedding: Tensor,
    image_pe: Tensor,
    points: tuple[Tensor, Tensor] | None,
    boxes: Tensor | None,
    mask_input: Tensor | None,
    multimask: bool,
    image_index: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Prompt encoder + mask decoder for N prompts on one image (or, with ``image_index``, on the images
    of a batch: :func:`decode_embedded`).

    Args:
        embedding: ``(1, C, h', w')`` image embedding (``(B, C, h', w')`` with ``image_index``).
        image_pe: ``(1, C, h', w')`` dense positional encoding (``prompt_encoder.get_dense_pe()``).
        points: ``(coords (N, P, 2), labels (N, P))`` in input-frame pixels, or None.
        boxes: ``(N, 4)`` or None.
        mask_input: ``(N, 1, 4h', 4w')`` low-resolution logits, or None.
        multimask: three masks (True) or one.
        image_index: optional int64 ``(N,)``, the image of each prompt.

    Returns:
        ``(low_res_logits (N, M, 4h', 4w'), iou_pred (N, M))``.
    """
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    return decode_embedded(model, embedding, image_pe, sparse, dense, multimask, image_index)
