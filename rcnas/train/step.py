"""How one training step runs on this device: precision (autocast in bf16 or fp16, with loss scaling), channels-last
memory format and cuDNN autotuning on CUDA, an optional ``torch.compile`` with an eager fallback, and an optional
EMA of the weights (``torch.optim.swa_utils.AveragedModel``)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from rcnas.config import TrainConfig
from rcnas.train.losses import LossFn

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def effective_precision(precision: str, device: torch.device) -> str:
    """What a recipe's ``precision`` runs as on ``device``: ``auto`` is bf16 on a CUDA GPU with native bf16 and fp32
    elsewhere (bf16 autocast on a CPU is slower than fp32, and every CPU figure stays what it was)."""
    if precision == "auto":
        # pre-Ampere GPUs (T4, V100) only emulate bf16, slower than fp32
        native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16" if native else "fp32"
    return precision


@dataclass
class StepRunner:
    """The network one step runs, under which precision and memory format, and the average it feeds."""

    net: nn.Module
    autocast: Callable[[], contextlib.AbstractContextManager]
    scaler: torch.amp.GradScaler
    channels_last: bool
    fallback: Optional[nn.Module] = None
    """the eager network, while ``net`` is a compiled one that has not run yet"""
    ema: Optional[AveragedModel] = None
    """the moving average of the weights, updated after every optimiser step"""

    @classmethod
    def setup(cls, model: nn.Module, cfg: TrainConfig, device: torch.device) -> StepRunner:
        """The step of recipe ``cfg`` for ``model`` on ``device``; ``model`` is made channels-last in place if asked
        (its parameters stay the same objects, so an optimizer over them is still right)."""
        precision = effective_precision(cfg.precision, device)
        dtype = AMP_DTYPES.get(precision)
        cuda = device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels once
        channels_last = cfg.channels_last and cuda
        if channels_last:
            model.to(memory_format=torch.channels_last)

        def autocast() -> contextlib.AbstractContextManager:
            return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        net, fallback = model, None
        if cfg.compile:
            try:
                net, fallback = torch.compile(model), model
            except Exception as exc:  # noqa: BLE001 - e.g. an unsupported Python: train eagerly, say so once
                warnings.warn(f"torch.compile unavailable ({type(exc).__name__}: {str(exc)[:120]}); training "
                              "eagerly", stacklevel=4)
        ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
               if cfg.ema is not None else None)
        return cls(net, autocast, scaler, channels_last, fallback, ema)

    def evaluated(self, model: nn.Module) -> nn.Module:
        """The network validation and selection look at: the average when there is one."""
        return self.ema.module if self.ema is not None else model

    def forward_backward(self, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                         g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss (with its inner attack) under the step's precision, and its (scaled) backward pass."""
        try:
            with self.autocast():
                loss, logits = loss_fn(self.net, x, y, cfg, g)
            self.scaler.scale(loss).backward()
        except Exception as exc:  # noqa: BLE001 - compilation fails at the first call, not at torch.compile()
            if self.fallback is None:
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                          "training eagerly", stacklevel=3)
            self.net, self.fallback = self.fallback, None
            return self.forward_backward(loss_fn, x, y, cfg, g)
        self.fallback = None  # compiled and ran: no fallback from now on, a later error is a real one
        return loss, logits
