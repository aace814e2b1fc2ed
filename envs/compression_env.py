"""The compression environment: compress a task's teacher stage by stage, then get the sub-network's reward.

One step per stage; the action picks the stage's (depth, width factor, block type) on a grid shared by all tasks
of an experiment; ``action_mask`` is the budget wall, so every episode ends within the MACs budget. The reward is 0
until the last step, then :func:`rcnas.reward.task_reward` of the evaluator's metrics. With several tasks
(meta-training), every episode draws its task from them.

No Ray here: the evaluator is injected (default: the in-process proxy evaluator).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np

from envs import observation
from envs.evaluator import Evaluator
from rcnas.proxy.records import Evaluation, TeacherStats
from rcnas.reward import task_reward
from rcnas.space.arch import ArchSpec
from rcnas.space.schema import from_arch
from rcnas.space.space import ActionGrid, CompressionSpace
from rcnas.task import Task, load_task, shared_grid


def _as_task(task: Task | str | Path) -> Task:
    return task if isinstance(task, Task) else load_task(task)


class CompressionEnv(gym.Env):
    """Args (keywords, or the same keys in RLlib's ``env_config`` mapping):
        task: a :class:`rcnas.task.Task` or a task YAML path; or
        tasks: several (meta-training: one drawn per episode);
        evaluator: scores sub-networks (default: ``LocalEvaluator`` in this process);
        grid: ``(max_depth, max_width)`` of the action grid (default: the smallest holding every task's teacher);
        avoid_repeats: never finish a sub-network this env has already finished for the same task while another
            remains (the mask hides the actions that lead only to finished ones). Why: a repeat costs nothing (the
            store answers it) and teaches nothing new, so a converged policy would otherwise spend every episode on
            its favourite sub-network and stop searching;
        screening: ``{"config": ScreeningConfig fields, "prior": task files}``: the evaluator is wrapped in
            :class:`rcnas.search.screening.ScreeningEvaluator` (cheap score first, the best share to the proxy).
    """

    metadata = {"render_modes": []}

    def __init__(self, config: Optional[Mapping[str, Any]] = None, *, task: Task | str | Path | None = None,
                 tasks: Sequence[Task | str | Path] | None = None, evaluator: Optional[Evaluator] = None,
                 grid: Optional[Sequence[int]] = None, avoid_repeats: Optional[bool] = None) -> None:
        cfg = dict(config or {})
        self.avoid_repeats = bool(avoid_repeats if avoid_repeats is not None else cfg.get("avoid_repeats", False))
        task, tasks = task or cfg.get("task"), tasks or cfg.get("tasks")
        evaluator, grid = evaluator or cfg.get("evaluator"), grid or cfg.get("grid")
        specs = [task] if task is not None else list(tasks or [])
        if not specs:
            raise ValueError("CompressionEnv needs task=<yaml or Task> or tasks=[...]")
        self.tasks = [_as_task(t) for t in specs]
        if evaluator is None:
            from rcnas.proxy.local import LocalEvaluator

            evaluator = LocalEvaluator()
        screening = cfg.get("screening")
        if screening:  # successive halving before the proxy: every proposal scored cheaply first
            from rcnas.config import ScreeningConfig
            from rcnas.search.screening import ScreeningEvaluator

            evaluator = ScreeningEvaluator(evaluator, ScreeningConfig(**screening["config"]),
                                           prior=[_as_task(t) for t in screening.get("prior", [])])
        self.evaluator = evaluator
        self.grid = ActionGrid(*grid) if grid else shared_grid(self.tasks)
        self.spaces = [t.on_grid(self.grid) for t in self.tasks]
        if max(s.n_stages for s in self.spaces) > observation.MAX_STAGES:
            raise ValueError(f"teachers with more than {observation.MAX_STAGES} stages need a larger observation")
        self.action_space = gym.spaces.Discrete(self.grid.n)
        self.observation_space = gym.spaces.Dict({
            "observations": gym.spaces.Box(-observation.BOUND, observation.BOUND, (observation.SIZE,), np.float32),
            "action_mask": gym.spaces.Box(0.0, 1.0, (self.grid.n,), np.float32),
        })
        self._teacher: dict[int, TeacherStats] = {}
        self._index, self._actions = 0, ()
        self._repeats = [RepeatMask(s) for s in self.spaces]

    def sampling_state(self) -> dict[str, Any]:
        """What the episodes still to come depend on besides the policy: the random state that draws each episode's
        task, and the sub-networks each task's repeat mask already hides (a resumed search decides on from here)."""
        return {"rng": self.np_random.bit_generator.state if self._np_random is not None else None,
                "finished": [sorted(m.finished_actions()) for m in self._repeats]}

    def restore_sampling_state(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`sampling_state` of an env of the same tasks."""
        finished = state["finished"]
        if len(finished) != len(self._repeats):
            raise ValueError(f"a sampling state of {len(finished)} tasks for an env of {len(self._repeats)}")
        if state["rng"] is not None:
            rng = np.random.Generator(getattr(np.random, state["rng"]["bit_generator"])())
            rng.bit_generator.state = state["rng"]
            self.np_random = rng
        for mask, done in zip(self._repeats, finished):
            for actions in done:
                mask.finished(tuple(int(a) for a in actions))

    @property
    def task(self) -> Task:
        return self.tasks[self._index]

    @property
    def space(self) -> CompressionSpace:
        return self.spaces[self._index]

    def teacher_stats(self, index: int) -> TeacherStats:
        if index not in self._teacher:
            self._teacher[index] = self.evaluator.teacher_stats(self.tasks[index])
        return self._teacher[index]

    def _obs(self) -> dict[str, np.ndarray]:
        stats = self.teacher_stats(self._index)
        obs = observation.encode(self.space, self._actions, stats, observation.task_descriptor(self.task, self.space))
        if len(self._actions) >= self.space.n_stages:
            mask = np.zeros(self.grid.n, dtype=bool)
        elif self.avoid_repeats:
            mask = self._repeats[self._index].mask(self._actions)
        else:
            mask = self.space.mask(self._actions)
        return {"observations": obs, "action_mask": mask.astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        want = (options or {}).get("task_index")
        self._index = int(want) if want is not None else int(self.np_random.integers(len(self.tasks)))
        self._actions = ()
        return self._obs(), {"task": self.task.name}

    def step(self, action: int):
        obs, info, finish = self.step_deferred(action)
        if finish is None:
            return obs, 0.0, False, False, info
        return obs, *self.outcome(finish, self.evaluator.evaluate(finish.task, finish.arch))

    def step_deferred(self, action: int) -> tuple[dict[str, np.ndarray], dict[str, Any], Optional[Finish]]:
        """:meth:`step` without the evaluation: on the last stage, the sub-network to evaluate (a :class:`Finish`)
        instead of the reward. Its reward is :meth:`outcome` of its evaluation, whenever that comes back: the
        env can start other episodes meanwhile (the observations depend only on the actions, so a policy can decide
        many sub-networks while their evaluations run side by side)."""
        if len(self._actions) >= self.space.n_stages:
            raise RuntimeError("step() after the episode ended: call reset()")
        action = int(action)
        invalid = not self.space.mask(self._actions)[action]
        if invalid:  # a policy that ignores the mask still gets a within-budget sub-network, and is told so
            action = self.space.cheapest(self._actions)
            if self.avoid_repeats:
                action = int(np.flatnonzero(self._repeats[self._index].mask(self._actions))[0])
        self._actions += (action,)
        info: dict[str, Any] = {"task": self.task.name, "invalid_action": invalid}
        if len(self._actions) < self.space.n_stages:
            return self._obs(), info, None
        self._repeats[self._index].finished(self._actions)
        finish = Finish(self._index, self.task, self._actions, self.space.arch(self._actions), info)
        return self._obs(), info, finish

    def outcome(self, finish: Finish, result: Evaluation) -> tuple[float, bool, bool, dict[str, Any]]:
        """The last step's reward, terminated, truncated and info, from the evaluation of ``finish``."""
        task, arch, space = finish.task, finish.arch, self.spaces[finish.index]
        m, teacher = result.metrics, self.teacher_stats(finish.index)
        reward = task_reward(task, m, teacher)
        info = dict(finish.info)
        info.update(
            subnet=from_arch(arch, space.shape.num_classes, teacher=task.teacher.name,
                             task=task.name).model_dump(mode="json", exclude_none=True),
            arch=arch.short(), arch_key=arch.key(), actions=list(finish.actions), metrics=m.to_dict(),
            cached=result.cached, budget=space.budget, teacher_robust_acc=teacher.robust_acc,
            provenance={"task_key": result.key.task, "fidelity_key": result.key.fidelity, "seed": result.key.seed,
                        "node": m.node, "device": m.device, "code_version": m.code_version},
        )
        return float(reward), True, False, info


@dataclass(frozen=True)
class Finish:
    """An episode's last decision, waiting for its evaluation: which task (its index in the env), the actions, the
    sub-network, and the last step's info so far."""

    index: int
    task: Task
    actions: tuple[int, ...]
    arch: ArchSpec
    info: dict[str, Any]


class RepeatMask:
    """The budget wall of one space minus the actions whose every completion was already finished.

    Counts, per decided prefix, its feasible completions (one walk over the space, on first use) and the finished
    ones: a prefix is exhausted when they are equal. When the whole space is exhausted, the plain budget wall is
    returned (repeats are then the only choice left)."""

    def __init__(self, space: CompressionSpace) -> None:
        self.space = space
        self._total: dict[tuple[int, ...], int] = {}
        self._done: dict[tuple[int, ...], int] = {}
        self._finished: set[tuple[int, ...]] = set()

    def total(self, prefix: tuple[int, ...]) -> int:
        """How many finished sub-networks start with ``prefix`` (a valid one)."""
        if not self._total:
            for actions in self.space.completions():
                _count_prefixes(self._total, actions)
        return self._total.get(prefix, 0)

    def finished_actions(self) -> set[tuple[int, ...]]:
        return set(self._finished)

    def exhausted(self, prefix: tuple[int, ...]) -> bool:
        return self._done.get(prefix, 0) >= self.total(prefix)

    def finished(self, actions: tuple[int, ...]) -> None:
        if actions in self._finished:
            return
        self._finished.add(actions)
        _count_prefixes(self._done, actions)

    def mask(self, prefix: tuple[int, ...]) -> np.ndarray:
        wall = self.space.mask(prefix)
        if self.exhausted(()):
            return wall
        out = wall.copy()
        for a in np.flatnonzero(wall):
            out[a] = not self.exhausted(prefix + (int(a),))
        return out if out.any() else wall


def _count_prefixes(counts: dict[tuple[int, ...], int], actions: tuple[int, ...]) -> None:
    """One more sequence under each prefix of ``actions`` (the empty one and ``actions`` itself included)."""
    for k in range(len(actions) + 1):
        counts[actions[:k]] = counts.get(actions[:k], 0) + 1
