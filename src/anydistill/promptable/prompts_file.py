"""The prompts of ``anydistill segment --images DIR --prompts FILE``: a prompts JSON or a COCO file, read and checked.

**Prompts JSON.** One object; each key names an image by its path relative to ``--images`` (``/``
separated, as :func:`~anydistill.data.io.find_images` lists it; a bare file name also matches when exactly
one image of the folder has it); each value gives that image's prompts in the image's own pixels (x to
the right, y down, ``0 <= x <= W``, ``0 <= y <= H``), in one of two forms::

    {
      "a.jpg":     {"points": [[x, y], [x, y, 1]], "boxes": [[x0, y0, x1, y1]]},
      "sub/b.png": [{"points": [[x, y, 1], [x, y, 0]], "box": [x0, y0, x1, y1], "category_id": 3},
                    {"box": [x0, y0, x1, y1]}]
    }

- short form (an object with ``"points"`` and/or ``"boxes"``): each point is one prompt, a single
  positive click (its label, if given, must be 1: a lone negative click selects nothing), and each box
  is one prompt;
- long form (a list): each element is one prompt set, ``"points"`` (``[x, y, label]``, label 1 =
  foreground, 0 = background), ``"box"`` or both, and an optional integer ``"category_id"`` (default 1).

Each prompt gives one mask. A single click (one point, no box) is ambiguous: SAM's three masks are made
and the one of highest predicted IoU is kept (as ``segment --image --point``); other prompts ask for one
mask. Box corners must lie in the image as points do (``x1 > x0``, ``y1 > y0``).

**COCO file** (a JSON object with ``"images"`` and ``"annotations"`` lists): each annotation's ``bbox``
(XYWH) is one prompt (``coco_prompt="box"``), its centre a single click (``"point"``), or box and centre
together (``"both"``); the image's ``id``, the annotation's ``category_id`` and ``id`` (as
``prompt_id``) are carried over to the results. A bbox may overshoot the image by up to 1 px (COCO's
float boxes round past an edge): it is clipped; further out it is an error. ``file_name`` is matched as
a key of the prompts JSON is. Images listed without annotations are recorded with no masks.

Every problem is a :class:`~anydistill.errors.DataError` naming the file, the image key (or COCO
annotation) and the prompt.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from anydistill.errors import DataError

__all__ = ["COCO_PROMPTS", "ImagePrompts", "Prompt", "check_inside", "image_size", "read_prompts"]

CocoPrompt = Literal["box", "point", "both"]
COCO_PROMPTS: tuple[str, ...] = ("box", "point", "both")

#: How far (px) a COCO bbox may overshoot the image before it is an error rather than clipped.
_COCO_BOX_SLACK = 1.0


@dataclass(frozen=True)
class Prompt:
    """One prompt set → one mask: ``points`` ``(x, y, label)`` and/or ``box`` ``(x0, y0, x1, y1)``, image px."""

    points: tuple[tuple[float, float, int], ...] = ()
    box: tuple[float, float, float, float] | None = None
    category_id: int = 1
    prompt_id: int = 0  # COCO: the annotation's id; JSON: the prompt's index in its image's entry
    clip_box: bool = False  # a COCO bbox: clipped to the image (within _COCO_BOX_SLACK) before use

    @property
    def single_click(self) -> bool:
        return len(self.points) == 1 and self.box is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.points:
            out["points"] = [[x, y, label] for x, y, label in self.points]
        if self.box is not None:
            out["box"] = list(self.box)
        return out


@dataclass
class ImagePrompts:
    """The prompts of one image: ``key`` as written in the file, ``path`` the image file."""

    key: str
    path: Path
    image_id: int
    prompts: list[Prompt] = field(default_factory=list)


def _match(key: str, files: dict[str, Path], by_name: dict[str, list[Path]]) -> Path | None:
    if key in files:
        return files[key]
    found = by_name.get(key, [])
    return found[0] if "/" not in key and len(found) == 1 else None


def _numbers(value: Any, n: tuple[int, ...]) -> list[float] | None:
    """``value`` as a list of finite numbers of one of the lengths ``n``, or None."""
    if not isinstance(value, (list, tuple)) or len(value) not in n:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    out = [float(v) for v in value]
    return out if all(math.isfinite(v) for v in out) else None


def _point(value: Any, where: str, positive_only: bool) -> tuple[float, float, int]:
    nums = _numbers(value, (2, 3))
    if nums is None or (len(nums) == 3 and nums[2] not in (0.0, 1.0)):
        raise ValueError(f"{where}: point {value!r} is not [x, y] or [x, y, label] with label 1 or 0")
    label = int(nums[2]) if len(nums) == 3 else 1
    if positive_only and label != 1:
        raise ValueError(
            f"{where}: point {value!r} is a lone negative click (it selects nothing); put negative clicks "
            'in a prompt set of the list form: [{"points": [[x, y, 1], [x, y, 0]]}]'
        )
    return nums[0], nums[1], label


def _box(value: Any, where: str) -> tuple[float, float, float, float]:
    nums = _numbers(value, (4,))
    if nums is None:
        raise ValueError(f"{where}: box {value!r} is not [x0, y0, x1, y1] (four finite numbers)")
    x0, y0, x1, y1 = nums
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{where}: box {value!r} needs x1 > x0 and y1 > y0")
    return x0, y0, x1, y1


def _list(entry: dict[str, Any], name: str, where: str) -> list[Any]:
    value = entry.get(name, [])
    if not isinstance(value, list):
        raise ValueError(f"{where}: {name!r} must be a list, got {type(value).__name__}")
    return value


def _entry_prompts(key: str, entry: Any) -> list[Prompt]:
    where = repr(key)
    if isinstance(entry, dict):  # short form: each point, each box, one prompt
        unknown = sorted(set(entry) - {"points", "boxes"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} (the short form has 'points' and 'boxes')")
        points = [_point(p, where, positive_only=True) for p in _list(entry, "points", where)]
        boxes = [_box(b, where) for b in _list(entry, "boxes", where)]
        prompts = [Prompt(points=(p,)) for p in points] + [Prompt(box=b) for b in boxes]
        return [Prompt(p.points, p.box, prompt_id=i) for i, p in enumerate(prompts)]
    if not isinstance(entry, list):
        raise ValueError(
            f"{where}: expected an object {{'points': [...], 'boxes': [...]}} or a list of prompt sets, "
            f"got {type(entry).__name__}"
        )
    prompts = []
    for i, item in enumerate(entry):
        at = f"{where} prompt {i}"
        if not isinstance(item, dict):
            raise ValueError(
                f"{at}: expected an object with 'points' and/or 'box', got {type(item).__name__}"
            )
        unknown = sorted(set(item) - {"points", "box", "category_id"})
        if unknown:
            raise ValueError(
                f"{at}: unknown key(s) {unknown} (a prompt set has 'points', 'box', 'category_id')"
            )
        points = tuple(_point(p, at, positive_only=False) for p in _list(item, "points", at))
        box = _box(item["box"], at) if item.get("box") is not None else None
        if not points and box is None:
            raise ValueError(f"{at}: no 'points' and no 'box'")
        if points and box is None and not any(label == 1 for _, _, label in points):
            raise ValueError(f"{at}: only negative clicks and no box: nothing to select")
        category = item.get("category_id", 1)
        if not isinstance(category, int) or isinstance(category, bool):
            raise ValueError(f"{at}: category_id {category!r} is not an integer")
        prompts.append(Prompt(points, box, category, i))
    return prompts


def _coco_prompts(path: Path, data: dict[str, Any], mode: str) -> dict[str, tuple[int, list[Prompt]]]:
    """COCO ``file_name`` → (image id, prompts)."""
    images, annotations = data["images"], data["annotations"]
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise DataError(path, "'images' and 'annotations' must be lists (a COCO file)")
    by_id: dict[int, str] = {}
    out: dict[str, tuple[int, list[Prompt]]] = {}
    for i, image in enumerate(images):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise DataError(path, f"images[{i}]: needs an 'id' and a 'file_name'")
        by_id[image["id"]] = image["file_name"]
        out[image["file_name"]] = (image["id"], [])
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}] (id {ann.get('id')})" if isinstance(ann, dict) else f"annotations[{i}]"
        if not isinstance(ann, dict) or ann.get("image_id") not in by_id:
            raise DataError(path, f"{where}: its image_id is not among 'images'")
        nums = _numbers(ann.get("bbox"), (4,))
        if nums is None or nums[2] <= 0 or nums[3] <= 0:
            raise DataError(path, f"{where}: bbox {ann.get('bbox')!r} is not [x, y, w, h] with w, h > 0")
        x, y, w, h = nums
        centre = ((x + w / 2, y + h / 2, 1),)
        box = (x, y, x + w, y + h)
        points = centre if mode in ("point", "both") else ()
        category = ann.get("category_id", 1)
        prompt = Prompt(points, box if mode in ("box", "both") else None, category, ann.get("id", i), True)
        out[by_id[ann["image_id"]]][1].append(prompt)
    return out


def read_prompts(
    path: str | Path, files: list[Path], root: Path, coco_prompt: str = "box"
) -> list[ImagePrompts]:
    """The prompts of ``path`` for the images ``files`` found under ``root``, in ``files``' order.

    Raises:
        DataError: not JSON, not a prompts or COCO file, a key naming no image of the folder, a malformed
            prompt (naming the file, the image key and the prompt).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "no such prompts file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read the prompts file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise DataError(
            path, f"expected a JSON object (image name → prompts, or COCO), got {type(data).__name__}"
        )
    rel = {f.relative_to(root).as_posix(): f for f in files}
    by_name: dict[str, list[Path]] = {}
    for f in files:
        by_name.setdefault(f.name, []).append(f)

    if isinstance(data.get("images"), list) and "annotations" in data:
        if coco_prompt not in COCO_PROMPTS:
            raise ValueError(f"coco_prompt must be one of {COCO_PROMPTS}, got {coco_prompt!r}")
        entries = _coco_prompts(path, data, coco_prompt)
    else:
        entries = {}
        for n, (key, entry) in enumerate(sorted(data.items())):
            try:
                entries[key] = (n + 1, _entry_prompts(key, entry))
            except ValueError as exc:
                raise DataError(path, str(exc)) from None

    found: dict[Path, ImagePrompts] = {}
    for key, (image_id, prompts) in entries.items():
        file = _match(key, rel, by_name)
        if file is None:
            raise DataError(path, f"{key!r}: no such image under {root} (keys are paths relative to it)")
        if file in found:
            raise DataError(path, f"{key!r} and {found[file].key!r} name the same image {file}")
        found[file] = ImagePrompts(key, file, image_id, prompts)
    return [found[f] for f in files if f in found]


def image_size(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` of an image as :func:`~anydistill.data.io.read_image` will return it (EXIF rotation
    applied), from its header only; None when the header cannot be read (the image is then skipped
    later, with its reason)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            rotated = int(img.getexif().get(0x0112, 1)) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - any unreadable header: decided when the image is read
        return None
    return (w, h) if rotated else (h, w)


def check_inside(item: ImagePrompts, size: tuple[int, int], source: Path) -> list[Prompt]:
    """``item``'s prompts for an image of ``size = (H, W)``: COCO boxes clipped, everything checked.

    Raises:
        DataError: a point or box corner outside ``[0, W] x [0, H]`` (naming ``source``, the key, the prompt).
    """
    h, w = size
    out = []
    for prompt in item.prompts:
        where = f"{item.key!r} prompt {prompt.prompt_id}"
        box = prompt.box
        if box is not None and prompt.clip_box:
            x0, y0, x1, y1 = box
            if min(x0, y0) < -_COCO_BOX_SLACK or x1 > w + _COCO_BOX_SLACK or y1 > h + _COCO_BOX_SLACK:
                raise DataError(source, f"{where}: box {list(box)} lies outside the {w}x{h} (W x H) image")
            box = (max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h)))
        for x, y, _ in prompt.points:
            if not (0 <= x <= w and 0 <= y <= h):
                raise DataError(
                    source, f"{where}: point [{x:g}, {y:g}] lies outside the {w}x{h} (W x H) image"
                )
        if box is not None and not (0 <= box[0] and 0 <= box[1] and box[2] <= w and box[3] <= h):
            raise DataError(source, f"{where}: box {list(box)} lies outside the {w}x{h} (W x H) image")
        out.append(Prompt(prompt.points, box, prompt.category_id, prompt.prompt_id))
    return out
