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
