"""The genotype: small frozen, hashable values describing a pre-activation ResNet and the teacher bounding it.

These are kept apart from ``nn.Module`` (NASLib's "search space object is the module" is what we avoid): a
builder in ``rcnas.models`` turns an :class:`ArchSpec` into a network, and the cost model reads it directly.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, replace

from rcnas.vocab import BLOCK_KINDS


@dataclass(frozen=True, slots=True)
class RobustBlockParams:
    """Hyper-parameters of ``robust_res_block``. They are not stored in RobustResNet's YAML files, and with
    that code's defaults RobustResNet-A1 grows to 144M params, so we always carry them explicitly."""

    scales: int = 8
    base_width: int = 10
    cardinality: int = 4
    se_reduction: int = 64
    conv1_input: str = "preact"
    """what the block's first 1x1 conv reads: ``preact`` (the pre-activated input, like every other pre-activation
    block) or ``raw`` (the block's input itself, as RobustResNet's reference code wires it: its checkpoints need it)"""


CONV1_INPUTS = ("preact", "raw")
DOWNSAMPLE_PADDINGS = ("symmetric", "bottom_right")


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One stage: ``depth`` blocks of ``block`` with ``channels`` planes (the schema's ``channel_configs`` entry)."""

    depth: int
    channels: int
    block: str
    stride: int = 1
    kernel_size: int = 3
    activation: str = "ReLU"
    normalization: str = "BatchNorm"


@dataclass(frozen=True, slots=True)
class ArchSpec:
    """A whole network: stem, stages, robust-block hyper-parameters. Independent of the dataset: input channels,
    resolution and class count are given when building or counting (see :class:`InputShape`)."""

    stem_channels: int
    stages: tuple[StageSpec, ...]
    block_params: RobustBlockParams = RobustBlockParams()
    stem_stride: int = 1
    input_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    """per-channel (mean, std) the network subtracts and divides by before its stem: published checkpoints that
    were trained on standardised inputs carry it; inputs stay images in [0, 1] either way"""
    downsample_padding: str = "symmetric"
    """how a block's strided 3x3 conv pads: ``symmetric`` (one pixel all round, PyTorch's way) or ``bottom_right``
    (none top/left, one bottom/right: TensorFlow's ``SAME`` on even sizes, as DeepMind's WideResNets are trained)"""

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(s.channels for s in self.stages)

    @property
    def blocks(self) -> tuple[str, ...]:
        return tuple(s.block for s in self.stages)

    def key(self) -> str:
        """A stable content hash (hex, 16 chars): the same architecture gives the same key in every process.

        Fields added after stores existed (:data:`_LATER_FIELDS`) count only when they differ from their default,
        so every architecture that existed before them keeps its key (and its stored evaluations).
        """
        return _key(self)

    def short(self) -> str:
        """A human-readable one-liner, e.g. ``D4-4-2 C32-64-64 bbr``."""
        tag = "".join(BLOCK_KINDS.get(b).letter for b in self.blocks)
        return (
            f"D{'-'.join(map(str, self.depths))} C{'-'.join(map(str, self.channels))} {tag}"
        )


_LATER_FIELDS: tuple[tuple[tuple[str, ...], object], ...] = (
    (("input_norm",), None), (("downsample_padding",), "symmetric"), (("block_params", "conv1_input"), "preact"),
)


@functools.lru_cache(maxsize=1 << 16)
def _key(arch: ArchSpec) -> str:
    """:meth:`ArchSpec.key`, computed once per architecture: a search asks for the keys of the same few thousand
    sub-networks again and again (its store, its screening), and each is a dict, a JSON dump and a hash."""
    d = asdict(arch)
    for path, default in _LATER_FIELDS:
        *parents, leaf = path
        holder = d
        for name in parents:
            holder = holder[name]
        if holder[leaf] == default:
            del holder[leaf]
    blob = json.dumps(d, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def arch_from_dict(d: dict) -> ArchSpec:
    """The inverse of ``dataclasses.asdict`` on an :class:`ArchSpec` (how the store keeps them; rows written before
    the later fields existed lack them)."""
    norm = d.get("input_norm")
    return ArchSpec(d["stem_channels"], tuple(StageSpec(**s) for s in d["stages"]),
                    RobustBlockParams(**d["block_params"]), d["stem_stride"],
                    (tuple(norm[0]), tuple(norm[1])) if norm else None, d.get("downsample_padding", "symmetric"))


@dataclass(frozen=True, slots=True)
class InputShape:
    """What a dataset feeds a network: image channels, square resolution, number of classes."""

    channels: int = 3
    resolution: int = 32
    num_classes: int = 10


@dataclass(frozen=True, slots=True)
class TeacherSpec:
    """A registered teacher: its architecture plus the channels of one width unit per stage, so that a
    sub-network's width factor W'_i maps to ``base_channels[i] * W'_i`` planes."""

    name: str
    arch: ArchSpec
    base_channels: tuple[int, ...]

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(s.channels // b for s, b in zip(self.arch.stages, self.base_channels))

    def subnet(self, depths: tuple[int, ...], widths: tuple[int, ...], blocks: tuple[str, ...]) -> ArchSpec:
        """The sub-network with per-stage ``depths``, width factors ``widths`` and ``blocks``."""
        stages = tuple(
            replace(s, depth=d, channels=b * w, block=blk)
            for s, b, d, w, blk in zip(self.arch.stages, self.base_channels, depths, widths, blocks)
        )
        return replace(self.arch, stages=stages)

    def contains(self, arch: ArchSpec) -> str | None:
        """Why ``arch`` does not fit inside this teacher, or None when it does (block types may differ)."""
        if len(arch.stages) != len(self.arch.stages):
            return f"has {len(arch.stages)} stages, teacher {self.name} has {len(self.arch.stages)}"
        for i, (s, t) in enumerate(zip(arch.stages, self.arch.stages)):
            if s.depth > t.depth or s.channels > t.channels:
                return (
                    f"stage {i + 1} (depth {s.depth}, {s.channels} channels) is larger than teacher "
                    f"{self.name}'s (depth {t.depth}, {t.channels} channels)"
                )
            if s.stride != t.stride:
                return f"stage {i + 1} stride {s.stride} differs from teacher {self.name}'s {t.stride}"
        if arch.stem_channels != self.arch.stem_channels:
            return f"stem has {arch.stem_channels} channels, teacher {self.name}'s has {self.arch.stem_channels}"
        return None
