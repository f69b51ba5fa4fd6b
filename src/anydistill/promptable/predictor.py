"""Promptable segmentation of one image at a time: embed once, then answer many prompts.

Same public API and results as ``segment_anything.SamPredictor`` (``set_image``,
``set_torch_image``, ``predict``, ``predict_torch``, ``get_image_embedding``, ``reset_image``,
``transform``, ``original_size``, ``input_size``, ``features``, ``is_image_set``, ``device``,
``model``), for our :class:`~anydistill.models.sam.sam.Sam` and for upstream's ``Sam`` alike.

What it adds is input checking, with a ``ValueError`` naming the problem where upstream fails
deep inside torch or answers silently:

* points must lie in the image: ``0 <= x <= W`` and ``0 <= y <= H`` (the original image's pixels
  for :meth:`SamPredictor.predict`, the resized input frame for :meth:`SamPredictor.predict_torch`).
  Points outside are **rejected, not clamped**; the message names the first such point and the size;
* point labels: one per point, each 1 (foreground), 0 (background) or -1 (padding, ignored);
* an empty point array is an error (pass ``None`` for "no points");
* boxes: ``x0 <= x1`` and ``y0 <= y1``, corners inside the image as points are;
* ``mask_input``: ``(1, 4h, 4w)`` (``(1, 256, 256)`` for SAM) in :meth:`SamPredictor.predict`,
  ``(B, 1, 4h, 4w)`` in :meth:`SamPredictor.predict_torch`;
* images: ``(H, W, 3)`` uint8, any size from 1x1 up (a 10000x10000 image is resized by PIL in uint8:
  no float copy at full resolution is made; the full-size output masks, ``(C, H, W)`` bool, are).
* :meth:`SamPredictor.predict` before :meth:`SamPredictor.set_image` raises ``RuntimeError``
  (as upstream).
"""

# Adapted from https://github.com/facebookresearch/segment-anything/blob/571794162e0887c15d12b809505b902c7bf8b4db/segment_anything/predictor.py

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from anydistill.promptable.transforms import ResizeLongestSide

#: Slack (pixels) of the bounds check in the resized frame: ``W * (w / W)`` may round a hair past ``w``.
_FRAME_TOL = 1e-3


def _check_points_inside(
    coords: Tensor, size: tuple[int, int], frame: str, tol: float = 0.0, labels: Tensor | None = None
) -> None:
    """``coords (..., 2)`` (x, y) must lie in ``[0, W] x [0, H]`` of ``size = (H, W)`` (± ``tol``);
    padding points (``labels == -1``) are ignored by the prompt encoder and not checked."""
    if coords.numel() == 0:
        return
    h, w = size
    x, y = coords[..., 0], coords[..., 1]
    bad = ~((x >= -tol) & (x <= w + tol) & (y >= -tol) & (y <= h + tol))  # NaN counts as outside
    if labels is not None:
        bad &= labels.to(bad.device) != -1
    if bool(bad.any()):
        i = tuple(int(v) for v in torch.nonzero(bad)[0])
        pt = coords[i].tolist()
        raise ValueError(
            f"point {pt} (x, y) at index {list(i)} lies outside the {frame} of size {w}x{h} (W x H); "
            f"points must satisfy 0 <= x <= {w} and 0 <= y <= {h}"
        )


def _check_labels(labels: Tensor) -> None:
    ok = (labels == 1) | (labels == 0) | (labels == -1)
    if not bool(ok.all()):
        bad = labels[~ok][0].item()
        raise ValueError(f"point label {bad} is not 1 (foreground), 0 (background) or -1 (padding)")


def _check_boxes(boxes: Tensor, size: tuple[int, int], frame: str, tol: float = 0.0) -> None:
    """``boxes (B, 4)`` XYXY: ordered corners inside the frame."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    bad = ~((x0 <= x1) & (y0 <= y1))
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise ValueError(
            f"box {boxes[i].tolist()} at index {i} is not (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1"
        )
    _check_points_inside(boxes.reshape(-1, 2, 2), size, frame, tol)


class SamPredictor:
    """Computes an image's embedding once (:meth:`set_image`), then masks for prompts (:meth:`predict`).

    Args:
        sam_model: a SAM-style model (ours or segment_anything's): ``image_encoder`` with
            ``img_size``, ``prompt_encoder``, ``mask_decoder``, ``preprocess``, ``postprocess_masks``,
            ``mask_threshold``, ``image_format``, ``device``. Used as is (put it in eval mode).

    Attributes: ``transform`` (:class:`ResizeLongestSide` to ``img_size``), and once an image is set
    ``original_size (H, W)``, ``input_size (h, w)`` (resized, before padding), ``features``
    ``(1, C, S/16, S/16)``, ``is_image_set``.
    """

    def __init__(self, sam_model: nn.Module) -> None:
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """``(4h, 4w)``: the size of mask prompts and of the low-res masks (256, 256 for SAM)."""
        h, w = self.model.prompt_encoder.image_embedding_size
        return 4 * h, 4 * w

    # ----------------------------------------------------------------------------------------------
    # Image
    # ----------------------------------------------------------------------------------------------

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed ``image (H, W, 3)`` uint8 in ``image_format`` "RGB" or "BGR"; any H, W >= 1."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            raise ValueError(
                f"expected an (H, W, 3) numpy image, got {type(image).__name__} of shape {shape}"
            )
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image (values 0-255), got dtype {image.dtype}")
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"image has no pixels: shape {image.shape}")
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        resized = self.transform.apply_image(image)  # (h, w, 3) uint8
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]  # (1, 3, h, w)
        self.set_torch_image(x, image.shape[:2])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: Tensor, original_image_size: tuple[int, ...]) -> None:
        """Embed ``transformed_image (1, 3, h, w)``, values in [0, 255], long side already resized to
        ``img_size`` (by :attr:`transform`); ``original_image_size = (H, W)`` before resizing."""
        s = self.model.image_encoder.img_size
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[0] != 1 or shape[1] != 3 or max(shape[2:]) != s:
            raise ValueError(f"set_torch_image expects (1, 3, h, w) with max(h, w) == {s}, got {shape}")
        self.reset_image()
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.input_size = (shape[2], shape[3])
        self.features = self.model.image_encoder(self.model.preprocess(transformed_image))
        self.is_image_set = True

    def set_embedding(
        self, features: Tensor, original_size: tuple[int, int], input_size: tuple[int, int]
    ) -> None:
        """Take an embedding computed elsewhere (e.g. one row of
        :func:`~anydistill.promptable.batched.embed_rgb_images`'s batch) as the current image's: what
        :meth:`set_image` would leave, without running the image encoder.

        Args:
            features: ``(1, C, S/16, S/16)``.
            original_size: ``(H, W)`` of the image; input_size: ``(h, w)``, its resized size before padding.
        """
        grid = tuple(self.model.prompt_encoder.image_embedding_size)
        if features.ndim != 4 or features.shape[0] != 1 or tuple(features.shape[-2:]) != grid:
            raise ValueError(f"features must be (1, C, {grid[0]}, {grid[1]}), got {tuple(features.shape)}")
        self.reset_image()
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.features = features.to(self.device)
        self.is_image_set = True

    def get_image_embedding(self) -> Tensor:
        """The current image's embedding ``(1, C, S/16, S/16)`` (1, 256, 64, 64 for SAM)."""
        if not self.is_image_set or self.features is None:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        return self.features

    def reset_image(self) -> None:
        """Forget the current image."""
        self.is_image_set = False
        self.features: Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    # ----------------------------------------------------------------------------------------------
    # Prompts
    # ----------------------------------------------------------------------------------------------

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt set on the current image (coordinates in original-image pixels).

        Args:
            point_coords: ``(N, 2)`` (x, y), N >= 1, with ``point_labels (N,)``.
            box: ``(4,)`` XYXY.
            mask_input: ``(1, 4h, 4w)`` logits, e.g. a previous call's ``low_res`` (best mask).
            multimask_output: 3 masks (ambiguous prompts such as one click) or 1.
            return_logits: return mask logits instead of booleans.

        Returns:
            ``masks (C, H, W)`` bool (float32 logits if ``return_logits``), ``iou (C,)`` float32,
            ``low_res (C, 4h, 4w)`` float32 logits; C = 3 or 1.
        """
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        assert self.original_size is not None
        coords_t = labels_t = box_t = mask_t = None
        if point_coords is not None or point_labels is not None:
            if point_coords is None or point_labels is None:
                raise ValueError("point_coords and point_labels must be given together")
            coords = np.asarray(point_coords)
            labels = np.asarray(point_labels)
            if coords.ndim != 2 or coords.shape[1] != 2:
                raise ValueError(f"point_coords must be (N, 2) (x, y), got shape {coords.shape}")
            if coords.shape[0] == 0:
                raise ValueError("point_coords is empty; pass None for no points")
            if labels.shape != (coords.shape[0],):
                raise ValueError(
                    f"point_labels must be ({coords.shape[0]},), one per point, got {labels.shape}"
                )
            _check_points_inside(
                torch.as_tensor(coords, dtype=torch.float64),
                self.original_size,
                "image",
                0.0,
                torch.as_tensor(labels),
            )
            coords_t = torch.as_tensor(
                self.transform.apply_coords(coords, self.original_size), dtype=torch.float, device=self.device
            )[None]  # (1, N, 2)
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None]  # (1, N)
        if box is not None:
            b = np.asarray(box)
            if b.size != 4:
                raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), got shape {b.shape}")
            _check_boxes(torch.as_tensor(b, dtype=torch.float64).reshape(1, 4), self.original_size, "image")
            box_t = torch.as_tensor(
                self.transform.apply_boxes(b, self.original_size), dtype=torch.float, device=self.device
            )  # (1, 4)
        if mask_input is not None:
            m = np.asarray(mask_input)
            want = (1, *self.mask_input_size)
            if m.shape != want:
                raise ValueError(f"mask_input must be {want} (a low-res logit mask), got {m.shape}")
            mask_t = torch.as_tensor(m, dtype=torch.float, device=self.device)[None]  # (1, 1, 4h, 4w)

        masks, iou, low_res = self.predict_torch(
            coords_t, labels_t, box_t, mask_t, multimask_output, return_logits=return_logits
        )
        return masks[0].cpu().numpy(), iou[0].cpu().numpy(), low_res[0].cpu().numpy()

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: Tensor | None,
        point_labels: Tensor | None,
        boxes: Tensor | None = None,
        mask_input: Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Masks for B prompt sets at once; prompts already in the resized input frame
        (``transform.apply_coords_torch`` / ``apply_boxes_torch``).

        Args:
            point_coords: ``(B, N, 2)`` (x, y) with ``point_labels (B, N)`` (-1 pads ragged sets).
            boxes: ``(B, 4)`` XYXY.
            mask_input: ``(B, 1, 4h, 4w)`` logits.
            multimask_output, return_logits: as in :meth:`predict`.

        Returns:
            ``masks (B, C, H, W)`` (original size; bool, or logits), ``iou (B, C)``,
            ``low_res (B, C, 4h, 4w)`` logits.
        """
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        assert self.input_size is not None and self.original_size is not None
        batch: dict[str, int] = {}
        points = None
        if point_coords is not None or point_labels is not None:
            if point_coords is None or point_labels is None:
                raise ValueError("point_coords and point_labels must be given together")
            if point_coords.ndim != 3 or point_coords.shape[-1] != 2:
                raise ValueError(f"point_coords must be (B, N, 2), got {tuple(point_coords.shape)}")
            if point_coords.shape[1] == 0:
                raise ValueError("point_coords holds no points (N = 0); pass None for no points")
            if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
                raise ValueError(
                    f"point_labels must be (B, N) = {tuple(point_coords.shape[:2])}, got {tuple(point_labels.shape)}"
                )
            _check_labels(point_labels)
            _check_points_inside(
                point_coords, self.input_size, "resized input frame", _FRAME_TOL, point_labels
            )
            batch["point_coords"] = point_coords.shape[0]
            points = (point_coords.to(self.device), point_labels.to(self.device))
        if boxes is not None:
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be (B, 4) XYXY, got {tuple(boxes.shape)}")
            _check_boxes(boxes, self.input_size, "resized input frame", _FRAME_TOL)
            batch["boxes"] = boxes.shape[0]
            boxes = boxes.to(self.device)
        if mask_input is not None:
            want = self.mask_input_size
            if mask_input.ndim != 4 or mask_input.shape[1] != 1 or tuple(mask_input.shape[-2:]) != want:
                raise ValueError(
                    f"mask_input must be (B, 1, {want[0]}, {want[1]}), got {tuple(mask_input.shape)}"
                )
            batch["mask_input"] = mask_input.shape[0]
            mask_input = mask_input.to(self.device, torch.float)
        if len(set(batch.values())) > 1:
            raise ValueError(f"prompt batch sizes differ: {batch}")

        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low_res, iou = self.model.mask_decoder(
            image_embeddings=self.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res
