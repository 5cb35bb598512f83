"""Named entries in registration order: the one shape of protomdm's registries (localizers, architectures,
dataset sources), as timm's ``register_model``."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import UserError

V = TypeVar("V")


class Registry(Generic[V]):
    """Entries by name; an unknown name is an ``error`` (a :class:`UserError` by default) listing the known ones.

    Example:
        >>> ARCHS = Registry[type]("architecture")
        >>> @ARCHS.register("mine")
        ... class Mine: ...
    """

    def __init__(self, kind: str, error: type[UserError] = UserError) -> None:
        self.kind, self.error = kind, error
        self._entries: dict[str, V] = {}

    def add(self, name: str, value: V, same: Callable[[V], object] = lambda v: v) -> V:
        """Register ``value`` as ``name``; another value under a taken name (compared by ``same``) is refused."""
        if name in self._entries and same(self._entries[name]) is not same(value):
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._entries[name] = value
        return value

    def register(self, name: str) -> Callable[[V], V]:
        """Decorator form of :meth:`add`."""
        return lambda value: self.add(name, value)

    def __getitem__(self, name: str) -> V:
        if name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def pop(self, name: str) -> V:
        """Remove ``name`` (tests register and remove their own)."""
        return self._entries.pop(name)
