"""Adversarial training: one loop for full training (evaluate.py) and short fine-tuning (the search's proxy).

SGD with a per-step learning-rate schedule (so fractional epochs work), gradient clipping, seeded shuffling,
augmentation and attacks, checkpoint selection on validation PGD accuracy (never the test split), and a resumable
on-disk checkpoint written atomically after every epoch (``rcnas.train.loop_state``).

GPU settings of the recipe (``rcnas.train.step``): autocast in bf16 or fp16 (with loss scaling) around the whole
step, the inner attack included; channels-last memory format and cuDNN autotuning on CUDA; optional
``torch.compile``; optional EMA of the weights, which then is what is validated, selected and kept. The step never
waits for the device: running sums stay on it and are read once per epoch, and the divergence check reads one
flag every ``SYNC_EVERY`` steps. Validation (checkpoint selection) always runs in fp32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from rcnas.attacks import AttackContext, run_attack
from rcnas.config import TrainConfig
from rcnas.data.tensors import DataSplits, TensorData, batches, resident
from rcnas.infra.progress import Progress
from rcnas.train.data_parallel import Shard, average_gradients
from rcnas.train.loop_state import Diverged, EpochResult, LoopState, resume, save_atomic
from rcnas.train.losses import LOSSES, LossFn
from rcnas.train.step import AMP_DTYPES, StepRunner

__all__ = ["AMP_DTYPES", "SYNC_EVERY", "Diverged", "EpochResult", "LoopOptions", "LoopState", "TrainResult",
           "TrainingLoop", "adversarial_train", "lr_at", "planned_steps", "save_atomic", "val_robust_accuracy"]

SYNC_EVERY = 50
"""steps between reads of the divergence flag (each read waits for the device)"""


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
    even = device.type == "cuda"  # one batch shape, one cuDNN autotuning
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in batches(data, 512, device, even=even))
    return correct / max(len(data), 1)


def val_robust_accuracy(model: nn.Module, val: TensorData, cfg: TrainConfig, device: torch.device,
                        num_classes: int) -> float:
    """Accuracy on the validation subset under the recipe's own attack, from a fixed seed."""
    model.eval()
    ctx = AttackContext(num_classes=num_classes, seed=cfg.seed, generator=torch.Generator().manual_seed(cfg.seed))
    correct = 0
    for x, y in batches(val, 512, device, even=device.type == "cuda"):
        x_adv = run_attack(model, x, y, cfg.attack, ctx)
        with torch.no_grad():
            correct += (model(x_adv).argmax(1) == y).sum().item()
    return correct / max(len(val), 1)


def planned_steps(n_train: int, cfg: TrainConfig) -> tuple[int, int]:
    """(steps per epoch, total steps) the loop runs: a fractional ``epochs`` is rounded up to whole batches, at
    least one."""
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    return steps_per_epoch, max(1, math.ceil(cfg.epochs * steps_per_epoch))


@dataclass(frozen=True)
class LoopOptions:
    """The caller's side of a training run (:func:`adversarial_train`)."""

    num_classes: int
    crop_padding: int = 0
    """random-crop padding in pixels (0: no crop)"""
    flip: bool = False
    """random horizontal flips"""
    data_fraction: float = 1.0
    """train on this leading fraction of the train split (at least one example)"""
    checkpoint: Optional[Path] = None
    """resumable state file; an existing one is continued from its last finished epoch"""
    progress: Optional[Callable[[dict[str, float]], None]] = None
    """called with each epoch's metrics"""
    objective: Optional[LossFn] = None
    """the loss of one batch; default ``cfg.loss`` (weight-sharing training passes its sandwich here)"""
    desc: Optional[str] = None
    """a progress bar with this name over the training steps, when the output is a terminal"""
    shard: Optional[Shard] = None
    """data-parallel training: this worker's part of every global batch (``rcnas.train.data_parallel``; the model's
    BatchNorms made global and the process group set up by the caller)"""


class _RunningSums:
    """An epoch's loss sum, correct count and non-finite flag, kept on the device (read once, at the end)."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.seen = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.bad |= ~torch.isfinite(loss.detach())
        self.loss += loss.detach().double() * len(y)
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += len(y)

    def result(self) -> EpochResult:
        return EpochResult(self.loss.item(), int(self.correct.item()), self.seen)


class TrainingLoop:
    """One training run of ``model`` (trained in place) on ``data`` with recipe ``cfg``: set up by the constructor
    (continuing from ``options.checkpoint`` when there is one), run by :meth:`run`."""

    def __init__(self, model: nn.Module, data: DataSplits, cfg: TrainConfig, options: LoopOptions) -> None:
        self.t0 = time.perf_counter()
        self.model, self.cfg, self.options = model, cfg, options
        self.device = next(model.parameters()).device
        # on the device once where it fits: a GPU step then gathers its batch there instead of copying it each time
        self.train = resident(data.train, self.device)
        self.val = resident(data.val.head(cfg.val_examples), self.device)
        self.steps_per_epoch, self.total = planned_steps(len(self.train), cfg)
        self.n_epochs = math.ceil(self.total / self.steps_per_epoch)
        self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        # shuffling, crops, flips and the inner attack's start draw from it on the device (the CPU: as always).
        # Data-parallel workers keep a CPU generator: they must draw the same global batches, and CUDA's random
        # kernels size their launches by the GPU's multiprocessor count, so two GPU models draw different numbers
        draws = self.device if options.shard is None else torch.device("cpu")
        self.g = torch.Generator(device=draws).manual_seed(cfg.seed)
        self.loss_fn = options.objective or LOSSES.get(cfg.loss)
        self.state, saved_ema = resume(options.checkpoint, model, self.opt, self.g, self.device)
        self.runner = StepRunner.setup(model, cfg, self.device)  # after the restore: the average starts from it
        if self.runner.ema is not None and saved_ema is not None:
            self.runner.ema.load_state_dict(saved_ema)
        self.shown = self.runner.evaluated(model)
        """the network validated, selected and kept"""
        self.bar = Progress(0, "", enabled=False)

    def run(self) -> TrainResult:
        """Train the remaining epochs; the model ends holding the selected weights (best validation PGD when
        ``cfg.select_on_val``, else the last; never diverged ones)."""
        desc = self.options.desc
        with Progress(self.total - self.state.step, desc or "", enabled=None if desc else False) as self.bar:
            for epoch in range(self.state.epoch, self.n_epochs):
                # 1. train one pass over the training split (up to the planned total of steps)
                outcome = self.train_epoch()
                if isinstance(outcome, Diverged):
                    return self._finish(epoch, outcome)
                # 2. validate what is kept (the average, if any) and record the epoch, keeping its weights if best
                row = self._metrics(epoch, outcome)
                self.state.end_epoch(row, self.shown, self.cfg.select_on_val)
                # 3. checkpoint before reporting, so that whatever the caller does next, the epoch is kept
                if self.options.checkpoint is not None:
                    save_atomic(self.state.to_checkpoint(self.model, self.opt, self.g, self.runner.ema),
                                self.options.checkpoint)
                # 4. report
                if self.options.progress:
                    self.options.progress(row)
            # 5. done: the selected weights
            return self._finish(self.state.step / self.steps_per_epoch)

    def train_epoch(self) -> EpochResult | Diverged:
        """One pass over the training split, stopping at the planned total; advances ``state.step``."""
        self.model.train()
        sums, first = _RunningSums(self.device), self.state.step
        for x, y in batches(self.train, self.cfg.batch_size, self.device, shuffle=True, generator=self.g,
                            padding=self.options.crop_padding, flip=self.options.flip):
            if self.state.step >= self.total:
                break
            if self.options.shard is not None:  # every worker drew the same global batch: this one trains on its part
                x, y = self.options.shard.take(x, y)
            loss, logits = self._train_step(x, y)
            sums.add(loss, logits, y)
            self.bar.update()
            if (self.state.step - first) % SYNC_EVERY == 0 and sums.bad.item():
                return Diverged(f"non-finite loss within steps {self.state.step - SYNC_EVERY}..{self.state.step}")
        if sums.bad.item():
            return Diverged(f"non-finite loss within steps {max(first, self.state.step - SYNC_EVERY)}.."
                            f"{self.state.step}")
        return sums.result()

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on batch ``(x, y)``; returns its loss and logits (still on the device)."""
        runner, opt = self.runner, self.opt
        if runner.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for group in opt.param_groups:
            group["lr"] = lr_at(self.state.step, self.total, self.cfg)
        opt.zero_grad(set_to_none=True)
        loss, logits = runner.forward_backward(self.loss_fn, x, y, self.cfg, self.g)
        if self.options.shard is not None:  # the global batch's gradient, before clipping as one process
            average_gradients(self.model, self.options.shard.world)
        if self.cfg.grad_clip is not None:
            runner.scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        runner.scaler.step(opt)
        runner.scaler.update()
        if runner.ema is not None:
            runner.ema.update_parameters(self.model)
        self.state.step += 1
        return loss, logits

    def _metrics(self, epoch: int, done: EpochResult) -> dict[str, float]:
        """Epoch ``epoch``'s row: training sums, validation accuracy (clean and, when selecting, attacked)."""
        val_rob = (val_robust_accuracy(self.shown, self.val, self.cfg, self.device, self.options.num_classes)
                   if self.cfg.select_on_val else -1.0)
        return {"epoch": epoch + 1, "train_loss": done.train_loss, "train_acc": done.train_acc,
                "val_clean": _accuracy(self.shown, self.val, self.device), "val_robust": val_rob,
                "lr": self.opt.param_groups[0]["lr"], "seconds": time.perf_counter() - self.t0,
                "epochs": self.n_epochs}

    def _finish(self, epochs_run: float, diverged: Optional[Diverged] = None) -> TrainResult:
        """The model set to the kept weights (if an epoch finished), and what happened."""
        if self.state.best is not None:
            self.model.load_state_dict(self.state.best)
        return TrainResult(epochs_run, self.state.best_epoch, max(self.state.best_acc, 0.0),
                           time.perf_counter() - self.t0, diverged is not None,
                           diverged.reason if diverged is not None else "", tuple(self.state.history))


def adversarial_train(model: nn.Module, data: DataSplits, cfg: TrainConfig, options: LoopOptions) -> TrainResult:
    """Adversarially train ``model`` in place with recipe ``cfg``; returns what happened.

    Args:
        data: train split for training, val split for checkpoint selection (its first ``cfg.val_examples``).
        options: the caller's side of the run (:class:`LoopOptions`: classes, augmentation, the leading fraction of
            the train split, a resumable checkpoint, progress, objective, progress bar, data-parallel shard).

    Returns:
        a :class:`TrainResult`; the model holds the selected weights (best validation PGD when
        ``cfg.select_on_val``, else the last). A NaN/inf loss stops training with ``diverged=True``.

    Example:
        >>> adversarial_train(model, splits, task.config.training, LoopOptions(num_classes=10))  # doctest: +SKIP
    """
    train = data.train.head(max(1, round(len(data.train) * options.data_fraction)))
    return TrainingLoop(model, DataSplits(train, data.val, data.test), cfg, options).run()
