"""A promptable (SAM) export run by onnxruntime: :class:`anydistill.promptable.predictor.SamPredictor`
without torch.

The image encoder graph runs once per image (:meth:`OnnxSamPredictor.set_image`); each prompt then
runs only the decoder graph, which has segment-anything's exported interface (``image_embeddings``,
``point_coords``, ``point_labels``, ``mask_input``, ``has_mask_input``, ``orig_im_size`` →
``masks``, ``iou_predictions``, ``low_res_masks``). Prompts follow segment-anything's ONNX example: a
box is two extra points labelled 2 and 3; without a box a padding point labelled −1 is appended.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from anydistill.errors import DataError
from anydistill.runtime.export_folder import ExportFolder
from anydistill.runtime.image_ops import sam_input, sam_point_coords

__all__ = ["OnnxSamPredictor"]


class OnnxSamPredictor:
    """Masks for clicks and boxes on one image at a time, from an exported promptable model.

    Args:
        folder: an export folder of a promptable model, or its :class:`ExportFolder`.
        threads: onnxruntime intra-op threads (``0``: one per core).
    """

    def __init__(self, folder: str | Path | ExportFolder, threads: int = 0) -> None:
        self.folder = folder if isinstance(folder, ExportFolder) else ExportFolder.read(folder, threads)
        if self.folder.task != "promptable":
            raise DataError(
                self.folder.path, f"is a {self.folder.task!r} export; segment takes a promptable one"
            )
        self.encoder = self.folder.session("image_encoder")
        self.decoder = self.folder.session("prompt_decoder")
        self.mask_threshold = float(self.folder.meta.get("mask_threshold", 0.0))
        shapes = {i.name: i.shape for i in self.decoder.get_inputs()}
        # The mask prompt is 4x the embedding's side (256 at SAM's 1024 input): read from the graph.
        self.mask_side = tuple(int(d) for d in shapes["mask_input"][-2:])
        # Which masks the graph returns (export.json's decoder_masks; a folder written before the key
        # existed: told by the graph's output). "best" (segment-anything's return_single_mask) picks its
        # own mask, which no SamPredictor mode reproduces, so predict refuses it.
        outputs = {o.name: o.shape for o in self.decoder.get_outputs()}
        count = outputs.get("iou_predictions", [1, None])[-1]
        self.decoder_masks = str(
            self.folder.meta.get("decoder_masks") or {4: "all", 3: "multimask"}.get(count, "single")
        )
        self.reset_image()

    def reset_image(self) -> None:
        self.embedding: np.ndarray | None = None
        self.orig_size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray) -> None:
        """Embed a uint8 RGB ``(H, W, 3)`` image: the encoder graph's ``(1, 256, 64, 64)`` output is kept."""
        x, _ = sam_input(image, self.folder.preprocess)  # (1, 3, S, S)
        name = self.encoder.get_inputs()[0].name
        self.embedding = np.asarray(self.encoder.run(None, {name: x})[0], np.float32)
        self.orig_size = (int(image.shape[0]), int(image.shape[1]))

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt on the image of :meth:`set_image`.

        Args:
            point_coords: ``(N, 2)`` x, y in the image's pixels; ``point_labels`` ``(N,)`` 1 / 0.
            box: ``(4,)`` x0, y0, x1, y1 in the image's pixels.
            mask_input: ``(1, 256, 256)`` low-res logits of an earlier prediction (``mask_side``).
            multimask_output: the three masks of an ambiguous prompt, else the single-mask output.

        Returns:
            masks bool ``(M, H, W)``, predicted IoU float32 ``(M,)``, low-res logits ``(M, 256, 256)``
            (``mask_side``);
            ``M`` is 3 with ``multimask_output``, else 1.
        """
        if self.embedding is None or self.orig_size is None:
            raise RuntimeError("call set_image before predict")
        wanted_mode = "multimask" if multimask_output else "single"
        if self.decoder_masks not in ("all", wanted_mode):
            raise ValueError(
                f"{self.folder.path}: its decoder graph was exported with --decoder-masks {self.decoder_masks}, "
                f"which cannot give the {'3 masks of an ambiguous prompt' if multimask_output else 'single mask'} "
                "asked for; export again with --decoder-masks all (the default)"
            )
        coords = (
            np.zeros((0, 2), np.float32) if point_coords is None else np.asarray(point_coords, np.float32)
        )
        labels = np.zeros((0,), np.float32) if point_labels is None else np.asarray(point_labels, np.float32)
        if len(coords) != len(labels):
            raise ValueError(f"{len(coords)} points but {len(labels)} labels")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"point labels must be 1 (foreground) or 0 (background), got {labels.tolist()}")
        h, w = self.orig_size
        corners = (
            np.asarray(box, np.float32).reshape(2, 2) if box is not None else np.zeros((0, 2), np.float32)
        )
        if box is not None and not (corners[0] <= corners[1]).all():
            raise ValueError(
                f"box {np.asarray(box).tolist()} is not (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1"
            )
        for x, y in np.concatenate([coords.reshape(-1, 2), corners]):
            if not (0 <= x <= w and 0 <= y <= h):  # NaN fails too
                raise ValueError(
                    f"point ({x:g}, {y:g}) (x, y) lies outside the image of size {w}x{h} (W x H); "
                    f"points must satisfy 0 <= x <= {w} and 0 <= y <= {h}"
                )
        if box is not None:
            coords = np.concatenate([coords, corners])
            labels = np.concatenate([labels, np.array([2, 3], np.float32)])
        else:  # segment-anything's ONNX example pads a prompt without a box with one ignored point
            coords = np.concatenate([coords, np.zeros((1, 2), np.float32)])
            labels = np.concatenate([labels, np.array([-1], np.float32)])
        side = self.folder.preprocess.size
        feeds = {
            "image_embeddings": self.embedding,
            "point_coords": sam_point_coords(coords, self.orig_size, side)[None],  # (1, N, 2)
            "point_labels": labels[None],  # (1, N)
            "mask_input": np.zeros((1, 1, *self.mask_side), np.float32)
            if mask_input is None
            else np.asarray(mask_input, np.float32).reshape(1, 1, *self.mask_side),
            "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
            "orig_im_size": np.array(self.orig_size, np.float32),
        }
        wanted = {i.name for i in self.decoder.get_inputs()}
        masks, iou, low_res = self.decoder.run(None, {k: v for k, v in feeds.items() if k in wanted})
        masks, iou, low_res = masks[0], iou[0], low_res[0]  # (M', H, W), (M',), (M', 256, 256)
        if self.decoder_masks == "all":  # 0 = the single-mask output, 1..3 = the multimask ones
            keep = slice(1, 4) if multimask_output else slice(0, 1)
            masks, iou, low_res = masks[keep], iou[keep], low_res[keep]
        return masks > self.mask_threshold, np.asarray(iou, np.float32), np.asarray(low_res, np.float32)
