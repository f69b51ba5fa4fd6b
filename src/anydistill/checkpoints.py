"""Reading weights files and telling what a user's model path is: the bottom of the loading layer.

Everything that opens a checkpoint goes through here, so there is one weights-only reader, one set of
error messages and one place that tells the kinds apart:

* :func:`read_checkpoint`: a torch file as a dict, ``torch.load(weights_only=True)`` (tensors,
  numbers, strings and containers only, so loading cannot run code; Lightning's own loader unpickles
  anything);
* :func:`read_state_dict`: a weights file (``.pth``/``.pt``/``.ckpt``/``.bin`` or ``.safetensors``),
  unwrapping the ``state_dict`` / ``model`` layouts of common training loops;
* :func:`detect_kind`: ``anydistill`` checkpoint (and its task), segment-anything ``.pth``, Hugging
  Face folder, ``timm:`` spec.

Building a model from what was read is the job of :mod:`anydistill.models.loading` (one layer up).
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anydistill.errors import DataError

#: The key under which anydistill training checkpoints describe their model (see ``models.loading``).
MODEL_RECORD_KEY = "anydistill_model"
#: The resolved training config stored in every anydistill checkpoint.
CONFIG_KEY = "anydistill_config"

KINDS = ("anydistill", "sam", "huggingface", "timm")
UNREADABLE = "cannot be read as a torch checkpoint (truncated or corrupt?)"


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message runs to a page; the line that names the refused object is the useful one.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise DataError(
                path,
                f"holds Python objects beyond tensors and plain data ({found.group(1)}), which anydistill "
                "does not unpickle (weights_only=True); re-save its state_dict",
            ) from None
        raise DataError(path, f"{UNREADABLE}: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 — torch's unpickler fails many ways on a torn or foreign file
        raise DataError(path, f"{UNREADABLE}: {type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The dict in a torch checkpoint file, read weights-only.

    Raises:
        DataError: missing, empty, truncated or corrupt file; Python objects beyond plain data; not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "checkpoint is empty (0 bytes)")
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict):
        raise DataError(path, f"not a checkpoint (expected a dict, found {type(ckpt).__name__})")
    return ckpt


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """The state dict in a weights file: ``.safetensors`` or a torch file, where a dict holding a
    ``state_dict`` or ``model`` dict (Lightning, common training loops) is unwrapped.

    Raises:
        DataError: missing or unreadable file, or no dict of weights inside.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file  # optional dependency: the [teachers] extra
        except ImportError:
            raise DataError(
                path, "reading .safetensors needs the safetensors package (pip install safetensors)"
            ) from None
        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 — any failure to parse is a bad user file
            raise DataError(path, f"not a readable .safetensors file: {_first_line(exc)}") from None
    if path.stat().st_size == 0:
        raise DataError(path, "checkpoint is empty (0 bytes)")
    obj = _torch_load(path)
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        return obj
    raise DataError(path, f"expected a state dict, found a {type(obj).__name__}")


@dataclass(frozen=True)
class CheckpointKind:
    """What a model spec names.

    Attributes:
        kind: one of :data:`KINDS`.
        path: the file or folder (``None`` for ``timm:<name>@random``: a randomly initialised encoder).
        task: for ``anydistill`` checkpoints, the task they were trained for (``depth``, ``semantic``,
            ``promptable``, ...); for Hugging Face folders, the ``model_type``; for ``sam`` "promptable".
        name: the timm model name of a ``timm:`` spec.
    """

    kind: str
    path: Path | None
    task: str | None = None
    name: str | None = None


EXPECTED = (
    "expected an anydistill checkpoint (.ckpt), a segment-anything checkpoint (.pth), a Hugging Face model "
    "folder (with config.json), or 'timm:<model_name>@<weights file>' ('@random': random weights)"
)
#: The weights part of ``timm:<name>@random``: a randomly initialised encoder, asked for by name (a file
#: called ``random`` is ``timm:<name>@./random``).
RANDOM_WEIGHTS = "random"


def detect_kind(spec: str | Path) -> CheckpointKind:
    """Tell what ``spec`` is, reading as little as needed (a ``.ckpt`` is opened to read its task).

    A ``timm:`` spec must say where its weights come from: ``timm:<name>@<weights file>``, or
    ``timm:<name>@random`` for a randomly initialised encoder (tests, ablations; ``path`` is then None).
    A bare ``timm:<name>`` is refused: it would silently give random features to align to.

    Raises:
        DataError: nothing there, a file of no known kind, or a ``timm:`` spec without weights.
    """
    text = str(spec)
    if text.startswith("timm:"):
        name, _, weights = text[len("timm:") :].partition("@")
        if not name:
            raise DataError(None, f"{text!r}: no timm model name; {EXPECTED}")
        if not weights:
            raise DataError(
                None,
                f"timm:{name} names no weights; give timm:{name}@<weights file>, or timm:{name}@random "
                "for a randomly initialised encoder (tests, ablations)",
            )
        path = None if weights == RANDOM_WEIGHTS else Path(weights).expanduser()
        return CheckpointKind("timm", path, name=name)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(path, f"no such file or folder; {EXPECTED}")
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise DataError(path, f"a folder without config.json; {EXPECTED}")
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
            raise DataError(config, f"not valid JSON: {exc}") from None
        return CheckpointKind("huggingface", path, task=model_type)
    if path.suffix == ".ckpt":
        ckpt = read_checkpoint(path)
        if "state_dict" in ckpt and (
            CONFIG_KEY in ckpt or MODEL_RECORD_KEY in ckpt or "hyper_parameters" in ckpt
        ):
            return CheckpointKind("anydistill", path, task=checkpoint_task(ckpt))
        return CheckpointKind("sam", path, task="promptable")  # a plain state dict saved as .ckpt
    if path.suffix in (".pth", ".pt", ".safetensors"):
        return CheckpointKind("sam", path, task="promptable")
    raise DataError(path, f"unknown model file type {path.suffix!r}; {EXPECTED}")


def checkpoint_task(ckpt: dict[str, Any]) -> str | None:
    """The task an anydistill checkpoint dict was trained for (model record, else config, else hparams)."""
    record = ckpt.get(MODEL_RECORD_KEY)
    if isinstance(record, dict) and record.get("task"):
        return str(record["task"])
    config = ckpt.get(CONFIG_KEY)
    if isinstance(config, dict) and config.get("task"):
        return str(config["task"])
    hparams = ckpt.get("hyper_parameters")
    if isinstance(hparams, dict) and hparams.get("task"):
        return str(hparams["task"])
    return None
