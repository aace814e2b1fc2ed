"""One pre-activation ResNet class for the whole family, built from an :class:`ArchSpec` (the timm way: one
parameterised class, variants are data)."""

from __future__ import annotations

import math

import torch
from torch import nn

from rcnas.models.blocks import Slice, block_class, module_plan, take
from rcnas.models.layers import ACTIVATIONS, NORMALIZATIONS
from rcnas.space.arch import ArchSpec, InputShape
from rcnas.space.cost import stage_out_channels


class PreActResNet(nn.Module):
    """[standardise] -> stem conv3x3 (no BN/act: blocks are pre-activated) -> stages -> BN -> act -> global pool
    -> linear.

    Inputs are images in [0, 1]; outputs are logits. Standardisation happens only when ``arch.input_norm`` is set;
    its mean and std are buffers that are not saved in the state dict (the architecture carries them).
    """

    def __init__(self, arch: ArchSpec, shape: InputShape) -> None:
        super().__init__()
        self.arch, self.shape = arch, shape
        self.standardise = arch.input_norm is not None
        if arch.input_norm is not None:
            mean, std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in arch.input_norm)
            if len(mean) != shape.channels or len(std) != shape.channels:
                raise ValueError(f"input_norm has {len(mean)} channels, the data has {shape.channels}")
            self.register_buffer("input_mean", mean, persistent=False)
            self.register_buffer("input_std", std, persistent=False)
        self.stem = nn.Conv2d(shape.channels, arch.stem_channels, 3, arch.stem_stride, 1, bias=False)
        c_in = arch.stem_channels
        stages = []
        for stage in arch.stages:
            block = block_class(stage.block)
            layers = []
            for i in range(stage.depth):
                layers.append(block(c_in, stage, stage.stride if i == 0 else 1, arch))
                c_in = stage_out_channels(stage)
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        last = arch.stages[-1]
        self.head_norm = NORMALIZATIONS.get(last.normalization)(c_in)
        self.head_act = ACTIVATIONS.get(last.activation)()
        self.fc = nn.Linear(c_in, shape.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init on fan-out, unit BN, zero biases: the RobustResNet / WRN recipe that the sizes table assumes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardise:
            x = (x - self.input_mean) / self.input_std
        out = self.stem(x)
        for stage in self.stages:
            out = stage(out)
        out = self.head_act(self.head_norm(out))
        out = nn.functional.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def build_model(arch: ArchSpec, shape: InputShape) -> PreActResNet:
    """Build a freshly initialised network for ``arch`` on inputs of ``shape``.

    Example:
        >>> from rcnas.models.teachers import get_teacher
        >>> model = build_model(get_teacher("tiny-444").arch, InputShape(1, 8, 10))
    """
    return PreActResNet(arch, shape)


Plan = dict[str, tuple[str, Slice]]
"""student tensor name -> (teacher tensor name, where it sits in it)"""


def inheritance_plan(student: PreActResNet, teacher: PreActResNet) -> tuple[Plan, dict[str, int]]:
    """Where each of the student's tensors sits in the teacher (first blocks, first channels; docs/method.md).

    A stage whose block type differs from the teacher's is left out (fresh initialisation), as is any tensor that
    does not fit inside the teacher's (the input side of the stage after a switched one).

    Returns:
        the plan, and counts of ``inherited`` and ``fresh`` blocks.
    """
    plan = _prefixed(module_plan(student.stem, teacher.stem), "stem.")
    counts = {"inherited": 0, "fresh": 0}
    for i, (s_stage, t_stage, s_spec, t_spec) in enumerate(zip(student.stages, teacher.stages, student.arch.stages,
                                                                teacher.arch.stages)):
        if s_spec.block != t_spec.block:
            counts["fresh"] += len(s_stage)
            continue
        for j, (s_block, t_block) in enumerate(zip(s_stage, t_stage)):
            plan.update(_prefixed(s_block.inheritance(t_block), f"stages.{i}.{j}."))
            counts["inherited"] += 1
    for head in ("head_norm", "fc"):
        plan.update(_prefixed(module_plan(getattr(student, head), getattr(teacher, head)), f"{head}."))
    return plan, counts


def _prefixed(plan: Plan, prefix: str) -> Plan:
    return {prefix + k: (prefix + src, where) for k, (src, where) in plan.items()}


@torch.no_grad()
def inherit_weights(student: PreActResNet, teacher: PreActResNet) -> dict[str, int]:
    """Copy the teacher's weights into a sub-network of it (:func:`inheritance_plan`).

    Returns:
        counts of ``inherited`` and ``fresh`` blocks, for provenance.
    """
    plan, counts = inheritance_plan(student, teacher)
    src = teacher.state_dict()
    for name, tensor in student.state_dict().items():
        if name in plan:
            t_name, where = plan[name]
            tensor.copy_(take(src[t_name], where))
    return counts


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> None:
    """Re-estimate every BN layer's running statistics on ``images`` (a cumulative average, in train mode, no
    gradient); the model is left in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None = cumulative moving average: every batch counts equally
    model.train()
    for i in range(0, len(images), batch_size):
        model(images[i:i + batch_size])
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()
