"""Training methods: one module each, registered by name in :data:`METHODS` (see :mod:`.base`).

Importing this package registers the built-in methods: ``supervised`` and ``promptable`` (the defaults
of ``anydistill train``), ``distill`` and ``sam_distill`` (the defaults of ``anydistill distill``),
the self-supervised ``simclr`` (the default of ``anydistill pretrain``), ``moco``, ``dino`` and ``mae``, and
for ``task: classify`` ``classify`` (train) and ``kd`` (distill), for ``task: detect`` ``detect`` (train).
"""

from anydistill.methods import (  # noqa: F401  (registration)
    classify,
    detect,
    dino,
    distill,
    kd,
    mae,
    moco,
    promptable,
    sam_distill,
    simclr,
    supervised,
)
from anydistill.methods.base import METHODS, Method, MethodRun, default_method, get_method, register_method

__all__ = ["METHODS", "Method", "MethodRun", "default_method", "get_method", "register_method"]
