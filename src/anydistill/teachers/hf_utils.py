"""Reading Hugging Face ``transformers`` model folders offline, with clear errors.

``transformers`` is an optional dependency (``pip install 'anydistill[teachers]'``), imported only here
and only when a Hugging Face teacher is used. Everything is loaded with ``local_files_only=True``: a
teacher is a local folder, never a hub download.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

from anydistill.errors import DataError

_VOLATILE = ("transformers_version", "dtype", "torch_dtype")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def require_transformers() -> ModuleType:
    """Import ``transformers`` or explain how to install it."""
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Hugging Face teachers need the 'transformers' package: pip install 'anydistill[teachers]'"
        ) from exc
    return transformers


def read_config(folder: str | Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict; DataError if the folder or file is missing or not JSON."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "not a folder (expected a Hugging Face model folder with config.json)")
    path = folder / "config.json"
    if not path.is_file():
        raise DataError(path, "missing: a Hugging Face model folder has config.json next to its weights")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise DataError(path, "expected a JSON object")
    return config


def stable_config(config: Any) -> Any:
    """``config.json`` without bookkeeping keys (``transformers_version``, ``_name_or_path``, ``dtype``),
    at any depth, which change when the same weights are saved again; used for fingerprints."""
    if isinstance(config, dict):
        return {
            k: stable_config(v) for k, v in config.items() if not k.startswith("_") and k not in _VOLATILE
        }
    if isinstance(config, list):
        return [stable_config(v) for v in config]
    return config


def weights_file(folder: Path) -> Path:
    """The folder's weights file; DataError naming what was looked for when there is none."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise DataError(folder, f"no weights file (looked for {', '.join(WEIGHT_FILES)})")


def from_pretrained(auto_class: Any, folder: Path) -> Any:
    """``auto_class.from_pretrained(folder, local_files_only=True)``; a broken file → DataError naming it.

    Weights the checkpoint lacks are an error (transformers would silently initialise them at random).
    """
    weights = weights_file(folder)
    if weights.stat().st_size == 0:
        raise DataError(weights, "weights file is empty (0 bytes)")
    try:
        model, info = auto_class.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - any failure here is a broken or mismatched user file
        raise DataError(
            weights, f"cannot load the model (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        raise DataError(
            weights,
            f"does not hold the model described by config.json: missing {missing[:5]}, "
            f"wrong shape {[str(m[0]) if isinstance(m, tuple) else str(m) for m in mismatched[:5]]}",
        )
    return model


def processor_from_pretrained(auto_class: Any, folder: Path, what: str) -> Any:
    """``auto_class.from_pretrained(folder, local_files_only=True)`` for a processor; a missing or broken
    one → DataError naming the folder and ``what`` it should hold."""
    try:
        return auto_class.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(
            folder, f"no usable {what}: {(str(exc).splitlines() or [type(exc).__name__])[0]}"
        ) from None
