"""The pseudo-label cache: a teacher's outputs on unlabeled images, computed once, read many times.

- :func:`run_teacher_pass` -- the pass (batched, resumable, multi-process) -> ``CACHE/``; the
  teacher is an object or a zero-argument factory (``functools.partial(load_teacher, spec)``).
- :func:`open_cache` / :class:`PseudoLabelCache` -- a finished cache, validated, by image id.
- :class:`PseudoLabelDataset` -- raw samples ``{"image", "disparity" | "logits", "feat"?, "id"}``.

The pass: :mod:`anydistill.cache.teacher_pass` (entry point, processes and their synchronisation),
:mod:`anydistill.cache.plan` (image -> shard assignment, resume checks) and
:mod:`anydistill.cache.writer` (teacher on batches -> shards -> manifest). ``anydistill pseudo-label``
(:mod:`anydistill.cli`) runs it from the command line.

Format: :mod:`anydistill.cache.shards` (WebDataset-style tar shards + sidecar indexes) and
:mod:`anydistill.cache.manifest` (``manifest.json``).

Layering: the cache builds on :mod:`anydistill.data`; it never imports :mod:`anydistill.teachers`
(callers build the teacher).
"""

from anydistill.cache.dataset import PseudoLabelDataset
from anydistill.cache.manifest import Manifest, PseudoLabelCache, open_cache, read_manifest
from anydistill.cache.teacher_pass import run_teacher_pass

__all__ = [
    "Manifest",
    "PseudoLabelCache",
    "PseudoLabelDataset",
    "open_cache",
    "read_manifest",
    "run_teacher_pass",
]
