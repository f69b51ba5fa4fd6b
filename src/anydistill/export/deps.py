"""The optional dependencies of the export (``pip install 'anydistill[export]'``), imported when used.

The library imports without them: only :func:`require_onnx` (called by the export and its check)
imports ``onnx`` and ``onnxruntime``.
"""

from __future__ import annotations

from types import ModuleType

from anydistill.errors import ConfigError

__all__ = ["INSTALL_HINT", "require_onnx"]

INSTALL_HINT = "pip install 'anydistill[export]'"


def require_onnx() -> tuple[ModuleType, ModuleType]:
    """``(onnx, onnxruntime)``.

    Raises:
        ConfigError: one of them is not installed (one line naming the extra to install).
    """
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            f"ONNX export needs onnx and onnxruntime ({exc.name} is missing): {INSTALL_HINT}"
        ) from None
    return onnx, onnxruntime
