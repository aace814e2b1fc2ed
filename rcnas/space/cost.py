"""Closed-form MACs and parameter counts of an :class:`ArchSpec`.

The environment masks actions by budget thousands of times per search, so building a model and tracing it with
``torchprofile`` (the field's counter, ~1 s for a large teacher) is far too slow there. These formulas count what
``torchprofile.profile_macs`` (0.1) counts: convolutions and linear layers, plus one MAC per output element of
affine batch-norm, average pooling and elementwise multiplies (additions and activations are free); and
``tests/test_cost.py`` checks them against it on built models.
"""

from __future__ import annotations

from dataclasses import dataclass

from rcnas.space.arch import ArchSpec, InputShape, RobustBlockParams, StageSpec
from rcnas.vocab import BLOCK_KINDS, ROBUST_BLOCK

ROBUST_EXPANSION = BLOCK_KINDS.get(ROBUST_BLOCK).expansion


@dataclass(frozen=True, slots=True)
class Cost:
    """MACs and trainable parameters of a network or a part of one."""

    macs: int
    params: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.macs + other.macs, self.params + other.params)


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Spatial size after a conv/pool with padding ``kernel // 2``."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def _conv(c_in: int, c_out: int, kernel: int, out_size: int, groups: int = 1) -> Cost:
    weights = c_out * (c_in // groups) * kernel * kernel
    return Cost(weights * out_size * out_size, weights)


def _bn(c: int, size: int) -> Cost:
    return Cost(c * size * size, 2 * c)


def stage_out_channels(stage: StageSpec) -> int:
    """Channels a stage emits: its planes, times the bottleneck expansion for robust blocks."""
    return stage.channels * BLOCK_KINDS.get(stage.block).expansion


def robust_width(planes: int, p: RobustBlockParams) -> int:
    """Width of one scale branch of a robust block (RobustResNet's formula)."""
    return (planes * p.base_width // 160) * p.cardinality


def robust_block_too_narrow(planes: int, p: RobustBlockParams) -> str | None:
    """Why a robust block of ``planes`` cannot be built with ``p`` (one channel per group and per SE unit are the
    least it needs), or None when it can."""
    if robust_width(planes, p) < p.cardinality or planes * ROBUST_EXPANSION // p.se_reduction < 1:
        return (f"{ROBUST_BLOCK} with {planes} planes is too narrow for base_width={p.base_width}, "
                f"cardinality={p.cardinality}, se_reduction={p.se_reduction}")
    return None


def basic_block_cost(c_in: int, planes: int, stride: int, k: int, size_in: int) -> Cost:
    size = conv_out(size_in, k, stride)
    cost = _bn(c_in, size_in) + _conv(c_in, planes, k, size) + _bn(planes, size) + _conv(planes, planes, k, size)
    if stride != 1 or c_in != planes:
        cost = cost + _conv(c_in, planes, 1, conv_out(size_in, 1, stride))
    return cost


def robust_block_cost(c_in: int, planes: int, stride: int, k: int, size_in: int, p: RobustBlockParams) -> Cost:
    size = conv_out(size_in, k, stride)
    width = robust_width(planes, p)
    out = planes * ROBUST_EXPANSION
    branches = max(p.scales - 1, 1)
    cost = _bn(c_in, size_in) + _conv(c_in, width * p.scales, 1, size_in) + _bn(width * p.scales, size_in)
    for _ in range(branches):
        cost = cost + _conv(width, width, k, size, groups=p.cardinality) + _bn(width, size)
    if stride > 1 and p.scales > 1:
        cost = cost + Cost(width * size * size, 0)  # the last branch is average-pooled, not convolved
    cost = cost + _conv(width * p.scales, out, 1, size) + _bn(out, size)
    hidden = out // p.se_reduction
    # squeeze-excitation: global pool, two bias-free linear layers, then the channel-wise multiply
    cost = cost + Cost(out + 2 * out * hidden + out * size * size, 2 * out * hidden)
    if stride > 1 or c_in != out:
        cost = cost + _conv(c_in, out, 1, conv_out(size_in, 1, stride))
    return cost


def block_cost(stage: StageSpec, c_in: int, stride: int, size_in: int, p: RobustBlockParams) -> Cost:
    # one closed-form count per block type of rcnas.vocab.BLOCK_KINDS (a test checks every kind has one)
    if BLOCK_KINDS.get(stage.block).robust:
        return robust_block_cost(c_in, stage.channels, stride, stage.kernel_size, size_in, p)
    return basic_block_cost(c_in, stage.channels, stride, stage.kernel_size, size_in)


def stage_cost(stage: StageSpec, c_in: int, size_in: int, p: RobustBlockParams) -> tuple[Cost, int]:
    """Cost of a whole stage entered with ``c_in`` channels at ``size_in``; returns (cost, output size)."""
    cost = block_cost(stage, c_in, stage.stride, size_in, p)
    size = conv_out(size_in, stage.kernel_size, stage.stride)
    c_out = stage_out_channels(stage)
    if stage.depth > 1:
        cost = cost + _scale(block_cost(stage, c_out, 1, size, p), stage.depth - 1)
    return cost, size


def stem_cost(arch: ArchSpec, shape: InputShape) -> tuple[Cost, int]:
    size = conv_out(shape.resolution, 3, arch.stem_stride)
    return _conv(shape.channels, arch.stem_channels, 3, size), size


def head_cost(c_last: int, size: int, num_classes: int) -> Cost:
    # BN -> act -> global average pool -> linear with bias (the bias add is free, as in torchprofile)
    return _bn(c_last, size) + Cost(c_last + c_last * num_classes, c_last * num_classes + num_classes)


def arch_cost(arch: ArchSpec, shape: InputShape) -> Cost:
    """Total MACs (for one input) and parameters of ``arch`` on inputs of ``shape``.

    Example:
        >>> from rcnas.models.teachers import get_teacher
        >>> arch_cost(get_teacher("WRN-A1").arch, InputShape()).macs  # about 5.08e9
    """
    cost, size = stem_cost(arch, shape)
    c_in = arch.stem_channels
    for stage in arch.stages:
        part, size = stage_cost(stage, c_in, size, arch.block_params)
        cost = cost + part
        c_in = stage_out_channels(stage)
    return cost + head_cost(c_in, size, shape.num_classes)


def _scale(cost: Cost, n: int) -> Cost:
    return Cost(cost.macs * n, cost.params * n)
