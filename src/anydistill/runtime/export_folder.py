"""An exported model folder: ``export.json`` and its ONNX graphs, opened for onnxruntime.

The folder ``anydistill export`` writes::

    DIR/export.json            {"format": "anydistill-onnx", "version": 1, "task": ..., "preprocess": {...},
                                "classes": {...}, "graphs": {name: file}, "input_size": [H, W], ...}
    DIR/model.onnx             depth / semantic: (B, 3, H, W) normalised input -> (B, C, H, W)
    DIR/image_encoder.onnx     promptable: (1, 3, 1024, 1024) -> image_embeddings (1, 256, 64, 64)
    DIR/prompt_decoder.onnx    promptable: segment-anything's exported decoder interface

Torch-free (numpy, onnxruntime): see the package docstring.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anydistill.errors import ConfigError, DataError
from anydistill.preprocess import Preprocess

__all__ = ["EXPORT_FILE", "EXPORT_FORMAT", "EXPORT_VERSION", "ExportFolder", "is_export_folder"]

EXPORT_FILE = "export.json"
EXPORT_FORMAT = "anydistill-onnx"
EXPORT_VERSION = 1
#: The graphs each task's folder must name.
TASK_GRAPHS = {
    "depth": ("model",),
    "semantic": ("model",),
    "detect": ("model",),
    "promptable": ("image_encoder", "prompt_decoder"),
}


def is_export_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding an ``export.json`` (valid or not)."""
    return (Path(path) / EXPORT_FILE).is_file()


def _onnxruntime() -> Any:
    try:
        import onnxruntime  # optional dependency: the [export] extra
    except ImportError:
        raise ConfigError(
            "running an exported model needs onnxruntime: pip install 'anydistill[export]'"
        ) from None
    return onnxruntime


@dataclass
class ExportFolder:
    """An export folder's record, checked; :meth:`session` opens its graphs.

    Attributes:
        path: the folder.
        meta: ``export.json`` as read.
        task: ``"depth"``, ``"semantic"`` or ``"promptable"``.
        preprocess: the pre-processing the graphs expect.
        graphs: graph name → ONNX file.
        threads: onnxruntime intra-op threads (``0``: onnxruntime's default, one per core).
    """

    path: Path
    meta: dict[str, Any]
    task: str
    preprocess: Preprocess
    graphs: dict[str, Path]
    threads: int = 0
    _sessions: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, path: str | Path, threads: int = 0) -> ExportFolder:
        """Read and check ``path/export.json`` (see :meth:`_read`); a record of the wrong shape (a list
        where a mapping belongs, a version that is not a number, ...) is one ``DataError`` too."""
        try:
            return cls._read(path, threads)
        except (TypeError, ValueError, AttributeError, IndexError, KeyError) as exc:
            raise DataError(Path(path) / EXPORT_FILE, f"is malformed ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _read(cls, path: str | Path, threads: int = 0) -> ExportFolder:
        """Read and check ``path/export.json``.

        Raises:
            DataError: no such folder, no or unreadable ``export.json``, another format or a newer
                version, a missing key, or a graph file that is missing; each names the file.
        """
        path = Path(path)
        record = path / EXPORT_FILE
        if not path.is_dir():
            raise DataError(path, "is not an export folder (anydistill export --out writes one)")
        if not record.is_file():
            raise DataError(path, f"has no {EXPORT_FILE}: not an anydistill export folder")
        try:
            meta = json.loads(record.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(record, f"cannot be read as JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
            raise DataError(record, f"is not an anydistill export record (format != {EXPORT_FORMAT!r})")
        if int(meta.get("version", 0)) > EXPORT_VERSION:
            raise DataError(
                record, f"is version {meta.get('version')}; this anydistill reads up to {EXPORT_VERSION}"
            )
        task = meta.get("task")
        if task not in TASK_GRAPHS:
            raise DataError(record, f"task {task!r}: must be one of {sorted(TASK_GRAPHS)}")
        names = meta.get("graphs") or {}
        missing = [g for g in TASK_GRAPHS[task] if g not in names]
        if missing:
            raise DataError(record, f"names no {missing} graph for task {task!r}")
        graphs = {name: path / str(file) for name, file in names.items()}
        for name, file in graphs.items():
            if file.parent != path or not file.is_file():
                raise DataError(file, f"graph {name!r} is missing from the export folder")
        try:
            preprocess = Preprocess.from_dict(meta["preprocess"])
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise DataError(record, f"preprocess: {exc}") from None
        folder = cls(path=path, meta=meta, task=task, preprocess=preprocess, graphs=graphs, threads=threads)
        folder.input_size  # noqa: B018  (checks input_size's shape now, not at the first image)
        return folder

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the (static) model input."""
        size = self.meta.get("input_size") or [self.preprocess.size, self.preprocess.size]
        if not isinstance(size, list | tuple) or len(size) != 2:
            raise ValueError(f"input_size must be [H, W], got {size!r}")
        return int(size[0]), int(size[1])

    @property
    def classes(self) -> dict[str, Any]:
        """The class table (``names``, ``colors``, ``ignore_index``) of a semantic export; ``{}`` otherwise."""
        return dict(self.meta.get("classes") or {})

    def session(self, name: str) -> Any:
        """The onnxruntime ``InferenceSession`` of graph ``name`` (CPU), opened once."""
        if name not in self._sessions:
            ort = _onnxruntime()
            options = ort.SessionOptions()
            options.intra_op_num_threads = int(self.threads)
            options.log_severity_level = 3  # errors only: no optimizer notices on the user's terminal
            try:
                self._sessions[name] = ort.InferenceSession(
                    str(self.graphs[name]), options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
                raise DataError(self.graphs[name], f"onnxruntime cannot load it: {exc}") from None
        return self._sessions[name]

    def batch_dim(self, name: str) -> int | None:
        """The graph's fixed batch size, or ``None`` when the batch axis is dynamic."""
        dim = self.session(name).get_inputs()[0].shape[0]
        return dim if isinstance(dim, int) else None
