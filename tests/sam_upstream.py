"""The tiny random segment_anything ``Sam`` that SAM parity tests compare against (test helper).

Importable from any test (pytest puts ``tests/`` on ``sys.path`` for its root ``conftest.py``).
"""

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer


def tiny_upstream_sam(
    seed: int = 0,
    img_size: int = 128,
    width: int = 32,
    mask_in_chans: int = 8,
    decoder_depth: int = 1,
    decoder_heads: int = 2,
    iou_head_depth: int = 2,
    iou_head_hidden_dim: int = 24,
) -> Sam:
    """segment_anything's Sam, tiny: ViT 48 wide, 2 blocks, 4x4 windows, block 1 global; decoder
    ``width`` wide. Every weight is randomised (+0.1·N(0, 1)) so no zero-initialised part hides a bug.
    ``decoder_heads=8`` matches SAM's, which ``load_sam_checkpoint`` assumes by default."""
    torch.manual_seed(seed)
    grid = img_size // 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size, embed_dim=48, depth=2, num_heads=2, out_chans=width,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=width, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size),
            mask_in_chans=mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=width,
            transformer=TwoWayTransformer(depth=decoder_depth, embedding_dim=width, mlp_dim=64, num_heads=decoder_heads),
            iou_head_depth=iou_head_depth, iou_head_hidden_dim=iou_head_hidden_dim,
        ),
    )  # fmt: skip
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return sam.eval()


def tiny_patch8_sam(img_size: int = 64, dim: int = 32, patch: int = 8, ours: bool = False) -> torch.nn.Module:
    """An even smaller segment_anything Sam for training/evaluation tests (1 ViT block, patch 8, global
    attention), in train mode; ``ours``: its mask decoder swapped for ours with the same weights."""
    from segment_anything import modeling

    from anydistill.models.sam import MaskDecoder as OurMaskDecoder
    from anydistill.models.sam import TwoWayTransformer as OurTwoWayTransformer

    grid = img_size // patch
    torch.manual_seed(0)
    model = modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            img_size=img_size, patch_size=patch, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0,
            out_chans=dim, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size),
            mask_in_chans=8,
        ),
        mask_decoder=modeling.MaskDecoder(
            transformer_dim=dim,
            transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
            iou_head_hidden_dim=32,
        ),
    )  # fmt: skip
    if ours:
        decoder = OurMaskDecoder(
            transformer_dim=dim,
            transformer=OurTwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
            iou_head_hidden_dim=32,
        )
        decoder.load_state_dict(model.mask_decoder.state_dict())
        model.mask_decoder = decoder
    return model
