"""Adversarial training objectives: PGD-AT (Madry et al. 2018) and TRADES (Zhang et al. 2019).

Each takes a model in train mode and a clean batch, makes its adversarial examples with the model in eval mode
(as the TRADES reference code does, so that attack steps do not update BN statistics), and returns the loss and the
logits it trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rcnas.attacks.pgd import LinfSteps, pgd_linf
from rcnas.config import TrainConfig
from rcnas.infra.registry import Registry

LossResult = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, TrainConfig, torch.Generator], LossResult]
LOSSES: Registry[LossFn] = Registry("training loss")


@LOSSES.register("pgd_at")
def pgd_at_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> LossResult:
    """Cross-entropy on PGD examples (Madry): min_theta E max_delta CE(f(x + delta), y)."""
    a = cfg.attack
    model.eval()
    x_adv = pgd_linf(model, x, y, LinfSteps.of(a), generator=g)
    model.train()
    logits = model(x_adv)
    return nn.functional.cross_entropy(logits, y), logits


@LOSSES.register("trades")
def trades_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> LossResult:
    """TRADES: CE(f(x), y) + beta * KL(f(x) || f(x_adv)), x_adv maximising the KL term (Zhang et al. 2019, eq. 5)."""
    a = cfg.attack
    model.eval()
    with torch.no_grad():
        p_clean = nn.functional.softmax(model(x), dim=1)

    def kl(logits: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return nn.functional.kl_div(nn.functional.log_softmax(logits, 1), p_clean, reduction="sum")

    start = 0.001 * torch.randn(x.shape, generator=g, dtype=x.dtype, device=g.device).to(x.device)
    x_adv = pgd_linf(model, x, y, LinfSteps.of(a), loss_fn=kl, start=start)
    model.train()
    logits = model(x)
    robust = nn.functional.kl_div(nn.functional.log_softmax(model(x_adv), 1), nn.functional.softmax(logits, 1),
                                  reduction="batchmean")
    return nn.functional.cross_entropy(logits, y) + cfg.beta * robust, logits
