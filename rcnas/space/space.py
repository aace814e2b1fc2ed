"""The compression search space of one task: per-stage (depth, width factor, block type) choices inside a
teacher, and the budget wall (AMC's "action wall") that keeps every finished sub-network within its MACs budget.

Pure Python + numpy: the Gymnasium env calls :meth:`CompressionSpace.mask` on every step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from rcnas.errors import ConfigError
from rcnas.space.arch import ArchSpec, InputShape, StageSpec, TeacherSpec
from rcnas.space.cost import (
    Cost,
    arch_cost,
    conv_out,
    head_cost,
    robust_width,
    stage_cost,
    stage_out_channels,
    stem_cost,
)

if TYPE_CHECKING:
    from rcnas.config import TaskConfig


@dataclass(frozen=True, slots=True)
class StageChoice:
    depth: int
    width: int
    block: str


class CompressionSpace:
    """All sub-networks of ``teacher`` reachable stage by stage within ``budget_macs``.

    Args:
        teacher: bounds depth and width per stage.
        shape: the dataset's input shape (MACs depend on resolution and class count).
        budget_macs: the MACs limit.
        blocks: block types a stage may take; empty means the teacher's own.
    """

    def __init__(self, teacher: TeacherSpec, shape: InputShape, budget_macs: float, blocks: tuple[str, ...] = ()):
        self.teacher, self.shape, self.budget = teacher, shape, float(budget_macs)
        kinds = blocks or tuple(dict.fromkeys(teacher.arch.blocks))
        self.choices: tuple[tuple[StageChoice, ...], ...] = tuple(
            tuple(
                StageChoice(d, w, b)
                for b in kinds
                for d in range(1, stage.depth + 1)
                for w in range(1, width + 1)
                if b != "robust_res_block" or self._robust_ok(base * w)
            )
            for stage, width, base in zip(teacher.arch.stages, teacher.widths, teacher.base_channels)
        )
        self.n_actions = max(len(c) for c in self.choices)
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
        p = self.teacher.arch.block_params
        return robust_width(planes, p) >= p.cardinality and planes * 4 // p.se_reduction >= 1

    @classmethod
    def for_task(cls, task: "TaskConfig", where: str | None = None) -> "CompressionSpace":
        """The space of a task; raises ConfigError when even the smallest sub-network exceeds the budget."""
        from rcnas.data.registry import DATASETS
        from rcnas.models.teachers import get_teacher

        teacher = get_teacher(task.teacher)
        shape = DATASETS.get(task.dataset.name).shape
        teacher_macs = arch_cost(teacher.arch, shape).macs
        budget = task.budget.macs if task.budget.macs is not None else task.budget.ratio * teacher_macs
        space = cls(teacher, shape, budget, task.blocks)
        if space.min_macs > space.budget:
            raise ConfigError(
                f"{where or task.name}: budget.{'macs' if task.budget.macs is not None else 'ratio'}: "
                f"{budget:,.0f} MACs is below the smallest sub-network of {teacher.name} "
                f"({space.min_macs:,} MACs, {space.min_macs / teacher_macs:.3f} of the teacher); raise the budget"
            )
        return space

    @property
    def n_stages(self) -> int:
        return len(self.choices)

    # -- costs ---------------------------------------------------------------------------------------------
    def _choice_stage(self, i: int, ch: StageChoice) -> StageSpec:
        stage = self.teacher.arch.stages[i]
        return replace(stage, depth=ch.depth, channels=self.teacher.base_channels[i] * ch.width, block=ch.block)

    def _stage_costs_uncached(self, i: int, c_in: int) -> tuple[np.ndarray, np.ndarray]:
        """MACs of each choice of stage ``i`` entered with ``c_in`` channels, and each choice's output channels."""
        macs, outs = [], []
        for ch in self.choices[i]:
            spec = self._choice_stage(i, ch)
            cost, _ = stage_cost(spec, c_in, self._sizes[i], self.teacher.arch.block_params)
            macs.append(cost.macs)
            outs.append(stage_out_channels(spec))
        return np.asarray(macs, dtype=np.float64), np.asarray(outs, dtype=np.int64)

    def _min_rest_uncached(self, i: int, c_in: int) -> int:
        """Smallest MACs of stages i.. plus the head, entered with ``c_in`` channels."""
        if i == self.n_stages:
            return head_cost(c_in, self._sizes[-1], self.shape.num_classes).macs
        macs, outs = self._stage_costs(i, c_in)
        return int(min(m + self._min_rest(i + 1, int(o)) for m, o in zip(macs, outs)))

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
        rest = np.asarray([self._min_rest(i + 1, int(o)) for o in outs], dtype=np.float64)
        out = np.zeros(self.n_actions, dtype=bool)
        out[: len(macs)] = used + macs + rest <= self.budget
        return out

    # -- sub-networks ----------------------------------------------------------------------------------------
    def arch(self, actions: tuple[int, ...]) -> ArchSpec:
        """The sub-network chosen by one action per stage."""
        chosen = [self.choices[i][a] for i, a in enumerate(actions)]
        return self.teacher.subnet(
            tuple(c.depth for c in chosen), tuple(c.width for c in chosen), tuple(c.block for c in chosen)
        )

    def cost(self, arch: ArchSpec) -> Cost:
        return arch_cost(arch, self.shape)

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        """A uniformly random valid action per stage (a random policy)."""
        actions: tuple[int, ...] = ()
        for _ in range(self.n_stages):
            valid = np.flatnonzero(self.mask(actions))
            actions += (int(rng.choice(valid)),)
        return actions

    def index(self, stage: int, choice: StageChoice) -> int:
        return self.choices[stage].index(choice)
