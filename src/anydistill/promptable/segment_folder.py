"""``anydistill segment --images DIR``: masks for a folder of images, from a prompts file or automatic.

Two modes:

- ``prompts``: the prompts of a prompts JSON or a COCO file (schema: :mod:`anydistill.promptable.prompts_file`),
  one mask per prompt. The image encoder runs on ``batch_size`` images at once (each resized and padded
  to the model's frame exactly as :class:`~anydistill.promptable.SamPredictor` does for one image), the
  mask decoder on all the prompts of one shape (same number of points, with or without a box) of an image
  at once (in chunks that bound the full-size masks held to about 128 MB).
- ``auto``: :class:`~anydistill.promptable.amg.AutomaticMaskGenerator` on every image (its decoder takes
  ``points_per_batch`` grid points at once; the image encoder takes ``batch_size`` crops at once).

Output, in ``out``: ``masks_coco.json``, one COCO-style file (pycocotools' ``COCO(path)`` reads it, and its
``annotations`` list is a results list for ``COCO.loadRes``): ``images`` (``id``, ``file_name``,
``height``, ``width``), ``categories``, ``annotations`` with ``segmentation`` as compressed RLE
(``{"size": [H, W], "counts": str}``), ``area``, ``bbox`` (XYWH; prompts: pycocotools' box of the mask,
width = columns covered; auto: SAM's records, as ``segment --image --auto``), ``score`` (= predicted IoU),
``image_id`` and ``category_id`` (carried over from a COCO input), ``iscrowd`` 0 and, for prompts,
``prompt_id`` and the ``prompt``. With ``overlays``, ``overlays/<relative path>.png`` per image (masks
tinted, prompts drawn).

The results file is written atomically (a temporary file in ``out``, renamed over it): at least every
:data:`SAVE_EVERY_S` seconds, when interrupted, and at the end. A rerun with the same settings resumes:
the images already in it are skipped. Its ``anydistill`` key records the settings and whether it is
complete; a file made with other settings is refused (write to another folder or delete it).

Unreadable images are skipped with a warning and listed in the report, as ``anydistill predict`` does;
they are not recorded, so a rerun tries them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from anydistill.data.io import find_images, read_image
from anydistill.data.outputs import make_output_folder
from anydistill.errors import ConfigError, DataError, warn
from anydistill.promptable.amg import AutomaticMaskGenerator
from anydistill.promptable.amg_output import masks_to_coco_json, overlay_masks
from anydistill.promptable.batched import decode_prompts, embed_rgb_images
from anydistill.promptable.loading import load_promptable
from anydistill.promptable.mask_utils import _pycocotools_mask, encode_rle
from anydistill.promptable.prompts_file import ImagePrompts, Prompt, check_inside, image_size, read_prompts
from anydistill.promptable.segment import draw_prompts
from anydistill.promptable.transforms import ResizeLongestSide
from anydistill.viz import save_png

__all__ = ["RESULTS_NAME", "SAVE_EVERY_S", "FolderReport", "decode_image_prompts", "segment_folder"]

RESULTS_NAME = "masks_coco.json"
#: Seconds between two saves of the partial results (each rewrites the whole file).
SAVE_EVERY_S = 60.0
#: Full-size mask logits one decoder chunk may produce (float32: 4 bytes each).
_MAX_CHUNK_PIXELS = 2**25


@dataclass
class FolderReport:
    """What :func:`segment_folder` did."""

    results: Path
    images: int = 0  # images in the results file
    masks: int = 0
    resumed: int = 0  # images found done in an earlier run's file
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        again = f" ({self.resumed} from an earlier run)" if self.resumed else ""
        lines = [f"{self.masks} mask(s) for {self.images} image(s){again}; wrote {self.results}"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unreadable image(s):")
            lines += [f"  {p}: {why}" for p, why in self.skipped]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- decode


def _chunks(prompts: list[tuple[int, Prompt]], size: tuple[int, int], img_size: int) -> Iterator[list]:
    """Prompts of one shape (number of points, box or not), at most ``_MAX_CHUNK_PIXELS`` of logits each."""
    groups: dict[tuple[int, bool], list[tuple[int, Prompt]]] = {}
    for item in prompts:
        groups.setdefault((len(item[1].points), item[1].box is not None), []).append(item)
    per_chunk = max(1, min(64, _MAX_CHUNK_PIXELS // max(size[0] * size[1], img_size * img_size)))
    for group in groups.values():
        for s in range(0, len(group), per_chunk):
            yield group[s : s + per_chunk]


@torch.no_grad()
def decode_image_prompts(
    model: nn.Module,
    features: Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    prompts: list[Prompt],
) -> list[tuple[dict[str, Any], float]]:
    """The mask (COCO RLE at ``original_size``) and predicted IoU of each prompt, in order.

    The same masks as :meth:`~anydistill.promptable.SamPredictor.predict` on the image alone: a single
    click asks for three masks and keeps the one of highest predicted IoU, other prompts ask for one.

    Args:
        features: ``(1, C, S/16, S/16)`` the image's embedding; input_size: ``(h, w)`` resized, unpadded.
        prompts: in image pixels, checked (:func:`~anydistill.promptable.prompts_file.check_inside`).
    """
    transform = ResizeLongestSide(int(model.image_encoder.img_size))
    device = features.device
    image_pe = model.prompt_encoder.get_dense_pe()
    out: list[tuple[dict[str, Any], float] | None] = [None] * len(prompts)
    for chunk in _chunks(list(enumerate(prompts)), original_size, transform.target_length):
        first = chunk[0][1]
        points = boxes = None
        if first.points:
            xy = np.array([[p[:2] for p in pr.points] for _, pr in chunk], dtype=np.float64)  # (n, P, 2)
            coords = torch.as_tensor(
                transform.apply_coords(xy, original_size), dtype=torch.float, device=device
            )
            labels = torch.tensor(
                [[p[2] for p in pr.points] for _, pr in chunk], dtype=torch.int, device=device
            )
            points = (coords, labels)  # (n, P, 2), (n, P)
        if first.box is not None:
            xyxy = np.array([pr.box for _, pr in chunk], dtype=np.float64)  # (n, 4)
            boxes = torch.as_tensor(
                transform.apply_boxes(xyxy, original_size), dtype=torch.float, device=device
            )
        low_res, iou = decode_prompts(
            model, features, image_pe, points, boxes, None, multimask=first.single_click
        )  # (n, M, 4h, 4w), (n, M)
        if first.single_click:  # SAM's advice for an ambiguous prompt: the mask of highest predicted IoU
            best = iou.argmax(dim=1)  # (n,)
            rows = torch.arange(len(best), device=best.device)
            low_res, iou = low_res[rows, best][:, None], iou[rows, best][:, None]  # (n, 1, 4h, 4w), (n, 1)
        logits = model.postprocess_masks(low_res, input_size, original_size)  # (n, 1, H, W)
        rles = encode_rle(logits[:, 0] > model.mask_threshold)
        for (i, _), rle, score in zip(chunk, rles, iou[:, 0].tolist(), strict=True):
            out[i] = (rle, float(score))
    return out  # type: ignore[return-value]


def _prompt_annotations(
    item: ImagePrompts, prompts: list[Prompt], masks: list[tuple[dict, float]]
) -> list[dict]:
    coco_mask = _pycocotools_mask()
    anns = []
    for prompt, (rle, score) in zip(prompts, masks, strict=True):
        coded = {"size": rle["size"], "counts": rle["counts"].encode()}
        anns.append(
            {
                "image_id": item.image_id,
                "category_id": prompt.category_id,
                "segmentation": rle,
                "area": int(coco_mask.area(coded)),
                "bbox": [float(v) for v in coco_mask.toBbox(coded)],
                "iscrowd": 0,
                "score": score,
                "predicted_iou": score,
                "prompt_id": prompt.prompt_id,
                "prompt": prompt.to_json(),
            }
        )
    return anns


# ---------------------------------------------------------------------------------------------- results


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """``path`` all at once or not at all: a temporary file beside it, fsynced, renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(path, f"cannot write the results ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _earlier_results(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The results of an earlier run with the same ``settings`` at ``path``, if any.

    Raises:
        DataError: ``path`` is not a results file of this command, or was made with other settings.
    """
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        theirs = data["anydistill"]["settings"]
        data["images"], data["annotations"]  # noqa: B018 - both must be there
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(
            path, "exists and is not a results file of `anydistill segment --images`; write to another --out"
        ) from None
    if theirs != settings:
        changed = sorted(k for k in set(theirs) | set(settings) if theirs.get(k) != settings.get(k))
        raise DataError(
            path,
            f"holds results made with other settings ({', '.join(changed)}); write to another --out or "
            "delete it to start over",
        )
    return data


def _overlay_names(items: list[ImagePrompts], root: Path) -> dict[Path, str]:
    """``overlays/<relative path without extension>.png``; the extension is kept when two inputs share a stem."""
    rel = {it.path: it.path.relative_to(root) for it in items}
    stems: dict[str, int] = {}
    for r in rel.values():
        stems[r.with_suffix("").as_posix()] = stems.get(r.with_suffix("").as_posix(), 0) + 1
    return {
        p: (r.with_suffix("").as_posix() if stems[r.with_suffix("").as_posix()] == 1 else r.as_posix())
        + ".png"
        for p, r in rel.items()
    }


def _write_overlay(path: Path, image: np.ndarray, anns: list[dict[str, Any]], prompts: list[Prompt]) -> Path:
    """The masks tinted over the image, each prompt drawn as ``segment --image`` draws its own."""
    shown = overlay_masks(image, [{"segmentation": a["segmentation"], "area": a["area"]} for a in anns])
    for p in prompts:
        shown = draw_prompts(shown, list(p.points), p.box)
    make_output_folder(path.parent)
    return save_png(shown, path)


# ---------------------------------------------------------------------------------------------- run


def segment_folder(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    prompts: str | Path | None = None,
    auto: bool = False,
    coco_prompt: str = "box",
    batch_size: int = 4,
    overlays: bool = False,
    auto_kwargs: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> FolderReport:
    """Masks for the images under ``images`` (see the module docstring), written to ``out/masks_coco.json``.

    Raises:
        ConfigError: both or neither of ``prompts`` and ``auto``; ``batch_size`` below 1; a bad
            ``coco_prompt``.
        DataError: no images; a bad prompts file (before any model is loaded, naming file, key and prompt);
            a bad checkpoint; an output folder or results file that cannot be used.
    """
    if (prompts is None) == (not auto):
        raise ConfigError(
            "--images needs exactly one of --prompts FILE (masks for given prompts) and --auto (every object)"
        )
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be at least 1, got {batch_size}")
    if coco_prompt not in ("box", "point", "both"):
        raise ConfigError(f"--coco-prompt: must be box, point or both, got {coco_prompt!r}")
    root = Path(images)
    files = find_images(root)
    base = root if root.is_dir() else root.parent
    out = Path(out)
    settings: dict[str, Any] = {
        "mode": "auto" if auto else "prompts",
        "checkpoint": str(Path(checkpoint).resolve()),
    }
    if auto:
        items = [ImagePrompts(f.relative_to(base).as_posix(), f, i + 1) for i, f in enumerate(files)]
        settings["auto"] = dict(sorted((auto_kwargs or {}).items()))
    else:
        assert prompts is not None
        items = read_prompts(prompts, files, base, coco_prompt)
        for item in items:  # bounds, from the headers: a bad prompt stops the run before any work
            size = image_size(item.path)
            if size is not None:
                check_inside(item, size, Path(prompts))
        settings.update(prompts=str(Path(prompts).resolve()), prompts_sha256=_sha256(Path(prompts)))
        settings["coco_prompt"] = coco_prompt
    categories = _categories(Path(prompts), items) if prompts is not None else [{"id": 1, "name": "object"}]

    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder; choose another output folder")
    results = out / RESULTS_NAME
    earlier = _earlier_results(results, settings)
    done_images: list[dict[str, Any]] = list(earlier["images"]) if earlier else []
    annotations: list[dict[str, Any]] = list(earlier["annotations"]) if earlier else []
    done = {d["file_name"] for d in done_images}
    todo = [it for it in items if it.key not in done]
    report = FolderReport(results, resumed=len(items) - len(todo))
    model = load_promptable(checkpoint, device=device)
    generator = AutomaticMaskGenerator(model, output_mode="coco_rle", **(auto_kwargs or {})) if auto else None
    make_output_folder(out)  # only now: bad input leaves no empty folder behind
    names = _overlay_names(items, base) if overlays else {}

    def save(complete: bool) -> None:
        info = {"settings": settings, "complete": complete}
        data = {
            "images": done_images,
            "annotations": annotations,
            "categories": categories,
            "anydistill": info,
        }
        _write_json(results, data)

    last_save = time.monotonic()
    bar = tqdm(total=len(items), initial=report.resumed, desc="segment", unit="img", disable=not progress)
    try:
        for start in range(0, len(todo), batch_size):
            batch = []
            for item in todo[start : start + batch_size]:
                try:
                    batch.append((item, read_image(item.path)))
                except DataError as exc:
                    warn(f"{item.path}: skipped ({exc.problem})")
                    report.skipped.append((item.path, exc.problem))
                    bar.update(1)
            for item, image, records, prompts_used in _segment_batch(
                model, generator, batch, batch_size, prompts
            ):
                h, w = image.shape[:2]
                done_images.append({"id": item.image_id, "file_name": item.key, "height": h, "width": w})
                for ann in records:
                    annotations.append({"id": len(annotations) + 1, **ann})
                if overlays:
                    path = out / "overlays" / names[item.path]
                    report.overlays.append(_write_overlay(path, image, records, prompts_used))
                bar.update(1)
            if time.monotonic() - last_save > SAVE_EVERY_S:
                save(complete=False)
                last_save = time.monotonic()
    except BaseException:
        save(complete=False)  # what is done so far: a rerun resumes from it
        raise
    finally:
        bar.close()
    save(complete=True)
    report.images, report.masks = len(done_images), len(annotations)
    return report


def _categories(prompts_path: Path, items: list[ImagePrompts]) -> list[dict[str, Any]]:
    """A COCO input's categories (those its annotations use), else one per ``category_id`` used."""
    used = sorted({p.category_id for it in items for p in it.prompts} or {1})
    try:
        data = json.loads(prompts_path.read_text(encoding="utf-8"))
        coco = data.get("categories") if isinstance(data.get("images"), list) else None
    except (OSError, ValueError):
        coco = None
    if isinstance(coco, list) and all(isinstance(c, dict) and "id" in c for c in coco):
        return coco
    return [{"id": c, "name": "object" if c == 1 else f"category {c}"} for c in used]


def _segment_batch(
    model: nn.Module,
    generator: AutomaticMaskGenerator | None,
    batch: list[tuple[ImagePrompts, np.ndarray]],
    batch_size: int,
    prompts_path: str | Path | None,
) -> Iterator[tuple[ImagePrompts, np.ndarray, list[dict[str, Any]], list[Prompt]]]:
    """(item, image, annotations without ids, prompts used) for each image of a batch."""
    if generator is not None:
        records = generator.generate_batch([image for _, image in batch], batch_size=batch_size)
        for (item, image), recs in zip(batch, records, strict=True):
            coco = masks_to_coco_json(recs, image_id=item.image_id, size=image.shape[:2])
            yield item, image, [{k: v for k, v in a.items() if k != "id"} for a in coco["annotations"]], []
        return
    assert prompts_path is not None
    checked = [check_inside(item, image.shape[:2], Path(prompts_path)) for item, image in batch]
    with_prompts = [k for k, p in enumerate(checked) if p]
    features: Tensor | None = None
    sizes: list[tuple[int, int]] = []
    if with_prompts:  # images without prompts need no embedding
        features, sizes = embed_rgb_images(model, [batch[k][1] for k in with_prompts])  # (b, C, h', w')
    row = {k: r for r, k in enumerate(with_prompts)}
    for k, ((item, image), prompts) in enumerate(zip(batch, checked, strict=True)):
        anns: list[dict[str, Any]] = []
        if prompts:
            assert features is not None
            r = row[k]
            masks = decode_image_prompts(model, features[r : r + 1], sizes[r], image.shape[:2], prompts)
            anns = _prompt_annotations(item, prompts, masks)
        yield item, image, anns, prompts
