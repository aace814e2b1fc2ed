"""The compression search space of one task: per-stage (depth, width factor, block type) choices inside a
teacher, and the budget wall (AMC's "action wall") that keeps every finished sub-network within its MACs budget.

Actions index a fixed grid ``block x depth x width`` (:class:`ActionGrid`), so that tasks with different teachers
share one action space and one policy can meta-train across them; grid cells a stage cannot take (deeper or wider
than the teacher's stage, a block type the task does not offer) are never valid.

Pure Python + numpy: the Gymnasium env calls :meth:`CompressionSpace.mask` on every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from rcnas.infra.errors import ConfigError
from rcnas.space.arch import ArchSpec, InputShape, StageSpec, TeacherSpec
from rcnas.space.cost import (
    Cost,
    arch_cost,
    conv_out,
    head_cost,
    robust_block_too_narrow,
    stage_cost,
    stage_out_channels,
    stem_cost,
)
from rcnas.vocab import BLOCK_KINDS

GRID_BLOCKS = tuple(BLOCK_KINDS.ordered())
"""the grid's block axis, in the vocabulary's registration order (so the action numbering is stable)"""


@dataclass(frozen=True, slots=True)
class StageChoice:
    depth: int
    width: int
    block: str


@dataclass(frozen=True, slots=True)
class ActionGrid:
    """Action ``a`` <-> (block, depth, width): ``a = (b * max_depth + depth - 1) * max_width + width - 1``."""

    max_depth: int
    max_width: int

    @property
    def n(self) -> int:
        return len(GRID_BLOCKS) * self.max_depth * self.max_width

    def encode(self, c: StageChoice) -> int:
        return (GRID_BLOCKS.index(c.block) * self.max_depth + c.depth - 1) * self.max_width + c.width - 1

    @classmethod
    def for_teacher(cls, teacher: TeacherSpec) -> ActionGrid:
        return cls(max(teacher.arch.depths), max(teacher.widths))

    @classmethod
    def covering(cls, spaces: list[CompressionSpace]) -> ActionGrid:
        """The smallest grid holding every space's teacher: one action space for all tasks of an experiment."""
        return cls(max(s.grid.max_depth for s in spaces), max(s.grid.max_width for s in spaces))


class CompressionSpace:
    """All sub-networks of ``teacher`` reachable stage by stage within ``budget_macs``.

    Args:
        teacher: bounds depth and width per stage.
        shape: the dataset's input shape (MACs depend on resolution and class count).
        budget_macs: the MACs limit.
        blocks: block types a stage may take; empty means the teacher's own.
        grid: the action grid; default: the smallest one holding this teacher.
    """

    def __init__(self, teacher: TeacherSpec, shape: InputShape, budget_macs: float, blocks: tuple[str, ...] = (),
                 grid: ActionGrid | None = None):
        self._args = (teacher, shape, budget_macs, blocks, grid)
        self.teacher, self.shape, self.budget = teacher, shape, float(budget_macs)
        self.blocks = blocks or tuple(dict.fromkeys(teacher.arch.blocks))
        self.grid = grid or ActionGrid.for_teacher(teacher)
        if self.grid.max_depth < max(teacher.arch.depths) or self.grid.max_width < max(teacher.widths):
            raise ConfigError(f"action grid {self.grid} is smaller than teacher {teacher.name}")
        self.n_actions = self.grid.n
        self.choices: tuple[dict[int, StageChoice], ...] = tuple(
            {
                self.grid.encode(c): c
                for b in self.blocks
                for d in range(1, stage.depth + 1)
                for w in range(1, width + 1)
                if not BLOCK_KINDS.get(b).robust or self._robust_ok(base * w)
                for c in (StageChoice(d, w, b),)
            }
            for stage, width, base in zip(teacher.arch.stages, teacher.widths, teacher.base_channels)
        )
        self._stem, size = stem_cost(teacher.arch, shape)
        sizes = [size]
        for stage in teacher.arch.stages:
            sizes.append(conv_out(sizes[-1], stage.kernel_size, stage.stride))
        self._sizes = tuple(sizes)
        self._min_rest = lru_cache(maxsize=None)(self._min_rest_uncached)
        self._stage_costs = lru_cache(maxsize=None)(self._stage_costs_uncached)
        self.teacher_macs = arch_cost(teacher.arch, shape).macs
        self.min_macs = self._stem.macs + self._min_rest(0, teacher.arch.stem_channels)

    def _robust_ok(self, planes: int) -> bool:
        return robust_block_too_narrow(planes, self.teacher.arch.block_params) is None

    def __reduce__(self) -> tuple[Any, ...]:
        # the memoised cost tables are per process: rebuild them after unpickling
        return (CompressionSpace, self._args)

    @property
    def n_stages(self) -> int:
        return len(self.choices)

    # -- costs ---------------------------------------------------------------------------------------------
    def stage_spec(self, i: int, ch: StageChoice) -> StageSpec:
        stage = self.teacher.arch.stages[i]
        return replace(stage, depth=ch.depth, channels=self.teacher.base_channels[i] * ch.width, block=ch.block)

    def _stage_costs_uncached(self, i: int, c_in: int) -> tuple[np.ndarray, np.ndarray]:
        """MACs of every grid action at stage ``i`` entered with ``c_in`` channels (inf where the stage cannot take
        it), and each action's output channels."""
        macs = np.full(self.n_actions, np.inf)
        outs = np.zeros(self.n_actions, dtype=np.int64)
        for a, ch in self.choices[i].items():
            spec = self.stage_spec(i, ch)
            macs[a] = stage_cost(spec, c_in, self._sizes[i], self.teacher.arch.block_params)[0].macs
            outs[a] = stage_out_channels(spec)
        return macs, outs

    def _min_rest_uncached(self, i: int, c_in: int) -> int:
        """Smallest MACs of stages i.. plus the head, entered with ``c_in`` channels."""
        if i == self.n_stages:
            return head_cost(c_in, self._sizes[-1], self.shape.num_classes).macs
        macs, outs = self._stage_costs(i, c_in)
        return int(min(macs[a] + self._min_rest(i + 1, int(outs[a])) for a in self.choices[i]))

    def prefix(self, actions: tuple[int, ...]) -> tuple[float, int]:
        """(MACs of the stem and the decided stages, channels entering the next stage)."""
        used, c_in = float(self._stem.macs), self.teacher.arch.stem_channels
        for i, a in enumerate(actions):
            macs, outs = self._stage_costs(i, c_in)
            used, c_in = used + macs[a], int(outs[a])
        return used, c_in

    def mask(self, actions: tuple[int, ...]) -> np.ndarray:
        """Valid actions for stage ``len(actions)``: the stage plus the cheapest completion fits the budget.

        A state reached through valid actions always has at least one valid action (the cheapest completion that
        made the previous action valid starts with one).
        """
        i = len(actions)
        used, c_in = self.prefix(actions)
        macs, outs = self._stage_costs(i, c_in)
        out = np.zeros(self.n_actions, dtype=bool)
        for a in self.choices[i]:
            out[a] = used + macs[a] + self._min_rest(i + 1, int(outs[a])) <= self.budget
        return out

    def cheapest(self, actions: tuple[int, ...]) -> int:
        """The valid action of the next stage with the cheapest completion (a safe fallback)."""
        i = len(actions)
        _, c_in = self.prefix(actions)
        macs, outs = self._stage_costs(i, c_in)
        return min(self.choices[i], key=lambda a: macs[a] + self._min_rest(i + 1, int(outs[a])))

    # -- sub-networks ----------------------------------------------------------------------------------------
    def arch(self, actions: tuple[int, ...]) -> ArchSpec:
        """The sub-network chosen by one action per stage."""
        chosen = [self.choices[i][a] for i, a in enumerate(actions)]
        return self.teacher.subnet(
            tuple(c.depth for c in chosen), tuple(c.width for c in chosen), tuple(c.block for c in chosen)
        )

    def cost(self, arch: ArchSpec) -> Cost:
        return arch_cost(arch, self.shape)

    def smallest(self) -> tuple[int, ...]:
        """The cheapest sub-network's actions."""
        actions: tuple[int, ...] = ()
        for _ in range(self.n_stages):
            actions += (self.cheapest(actions),)
        return actions

    def completions(self, prefix: tuple[int, ...] = ()) -> Iterator[tuple[int, ...]]:
        """Every action sequence the budget wall allows that starts with ``prefix`` (a valid one), depth first: the
        finished sub-networks within the budget. The one walk over the space (a table's rows, the env's count of
        what is left to find)."""
        if len(prefix) == self.n_stages:
            yield prefix
            return
        for a in np.flatnonzero(self.mask(prefix)):
            yield from self.completions(prefix + (int(a),))

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        """A uniformly random valid action per stage (a random policy)."""
        actions: tuple[int, ...] = ()
        for _ in range(self.n_stages):
            valid = np.flatnonzero(self.mask(actions))
            actions += (int(rng.choice(valid)),)
        return actions

    def actions_of(self, arch: ArchSpec) -> tuple[int, ...]:
        """The actions that choose ``arch`` (the inverse of :meth:`arch`), for a searcher that continues from
        sub-networks another one found.

        Raises:
            ValueError: ``arch`` is not a sub-network of this space within its budget.
        """
        if len(arch.stages) != self.n_stages:
            raise ValueError(f"{arch.short()} has {len(arch.stages)} stages, this space {self.n_stages}")
        actions: tuple[int, ...] = ()
        for i, stage in enumerate(arch.stages):
            valid = np.flatnonzero(self.mask(actions))
            hit = [int(a) for a in valid if self.stage_spec(i, self.choices[i][int(a)]) == stage]
            if not hit:
                raise ValueError(f"{arch.short()} is not a sub-network of this space within its budget (stage {i + 1})")
            actions += (hit[0],)
        if self.arch(actions) != arch:  # the stages match, but not the rest (another teacher's stem, say)
            raise ValueError(f"{arch.short()} is not a sub-network of this space's teacher")
        return actions

    def index(self, stage: int, choice: StageChoice) -> int:
        a = self.grid.encode(choice)
        if a not in self.choices[stage]:
            raise ValueError(f"{choice} is not a choice of stage {stage + 1}")
        return a
