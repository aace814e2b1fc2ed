"""Importance-ordered inheritance: permute a teacher's channels so that "the first k channels" a sub-network inherits
are the k that matter most (Once-for-All's channel sorting). A published teacher was not trained as a supernet, so
its channel order is arbitrary; a permutation changes no function, only which channels a prefix slice keeps.

Importance is network slimming's: the magnitude of the BN scale that reads a channel. A block's inner channels
(``conv1`` -> ``bn2`` -> ``conv2``) are sorted by ``|bn2.weight|``. A stage's residual stream is one set of channels
shared by every block of the stage (identity shortcuts add into it) and read by the next stage's first block (or the
head): it is sorted by the summed ``|gamma|`` of every BN that reads it. Stages joined by an identity shortcut share
one stream order. Stages of robust blocks (branches and groups of their own) keep their order, and so does any
stream they write into; a robust block reading a sorted stream reads it sorted (its input side is plain).
"""

from __future__ import annotations

import copy
from collections import defaultdict

import torch

from rcnas.models.blocks import PreActBasicBlock
from rcnas.models.builder import PreActResNet

Perms = dict[str, list[tuple[int, torch.Tensor]]]
"""tensor name -> the (dim, permutation) pairs to apply to it"""


def _order(importance: torch.Tensor) -> torch.Tensor:
    # stable: equal importances (a fresh network's unit BN scales) keep their order, so ties change nothing
    return torch.sort(-importance.abs().double(), stable=True).indices


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{t}" for t in ("weight", "bias", "running_mean", "running_var")]


def _stream_groups(model: PreActResNet) -> list[list[int]]:
    """Stages sharing one residual stream: a stage whose first block has no shortcut adds into its input's stream.
    Index -1 stands for the stem's output."""
    groups: list[list[int]] = [[-1]]
    for i, stage in enumerate(model.stages):
        if getattr(stage[0], "shortcut", True) is None:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def importance_permutations(model: PreActResNet) -> Perms:
    """For every tensor of ``model``, the channel permutations that sort it by importance (see the module doc)."""
    sd = model.state_dict()
    perms: Perms = defaultdict(list)
    n = len(model.stages)
    for members in _stream_groups(model):
        stages = [i for i in members if i >= 0]
        if not stages or any(not isinstance(b, PreActBasicBlock) for i in stages for b in model.stages[i]):
            continue  # the stem's own stream, or one a robust stage writes into: kept as it is
        writers: list[tuple[str, int]] = []  # (tensor, dim) that produce the stream
        readers: list[tuple[str, int]] = []  # (tensor, dim) that consume it
        read_bns: list[str] = []
        if -1 in members:
            writers.append(("stem.weight", 0))
        for i in stages:
            for j in range(len(model.stages[i])):
                p = f"stages.{i}.{j}"
                writers.append((f"{p}.conv2.weight", 0))
                if j == 0 and model.stages[i][0].shortcut is not None:
                    writers.append((f"{p}.shortcut.weight", 0))
                if j > 0 or -1 in members or i != stages[0]:
                    readers += _block_inputs(model, i, j)
                    read_bns.append(f"{p}.bn1")
        last = stages[-1]
        if last + 1 < n:
            readers += _block_inputs(model, last + 1, 0)
            read_bns.append(f"stages.{last + 1}.0.bn1")
        else:
            readers += [(t, 0) for t in _bn("head_norm")] + [("fc.weight", 1)]
            read_bns.append("head_norm")
        order = _order(sum(sd[f"{b}.weight"].abs() for b in read_bns))
        for name, dim in writers + readers:
            perms[name].append((dim, order))
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            if isinstance(block, PreActBasicBlock):
                p = f"stages.{i}.{j}"
                order = _order(sd[f"{p}.bn2.weight"])
                perms[f"{p}.conv1.weight"].append((0, order))
                perms[f"{p}.conv2.weight"].append((1, order))
                for t in _bn(f"{p}.bn2"):
                    perms[t].append((0, order))
    return dict(perms)


def _block_inputs(model: PreActResNet, i: int, j: int) -> list[tuple[str, int]]:
    """The tensors of block (i, j) that read its input channels."""
    p = f"stages.{i}.{j}"
    out = [(t, 0) for t in _bn(f"{p}.bn1")] + [(f"{p}.conv1.weight", 1)]
    if model.stages[i][j].shortcut is not None:
        out.append((f"{p}.shortcut.weight", 1))
    return out


@torch.no_grad()
def importance_ordered(model: PreActResNet) -> PreActResNet:
    """A copy of ``model`` with its channels sorted by importance: the same function (logits equal up to float
    rounding), a different channel order. ``model`` itself is left as it is."""
    out = copy.deepcopy(model)
    state = out.state_dict()
    for name, pairs in importance_permutations(model).items():
        t = state[name]
        for dim, order in pairs:
            t = t.index_select(dim, order.to(t.device))
        state[name].copy_(t)
    return out


BNScales = tuple[tuple[tuple[float, ...], ...], ...]
"""per stage, per block: the |gamma| of the block's inner BN layers, largest first"""


def bn_scales(model: PreActResNet, digits: int = 4) -> BNScales:
    """Network slimming's channel importances, per block: the magnitudes of the scales of the BN layers inside it
    (not ``bn1``, which normalises the block's input stream), sorted, rounded to ``digits`` significant digits (a
    threshold needs no more, and a WRN's ~50,000 of them stay a small record)."""
    out = []
    for stage in model.stages:
        blocks = []
        for block in stage:
            scales = torch.cat([m.weight.detach().abs().flatten().float().cpu() for name, m in block.named_modules()
                                if isinstance(m, torch.nn.BatchNorm2d) and name != "bn1"])
            blocks.append(tuple(float(f"{v:.{digits}g}") for v in sorted(scales.tolist(), reverse=True)))
        out.append(tuple(blocks))
    return tuple(out)
