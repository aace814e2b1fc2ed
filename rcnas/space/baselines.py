"""Hand-made sub-networks that a search must beat, built inside the same space and budget."""

from __future__ import annotations

import math

from rcnas.space.arch import ArchSpec
from rcnas.space.space import CompressionSpace


def uniform_shrink(space: CompressionSpace, steps: int = 200) -> ArchSpec:
    """The teacher with every stage's depth and width scaled by one factor s, the largest s whose sub-network fits
    the budget (depths and widths rounded, at least 1)."""
    t = space.teacher
    best = t.subnet((1,) * len(t.arch.stages), (1,) * len(t.arch.stages), t.arch.blocks)
    for k in range(steps, 0, -1):
        s = k / steps
        depths = tuple(max(1, round(d * s)) for d in t.arch.depths)
        widths = tuple(max(1, math.floor(w * s + 0.5)) for w in t.widths)
        arch = t.subnet(depths, widths, t.arch.blocks)
        if space.cost(arch).macs <= space.budget:
            return arch
    return best


def slimming_prune(space: CompressionSpace, bn_scales: tuple[tuple[tuple[float, ...], ...], ...]) -> ArchSpec:
    """Network slimming's global threshold on BN scales (Liu et al., ICCV 2017), mapped onto the space: for a
    threshold t, a block survives when any of its inner channels has ``|gamma| > t``, a stage keeps as many blocks
    as survive (its first ones: inheritance keeps the first), and its width is the smallest of the space's widths
    covering the share of the stage's channels above t. The smallest t whose sub-network fits the budget wins (the
    most kept); blocks stay the teacher's. ``bn_scales``: per stage, per block, the teacher's inner BN scales
    (:attr:`rcnas.proxy.records.TeacherStats.bn_scales`)."""
    t = space.teacher
    if len(bn_scales) != len(t.arch.stages) or any(len(b) != d for b, d in zip(bn_scales, t.arch.depths)):
        raise ValueError(f"bn_scales has {[len(b) for b in bn_scales]} blocks per stage; teacher {t.name} has "
                         f"{list(t.arch.depths)}")
    valid = [sorted({(c.depth, c.width) for c in choices.values() if c.block == blk})
             for choices, blk in zip(space.choices, t.arch.blocks)]

    def pruned(threshold: float) -> ArchSpec:
        depths, widths = [], []
        for i, blocks in enumerate(bn_scales):
            kept = [sum(1 for g in b if g > threshold) for b in blocks]
            depth = max(1, sum(1 for k in kept if k))
            share = sum(kept) / max(1, sum(len(b) for b in blocks))
            need = share * t.widths[i]
            # the narrowest width covering the kept share at that depth (the widest when none does)
            widths_at = [w for d, w in valid[i] if d == depth] or [w for _, w in valid[i]]
            depths.append(depth if any(d == depth for d, _ in valid[i]) else min(d for d, _ in valid[i]))
            widths.append(min((w for w in widths_at if w >= need - 1e-9), default=max(widths_at)))
        return t.subnet(tuple(depths), tuple(widths), t.arch.blocks)

    thresholds = sorted({0.0, *(g for s in bn_scales for b in s for g in b)})
    lo, hi = 0, len(thresholds) - 1  # MACs fall as t rises: the first t that fits, by bisection
    if space.cost(pruned(thresholds[hi])).macs > space.budget:
        return uniform_shrink(space)  # even the most pruned does not fit: the budget is below slimming's reach
    while lo < hi:
        mid = (lo + hi) // 2
        if space.cost(pruned(thresholds[mid])).macs <= space.budget:
            hi = mid
        else:
            lo = mid + 1
    return pruned(thresholds[lo])
