"""Adversarial training: one loop for full training (evaluate.py) and short fine-tuning (the search's proxy).

SGD with a per-step learning-rate schedule (so fractional epochs work), gradient clipping, seeded shuffling,
augmentation and attacks, checkpoint selection on validation PGD accuracy (never the test split), and a resumable
on-disk checkpoint written atomically after every epoch.

GPU settings of the recipe: autocast in bf16 or fp16 (with loss scaling) around the whole step, the inner attack
included; channels-last memory format and cuDNN autotuning on CUDA; optional ``torch.compile``; optional EMA of the
weights (``torch.optim.swa_utils.AveragedModel``), which then is what is validated, selected and kept. The step never
waits for the device: running sums stay on it and are read once per epoch, and the divergence check reads one
flag every ``SYNC_EVERY`` steps. Validation (checkpoint selection) always runs in fp32.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from rcnas.attacks import AttackContext, run_attack
from rcnas.config import TrainConfig
from rcnas.data.tensors import DataSplits, TensorData, batches
from rcnas.infra.progress import Progress
from rcnas.train.data_parallel import Shard, average_gradients
from rcnas.train.losses import LOSSES, LossFn

SYNC_EVERY = 50
"""steps between reads of the divergence flag (each read waits for the device)"""

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


@dataclass
class _Step:
    """How one training step runs on this device: precision, memory format, the (possibly compiled) network."""

    net: nn.Module
    autocast: Callable[[], contextlib.AbstractContextManager]
    scaler: torch.amp.GradScaler
    channels_last: bool
    fallback: Optional[nn.Module] = None
    """the eager network, while ``net`` is a compiled one that has not run yet"""
    ema: Optional[AveragedModel] = None
    """the moving average of the weights, updated after every optimiser step"""

    def evaluated(self, model: nn.Module) -> nn.Module:
        """The network validation and selection look at: the average when there is one."""
        return self.ema.module if self.ema is not None else model


def _step_setup(model: nn.Module, cfg: TrainConfig, device: torch.device) -> _Step:
    dtype = AMP_DTYPES.get(cfg.precision)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels once
    channels_last = cfg.channels_last and cuda
    if channels_last:
        model.to(memory_format=torch.channels_last)  # in place: the optimizer's parameters stay the same objects

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    net, fallback = model, None
    if cfg.compile:
        try:
            net, fallback = torch.compile(model), model
        except Exception as exc:  # noqa: BLE001 - e.g. an unsupported Python: train eagerly, say so once
            warnings.warn(f"torch.compile unavailable ({type(exc).__name__}: {str(exc)[:120]}); training eagerly",
                          stacklevel=3)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
           if cfg.ema is not None else None)
    return _Step(net, autocast, scaler, channels_last, fallback, ema)


def _forward_backward(step: _Step, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                      g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss (with its inner attack) under the step's precision, and its (scaled) backward pass."""
    try:
        with step.autocast():
            loss, logits = loss_fn(step.net, x, y, cfg, g)
        step.scaler.scale(loss).backward()
    except Exception as exc:  # noqa: BLE001 - compilation fails at the first call, not at torch.compile()
        if step.fallback is None:
            raise
        warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); training "
                      "eagerly", stacklevel=3)
        step.net, step.fallback = step.fallback, None
        return _forward_backward(step, loss_fn, x, y, cfg, g)
    step.fallback = None  # compiled and ran: no fallback from now on, a later error is a real one
    return loss, logits


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, train: TensorData, loss_fn: LossFn, cfg: TrainConfig,
                 g: torch.Generator, state: dict[str, Any], total: int, crop_padding: int, flip: bool,
                 step: Optional[_Step] = None, bar: Optional[Progress] = None,
                 shard: Optional[Shard] = None) -> tuple[float, int, int] | str:
    """One pass over ``train`` (stopping at ``total`` steps); returns (loss sum, correct, seen), or why it
    diverged. Advances ``state["step"]``."""
    device = next(model.parameters()).device
    step = step or _step_setup(model, cfg, device)
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    seen, first = 0, state["step"]
    for x, y in batches(train, cfg.batch_size, device, shuffle=True, generator=g, padding=crop_padding, flip=flip):
        if state["step"] >= total:
            break
        if shard is not None:  # every worker drew the same global batch: this one trains on its part
            x, y = shard.take(x, y)
        if step.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for group in opt.param_groups:
            group["lr"] = lr_at(state["step"], total, cfg)
        opt.zero_grad(set_to_none=True)
        loss, logits = _forward_backward(step, loss_fn, x, y, cfg, g)
        bad |= ~torch.isfinite(loss.detach())
        if shard is not None:
            average_gradients(model, shard.world)  # the global batch's gradient, before clipping as one process
        if cfg.grad_clip is not None:
            step.scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        step.scaler.step(opt)
        step.scaler.update()
        if step.ema is not None:
            step.ema.update_parameters(model)
        state["step"] += 1
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if bar is not None:
            bar.update()
        if (state["step"] - first) % SYNC_EVERY == 0 and bad.item():
            return f"non-finite loss within steps {state['step'] - SYNC_EVERY}..{state['step']}"
    if bad.item():
        return f"non-finite loss within steps {max(first, state['step'] - SYNC_EVERY)}..{state['step']}"
    return loss_sum.item(), int(correct.item()), seen


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
    desc: Optional[str] = None,
    shard: Optional[Shard] = None,
) -> TrainResult:
    """Adversarially train ``model`` in place with recipe ``cfg``; returns what happened.

    Args:
        data: train split for training, val split for checkpoint selection (its first ``cfg.val_examples``).
        checkpoint: resumable state file; an existing one is continued from its last finished epoch.
        progress: called with each epoch's metrics.
        objective: the loss of one batch; default ``cfg.loss`` (weight-sharing training passes its sandwich here).
        desc: shows a progress bar with this name over the training steps, when the output is a terminal.
        shard: data-parallel training: this worker's part of every global batch (``rcnas.train.data_parallel``; the
            model's BatchNorms made global and the process group set up by the caller).

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
    step = _step_setup(model, cfg, device)
    if step.ema is not None and state.get("ema") is not None:
        step.ema.load_state_dict(state["ema"])
    shown = step.evaluated(model)
    with Progress(total - state["step"], desc or "", enabled=None if desc else False) as bar:
        return _epochs(model, opt, train, val, loss_fn, cfg, g, state, total, n_epochs, steps_per_epoch, crop_padding,
                       flip, step, shown, checkpoint, progress, num_classes, device, t0, bar, shard)


def _epochs(model: nn.Module, opt: torch.optim.Optimizer, train: TensorData, val: TensorData, loss_fn: LossFn,
            cfg: TrainConfig, g: torch.Generator, state: dict[str, Any], total: int, n_epochs: int,
            steps_per_epoch: int, crop_padding: int, flip: bool, step: _Step, shown: nn.Module,
            checkpoint: Optional[Path], progress: Optional[Callable[[dict[str, float]], None]], num_classes: int,
            device: torch.device, t0: float, bar: Progress, shard: Optional[Shard]) -> TrainResult:
    for epoch in range(state["epoch"], n_epochs):
        sums = _train_epoch(model, opt, train, loss_fn, cfg, g, state, total, crop_padding, flip, step, bar, shard)
        if isinstance(sums, str):
            if state["best"] is not None:  # keep the best finished epoch, never the diverged weights
                model.load_state_dict(state["best"])
            return TrainResult(epoch, state["best_epoch"], max(state["best_acc"], 0.0), time.perf_counter() - t0,
                               True, sums, tuple(state["history"]))
        loss_sum, correct, seen = sums
        val_rob = val_robust_accuracy(shown, val, cfg, device, num_classes) if cfg.select_on_val else -1.0
        row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
               "val_clean": _accuracy(shown, val, device), "val_robust": val_rob,
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0, "epochs": n_epochs}
        state["history"].append(row)
        if not cfg.select_on_val or val_rob > state["best_acc"]:
            state.update(best_acc=val_rob, best_epoch=epoch + 1, best=copy.deepcopy(shown.state_dict()))
        state["epoch"] = epoch + 1
        if checkpoint is not None:  # before reporting, so that whatever the caller does next, the epoch is kept
            save_atomic({**state, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "generator": g.get_state(), "ema": step.ema.state_dict() if step.ema else None}, checkpoint)
        if progress:
            progress(row)
    if state["best"] is not None:
        model.load_state_dict(state["best"])
    return TrainResult(state["step"] / steps_per_epoch, state["best_epoch"], max(state["best_acc"], 0.0),
                       time.perf_counter() - t0, history=tuple(state["history"]))
