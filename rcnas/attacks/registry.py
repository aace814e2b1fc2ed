"""The attack registry: every attack has one signature, ``(model, x, y, cfg, ctx) -> x_adv``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from rcnas.attacks.autoattack import autoattack
from rcnas.attacks.pgd import cw_margin_loss, fgsm, pgd_linf
from rcnas.config import AttackConfig
from rcnas.registry import Registry


@dataclass(frozen=True)
class AttackContext:
    """What an attack needs besides its config."""

    num_classes: int
    seed: int = 0
    generator: Optional[torch.Generator] = None
    state_path: Optional[Path] = None
    """AutoAttack's resumable state file"""


AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, AttackConfig, AttackContext], torch.Tensor]
ATTACKS: Registry[AttackFn] = Registry("attack")


@ATTACKS.register("fgsm")
def _fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig, ctx: AttackContext) -> torch.Tensor:
    return fgsm(model, x, y, eps=cfg.epsilon)


@ATTACKS.register("pgd")
def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig, ctx: AttackContext) -> torch.Tensor:
    return pgd_linf(model, x, y, eps=cfg.epsilon, alpha=cfg.alpha, steps=cfg.steps, random_start=cfg.random_start,
                    generator=ctx.generator)


@ATTACKS.register("cw")
def _cw(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig, ctx: AttackContext) -> torch.Tensor:
    return pgd_linf(model, x, y, eps=cfg.epsilon, alpha=cfg.alpha, steps=cfg.steps, random_start=cfg.random_start,
                    loss_fn=cw_margin_loss, generator=ctx.generator)


@ATTACKS.register("aa")
def _aa(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig, ctx: AttackContext) -> torch.Tensor:
    return autoattack(model, x, y, eps=cfg.epsilon, version="standard", seed=ctx.seed, num_classes=ctx.num_classes,
                      state_path=ctx.state_path)


@ATTACKS.register("aa_compact")
def _aa_compact(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig, ctx: AttackContext
) -> torch.Tensor:
    return autoattack(model, x, y, eps=cfg.epsilon, version="compact", seed=ctx.seed, num_classes=ctx.num_classes,
                      state_path=ctx.state_path)


def run_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig, ctx: AttackContext
) -> torch.Tensor:
    """Attack ``(x, y)`` with ``cfg``; the result stays in the eps ball and in [0, 1]."""
    return ATTACKS.get(cfg.name)(model, x, y, cfg, ctx)


SUITE = ("clean", "fgsm", "pgd20", "cw40", "aa")
SUITE_CHOICES = ("clean", "fgsm", "pgd20", "cw40", "aa", "aa_compact")


def suite_attack(label: str, eps: float) -> AttackConfig:
    """The evaluation protocol's attacks (METHOD §6) at ``eps``: PGD-20 and CW-40 step eps/10 (0.8/255 at 8/255)
    with a random start; AutoAttack standard, or ``aa_compact`` (APGD-CE + APGD-T only, never called "aa")."""
    base = AttackConfig.model_validate({"epsilon": "1/1"}).model_copy(update={"epsilon": eps})
    table = {
        "fgsm": {"name": "fgsm", "steps": 1, "random_start": False},
        "pgd20": {"name": "pgd", "steps": 20, "step_size": eps / 10},
        "cw40": {"name": "cw", "steps": 40, "step_size": eps / 10},
        "aa": {"name": "aa", "steps": 100},
        "aa_compact": {"name": "aa_compact", "steps": 100},
    }
    return base.model_copy(update=table[label])
