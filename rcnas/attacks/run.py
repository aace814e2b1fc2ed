"""Running an attack by its kind: every attack has one signature, ``(model, x, y, cfg, ctx) -> x_adv``, and is
found through ``rcnas.vocab.ATTACK_KINDS`` (whose entries name their function in ``rcnas.attacks.library``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from rcnas.config import AttackConfig
from rcnas.vocab import ATTACK_KINDS, load_ref


@dataclass(frozen=True)
class AttackContext:
    """What an attack needs besides its config."""

    num_classes: int
    seed: int = 0
    generator: Optional[torch.Generator] = None
    progress: Optional[Callable[[str], None]] = None
    """lines about a long attack's progress (AutoAttack's sub-attacks), when the caller shows them"""


AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, AttackConfig, AttackContext], torch.Tensor]


def attack_fn(name: str) -> AttackFn:
    """The function of attack kind ``name`` (raises ConfigError listing the known kinds)."""
    return load_ref(ATTACK_KINDS.get(name).impl)


def run_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: AttackConfig, ctx: AttackContext
) -> torch.Tensor:
    """Attack ``(x, y)`` with ``cfg``; the result stays in the eps ball and in [0, 1].

    Always in fp32: an attack whose gradients are computed in low precision can be weaker and overstate robustness,
    so autocast is switched off here and a network with low-precision weights is refused.
    """
    low = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32})
    if low or x.dtype != torch.float32:
        raise ValueError(f"attacks run in fp32: the network has {low or 'fp32'} weights and the inputs are {x.dtype}; "
                         "evaluate a float32 copy (model.float())")
    with torch.autocast(x.device.type, enabled=False):
        return attack_fn(cfg.name)(model, x, y, cfg, ctx)


EXACT_FP32 = "fp32, TF32 off"
"""how reported attacks compute (``FinalResult.provenance["attack_math"]``)"""


@contextmanager
def exact_fp32() -> Iterator[None]:
    """Full fp32 for the attacks whose figures are reported: TF32 off for cuDNN's convolutions (which PyTorch runs in
    TF32 by default on Ampere and later) and for matmuls. TF32 keeps 10 mantissa bits, so its gradients are coarser,
    and a coarser attack can overstate robustness; the proxy's and validation's attacks keep TF32 (they rank, they
    are not reported). Restores the previous settings; on a CPU nothing changes."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul
