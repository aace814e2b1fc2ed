"""Weight-sharing ("sandwich rule") adversarial training of a teacher, so that its slices are trained networks.

Plain adversarial training optimises only the full teacher; a narrow or shallow slice of it inherits weights that
were never trained to work on their own, and the proxy's short fine-tune then ranks sub-networks partly by how badly
they were cut (docs/method.md, "Scoring a candidate"). The sandwich rule (Yu et al., BigNAS / OFA) trains, at every
step, the full network, the smallest sub-network and a few random ones on the same batch with their weights shared,
gradients summed.

Each sub-network is a :class:`SharedSubnet`: a skeleton of its architecture whose tensors are, at every forward,
slices of the supernet's (the same plan :func:`rcnas.models.builder.inherit_weights` copies by), so gradients reach
the supernet and the optimizer of the supernet trains them all.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from rcnas.config import TrainConfig
from rcnas.models.blocks import take
from rcnas.models.builder import PreActResNet, build_model, inheritance_plan
from rcnas.space.arch import ArchSpec, TeacherSpec
from rcnas.space.space import CompressionSpace
from rcnas.train.losses import LossFn, LossResult


class SharedSubnet(nn.Module):
    """A sub-network whose weights are views of the supernet's.

    Its BN running statistics are sliced copies too: in train mode (batch statistics) the updates land on the
    copies and are dropped, so only the full network's own passes move the supernet's statistics.
    """

    def __init__(self, supernet: PreActResNet, arch: ArchSpec) -> None:
        super().__init__()
        # on the supernet's device: every tensor is replaced at forward, but a GPU run must not meet a CPU one
        self.body = build_model(arch, supernet.shape).to(next(supernet.parameters()).device)
        self.plan, counts = inheritance_plan(self.body, supernet)
        if counts["fresh"]:
            raise ValueError(f"{arch.short()} switches block types; only the teacher's own blocks share weights")
        self._supernet = (supernet,)  # a tuple, not a child module: the supernet's state_dict stays its own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sup = self._supernet[0]
        state = dict(sup.named_parameters())
        state.update(sup.named_buffers())
        tensors = {}
        for name, (src, where) in self.plan.items():
            t = take(state[src], where)
            tensors[name] = t if isinstance(state[src], nn.Parameter) else t.clone()
        return functional_call(self.body, tensors, (x,))


def host_seed(g: torch.Generator) -> int:
    """A seed for the host's draws (which sub-networks a step trains), taken from ``g`` without waiting for the
    device: a CPU generator draws it (as it always did); a CUDA generator's state (its seed and offset) lives on the
    host, so it is hashed, and the offset advanced by a draw that is never read, so that the next step differs."""
    if g.device.type == "cpu":
        return int(torch.randint(2**31 - 1, (1,), generator=g))
    state = g.get_state()
    torch.randint(2**31 - 1, (1,), generator=g, device=g.device)
    return int.from_bytes(hashlib.blake2b(state.numpy().tobytes(), digest_size=4).digest(), "little")


def sandwich_objective(supernet: PreActResNet, teacher: TeacherSpec, base: LossFn, n_random: int = 2,
                       cache_size: int = 64) -> LossFn:
    """The sandwich loss of one batch: ``base`` on the full network + the smallest + ``n_random`` random
    sub-networks of the supernet's own space (any budget, the teacher's block types), summed.

    Random sub-networks are drawn with the trainer's generator, so a resumed run draws the same ones.
    """
    space = CompressionSpace(teacher, supernet.shape, float("inf"))
    views: OrderedDict[ArchSpec, SharedSubnet] = OrderedDict()

    def view(arch: ArchSpec) -> SharedSubnet:
        if arch not in views:
            views[arch] = SharedSubnet(supernet, arch)
            if len(views) > cache_size:  # building one costs milliseconds; keep the few hundred kB bounded
                views.popitem(last=False)
        views.move_to_end(arch)
        return views[arch]

    tiny = space.arch(space.smallest())

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> LossResult:
        total, logits = base(model, x, y, cfg, g)
        rng = np.random.default_rng(host_seed(g))
        for arch in [tiny] + [space.arch(space.sample(rng)) for _ in range(n_random)]:
            total = total + base(view(arch), x, y, cfg, g)[0]
        return total, logits

    return loss
