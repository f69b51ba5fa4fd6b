"""Training methods: one module each, registered by name in :data:`METHODS` (see :mod:`.base`).

Importing this package registers the built-in methods: ``supervised`` and ``promptable`` (the defaults
of ``anydistill train``), ``distill`` and ``sam_distill`` (the defaults of ``anydistill distill``).
"""

from anydistill.methods import distill, promptable, sam_distill, supervised  # noqa: F401  (registration)
from anydistill.methods.base import METHODS, Method, MethodRun, default_method, get_method, register_method

__all__ = ["METHODS", "Method", "MethodRun", "default_method", "get_method", "register_method"]
