"""What the training loop carries from epoch to epoch (:class:`LoopState`), what one epoch comes to
(:class:`EpochResult` or :class:`Diverged`), and the on-disk checkpoint that continues a killed run.

The checkpoint is one ``torch.save`` of plain containers and tensors: the loop's counters, best weights and history,
plus the model's, optimizer's, generator's and weight average's states. It is read back with
``torch.load(weights_only=True)``, so a file planted in a run folder or cache cannot run code, and anything that is
not a state this network can resume from is refused in one line.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from rcnas.infra.files import write_atomic_with


@dataclass(frozen=True)
class EpochResult:
    """One finished pass over the training split: its summed loss, correct predictions and examples."""

    loss_sum: float
    correct: int
    seen: int

    @property
    def train_loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def train_acc(self) -> float:
        return self.correct / max(self.seen, 1)


@dataclass(frozen=True)
class Diverged:
    """An epoch stopped by a non-finite loss, and where."""

    reason: str


@dataclass
class LoopState:
    """The loop's progress: finished epochs, optimiser steps taken, the best epoch so far and its weights, and one
    metrics row per finished epoch."""

    epoch: int = 0
    step: int = 0
    best_acc: float = -1.0
    """validation accuracy under the training attack of the kept weights; -1 before any epoch"""
    best_epoch: int = 0
    best: Optional[dict[str, torch.Tensor]] = None
    """the kept weights (a state dict of the network that is validated)"""
    history: list[dict[str, float]] = field(default_factory=list)

    def end_epoch(self, row: dict[str, float], shown: nn.Module, select_on_val: bool) -> None:
        """Record a finished epoch's metrics; keep ``shown``'s weights if they are the best so far on validation
        (or always, without selection)."""
        self.history.append(row)
        if not select_on_val or row["val_robust"] > self.best_acc:
            self.best_acc, self.best_epoch = row["val_robust"], row["epoch"]
            self.best = copy.deepcopy(shown.state_dict())
        self.epoch = row["epoch"]

    def to_checkpoint(self, model: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator,
                      ema: Optional[AveragedModel]) -> dict[str, Any]:
        """Everything a killed run needs to continue exactly: this state and the training objects'."""
        return {"epoch": self.epoch, "step": self.step, "best_acc": self.best_acc, "best_epoch": self.best_epoch,
                "best": self.best, "history": self.history, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "generator": g.get_state(), "generator_device": g.device.type,
                "ema": ema.state_dict() if ema is not None else None}

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> LoopState:
        """This state out of a :meth:`to_checkpoint` dictionary (the training objects' parts are restored by
        :func:`resume`)."""
        return cls(epoch=saved["epoch"], step=saved["step"], best_acc=saved["best_acc"],
                   best_epoch=saved["best_epoch"], best=saved["best"], history=list(saved["history"]))


class CheckpointMirror(Protocol):
    """Where a long training's checkpoint is kept besides the worker's disk (``rcnas.distributed.run_files.Mirror``:
    the run folder on the driver's node), so that a retry on another node continues from its last epoch."""

    def restore(self, local: Path) -> bool:
        """Put the kept checkpoint at ``local`` unless one is there; True when one was fetched."""

    def keep(self, local: Path, rel: Optional[str] = None) -> None:
        """Keep ``local`` (the checkpoint just written, or ``rel``: another file of the job) and report progress."""


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` whole or not at all, never through a planted link (``rcnas.infra.files.write_atomic_with``)."""
    write_atomic_with(path, lambda handle: torch.save(state, handle))


def resume(checkpoint: Optional[Path], model: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator,
           device: torch.device) -> tuple[LoopState, Optional[dict[str, Any]]]:
    """The loop's state, fresh or continued from ``checkpoint`` (model, optimizer and generator restored), and the
    saved weight average, if any (restored once the step has built its own from the restored model)."""
    if checkpoint is None or not checkpoint.is_file():
        return LoopState(), None
    # tensors and plain containers only: a state file planted in a run folder or cache cannot run code
    try:
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if saved.get("generator_device", "cpu") == g.device.type:
            g.set_state(saved["generator"].cpu())  # map_location moved it; a generator's state lives on the host
        else:  # a GPU's run continued on a CPU or back: another generator kind, whose draws start from the seed again
            was = saved.get("generator_device", "cpu")
            warnings.warn(f"{checkpoint}: its random draws were made on {was}, this run makes them on {g.device.type}"
                          "; the draws (shuffling, crops, attack starts) restart from the seed", stacklevel=2)
        return LoopState.from_checkpoint(saved), saved.get("ema")
    except Exception as exc:  # noqa: BLE001 - refused pickles, other shapes, text files: all one user-facing line
        from rcnas.infra.errors import ConfigError

        raise ConfigError(f"{checkpoint}: not a training state this network can resume from "
                          f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}); "
                          "move it away to train from the start") from None
