"""Data-parallel training of one network over a process group (the pieces that need torch only; Ray Train sets up
the group and the workers in ``rcnas.distributed.data_parallel``).

Each worker takes its share of every global batch (the same batches in the same order on every worker: they draw
from the same seeded generator), runs the loss and its inner attack on it, and the gradients are averaged over the
workers before the optimizer step, so the update is the one a single process makes on the global batch. BatchNorm
is made global too (:class:`GlobalBatchNorm2d`): otherwise each worker normalises by its own shard's statistics and
the result is a different network.

Why the gradients are averaged here rather than by ``DistributedDataParallel``: the adversarial loss runs a PGD
attack that back-propagates to the *input* through the network many times per step; DDP's reducer treats every
backward pass as a training step, so it would all-reduce (or refuse) on the attack's passes. One flattened
all-reduce after the real backward pass is DDP's arithmetic, without that coupling.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Shard:
    """This worker's place in the group: it trains on part ``rank`` of ``world`` of every global batch."""

    rank: int
    world: int

    def take(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.tensor_split(self.world)[self.rank], y.tensor_split(self.world)[self.rank]


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch: per-channel sums, sums of squares and
    counts are all-reduced (differentiably) over the process group. Works on any backend, gloo (CPU) included,
    where ``torch.nn.SyncBatchNorm`` runs on CUDA only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        local = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)),
                           x.new_tensor([x.numel() / c])])
        with warnings.catch_warnings():
            # torch notes a newer, private API; this one is the documented collective with a backward pass
            warnings.simplefilter("ignore", FutureWarning)
            total = all_reduce(local)  # sums over the group, differentiably
        n = total[-1]
        mean = total[:c] / n
        var = total[c:2 * c] / n - mean * mean
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / max(n.item() - 1, 1))
            self.num_batches_tracked.add_(1)
        shape = (1, c, 1, 1)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


def global_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every ``BatchNorm2d`` made global (CUDA: torch's SyncBatchNorm; elsewhere
    :class:`GlobalBatchNorm2d`), parameters and statistics kept."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    _swap(model, nn.BatchNorm2d, GlobalBatchNorm2d, device)
    return model


def _swap(model: nn.Module, old: type, new: type, device: torch.device) -> None:
    for name, child in model.named_children():
        if type(child) is old:
            bn = new(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats).to(device)
            bn.load_state_dict(child.state_dict())
            setattr(model, name, bn)
        else:
            _swap(child, old, new, device)


def plain_batchnorm(model: nn.Module) -> nn.Module:
    """The inverse of :func:`global_batchnorm` for :class:`GlobalBatchNorm2d` (its state dict is BatchNorm's
    already): the trained network as one process evaluates it."""
    _swap(model, GlobalBatchNorm2d, nn.BatchNorm2d, next(model.parameters()).device)
    return model


def average_gradients(model: nn.Module, world: int) -> None:
    """Every parameter's gradient replaced by its mean over the group: one flattened all-reduce."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def same_start(model: nn.Module) -> None:
    """Every worker starts from rank 0's weights and statistics (they are seeded alike; this makes sure)."""
    for t in [*model.parameters(), *model.buffers()]:
        dist.broadcast(t.data, src=0)
