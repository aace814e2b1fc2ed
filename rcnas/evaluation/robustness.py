"""Robust accuracy under several attacks (with the pointwise worst case) and the local Lipschitz estimate."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from rcnas.attacks import AttackContext, run_attack
from rcnas.config import AttackConfig
from rcnas.data.tensors import TensorData, batches, to_float
from rcnas.evaluation.checks import check_model
from rcnas.infra.configio import eps_label
from rcnas.infra.progress import Progress
from rcnas.vocab import ATTACK_KINDS


@dataclass(frozen=True)
class AttackAccuracy:
    """One labelled robustness number: never a bare "robust_acc"."""

    label: str
    attack: str
    epsilon: float
    steps: int
    accuracy: float
    n_examples: int
    seed: int
    seconds: float

    @property
    def eps_255(self) -> str:
        return eps_label(self.epsilon)


@dataclass(frozen=True)
class RobustnessReport:
    clean: float
    attacks: tuple[AttackAccuracy, ...]
    worst_case: Optional[float]
    """pointwise worst case over all attacks run (an example counts only if it survives every attack)"""
    n_examples: int
    seed: int
    extras: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1) == y


def robust_accuracy(
    model: nn.Module,
    data: TensorData,
    attacks: dict[str, AttackConfig],
    *,
    num_classes: int,
    seed: int = 0,
    batch_size: int = 256,
    progress: Callable[[str], None] | None = None,
    desc: str | None = None,
) -> RobustnessReport:
    """Clean accuracy, accuracy under each attack, and the pointwise worst case, on all of ``data``.

    The model is put in eval mode and checked (deterministic, logits) before anything is reported. ``desc`` shows a
    progress bar per attack on a terminal; ``progress`` gets a line per finished attack (and AutoAttack's own
    per-sub-attack lines).
    """
    device = next(model.parameters()).device
    model.eval()
    check_model(model, to_float(data.x[: min(8, len(data))]).to(device))
    even = device.type == "cuda"  # one batch shape, one cuDNN autotuning (rcnas.data.tensors.even_batch_size)
    clean = torch.cat([_correct(model, x, y).cpu() for x, y in batches(data, batch_size, device, even=even)])
    survive = clean.clone()
    results = []
    for label, cfg in attacks.items():
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(seed)
        ok = []
        # AutoAttack batches and tracks robust points itself: hand it the whole set at once
        size = 10_000 if ATTACK_KINDS.get(cfg.name).whole_set else batch_size
        with Progress(len(data), f"{desc} {label}", unit="img", enabled=None if desc else False) as bar:
            for x, y in batches(data, size, device, even=even):
                ctx = AttackContext(num_classes=num_classes, seed=seed, generator=g,
                                    progress=(lambda m, lb=label: progress(f"{lb}: {m}")) if progress else None)
                ok.append(_correct(model, run_attack(model, x, y, cfg, ctx), y).cpu())
                bar.update(len(y))
        correct = torch.cat(ok) & clean  # a misclassified clean point is not robust
        survive &= correct
        seconds = time.perf_counter() - t0
        results.append(AttackAccuracy(label, cfg.name, cfg.epsilon, cfg.steps, correct.float().mean().item(),
                                      len(data), seed, seconds))
        if progress:
            progress(f"{label}: {results[-1].accuracy:.4f} ({seconds:.1f}s)")
    return RobustnessReport(
        clean=clean.float().mean().item(),
        attacks=tuple(results),
        worst_case=survive.float().mean().item() if results else None,
        n_examples=len(data),
        seed=seed,
    )


def local_lipschitz(
    model: nn.Module, data: TensorData, attack: AttackConfig, *, num_classes: int, seed: int = 0,
    batch_size: int = 256,
) -> float:
    """LIPS (docs/method.md, "Observation"): mean over examples of ||f(x) - f(x_adv)||_1 / ||x - x_adv||_inf on
    logits, x_adv from ``attack`` (PGD). Examples the attack leaves unchanged are skipped."""
    device = next(model.parameters()).device
    model.eval()
    g = torch.Generator().manual_seed(seed)
    ratios = []
    for x, y in batches(data, batch_size, device, even=device.type == "cuda"):
        x_adv = run_attack(model, x, y, attack, AttackContext(num_classes=num_classes, seed=seed, generator=g))
        with torch.no_grad():
            num = (model(x) - model(x_adv)).abs().sum(1)
            den = (x - x_adv).flatten(1).abs().amax(1)
        keep = den > 0
        ratios.append((num[keep] / den[keep]).cpu())
    values = torch.cat(ratios)
    return values.mean().item() if len(values) else 0.0
