"""Our own L-inf gradient attacks: FGSM, PGD on cross-entropy, and CW-inf (PGD on the CW margin loss).

Small and tested, because they run in the adversarial-training inner loop and in every proxy evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rcnas.data.tensors import draw_device

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y, reduction="sum")


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of (best wrong logit - true logit): positive once misclassified (Carlini & Wagner)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    # clamp as in the TRADES/RobustBench CW evaluation, so points far past the boundary stop pulling the step
    return (wrong - true).clamp(max=50.0).sum()


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    # drawn on the generator's device: the reported attacks pass a CPU generator, so that a seed gives the same start
    # on every device; the training step passes its own, on the GPU, so that no draw goes through the host
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=draw_device(generator)).to(x.device)
    return (noise * 2 - 1) * eps


@dataclass(frozen=True)
class LinfSteps:
    """The L-inf ball and the steps taken in it."""

    eps: float
    alpha: float
    """step size"""
    steps: int
    random_start: bool = True

    @classmethod
    def of(cls, cfg: Any) -> LinfSteps:
        """From an attack config (``epsilon``, ``alpha``, ``steps``, ``random_start``)."""
        return cls(cfg.epsilon, cfg.alpha, cfg.steps, cfg.random_start)


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ball: LinfSteps, *, loss_fn: LossFn = ce_loss,
             generator: torch.Generator | None = None, start: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient ascent on ``loss_fn`` in the L-inf ball of radius ``eps`` around ``x``, inside [0, 1].

    The model is used in whatever mode the caller set; only the input gets gradients. ``start`` overrides the
    initial perturbation (TRADES starts from tiny Gaussian noise, where its KL loss has a gradient).

    Returns:
        the adversarial batch, detached.
    """
    eps, alpha, steps = ball.eps, ball.alpha, ball.steps
    x = x.detach()
    if start is not None:
        delta = start
    else:
        delta = uniform_start(x, eps, generator) if ball.random_start else torch.zeros_like(x)
    delta = ((x + delta).clamp_(0, 1) - x).requires_grad_(True)
    for _ in range(steps):
        loss = loss_fn(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta += alpha * grad.sign()
            delta.clamp_(-eps, eps)
            delta.copy_((x + delta).clamp_(0, 1) - x)
    return (x + delta).detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float) -> torch.Tensor:
    """One signed-gradient step of size ``eps`` from the clean input (Goodfellow et al. 2015)."""
    return pgd_linf(model, x, y, LinfSteps(eps, eps, 1, random_start=False))
