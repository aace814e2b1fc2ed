"""The attack kinds of ``rcnas.vocab.ATTACK_KINDS``, each adapted to the one signature
``(model, x, y, cfg, ctx) -> x_adv``. Adding an attack: its entry in the vocabulary plus its function here."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from rcnas.attacks.autoattack import autoattack
from rcnas.attacks.pgd import LinfSteps, cw_margin_loss, fgsm, pgd_linf
from rcnas.config import AttackConfig

if TYPE_CHECKING:
    from rcnas.attacks.run import AttackContext


def fgsm_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig, ctx: AttackContext,
                ) -> torch.Tensor:
    return fgsm(model, x, y, eps=cfg.epsilon)


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig, ctx: AttackContext,
               ) -> torch.Tensor:
    return pgd_linf(model, x, y, LinfSteps.of(cfg), generator=ctx.generator)


def cw_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig, ctx: AttackContext,
              ) -> torch.Tensor:
    return pgd_linf(model, x, y, LinfSteps.of(cfg), loss_fn=cw_margin_loss, generator=ctx.generator)


def autoattack_standard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig, ctx: AttackContext,
                        ) -> torch.Tensor:
    return autoattack(model, x, y, eps=cfg.epsilon, version="standard", ctx=ctx)


def autoattack_compact(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig, ctx: AttackContext,
                       ) -> torch.Tensor:
    return autoattack(model, x, y, eps=cfg.epsilon, version="compact", ctx=ctx)
