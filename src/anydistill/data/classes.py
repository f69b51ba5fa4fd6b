"""The class table of a semantic task: names, colours and the ignore index (toyworld's or ``classes.json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anydistill.config import DataConfig
from anydistill.data.labels import read_classes
from anydistill.data.toyworld import class_table
from anydistill.errors import ConfigError, DataError


@dataclass
class ClassInfo:
    """Names and colours of the semantic classes (from toyworld or ``classes.json``)."""

    names: list[str] = field(default_factory=list)
    colors: list[list[int]] = field(default_factory=list)
    ignore_index: int = 255

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def from_table(cls, table: list[dict], ignore_index: int = 255) -> ClassInfo:
        """From the ``classes.json`` layout: ``[{"id", "name", "color"}, ...]`` (ids must be 0..K-1)."""
        table = sorted(table, key=lambda c: c["id"])
        ids = [c["id"] for c in table]
        if ids != list(range(len(ids))):
            raise ConfigError(f"class ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        return cls([c["name"] for c in table], [list(c.get("color", [0, 0, 0])) for c in table], ignore_index)

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "colors": [list(c) for c in self.colors],
            "ignore_index": self.ignore_index,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ClassInfo:
        data = data or {}
        return cls(
            list(data.get("names") or []),
            [list(c) for c in data.get("colors") or []],
            int(data.get("ignore_index", 255)),
        )


def class_info(cfg: DataConfig) -> ClassInfo:
    """The class table of the configured data: toyworld's, or the train folder's ``classes.json``."""
    if cfg.source == "toyworld":
        return ClassInfo.from_table(class_table())
    root = Path(cfg.train_root)
    if not root.is_dir():
        raise DataError(root, "data.train_root: no such folder")
    table = read_classes(root)
    if not table:
        return ClassInfo()
    return ClassInfo.from_table(table["classes"], ignore_index=table.get("ignore_index", 255))
