"""Pre-flight checks on a model before a robustness number is reported (the ideas of AutoAttack's checks.py):
eval mode, a deterministic forward pass, logits rather than probabilities."""

from __future__ import annotations

import torch
from torch import nn


class ModelCheckError(RuntimeError):
    """The model under test would make a robustness number meaningless."""


@torch.no_grad()
def check_model(model: nn.Module, x: torch.Tensor) -> None:
    """Raise :class:`ModelCheckError` if ``model`` is in train mode, random, or outputs probabilities."""
    if model.training:
        raise ModelCheckError("model is in train mode: call model.eval() before attacking it")
    a, b = model(x), model(x)
    if not torch.allclose(a, b, atol=1e-5):
        raise ModelCheckError("two forward passes differ: a randomised defence needs EOT attacks, not these")
    if a.min() >= 0 and a.max() <= 1 and torch.allclose(a.sum(1), torch.ones(len(a)), atol=1e-4):
        raise ModelCheckError("outputs look like probabilities (rows sum to 1): attacks need logits")
