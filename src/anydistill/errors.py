"""Exceptions raised for bad user input.

Every error a user can cause (a broken image, a wrong config key, a missing label) is raised as one
of these, with the offending file in the message, so the CLI can print one clear line instead of a
stack trace from deep inside torch.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_WORKER_PREFIX = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")


def original_message(message: str, cls: type[BaseException]) -> str:
    """The error's own line when ``message`` is how PyTorch re-raises an error from a DataLoader worker
    (``"Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...\nanydistill.errors.
    DataError: path: problem"``: ``ExceptionWrapper.reraise`` builds the same class from that text), else
    ``message`` unchanged. So a bad file met in a worker still reaches the user as one line."""
    if not _WORKER_PREFIX.match(message):
        return message
    lines = [line for line in message.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else message
    prefix = re.match(rf"^(?:[\w.]+\.)?{re.escape(cls.__name__)}: ", last)
    return last[prefix.end() :] if prefix else last


class AnydistillError(Exception):
    """Base class of the errors a user can fix (one line: the CLI prints it as it is)."""

    def __init__(self, message: str = "") -> None:
        super().__init__(original_message(str(message), type(self)))


class DataError(AnydistillError):
    """A data file is missing, unreadable or inconsistent.

    Args:
        path: the offending file (or folder); with ``problem`` omitted, the whole message (how a
            DataLoader worker's error is re-raised in the main process: the path is then only in the text).
        problem: what is wrong with it, in plain words.
    """

    def __init__(self, path: str | Path | None, problem: str | None = None) -> None:
        if problem is None:
            super().__init__(str(path))
            self.path, self.problem = None, str(self)
            return
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class ConfigError(AnydistillError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


def warn(message: str) -> None:
    """One ``anydistill: warning: ...`` line on stderr: something the user should know that is not an error
    (a file set aside, a run whose result looks broken), printed as it is, never a Python warning that a
    filter could hide or a stack of framework lines around it."""
    print(f"anydistill: warning: {message}", file=sys.stderr, flush=True)
