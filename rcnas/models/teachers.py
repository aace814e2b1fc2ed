"""The teacher zoo: every entry is a lazy factory returning a :class:`TeacherSpec` (no model is built on import).

Variants are data over one builder (timm's ``resnet18d`` pattern). Sizes at 32x32, 10 classes are pinned by
``tests/test_cost.py`` against the table in docs/method.md.
"""

from __future__ import annotations

from collections.abc import Callable

from rcnas.infra.registry import Registry
from rcnas.space.arch import ArchSpec, RobustBlockParams, StageSpec, TeacherSpec
from rcnas.vocab import BASIC_BLOCK, ROBUST_BLOCK

TEACHERS: Registry[Callable[[], TeacherSpec]] = Registry("teacher")

CIFAR_BASES = (16, 32, 64)
STRIDES = (1, 2, 2)


def make_teacher(
    name: str,
    depths: tuple[int, ...],
    widths: tuple[int, ...],
    block: str,
    bases: tuple[int, ...] = CIFAR_BASES,
    stem: int = 16,
    params: RobustBlockParams = RobustBlockParams(),
) -> TeacherSpec:
    """A teacher with stage i of ``depths[i]`` blocks and ``bases[i] * widths[i]`` planes."""
    stages = tuple(
        StageSpec(depth=d, channels=b * w, block=block, stride=s)
        for d, w, b, s in zip(depths, widths, bases, STRIDES)
    )
    return TeacherSpec(name=name, arch=ArchSpec(stem, stages, params), base_channels=bases)


def _register(name: str, depths: tuple[int, ...], widths: tuple[int, ...], block: str, **kw: object) -> None:
    TEACHERS.add(name, lambda: make_teacher(name, depths, widths, block, **kw))  # type: ignore[arg-type]


# RobustResNet's scaled family (Huang et al. 2023, Table 4): WRN blocks and robust blocks at the same D, W.
_A_FAMILY = {
    "A1": ((14, 14, 7), (5, 7, 3)),
    "A2": ((17, 17, 8), (7, 9, 4)),
    "A3": ((22, 22, 11), (8, 11, 5)),
    "A4": ((27, 28, 13), (10, 14, 6)),
}
for _tag, (_d, _w) in _A_FAMILY.items():
    _register(f"WRN-{_tag}", _d, _w, BASIC_BLOCK)
    _register(f"RobustResNet-{_tag}", _d, _w, ROBUST_BLOCK)

# Wide ResNets WRN-depth-k: (depth - 4) / 6 blocks per stage, width k everywhere.
for _depth, _k in ((28, 10), (34, 10), (34, 12), (46, 14), (70, 16)):
    _n = (_depth - 4) // 6
    _register(f"WRN-{_depth}-{_k}", (_n, _n, _n), (_k, _k, _k), BASIC_BLOCK)

# Tiny teachers for the offline digits default (docs/method.md, "The embedded default"): channel bases 4/8/16,
# same stage structure.
# Robust-block parameters are scaled so that the narrowest slice (4 planes) still has one channel per group.
TINY_BASES = (4, 8, 16)
TINY_ROBUST = RobustBlockParams(scales=2, base_width=40, cardinality=1, se_reduction=4)
for _d, _w in (((4, 4, 4), (4, 4, 4)), ((3, 3, 2), (4, 4, 4)), ((4, 4, 4), (2, 3, 4)), ((2, 2, 2), (4, 4, 4))):
    _tiny = f"tiny-{''.join(map(str, _d))}" + ("" if _w == (4, 4, 4) else f"-w{''.join(map(str, _w))}")
    _register(_tiny, _d, _w, BASIC_BLOCK, bases=TINY_BASES, stem=4, params=TINY_ROBUST)


def get_teacher(name: str) -> TeacherSpec:
    """The teacher registered as ``name`` (raises ConfigError listing the known names)."""
    return TEACHERS.get(name)()
