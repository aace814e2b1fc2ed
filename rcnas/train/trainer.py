"""Adversarial training: one loop for full training (evaluate.py) and short fine-tuning (the search's proxy).

SGD with a per-step learning-rate schedule (so fractional epochs work), gradient clipping, seeded shuffling,
augmentation and attacks, checkpoint selection on validation PGD accuracy (never the test split), and a resumable
on-disk checkpoint written atomically after every epoch.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from rcnas.attacks import AttackContext, run_attack
from rcnas.config import TrainConfig
from rcnas.data.tensors import DataSplits, TensorData, batches
from rcnas.train.losses import LOSSES, LossFn


@dataclass(frozen=True)
class TrainResult:
    epochs_run: float
    best_epoch: int
    best_val_robust: float
    """validation accuracy under the training attack at the kept checkpoint"""
    seconds: float
    diverged: bool = False
    reason: str = ""
    history: tuple[dict[str, float], ...] = field(default_factory=tuple)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate at optimiser step ``step`` of ``total``."""
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * step / max(total, 1)))
    if cfg.schedule == "multistep":
        passed = sum(step >= round(m * total) for m in cfg.milestones)
        return cfg.lr * cfg.gamma**passed
    return cfg.lr


@torch.no_grad()
def _accuracy(model: nn.Module, data: TensorData, device: torch.device) -> float:
    model.eval()
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in batches(data, 512, device))
    return correct / max(len(data), 1)


def val_robust_accuracy(model: nn.Module, val: TensorData, cfg: TrainConfig, device: torch.device,
                        num_classes: int) -> float:
    """Accuracy on the validation subset under the recipe's own attack, from a fixed seed."""
    model.eval()
    ctx = AttackContext(num_classes=num_classes, seed=cfg.seed, generator=torch.Generator().manual_seed(cfg.seed))
    correct = 0
    for x, y in batches(val, 512, device):
        x_adv = run_attack(model, x, y, cfg.attack, ctx)
        with torch.no_grad():
            correct += (model(x_adv).argmax(1) == y).sum().item()
    return correct / max(len(val), 1)


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a temporary file and a rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a run killed mid-write never leaves a truncated checkpoint


def _resume(checkpoint: Optional[Path], model: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator,
            device: torch.device) -> dict[str, Any]:
    """The loop's state: fresh, or continued from ``checkpoint`` (model, optimizer and generator restored)."""
    if checkpoint is None or not checkpoint.is_file():
        return {"epoch": 0, "step": 0, "best_acc": -1.0, "best_epoch": 0, "best": None, "history": []}
    # tensors and plain containers only: a state file planted in a run folder or cache cannot run code
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    g.set_state(state["generator"])
    return state


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, train: TensorData, loss_fn: LossFn, cfg: TrainConfig,
                 g: torch.Generator, state: dict[str, Any], total: int, crop_padding: int, flip: bool,
                 ) -> tuple[float, int, int] | str:
    """One pass over ``train`` (stopping at ``total`` steps); returns (loss sum, correct, seen), or why it
    diverged. Advances ``state["step"]``."""
    device = next(model.parameters()).device
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in batches(train, cfg.batch_size, device, shuffle=True, generator=g, padding=crop_padding, flip=flip):
        if state["step"] >= total:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(state["step"], total, cfg)
        loss, logits = loss_fn(model, x, y, cfg, g)
        if not torch.isfinite(loss):
            return f"non-finite loss at step {state['step']}"
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        state["step"] += 1
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    return loss_sum, correct, seen


def adversarial_train(
    model: nn.Module,
    data: DataSplits,
    cfg: TrainConfig,
    *,
    num_classes: int,
    crop_padding: int = 0,
    flip: bool = False,
    data_fraction: float = 1.0,
    checkpoint: Optional[Path] = None,
    progress: Optional[Callable[[dict[str, float]], None]] = None,
    objective: Optional[LossFn] = None,
) -> TrainResult:
    """Adversarially train ``model`` in place with recipe ``cfg``; returns what happened.

    Args:
        data: train split for training, val split for checkpoint selection (its first ``cfg.val_examples``).
        checkpoint: resumable state file; an existing one is continued from its last finished epoch.
        progress: called with each epoch's metrics.
        objective: the loss of one batch; default ``cfg.loss`` (weight-sharing training passes its sandwich here).

    Returns:
        a :class:`TrainResult`; the model holds the selected weights (best validation PGD when
        ``cfg.select_on_val``, else the last). A NaN/inf loss stops training with ``diverged=True``.
    """
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    train = data.train.head(max(1, round(len(data.train) * data_fraction)))
    val = data.val.head(cfg.val_examples)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    n_epochs = math.ceil(total / steps_per_epoch)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    loss_fn = objective or LOSSES.get(cfg.loss)
    state = _resume(checkpoint, model, opt, g, device)
    for epoch in range(state["epoch"], n_epochs):
        sums = _train_epoch(model, opt, train, loss_fn, cfg, g, state, total, crop_padding, flip)
        if isinstance(sums, str):
            if state["best"] is not None:  # keep the best finished epoch, never the diverged weights
                model.load_state_dict(state["best"])
            return TrainResult(epoch, state["best_epoch"], max(state["best_acc"], 0.0), time.perf_counter() - t0,
                               True, sums, tuple(state["history"]))
        loss_sum, correct, seen = sums
        val_rob = val_robust_accuracy(model, val, cfg, device, num_classes) if cfg.select_on_val else -1.0
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
               "val_clean": _accuracy(model, val, device), "val_robust": val_rob,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        state["history"].append(row)
        if not cfg.select_on_val or val_rob > state["best_acc"]:
            state.update(best_acc=val_rob, best_epoch=epoch + 1, best=copy.deepcopy(model.state_dict()))
        state["epoch"] = epoch + 1
        if checkpoint is not None:  # before reporting, so that whatever the caller does next, the epoch is kept
            save_atomic({**state, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "generator": g.get_state()}, checkpoint)
        if progress:
            progress(row)
    if state["best"] is not None:
        model.load_state_dict(state["best"])
    return TrainResult(state["step"] / steps_per_epoch, state["best_epoch"], max(state["best_acc"], 0.0),
                       time.perf_counter() - t0, history=tuple(state["history"]))
