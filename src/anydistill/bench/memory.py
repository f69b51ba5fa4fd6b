"""Peak memory of one call: the GPU allocator's peak, or on the CPU the process's peak resident set.

On Linux the resident high-water mark (``VmHWM``) can be reset by writing ``5`` to
``/proc/self/clear_refs``, so the peak of one call is measurable in-process: reset, call, read
``VmHWM`` minus the resident size before the call. Memory that glibc's allocator kept from earlier
calls would hide the call's own needs (it is reused without growing the resident set), so it is handed
back to the system first (``malloc_trim``). Where none of this is possible the figure is ``None``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["peak_memory_mb"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _trim_malloc() -> None:
    """Return the C heap's free memory to the system (glibc's ``malloc_trim``; a no-op elsewhere)."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def _status_kb(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_mb(call: Callable[[], Any], device: torch.device) -> float | None:
    """Memory ``call`` needs above what is held before it, in MB (``None`` when it cannot be measured).

    CUDA: ``torch.cuda.max_memory_allocated`` over the call minus the allocation before it.
    CPU: the resident set's peak over the call minus the resident set before it (Linux).
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    _trim_malloc()
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return None
    before = _status_kb("VmRSS")
    call()
    peak = _status_kb("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before) / 1024
