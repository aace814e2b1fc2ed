"""Layer factories for the schema's ``activations`` and ``normalizations`` fields, from the names listed in
``rcnas.vocab`` (``ACTIVATIONS.get("ReLU")()`` is an ``nn.ReLU``; ``NORMALIZATIONS.get("BatchNorm")(c)`` a
``BatchNorm2d(c)``)."""

from __future__ import annotations

from typing import Any

from rcnas.infra.registry import Registry
from rcnas.vocab import ACTIVATION_KINDS, NORMALIZATION_KINDS, load_ref


class LayerFactories:
    """A vocabulary of ``"module:class"`` references, looked up as classes."""

    def __init__(self, kinds: Registry[str]) -> None:
        self._kinds = kinds

    def get(self, name: str) -> Any:
        return load_ref(self._kinds.get(name))

    def names(self) -> list[str]:
        return self._kinds.names()

    def __contains__(self, name: object) -> bool:
        return name in self._kinds


ACTIVATIONS = LayerFactories(ACTIVATION_KINDS)
NORMALIZATIONS = LayerFactories(NORMALIZATION_KINDS)
