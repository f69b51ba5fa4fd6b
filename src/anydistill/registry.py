"""A name → builder registry that refuses duplicates (torchvision's ``register_model`` rule)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from anydistill.errors import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError, KeyError):
    """A name the registry does not hold: a config error (one line in the CLI) and, for code that catches
    lookups, a KeyError."""

    def __str__(self) -> str:  # KeyError quotes its message; a config error is read by people
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps a one-word name to a builder function.

    >>> MODELS = Registry("model")
    >>> @MODELS.register()
    ... def tiny(): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def wrap(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._builders:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._builders[key] = fn
            return fn

        return wrap

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._builders[name]
        except KeyError:
            known = ", ".join(sorted(self._builders))
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def build(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._builders)

    def __contains__(self, name: str) -> bool:
        return name in self._builders
