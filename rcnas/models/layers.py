"""String -> layer factories for the schema's ``activations`` and ``normalizations`` fields."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from rcnas.infra.registry import Registry

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")
NORMALIZATIONS: Registry[Callable[[int], nn.Module]] = Registry("normalization")

# Names as RobustResNet's YAML files spell them, so their configs load unchanged.
ACTIVATIONS.add("ReLU", lambda: nn.ReLU(inplace=False))
ACTIVATIONS.add("SiLU", lambda: nn.SiLU())
ACTIVATIONS.add("GELU", lambda: nn.GELU())
ACTIVATIONS.add("Softplus", lambda: nn.Softplus())
NORMALIZATIONS.add("BatchNorm", nn.BatchNorm2d)
