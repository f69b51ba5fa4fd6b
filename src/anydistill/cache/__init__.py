"""The pseudo-label cache: a teacher's outputs on unlabeled images, computed once, read many times.

- :func:`run_teacher_pass` -- the pass (batched, resumable, multi-process) -> ``CACHE/``.
- :func:`open_cache` / :class:`PseudoLabelCache` -- a finished cache, validated, by image id.
- :class:`PseudoLabelDataset` -- raw samples ``{"image", "disparity" | "logits", "feat"?, "id"}``.
- :func:`add_pseudo_label_parser` -- ``anydistill pseudo-label`` for the CLI.

Format: :mod:`anydistill.cache.shards` (WebDataset-style tar shards + sidecar indexes) and
:mod:`anydistill.cache.manifest` (``manifest.json``).
"""

from anydistill.cache.dataset import PseudoLabelDataset
from anydistill.cache.manifest import Manifest, PseudoLabelCache, open_cache, read_manifest
from anydistill.cache.teacher_pass import add_pseudo_label_parser, run_teacher_pass

__all__ = [
    "Manifest",
    "PseudoLabelCache",
    "PseudoLabelDataset",
    "add_pseudo_label_parser",
    "open_cache",
    "read_manifest",
    "run_teacher_pass",
]
