"""Exceptions raised for bad user input.

Every error a user can cause (a broken image, a wrong config key, a missing label) is raised as one
of these, with the offending file in the message, so the CLI can print one clear line instead of a
stack trace from deep inside torch.
"""

from __future__ import annotations

from pathlib import Path


class AnydistillError(Exception):
    """Base class of the errors a user can fix."""


class DataError(AnydistillError):
    """A data file is missing, unreadable or inconsistent.

    Args:
        path: the offending file (or folder).
        problem: what is wrong with it, in plain words.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)


class ConfigError(AnydistillError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""
