"""Sub-network files in the RobustResNet YAML schema (robust-residual-network, NARes-Train, RC-NAS reference), so a
file written here trains in that ecosystem and theirs loads here.

Their files also carry training sections (``criterion``, ``optimizer``, ``scheduler``, ``dataset``...), which we
accept and ignore (training comes from the task), and we add an optional ``rcnas:`` section with the robust-block
hyper-parameters their YAML lacks and the provenance of a searched result.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, create_model, model_validator

from rcnas.config import InputNormalization
from rcnas.infra.configio import StrictModel, read_yaml, validate
from rcnas.infra.errors import ConfigError
from rcnas.infra.files import write_atomic
from rcnas.space.arch import CONV1_INPUTS, DOWNSAMPLE_PADDINGS, ArchSpec, RobustBlockParams, StageSpec
from rcnas.space.cost import robust_block_too_narrow
from rcnas.vocab import ACTIVATION_KINDS, BLOCK_KINDS, NORMALIZATION_KINDS


class ModelSection(StrictModel):
    name: Literal["PreActResNet"] = "PreActResNet"
    num_classes: Optional[int] = Field(None, ge=1)
    channel_configs: list[int]
    """stem channels, then each stage's planes (16*W1, 32*W2, 64*W3)"""
    depth_configs: list[int]
    stride_config: list[int]
    block_types: list[str]
    activations: list[str]
    normalizations: list[str]
    kernel_size_configs: list[int]
    drop_rate_config: Optional[list[float]] = None
    zero_init_residual: bool = False
    stem_stride: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> ModelSection:
        n = len(self.depth_configs)
        lengths = {
            "channel_configs": len(self.channel_configs) - 1, "stride_config": len(self.stride_config),
            "block_types": len(self.block_types), "activations": len(self.activations),
            "normalizations": len(self.normalizations), "kernel_size_configs": len(self.kernel_size_configs),
        }
        bad = {k: v for k, v in lengths.items() if v != n}
        if bad:
            raise ValueError(f"per-stage lists disagree with depth_configs' {n} stages: {bad} "
                             "(channel_configs has the stem first, so one entry more)")
        for block in self.block_types:
            BLOCK_KINDS.get(block)  # raises with the known names
        if min(self.depth_configs + self.channel_configs + self.kernel_size_configs + self.stride_config) < 1:
            raise ValueError("depths, channels, kernel sizes and strides must be >= 1")
        if any(not 0 <= r < 1 for r in self.drop_rate_config or []):
            raise ValueError("drop_rate_config: rates are in [0, 1)")
        return self


# The YAML view of RobustBlockParams, derived from the dataclass so that the fields are defined once.
RobustBlockParamsModel = create_model(
    "RobustBlockParamsModel", __base__=StrictModel,
    **{name: ((int, Field(default, ge=1)) if isinstance(default, int) else (Literal[CONV1_INPUTS], default))
       for name, default in asdict(RobustBlockParams()).items()},
)


class RcnasSection(StrictModel):
    """Our additions: robust-block hyper-parameters and where a searched sub-network came from."""

    block_params: RobustBlockParamsModel = RobustBlockParamsModel()
    input_normalization: Optional[InputNormalization] = None
    """standardise inputs inside the network (published checkpoints trained that way need it)"""
    downsample_padding: Literal[DOWNSAMPLE_PADDINGS] = "symmetric"
    """``bottom_right`` for DeepMind's WideResNets (``rcnas.space.arch.ArchSpec``)"""
    base_channels: Optional[list[int]] = None
    """when this file declares a teacher: the planes of one width unit per stage (default 16, 32, 64, ...)"""
    teacher: Optional[str] = None
    task: Optional[str] = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    provenance: Optional[dict[str, Any]] = None
    """what a searched file was made with (code version, library versions)"""


class SubnetFile(StrictModel):
    model: ModelSection
    rcnas: Optional[RcnasSection] = None
    # carried by RobustResNet-style files; accepted, not used (the task config supplies training)
    num_classes: Optional[int] = None
    epochs: Optional[int] = None
    grad_clip: Optional[float] = None
    log_frequency: Optional[int] = None
    criterion: Optional[dict[str, Any]] = None
    dataset: Optional[dict[str, Any]] = None
    optimizer: Optional[dict[str, Any]] = None
    scheduler: Optional[dict[str, Any]] = None


def to_arch(f: SubnetFile) -> ArchSpec:
    m = f.model
    p = (f.rcnas.block_params if f.rcnas else RobustBlockParamsModel()).model_dump()
    stages = tuple(
        StageSpec(depth=d, channels=c, block=b, stride=s, kernel_size=k, activation=a, normalization=nrm)
        for d, c, b, s, k, a, nrm in zip(m.depth_configs, m.channel_configs[1:], m.block_types, m.stride_config,
                                        m.kernel_size_configs, m.activations, m.normalizations)
    )
    extra = f.rcnas or RcnasSection()
    norm = extra.input_normalization
    return ArchSpec(m.channel_configs[0], stages, RobustBlockParams(**p), m.stem_stride,
                    (tuple(norm.mean), tuple(norm.std)) if norm else None, extra.downsample_padding)


def from_arch(arch: ArchSpec, num_classes: int | None = None, **rcnas: Any) -> SubnetFile:
    model = ModelSection(
        num_classes=num_classes,
        channel_configs=[arch.stem_channels, *arch.channels],
        depth_configs=list(arch.depths),
        stride_config=[s.stride for s in arch.stages],
        block_types=list(arch.blocks),
        activations=[s.activation for s in arch.stages],
        normalizations=[s.normalization for s in arch.stages],
        kernel_size_configs=[s.kernel_size for s in arch.stages],
        drop_rate_config=[0.0] * len(arch.stages),
        stem_stride=arch.stem_stride,
    )
    norm = (InputNormalization(mean=list(arch.input_norm[0]), std=list(arch.input_norm[1]))
            if arch.input_norm else None)
    section = RcnasSection(block_params=RobustBlockParamsModel(**asdict(arch.block_params)),
                           input_normalization=norm, downsample_padding=arch.downsample_padding, **rcnas)
    return SubnetFile(model=model, rcnas=section, num_classes=num_classes)


def load_subnet(path: str | Path) -> tuple[ArchSpec, SubnetFile]:
    """Read a sub-network YAML (ours or RobustResNet's); raises ConfigError with the file and key on problems."""
    f = validate(SubnetFile, read_yaml(path), str(path))
    arch = to_arch(f)
    for i, stage in enumerate(arch.stages):
        why = BLOCK_KINDS.get(stage.block).robust and robust_block_too_narrow(stage.channels, arch.block_params)
        if why:
            raise ConfigError(f"{path}: stage {i + 1}: {why}; widen it or set rcnas.block_params")
    for kind, names, reg in (("activations", f.model.activations, ACTIVATION_KINDS),
                             ("normalizations", f.model.normalizations, NORMALIZATION_KINDS)):
        for n in names:
            if n not in reg:
                raise ConfigError(f"{path}: model.{kind}: unknown {n!r}; known: {', '.join(reg.names())}")
    return arch, f


def dump_subnet(f: SubnetFile, path: str | Path) -> None:
    """Write ``f`` as YAML (keys in schema order, no nulls)."""
    data = f.model_dump(exclude_none=True)
    section = data.get("rcnas", {})
    # defaults of later fields are left out: files stay as they were written before those fields existed
    for holder, key, default in ((section, "metrics", {}), (section, "downsample_padding", "symmetric"),
                                 (section.get("block_params", {}), "conv1_input", "preact")):
        if holder.get(key, object()) == default:
            holder.pop(key)
    write_atomic(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=None))
