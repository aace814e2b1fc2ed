"""One strict name -> factory registry type, shared by blocks, teachers, datasets, attacks and losses.

Entries are factories (callables), never instances, so importing ``rcnas`` allocates no model or dataset.
Modelled on torchvision's ``register_model``: a duplicate name is a programming error and raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from rcnas.infra.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories.

    Args:
        kind: what the entries are ("teacher", "attack", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``.

        Raises:
            ValueError: if ``name`` is already registered.
        """

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"duplicate {self._kind} {name!r}")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """Look ``name`` up.

        Raises:
            ConfigError: unknown name; the message lists the known names.
        """
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names())
            raise ConfigError(f"unknown {self._kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """The names, sorted (for messages)."""
        return sorted(self._items)

    def ordered(self) -> list[str]:
        """The names in registration order (stable: encodings such as the observation's one-hots use it)."""
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
