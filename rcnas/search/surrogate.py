"""A surrogate of the proxy, trained on stored evaluations: per-stage depth, width and block of a sub-network and the
task's attack in, the sub-network's robust accuracy relative to its teacher's out (BANANAS' and White et al.'s
learned predictors, in their simplest strong form: gradient-boosted trees on the encoding).

Relative accuracy (robust / teacher robust) is what transfers: tasks of one teacher under different attacks rank
their sub-networks alike, and the reward's MACs term is exact, so only the accuracy is learned. Depths and widths are
encoded as shares of the teacher's, so that rows of another teacher of the same family fall on the same scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rcnas.space.arch import ArchSpec
from rcnas.task import Task
from rcnas.vocab import ATTACK_KINDS, BLOCK_KINDS


@dataclass(frozen=True)
class Point:
    """One measured sub-network: the task it was measured for, and its robust accuracy relative to the teacher's."""

    task: Task
    arch: ArchSpec
    relative: float


def features(task: Task, arch: ArchSpec) -> list[float]:
    """The encoding: per stage depth and width as shares of the teacher's and the block kind one-hot, then MACs
    and parameters as shares of the teacher's, MACs over the budget, and the attack (kind one-hot, epsilon, steps)."""
    space, teacher = task.space, task.teacher.arch
    blocks = BLOCK_KINDS.names()
    out: list[float] = []
    for s, t in zip(arch.stages, teacher.stages):
        out += [s.depth / t.depth, s.channels / t.channels, *(float(s.block == b) for b in blocks)]
    cost = space.cost(arch)
    attack = task.config.attack
    out += [cost.macs / space.teacher_macs, cost.params / max(1, space.cost(teacher).params),
            cost.macs / space.budget, *(float(attack.name == k) for k in ATTACK_KINDS.names()),
            float(attack.epsilon), math.log1p(attack.steps)]
    return out


class Surrogate:
    """Gradient-boosted trees over :func:`features`; refitted as points arrive (every ``refit`` new points, so a
    search of hundreds of evaluations fits tens of times, each well under a second)."""

    def __init__(self, refit: int = 5, seed: int = 0) -> None:
        self.points: list[Point] = []
        self.refit, self.seed = refit, seed
        self._model = None
        self._fitted_on = 0
        self._x: list[list[float]] = []

    def add(self, points: Sequence[Point]) -> None:
        for p in points:
            self.points.append(p)
            self._x.append(features(p.task, p.arch))

    def __len__(self) -> int:
        return len(self.points)

    def _fit(self) -> None:
        from sklearn.ensemble import GradientBoostingRegressor

        model = GradientBoostingRegressor(n_estimators=150, max_depth=3, learning_rate=0.05, subsample=0.8,
                                          random_state=self.seed)
        model.fit(np.asarray(self._x), np.asarray([p.relative for p in self.points]))
        self._model, self._fitted_on = model, len(self.points)

    def predict(self, task: Task, archs: Sequence[ArchSpec]) -> np.ndarray:
        """Predicted relative robust accuracy of each of ``archs`` on ``task`` (refits first when enough points
        arrived since the last fit)."""
        if not self.points:
            raise ValueError("the surrogate has no points yet")
        if self._model is None or len(self.points) - self._fitted_on >= self.refit:
            self._fit()
        return self._model.predict(np.asarray([features(task, a) for a in archs]))  # type: ignore[union-attr]
