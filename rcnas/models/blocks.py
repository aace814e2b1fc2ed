"""The two block types of the search space, registered under the names RobustResNet's YAML files use.

Each block knows how to take its weights from a (larger) teacher block of the same type: the first channels and,
for the multi-scale robust block, the first channels of every scale branch and every group (weight inheritance,
docs/method.md). A plain prefix slice would mix branches there.
"""

from __future__ import annotations

import torch
from torch import nn

from rcnas.models.layers import ACTIVATIONS, NORMALIZATIONS
from rcnas.space.arch import ArchSpec, StageSpec
from rcnas.space.cost import ROBUST_EXPANSION, robust_block_too_narrow, robust_width
from rcnas.vocab import BLOCK_KINDS, load_ref


def block_class(name: str) -> type[nn.Module]:
    """The module of block type ``name`` (``rcnas.vocab.BLOCK_KINDS`` names the class of each)."""
    return load_ref(BLOCK_KINDS.get(name).module)


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, padding: str = "symmetric"
          ) -> nn.Conv2d:
    if padding == "bottom_right" and stride > 1 and k > 1:
        return BottomRightPadConv2d(c_in, c_out, k, stride=stride, groups=groups, bias=False)
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=False)


class BottomRightPadConv2d(nn.Conv2d):
    """A strided conv padded ``k // 2 - 1`` pixels top/left and ``k // 2`` bottom/right (for k = 3: none and one),
    the way DeepMind's WideResNets downsample; same weights, output size and MACs as the symmetric conv, shifted
    sampling grid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        before, after = k // 2 - 1, k // 2
        return super().forward(nn.functional.pad(x, (before, after, before, after)))


Slice = tuple[int | torch.Tensor, ...]
"""Where a student tensor sits in its teacher's: per dim, a prefix length or the indices to take."""


def slice_of(dst_shape: torch.Size, src_shape: torch.Size, index: dict[int, torch.Tensor] | None = None
             ) -> Slice | None:
    """Along dim d take ``index[d]`` if given, else the first ``dst_shape[d]`` entries; None if ``dst`` does not
    fit inside ``src``."""
    if len(dst_shape) != len(src_shape):
        return None
    out: list[int | torch.Tensor] = []
    for d, (n_dst, n_src) in enumerate(zip(dst_shape, src_shape)):
        idx = (index or {}).get(d)
        if idx is None and n_dst > n_src:
            return None
        out.append(n_dst if idx is None else idx)
    return tuple(out)


def take(src: torch.Tensor, where: Slice) -> torch.Tensor:
    """``src`` sliced by ``where``; differentiable, and a view wherever it is a prefix (weight sharing relies on
    gradients flowing back into ``src``)."""
    for d, idx in enumerate(where):
        if isinstance(idx, int):
            src = src.narrow(d, 0, idx) if idx != src.shape[d] else src
        else:
            src = src.index_select(d, idx.to(src.device))
    return src


def module_plan(dst: nn.Module, src: nn.Module, index: dict[str, dict[int, torch.Tensor]] | None = None
                ) -> dict[str, tuple[str, Slice]]:
    """Prefix-slice every parameter and buffer of ``src`` into ``dst`` (same names), with per-tensor overrides;
    tensors that do not fit are left out (they keep their initialisation)."""
    src_state = src.state_dict(keep_vars=True)
    plan = {}
    for name, tensor in dst.state_dict(keep_vars=True).items():
        if name in src_state:
            where = slice_of(tensor.shape, src_state[name].shape, (index or {}).get(name))
            if where is not None:
                plan[name] = (name, where)
    return plan


class PreActBasicBlock(nn.Module):
    """WRN block: ``o = act(bn1(x)); sc = shortcut(o) or x; o = conv(o); o = conv(act(bn2(o))); o + sc``.

    This is the wiring of the TRADES / RobustBench ``WideResNet``, DeepMind's and RobustResNet's basic block alike:
    their checkpoints load into it unchanged (``rcnas.models.imports``).
    """

    def __init__(self, c_in: int, stage: StageSpec, stride: int, arch: ArchSpec) -> None:
        super().__init__()
        k, planes = stage.kernel_size, stage.channels
        self.bn1 = NORMALIZATIONS.get(stage.normalization)(c_in)
        self.act = ACTIVATIONS.get(stage.activation)()
        self.conv1 = _conv(c_in, planes, k, stride, padding=arch.downsample_padding)
        self.bn2 = NORMALIZATIONS.get(stage.normalization)(planes)
        self.conv2 = _conv(planes, planes, k)
        self.shortcut = _conv(c_in, planes, 1, stride) if stride != 1 or c_in != planes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act(self.bn1(x))
        sc = self.shortcut(o) if self.shortcut is not None else x
        o = self.conv1(o)
        o = self.conv2(self.act(self.bn2(o)))
        return o + sc

    def inheritance(self, teacher: nn.Module) -> dict[str, tuple[str, Slice]]:
        return module_plan(self, teacher)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = channels // reduction
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, channels, bias=False), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))
        return x * w[:, :, None, None]


class RobustResBlock(nn.Module):
    """RobustResNet's block (Huang et al., CVPR 2023): a Res2Net multi-scale bottleneck (expansion 4) with a
    squeeze-excitation branch added to the residual sum.

    ``block_params.conv1_input`` picks what ``conv1`` reads. The reference code feeds it the raw input ``x`` (``bn1``
    and the activation then only feed the shortcut): ``raw``, needed to load its checkpoints. Our default ``preact``
    feeds it the pre-activated input as every other pre-activation block does; it is what every shipped config and
    stored evaluation used before ``raw`` existed. Sizes and MACs are identical.
    """

    def __init__(self, c_in: int, stage: StageSpec, stride: int, arch: ArchSpec) -> None:
        super().__init__()
        k, planes, p = stage.kernel_size, stage.channels, arch.block_params
        self.raw_conv1 = p.conv1_input == "raw"
        norm, act = NORMALIZATIONS.get(stage.normalization), ACTIVATIONS.get(stage.activation)
        self.width, self.scales, self.stride = robust_width(planes, p), p.scales, stride
        self.cardinality = p.cardinality
        out = planes * ROBUST_EXPANSION
        why = robust_block_too_narrow(planes, p)
        if why:
            raise ValueError(why)
        self.bn1 = norm(c_in)
        self.act = act()
        self.conv1 = _conv(c_in, self.width * self.scales, 1)
        self.bn2 = norm(self.width * self.scales)
        n = max(self.scales - 1, 1)
        self.conv2 = nn.ModuleList(_conv(self.width, self.width, k, stride, p.cardinality, arch.downsample_padding)
                                   for _ in range(n))
        self.bn3 = nn.ModuleList(norm(self.width) for _ in range(n))
        self.pool = nn.AvgPool2d(3, stride, 1) if stride > 1 else nn.Identity()
        self.conv3 = _conv(self.width * self.scales, out, 1)
        self.se_bn = norm(out)
        self.se = SqueezeExcitation(out, p.se_reduction)
        self.shortcut = _conv(c_in, out, 1, stride) if stride > 1 or c_in != out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.act(self.bn1(x))
        sc = self.shortcut(o) if self.shortcut is not None else x
        o = self.act(self.bn2(self.conv1(x if self.raw_conv1 else o)))
        if self.scales == 1:
            o = self.act(self.bn3[0](self.conv2[0](o)))
        else:
            xs = torch.chunk(o, self.scales, 1)
            ys: list[torch.Tensor] = []
            for s in range(self.scales - 1):
                # with a stride the branches cannot be chained (sizes differ): a plain grouped bottleneck then
                inp = xs[s] if s == 0 or self.stride > 1 else xs[s] + ys[-1]
                ys.append(self.act(self.bn3[s](self.conv2[s](inp))))
            ys.append(self.pool(xs[-1]))
            o = torch.cat(ys, 1)
        o = self.conv3(o)
        return o + sc + self.se(self.se_bn(o))

    def inheritance(self, teacher: nn.Module) -> dict[str, tuple[str, Slice]]:
        assert isinstance(teacher, RobustResBlock)
        branch = _branch_index(self.width, teacher.width, self.scales)
        grouped = _group_index(self.width, teacher.width, self.cardinality)
        index: dict[str, dict[int, torch.Tensor]] = {
            "conv1.weight": {0: branch},
            "conv3.weight": {1: branch},
            **{f"bn2.{t}": {0: branch} for t in ("weight", "bias", "running_mean", "running_var")},
        }
        for s in range(len(self.conv2)):
            index[f"conv2.{s}.weight"] = {0: grouped}
            for t in ("weight", "bias", "running_mean", "running_var"):
                index[f"bn3.{s}.{t}"] = {0: grouped}
        return module_plan(self, teacher, index)


def _branch_index(w_student: int, w_teacher: int, scales: int) -> torch.Tensor:
    """Channels of the teacher's ``scales`` concatenated branches that the student's narrower branches keep."""
    return torch.cat([torch.arange(w_student) + s * w_teacher for s in range(scales)])


def _group_index(w_student: int, w_teacher: int, groups: int) -> torch.Tensor:
    """Output channels kept from a grouped conv: the first channels of every group, groups stay aligned."""
    gs, gt = w_student // groups, w_teacher // groups
    return torch.cat([torch.arange(gs) + g * gt for g in range(groups)])
