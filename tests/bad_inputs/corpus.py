"""The bad-input corpus: every case a user's broken or odd input can be, built in a temporary folder.

Each :class:`Case` has a name, a one-line description, a builder that writes its files deterministically
(fixed seeds, no downloads) and, for every command it applies to, the outcome class that command must
give (:class:`Expect`). :mod:`bad_inputs.matrix` runs the pairs and classifies what happened; a change of
behaviour is a changed class, so ``tests/bad_inputs/test_bad_inputs.py`` fails.

The outcome classes:

- ``works``: exit 0, the expected outputs written and right (a grey, 16-bit or palette image predicted at
  its own size from the pixels a reader must see; an EXIF-rotated photo in its displayed orientation);
- ``one line``: exit 2, stderr is exactly one line ``anydistill: error: ...`` naming the file or the key
  (``Expect.names``), no traceback;
- ``counted skip``: exit 0, the good inputs' outputs written, and the command's report counts the skipped
  files and names each (on stdout, or in the warning line that goes with the count);
- ``usage``: argparse's own refusal of a malformed option value (a word where a number goes): exit 2, its
  usage block and one error line naming the option.

A case's layout (:class:`CaseFiles`) is a folder-format dataset ``root/images`` + ``root/depth`` (or
``root/semantic`` + ``classes.json``) that every command reads its part of: ``data import`` copies
``images/`` + the label folder, ``train``/``distill``/``evaluate`` read the folder, ``predict`` and
``pseudo-label`` read ``images/``, ``segment`` reads one image.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tiny_students import save_tiny_depth_student

from anydistill.loading import model_record
from anydistill.models import build_model

WORKS = "works"
ONE_LINE = "one line"
SKIP = "counted skip"
USAGE = "usage"
OUTCOMES = (WORKS, ONE_LINE, SKIP, USAGE)

IMPORT, TOYWORLD, TRAIN, DISTILL = "data import", "data toyworld", "train", "distill"
PSEUDO, EVALUATE, PREDICT, SEGMENT = "pseudo-label", "evaluate", "predict", "segment"
COMMANDS = (IMPORT, TOYWORLD, TRAIN, DISTILL, PSEUDO, EVALUATE, PREDICT, SEGMENT)

#: Height and width of the corpus's ordinary images (not square, so a rotation shows in the shape).
H, W = 40, 48
CLASSES = ({"id": 0, "name": "floor"}, {"id": 1, "name": "wall"}, {"id": 2, "name": "object"})


@dataclass(frozen=True)
class Expect:
    """What one command must do with a case.

    Attributes:
        outcome: one of :data:`OUTCOMES`.
        names: what the one error line must contain: ``"{bad}"`` (the case's offending file), ``"{root}"``,
            ``"{images}"``, ``"{out}"``, ``"{checkpoint}"``, ``"{image}"`` are filled in from the case's
            files, ``"{depth_ckpt}"`` (also ``semantic_ckpt``, ``sam_ckpt``) from the shared tiny models;
            other text (an option, a config key) is taken as it is.
        argv: extra arguments for this command (options, ``key=value`` overrides); may use the same fields.
    """

    outcome: str
    names: tuple[str, ...] = ()
    argv: tuple[str, ...] = ()


@dataclass
class CaseFiles:
    """What a case's builder wrote.

    Attributes:
        root: the folder-format dataset (``images/`` + labels); may not exist (a missing path).
        task: ``"depth"`` or ``"semantic"``: which labels ``root`` holds.
        pixels: relative image path (POSIX, with extension) → the uint8 ``(H, W, 3)`` RGB a reader must
            return for it (displayed orientation, alpha dropped, 16-bit scaled), for every readable image;
            computed here without the reader under test.
        bad: the offending files (named by a one-line error, or skipped and counted).
        image: the single image ``segment`` reads (default: the first readable one).
        checkpoint: replaces each command's checkpoint / teacher (the checkpoint cases).
        out: replaces each command's output path (the output cases).
    """

    root: Path
    task: str = "depth"
    pixels: dict[str, np.ndarray] = field(default_factory=dict)
    bad: list[Path] = field(default_factory=list)
    image: Path | None = None
    checkpoint: Path | None = None
    out: Path | None = None

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def labels(self) -> Path:
        return self.root / self.task

    def segment_image(self) -> Path:
        if self.image is not None:
            return self.image
        if self.pixels:
            return self.images / sorted(self.pixels)[0]
        return self.bad[0] if self.bad else self.images / "a.png"

    def fields(self) -> dict[str, str]:
        """The values ``Expect.names`` / ``Expect.argv`` may refer to."""
        return {
            "bad": str(self.bad[0]) if self.bad else "",
            "root": str(self.root),
            "images": str(self.images),
            "out": str(self.out) if self.out else "",
            "checkpoint": str(self.checkpoint) if self.checkpoint else "",
            "image": str(self.segment_image()),
        }


@dataclass(frozen=True)
class Case:
    """One bad input: a name, one line saying what it is, its builder and each command's expected class."""

    name: str
    description: str
    build: Callable[[Path], CaseFiles]
    expect: dict[str, Expect]


# ------------------------------------------------------------------------------------ file makers
def rgb(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """A smooth, deterministic uint8 ``(h, w, 3)`` picture (smooth: JPEG keeps it close)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 6.28, size=3)
    chans = [127 + 120 * np.sin(x / (5 + 3 * c) + y / (7 + 2 * c) + phase[c]) for c in range(3)]
    return np.stack(chans, -1).clip(0, 255).astype(np.uint8)


def _depth_png(path: Path, h: int, w: int, seed: int) -> None:
    """A 16-bit depth PNG (millimetres, 1..6 m) of ``h`` x ``w``."""
    rng = np.random.default_rng(seed)
    depth = rng.integers(1000, 6000, size=(h, w)).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(depth).save(path)


def _mask_png(path: Path, h: int, w: int, seed: int, top: int = 3) -> None:
    """A class-id mask (ids ``0..top-1``) as an 8-bit index PNG."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, top, size=(h, w)).astype(np.uint8)).save(path)


def _label(root: Path, task: str, rel: str, h: int, w: int, seed: int) -> Path:
    """Writes the label of image ``rel`` (``root/<task>/<rel stem>.png``); returns its path."""
    stem = rel.rsplit(".", 1)[0]
    path = root / task / f"{stem}.png"
    (_depth_png if task == "depth" else _mask_png)(path, h, w, seed)
    return path


def _save_png(path: Path, pixels: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")
    return pixels


def good_set(root: Path, task: str = "depth", n: int = 3, names: tuple[str, ...] | None = None) -> CaseFiles:
    """``n`` ordinary RGB PNGs of ``H`` x ``W`` with their labels (and ``classes.json`` for semantic)."""
    names = names or tuple(f"{chr(ord('a') + i)}.png" for i in range(n))
    files = CaseFiles(root=root, task=task)
    for i, rel in enumerate(names):
        files.pixels[rel] = _save_png(root / "images" / rel, rgb(seed=i))
        _label(root, task, rel, H, W, seed=100 + i)
    if task == "semantic":
        (root / "classes.json").write_text(json.dumps({"classes": list(CLASSES), "ignore_index": 255}))
    return files


def _add_bad(files: CaseFiles, rel: str, data: bytes) -> CaseFiles:
    """Adds the unreadable image ``rel`` (its bytes ``data``) with an ordinary label beside it."""
    path = files.images / rel
    path.write_bytes(data)
    _label(files.root, files.task, rel, H, W, seed=99)
    files.bad.append(path)
    files.image = path
    return files


def save_tiny_sam(path: Path, size: int = 64) -> Path:
    """An untrained ``sam_tiny`` saved as training saves a promptable model, in a ``size``-pixel frame (a
    bare ``.pth`` state dict would be rebuilt in SAM's 1024 frame: seconds per image on a CPU)."""
    torch.manual_seed(0)
    model = build_model("sam_tiny", img_size=size)
    arch = {"model_name": "sam_tiny", "model_kwargs": {"img_size": size}}
    record = model_record("promptable", model.preprocess_spec(), arch)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "anydistill_model": record}, path)
    return path


def _png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height`` grey pixels (over PIL's decompression-bomb limit) and
    a few bytes of data: opening it must be refused before anything is decoded. Written by hand because
    the point is to never allocate the image (PIL would need 400 MB to save a real one)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------------------------- the builders
def _zero_byte(tmp: Path) -> CaseFiles:
    return _add_bad(good_set(tmp / "data"), "c_zero.png", b"")


def _truncated(tmp: Path) -> CaseFiles:
    return _add_bad(good_set(tmp / "data"), "c_cut.png", _png_bytes(rgb(seed=7))[:200])


def _not_an_image(tmp: Path) -> CaseFiles:
    data = np.random.default_rng(3).integers(0, 256, 600, dtype=np.uint8).tobytes()
    return _add_bad(good_set(tmp / "data"), "c_noise.png", data)


def _huge(tmp: Path) -> CaseFiles:
    return _add_bad(good_set(tmp / "data"), "c_huge.png", _bomb_png(20_000, 20_000))


def _wrong_extension(tmp: Path) -> CaseFiles:
    """A PNG saved as ``.jpg``: read by its contents (one warning), not refused."""
    files = good_set(tmp / "data", n=2)
    pixels = rgb(seed=5)
    (files.images / "c_png.jpg").write_bytes(_png_bytes(pixels))
    _label(files.root, files.task, "c_png.jpg", H, W, seed=5)
    files.pixels["c_png.jpg"] = pixels
    files.image = files.images / "c_png.jpg"
    return files


def _odd_mode(mode: str) -> Callable[[Path], CaseFiles]:
    """One image in PIL mode ``mode`` beside two RGB ones; ``pixels`` is what it must read as."""

    def build(tmp: Path) -> CaseFiles:
        files = good_set(tmp / "data", n=2)
        rng = np.random.default_rng(11)
        path = files.images / f"c_{mode.lower().replace(';', '')}.png"
        if mode == "L":
            grey = rgb(seed=11)[..., 0]
            Image.fromarray(grey).save(path)
            expected = np.repeat(grey[..., None], 3, -1)
        elif mode == "RGBA":
            rgba = np.concatenate([rgb(seed=11), rng.integers(0, 256, (H, W, 1), dtype=np.uint8)], -1)
            Image.fromarray(rgba, mode="RGBA").save(path)
            expected = rgba[..., :3]  # alpha dropped, stored colour kept
        elif mode == "I;16":
            raw = (rgb(seed=11)[..., 0].astype(np.uint16) * 257 + rng.integers(0, 257, (H, W))).astype(
                np.uint16
            )
            Image.fromarray(raw).save(path)
            assert Image.open(path).mode == "I;16"
            expected = np.repeat(np.rint(raw * (255.0 / 65535.0)).astype(np.uint8)[..., None], 3, -1)
        else:  # "P"
            palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
            index = (rgb(seed=11)[..., 0] // 16).astype(np.uint8)
            img = Image.fromarray(index, mode="P")
            img.putpalette(palette.flatten().tolist())
            img.save(path)
            expected = palette[index]
        _label(files.root, files.task, path.name, H, W, seed=11)
        files.pixels[path.name] = expected
        files.image = path
        return files

    return build


def _exif_rotated(tmp: Path) -> CaseFiles:
    """A JPEG stored landscape, ``H`` x ``W`` = 40 x 48 (height x width), with EXIF orientation 6: it is
    displayed turned 90° clockwise, portrait 48 x 40; its label is saved in the displayed orientation."""
    files = good_set(tmp / "data", n=2)
    stored = rgb(H, W, seed=21)
    path = files.images / "c_phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    decoded = np.asarray(Image.open(path).convert("RGB"))  # stored orientation, as JPEG decoded it
    files.pixels[path.name] = np.ascontiguousarray(np.rot90(decoded, k=-1))  # (W, H, 3): turned clockwise
    _label(files.root, files.task, path.name, W, H, seed=21)
    files.image = path
    return files


def _exif_label_unrotated(tmp: Path) -> CaseFiles:
    """The EXIF-rotated photo with its label saved in the stored (un-rotated) orientation."""
    files = _exif_rotated(tmp)
    label = _label(files.root, files.task, "c_phone.jpg", H, W, seed=21)
    files.bad.append(label)
    return files


def _tiny(tmp: Path) -> CaseFiles:
    """A 1 x 1 image (with a 1 x 1 label) beside ordinary ones."""
    files = good_set(tmp / "data", n=2)
    pixel = np.array([[[200, 30, 90]]], np.uint8)
    files.pixels["c_dot.png"] = _save_png(files.images / "c_dot.png", pixel)
    _label(files.root, files.task, "c_dot.png", 1, 1, seed=31)
    files.image = files.images / "c_dot.png"
    return files


def _large(tmp: Path) -> CaseFiles:
    """One 900 x 1,200 image (big next to the model's 64-pixel input, under every limit)."""
    root = tmp / "data"
    files = CaseFiles(root=root)
    files.pixels["big.png"] = _save_png(root / "images" / "big.png", rgb(900, 1200, seed=41))
    return files


def _size_mismatch(tmp: Path) -> CaseFiles:
    files = good_set(tmp / "data")
    files.bad.append(_label(files.root, files.task, "b.png", H, W - 8, seed=51))
    return files


def _missing_label(tmp: Path) -> CaseFiles:
    files = good_set(tmp / "data")
    (files.labels / "b.png").unlink()
    files.bad.append(files.images / "b.png")
    return files


def _no_label_at_all(tmp: Path) -> CaseFiles:
    files = good_set(tmp / "data")
    for label in files.labels.iterdir():
        label.unlink()
    files.bad.append(files.images)
    return files


def _all_invalid_depth(tmp: Path) -> CaseFiles:
    files = good_set(tmp / "data")
    Image.fromarray(np.zeros((H, W), np.uint16)).save(files.labels / "b.png")
    files.bad.append(files.labels / "b.png")  # a valid file; evaluate leaves it out of the metrics, counted
    return files


def _nan_inf_depth(tmp: Path) -> CaseFiles:
    """Depth as ``.npy`` metres with NaN, +inf, -inf and negative pixels (all invalid, masked out)."""
    files = good_set(tmp / "data")
    depth = np.random.default_rng(61).uniform(1, 6, (H, W)).astype(np.float32)
    depth[:5] = np.nan
    depth[5:10, :10] = np.inf
    depth[10:12] = -np.inf
    depth[12:14, :4] = -2.0
    (files.labels / "b.png").unlink()
    np.save(files.labels / "b.npy", depth)
    return files


def _out_of_range_class(tmp: Path) -> CaseFiles:
    files = good_set(tmp / "data", task="semantic")
    mask = np.zeros((H, W), np.uint8)
    mask[4:9, 4:9] = 7  # the table has ids 0..2
    Image.fromarray(mask).save(files.labels / "b.png")
    files.bad.append(files.labels / "b.png")
    return files


def _malformed_classes(tmp: Path) -> CaseFiles:
    files = good_set(tmp / "data", task="semantic")
    (files.root / "classes.json").write_text('{"classes": [{"id": 0, "name": "floor"},]}')
    files.bad.append(files.root / "classes.json")
    return files


def _huge_class_id(tmp: Path) -> CaseFiles:
    """classes.json naming class id 10^12 (a lookup table of that length would need 1 TB)."""
    files = good_set(tmp / "data", task="semantic")
    table = {"classes": [*CLASSES[:2], {"id": 10**12, "name": "object"}], "ignore_index": 255}
    (files.root / "classes.json").write_text(json.dumps(table))
    files.bad.append(files.root / "classes.json")
    return files


ODD_NAMES = ("my photo #1.png", "ünïcødé 写真.png", "-dash.png", "a.b.c.png", "sub dir/x'y.png")


def _odd_names(tmp: Path) -> CaseFiles:
    """Spaces, '#', non-ASCII, a leading dash, inner dots, a quote and a sub-folder with a space."""
    files = good_set(tmp / "da ta", names=ODD_NAMES)
    files.image = files.images / "-dash.png"
    return files


def _empty_folder(tmp: Path) -> CaseFiles:
    root = tmp / "data"
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    (root / "images" / "notes.txt").write_text("no images here")
    return CaseFiles(root=root, bad=[root / "images"], image=root / "images")


def _symlink_loop(tmp: Path) -> CaseFiles:
    """A folder symlink to its own parent (a loop for a walker that follows links) and two file symlinks
    pointing at each other (``x.png`` → ``y.png`` → ``x.png``), beside ordinary images."""
    files = good_set(tmp / "data")
    os.symlink(files.images, files.images / "loop", target_is_directory=True)
    os.symlink(files.images / "y.png", files.images / "x.png")
    os.symlink(files.images / "x.png", files.images / "y.png")
    return files


def _missing_path(tmp: Path) -> CaseFiles:
    root = tmp / "no_such_data"
    return CaseFiles(root=root, bad=[root / "images"], image=root / "images" / "a.png")


def _unwritable_output(tmp: Path) -> CaseFiles:
    """An output folder in a read-only folder. Root ignores permission bits, so as root the output is a
    folder in ``/sys`` (sysfs), where no one can create one."""
    files = good_set(tmp / "data")
    if os.geteuid() == 0 and Path("/sys/kernel").is_dir():
        files.out = Path("/sys/anydistill-bad-inputs/out")
    else:
        locked = tmp / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        files.out = locked / "out"
    return files


def _output_is_file(tmp: Path) -> CaseFiles:
    files = good_set(tmp / "data")
    files.out = tmp / "taken.txt"
    files.out.write_text("a file where the output folder should go")
    return files


def _ckpt(kind: str) -> Callable[[Path], CaseFiles]:
    def build(tmp: Path) -> CaseFiles:
        files = good_set(tmp / "data")
        path = tmp / ("model.pth" if kind == "pth" else "model.ckpt")
        if kind == "garbage":
            path.write_bytes(np.random.default_rng(71).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "pickled":
            torch.save({"state_dict": {}, "hyper_parameters": {"x": _Payload()}}, path)
        elif kind == "pth":  # a plain state dict of no known model
            torch.save({"layer.weight": torch.ones(3, 3)}, path)
        elif kind == "truncated":  # the first 2 KiB of a real student checkpoint
            whole = save_tiny_depth_student(tmp / "whole.ckpt")
            path.write_bytes(whole.read_bytes()[:2048])
            whole.unlink()
        elif kind == "sam":
            save_tiny_sam(path)
        elif kind == "depth":
            save_tiny_depth_student(path)
        files.checkpoint = path
        return files

    return build


class _Payload:
    """Unpickling this would run code (``__reduce__``); a weights-only reader refuses it."""

    def __reduce__(self):  # noqa: ANN204
        return (print, ("code ran while loading a checkpoint",))


def _plain(tmp: Path) -> CaseFiles:
    return good_set(tmp / "data")


def _semantic_without_classes(tmp: Path) -> CaseFiles:
    files = good_set(tmp / "data", task="semantic")
    (files.root / "classes.json").unlink()
    files.bad.append(files.root / "classes.json")
    return files


def _malformed_yaml(tmp: Path) -> CaseFiles:
    files = good_set(tmp / "data")
    (tmp / "bad.yaml").write_text("trainer:\n  max_steps: [1\ndata: {\n")
    files.bad.append(tmp / "bad.yaml")
    return files


def _unknown_key_yaml(tmp: Path) -> CaseFiles:
    files = good_set(tmp / "data")
    (tmp / "typo.yaml").write_text("trainer:\n  max_step: 3\n")
    files.bad.append(tmp / "typo.yaml")
    return files


# --------------------------------------------------------------------------------------- the registry
def _e(outcome: str, *names: str, argv: tuple[str, ...] = ()) -> Expect:
    return Expect(outcome, names, argv)


#: train/distill with DataLoader worker processes (the shipped configs use 2): an error raised in a worker
#: must still come out as one line.
WORKERS = ("data.num_workers=2",)
BAD = "{bad}"
#: distill --teacher --images: pseudo-label the case's images first; labeled data from toyworld.
DISTILL_OVER_IMAGES = (
    "--teacher",
    "{depth_ckpt}",
    "--images",
    "{images}",
    "data.source=toyworld",
    "data.train_count=4",
    "data.val_count=2",
    "distill.cache=null",
)


def _bad_file_case(
    name: str, description: str, build: Callable[[Path], CaseFiles], extra: dict[str, Expect] | None = None
) -> Case:
    """An unreadable image among readable ones: refused in one line naming it where one file is the
    input or every file is needed (import, evaluate, segment, training), skipped and counted where a
    folder is run over (predict, the teacher pass)."""
    expect = {
        IMPORT: _e(ONE_LINE, BAD),
        PSEUDO: _e(SKIP),
        EVALUATE: _e(ONE_LINE, BAD),
        PREDICT: _e(SKIP),
        SEGMENT: _e(ONE_LINE, BAD),
    }
    return Case(name, description, build, {**expect, **(extra or {})})


def _works_everywhere(train: bool = False) -> dict[str, Expect]:
    expect = {cmd: _e(WORKS) for cmd in (IMPORT, PSEUDO, EVALUATE, PREDICT, SEGMENT)}
    if train:
        expect[TRAIN] = _e(WORKS)
    return expect


CASES: tuple[Case, ...] = (
    _bad_file_case(
        "zero_byte_image",
        "an image file of 0 bytes",
        _zero_byte,
        {
            TRAIN: _e(ONE_LINE, BAD, argv=WORKERS),
            DISTILL: _e(ONE_LINE, BAD, argv=WORKERS),  # in the labeled set
            PSEUDO: _e(SKIP, argv=("--num-workers", "2")),
        },
    ),
    _bad_file_case(
        "truncated_image",
        "a PNG cut after 200 bytes",
        _truncated,
        # distill --images: the teacher pass over the case's images skips it (counted), then the student
        # trains on the others (labeled data from toyworld).
        {TRAIN: _e(ONE_LINE, BAD, argv=WORKERS), DISTILL: _e(SKIP, argv=DISTILL_OVER_IMAGES)},
    ),
    _bad_file_case("not_an_image", "random bytes named .png", _not_an_image),
    _bad_file_case(
        "huge_image",
        "a PNG header claiming 20000 x 20000 pixels (a decompression bomb)",
        _huge,
        {TRAIN: _e(ONE_LINE, BAD, argv=WORKERS)},
    ),
    Case(
        "wrong_extension",
        "a PNG named .jpg (read by its contents, one warning)",
        _wrong_extension,
        _works_everywhere(),
    ),
    Case("grey_image", "an 8-bit greyscale (L) image", _odd_mode("L"), _works_everywhere()),
    Case("rgba_image", "an RGBA image (alpha dropped, colours kept)", _odd_mode("RGBA"), _works_everywhere()),
    Case(
        "sixteen_bit_image",
        "a 16-bit greyscale PNG (scaled by 255/65535)",
        _odd_mode("I;16"),
        _works_everywhere(train=True),
    ),
    Case(
        "palette_image", "a palette (P) PNG (looked up in its palette)", _odd_mode("P"), _works_everywhere()
    ),
    Case(
        "exif_rotated",
        "a JPEG with EXIF orientation 6, its label in the displayed orientation",
        _exif_rotated,
        _works_everywhere(train=True),
    ),
    Case(
        "exif_label_unrotated",
        "the EXIF-rotated JPEG with its label saved un-rotated",
        _exif_label_unrotated,
        {IMPORT: _e(ONE_LINE, BAD, "EXIF"), EVALUATE: _e(ONE_LINE, BAD, "EXIF")},
    ),
    Case("one_pixel_image", "a 1 x 1 image with a 1 x 1 label", _tiny, _works_everywhere()),
    Case(
        "large_image",
        "a 900 x 1200 image (big next to the 64-pixel model input)",
        _large,
        {PREDICT: _e(WORKS), SEGMENT: _e(WORKS)},
    ),
    Case(
        "size_mismatch",
        "a label 8 pixels narrower than its image",
        _size_mismatch,
        {
            IMPORT: _e(ONE_LINE, BAD),
            TRAIN: _e(ONE_LINE, BAD, argv=WORKERS),
            EVALUATE: _e(ONE_LINE, BAD),
            DISTILL: _e(ONE_LINE, BAD, argv=WORKERS),
        },
    ),
    Case(
        "missing_label",
        "an image without its label",
        _missing_label,
        {IMPORT: _e(ONE_LINE, BAD), TRAIN: _e(ONE_LINE, BAD), EVALUATE: _e(ONE_LINE, BAD)},
    ),
    Case(
        "missing_label_skipped",
        "an image without its label, with data.on_missing_label=skip",
        _missing_label,
        {TRAIN: _e(SKIP, argv=("data.on_missing_label=skip",))},
    ),
    Case(
        "no_label_at_all_skipped",
        "no image has a label, with data.on_missing_label=skip",
        _no_label_at_all,
        {TRAIN: _e(ONE_LINE, "{images}", argv=("data.on_missing_label=skip",))},
    ),
    Case(
        "all_invalid_depth",
        "a depth map with no valid pixel (all 0)",
        _all_invalid_depth,
        {IMPORT: _e(WORKS), TRAIN: _e(WORKS), EVALUATE: _e(SKIP)},
    ),
    Case(
        "nan_inf_depth",
        "a .npy depth map with NaN, +-inf and negative pixels",
        _nan_inf_depth,
        {IMPORT: _e(WORKS), TRAIN: _e(WORKS), EVALUATE: _e(WORKS)},
    ),
    Case(
        "out_of_range_class",
        "a mask holding class id 7 where classes.json has 0..2",
        _out_of_range_class,
        {
            IMPORT: _e(ONE_LINE, "--classes", argv=("--classes", "floor,wall,object")),
            TRAIN: _e(ONE_LINE, BAD, argv=WORKERS),
            EVALUATE: _e(ONE_LINE, BAD),
        },
    ),
    Case(
        "malformed_classes_json",
        "classes.json with a trailing comma",
        _malformed_classes,
        {TRAIN: _e(ONE_LINE, BAD), EVALUATE: _e(ONE_LINE, BAD)},
    ),
    Case(
        "huge_class_id",
        "classes.json naming class id 10^12",
        _huge_class_id,
        {TRAIN: _e(ONE_LINE, BAD), EVALUATE: _e(ONE_LINE, BAD)},
    ),
    Case(
        "odd_names",
        "file and folder names with spaces, '#', non-ASCII, a leading dash, dots and a quote",
        _odd_names,
        {
            **_works_everywhere(train=True),
            DISTILL: _e(WORKS),
            TOYWORLD: _e(WORKS, argv=("--out", "{root}/toy wörld #1")),
        },
    ),
    Case(
        "empty_folder",
        "an image folder holding no image (only notes.txt)",
        _empty_folder,
        {
            IMPORT: _e(ONE_LINE, "{images}"),
            TRAIN: _e(ONE_LINE, "{images}"),
            EVALUATE: _e(ONE_LINE, "{root}"),
            PREDICT: _e(ONE_LINE, "{images}"),
            PSEUDO: _e(ONE_LINE, "{images}"),
            SEGMENT: _e(ONE_LINE, "{images}"),
            DISTILL: _e(ONE_LINE, "{images}"),
        },
    ),
    Case(
        "symlink_loop",
        "a folder symlink to its parent and two file symlinks pointing at each other",
        _symlink_loop,
        {IMPORT: _e(WORKS), EVALUATE: _e(WORKS), PREDICT: _e(WORKS), PSEUDO: _e(WORKS)},
    ),
    Case(
        "missing_path",
        "a data folder (or image) that does not exist",
        _missing_path,
        {
            IMPORT: _e(ONE_LINE, "{images}"),
            TRAIN: _e(ONE_LINE, "{root}"),
            EVALUATE: _e(ONE_LINE, "{root}"),
            PREDICT: _e(ONE_LINE, "{images}"),
            PSEUDO: _e(ONE_LINE, "{images}"),
            SEGMENT: _e(ONE_LINE, "{image}"),
            DISTILL: _e(ONE_LINE, "{images}", argv=("--teacher", "{depth_ckpt}", "--images", "{images}")),
        },
    ),
    Case(
        "unwritable_output",
        "an output folder where the user cannot create one",
        _unwritable_output,
        {cmd: _e(ONE_LINE, "{out}") for cmd in (IMPORT, TOYWORLD, TRAIN, PSEUDO, EVALUATE, PREDICT, SEGMENT)},
    ),
    Case(
        "output_is_file",
        "an output path that is an existing file",
        _output_is_file,
        {cmd: _e(ONE_LINE, "{out}") for cmd in (IMPORT, TOYWORLD, TRAIN, PSEUDO, EVALUATE, PREDICT, SEGMENT)},
    ),
    Case(
        "garbage_checkpoint",
        "a checkpoint of 4 KiB of random bytes",
        _ckpt("garbage"),
        {cmd: _e(ONE_LINE, "{checkpoint}") for cmd in (DISTILL, PSEUDO, EVALUATE, PREDICT, SEGMENT)},
    ),
    Case(
        "empty_checkpoint",
        "a checkpoint of 0 bytes",
        _ckpt("empty"),
        {cmd: _e(ONE_LINE, "{checkpoint}") for cmd in (PSEUDO, EVALUATE, PREDICT, SEGMENT)},
    ),
    Case(
        "truncated_checkpoint",
        "the first 2 KiB of a student checkpoint",
        _ckpt("truncated"),
        {cmd: _e(ONE_LINE, "{checkpoint}") for cmd in (PSEUDO, EVALUATE, PREDICT, SEGMENT)},
    ),
    Case(
        "pickled_checkpoint",
        "a checkpoint whose unpickling would run code",
        _ckpt("pickled"),
        {cmd: _e(ONE_LINE, "{checkpoint}") for cmd in (DISTILL, PSEUDO, EVALUATE, PREDICT, SEGMENT)},
    ),
    Case(
        "foreign_state_dict",
        "a .pth state dict of no known model",
        _ckpt("pth"),
        {cmd: _e(ONE_LINE, "{checkpoint}") for cmd in (PSEUDO, EVALUATE, PREDICT, SEGMENT)},
    ),
    Case(
        "sam_checkpoint_for_dense",
        "a segment-anything model given where a depth/semantic student goes",
        _ckpt("sam"),
        {
            PSEUDO: _e(WORKS),
            EVALUATE: _e(ONE_LINE, "{root}/instances"),
            PREDICT: _e(ONE_LINE, "{checkpoint}"),
        },
    ),
    Case(
        "depth_checkpoint_for_segment",
        "a depth student given where a promptable (SAM) model goes",
        _ckpt("depth"),
        {
            SEGMENT: _e(ONE_LINE, "{checkpoint}"),
            EVALUATE: _e(ONE_LINE, "{checkpoint}", argv=("--task", "promptable")),
        },
    ),
    Case(
        "zero_value",
        "0 for a count, size or batch size",
        _plain,
        {
            TOYWORLD: _e(ONE_LINE, "--count", argv=("--count", "0")),
            IMPORT: _e(ONE_LINE, "--holdout", argv=("--holdout", "3")),
            TRAIN: _e(ONE_LINE, "data.batch_size", argv=("data.batch_size=0",)),
            DISTILL: _e(ONE_LINE, "distill.unlabeled_ratio", argv=("distill.unlabeled_ratio=0",)),
            PSEUDO: _e(ONE_LINE, "batch_size", argv=("--batch-size", "0")),
            EVALUATE: _e(ONE_LINE, "--batch-size", argv=("--batch-size", "0")),
            PREDICT: _e(ONE_LINE, "--batch-size", argv=("--batch-size", "0")),
            SEGMENT: _e(ONE_LINE, "--points-per-side", argv=("--auto", "--points-per-side", "0")),
        },
    ),
    Case(
        "negative_value",
        "a negative seed, size, count, worker count or coordinate",
        _plain,
        {
            TOYWORLD: _e(ONE_LINE, "--seed", argv=("--seed", "-1")),
            IMPORT: _e(ONE_LINE, "--holdout", argv=("--holdout", "-1")),
            TRAIN: _e(ONE_LINE, "trainer.max_steps", argv=("trainer.max_steps=-5",)),
            DISTILL: _e(ONE_LINE, "distill.trim", argv=("distill.trim=-0.5",)),
            PSEUDO: _e(ONE_LINE, "num_workers", argv=("--num-workers", "-1")),
            EVALUATE: _e(ONE_LINE, "--size", argv=("--size", "-64")),
            PREDICT: _e(ONE_LINE, "--size", argv=("--size", "-64")),
            SEGMENT: _e(ONE_LINE, "point", argv=("--point", "-5,10")),
        },
    ),
    Case(
        "not_a_number",
        "a word where a number goes",
        _plain,
        {
            TOYWORLD: _e(USAGE, "--count", argv=("--count", "many")),
            IMPORT: _e(USAGE, "--holdout", argv=("--holdout", "some")),
            TRAIN: _e(ONE_LINE, "data.batch_size", argv=("data.batch_size=four",)),
            DISTILL: _e(ONE_LINE, "distill.cutmix_p", argv=("distill.cutmix_p=half",)),
            PSEUDO: _e(USAGE, "--batch-size", argv=("--batch-size", "x")),
            EVALUATE: _e(USAGE, "--count", argv=("--count", "all")),
            PREDICT: _e(USAGE, "--batch-size", argv=("--batch-size", "x")),
            SEGMENT: _e(ONE_LINE, "--point", argv=("--point", "x,y")),
        },
    ),
    Case(
        "malformed_value",
        "a value of the right type but the wrong shape: label map, point, box, override, domain",
        _plain,
        {
            TOYWORLD: _e(ONE_LINE, "nowhere", argv=("--domain", "nowhere")),
            IMPORT: _e(ONE_LINE, "--label-map", argv=("--label-map", "255=1")),
            TRAIN: _e(ONE_LINE, "oops", argv=("oops",)),
            DISTILL: _e(ONE_LINE, "data.imag_size", argv=("data.imag_size=64",)),
            PSEUDO: _e(ONE_LINE, "max_size", argv=("--max-size", "0")),
            EVALUATE: _e(ONE_LINE, "nowhere", argv=("--data", "toyworld:nowhere")),
            PREDICT: _e(ONE_LINE, "size", "50", argv=("--size", "50")),
            SEGMENT: _e(ONE_LINE, "--box", argv=("--box", "30,30,10,10")),
        },
    ),
    Case(
        "unknown_device",
        "a device or accelerator name that does not exist (banana)",
        _plain,
        {
            SEGMENT: _e(ONE_LINE, "banana", argv=("--device", "banana")),
            EVALUATE: _e(ONE_LINE, "banana", argv=("--device", "banana")),
            TRAIN: _e(ONE_LINE, "trainer", "banana", argv=("trainer.accelerator=banana",)),
            DISTILL: _e(ONE_LINE, "trainer", "banana", argv=("trainer.accelerator=banana",)),
        },
    ),
    Case(
        "absent_gpu",
        "a CUDA device the machine does not have (cuda:99)",
        _plain,
        {
            SEGMENT: _e(ONE_LINE, "cuda:99", argv=("--device", "cuda:99")),
            EVALUATE: _e(ONE_LINE, "cuda:99", argv=("--device", "cuda:99")),
            TRAIN: _e(ONE_LINE, "trainer", argv=("trainer.accelerator=cuda", "trainer.devices=99")),
        },
    ),
    Case(
        "model_of_another_task",
        "model.name of a semantic (train) or SAM (distill) model for a depth run",
        _plain,
        {
            TRAIN: _e(ONE_LINE, "model.name", argv=("model.name=seg_tiny",)),
            DISTILL: _e(ONE_LINE, "model.name", argv=("model.name=sam_tiny",)),
        },
    ),
    Case(
        "semantic_without_classes",
        "semantic masks without classes.json",
        _semantic_without_classes,
        {TRAIN: _e(ONE_LINE, BAD), EVALUATE: _e(WORKS)},
    ),
    Case(
        "malformed_config",
        "a YAML config that does not parse",
        _malformed_yaml,
        {
            TRAIN: _e(ONE_LINE, BAD, argv=("--config", BAD)),
            DISTILL: _e(ONE_LINE, BAD, argv=("--config", BAD)),
        },
    ),
    Case(
        "unknown_config_key",
        "a YAML config with a misspelt key (trainer.max_step)",
        _unknown_key_yaml,
        {
            TRAIN: _e(ONE_LINE, BAD, "max_step", argv=("--config", BAD)),
            DISTILL: _e(ONE_LINE, BAD, "max_step", argv=("--config", BAD)),
        },
    ),
)

CASE_BY_NAME: dict[str, Case] = {case.name: case for case in CASES}
assert len(CASE_BY_NAME) == len(CASES), "case names must be unique"
assert all(cmd in COMMANDS and e.outcome in OUTCOMES for c in CASES for cmd, e in c.expect.items())


def pairs() -> list[tuple[str, str]]:
    """Every ``(case name, command)`` the registry gives an expected outcome for, in table order."""
    return [(case.name, cmd) for case in CASES for cmd in COMMANDS if cmd in case.expect]
