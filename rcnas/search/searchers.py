"""Non-RL searchers over a task's compression space, selected by name from ``SEARCHERS``.

Each gets the same :class:`CompressionSpace` (so the same budget wall) and the same evaluator as the agent (so the
same proxy, seeds and store), and spends at most ``n`` evaluations of distinct sub-networks. A searcher returns
its trajectory: every evaluated sub-network in order with its reward, from which best-so-far curves are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from rcnas.infra.errors import ConfigError
from rcnas.infra.registry import Registry
from rcnas.proxy.protocol import Evaluator
from rcnas.reward import task_reward
from rcnas.space.arch import ArchSpec
from rcnas.space.baselines import slimming_prune, uniform_shrink
from rcnas.space.space import CompressionSpace
from rcnas.task import Task


@dataclass(frozen=True)
class Step:
    arch: ArchSpec
    reward: float
    robust_acc: float
    macs: int
    cached: bool


class Budgeted:
    """Evaluates sub-networks for a searcher, counting distinct ones against the budget ``n``. ``parallel``: how many
    evaluations a searcher should ask for at once (:meth:`many`: the evaluation service's workers, which would
    otherwise wait while one sub-network at a time is evaluated)."""

    def __init__(self, task: Task, space: CompressionSpace, evaluator: Evaluator, n: int, parallel: int = 1,
                 proxy: Optional[int] = None) -> None:
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel}")
        self.task, self.space, self.evaluator, self.n, self.parallel = task, space, evaluator, n, parallel
        self.proxy = proxy
        """under screening: the search is also done once this many of its sub-networks reached the proxy (``n``
        then caps the proposals); None: ``n`` alone"""
        self._reached = getattr(evaluator, "reached_proxy", None)
        self.teacher = evaluator.teacher_stats(task)
        self.trajectory: list[Step] = []
        self._seen: dict[ArchSpec, Step] = {}
        self.draws = 0
        """proposals drawn by :meth:`round`"""
        self._at_proxy = 0
        """counted as steps are added (a round asks after every draw; recounting the trajectory each time, a
        search of n proposals spent O(n^2) sub-network keys: minutes per screened search)"""

    @property
    def done(self) -> bool:
        return len(self.trajectory) >= self.n or (self.proxy is not None and self.at_proxy >= self.proxy)

    @property
    def at_proxy(self) -> int:
        """Sub-networks of the trajectory whose answer is the proxy's (all of them without screening)."""
        return self._at_proxy

    def __call__(self, arch: ArchSpec) -> float:
        if arch in self._seen:  # a repeat costs nothing and is not counted again
            return self._seen[arch].reward
        return self._record(arch, self.evaluator.evaluate(self.task, arch))

    @property
    def left(self) -> int:
        """Evaluations a round may still ask for (under a proxy budget, at most the proxy evaluations left)."""
        left = self.n - len(self.trajectory)
        return left if self.proxy is None else min(left, self.proxy - self.at_proxy)

    def ask(self, arch: ArchSpec) -> Optional[float]:
        """``arch``'s reward when it costs no evaluation now: a repeat, or a proposal a screening evaluator that
        screens in this process screens out (added to the trajectory). None: ``arch`` must be evaluated
        (:meth:`many`)."""
        if arch in self._seen:
            return self._seen[arch].reward
        if not getattr(self.evaluator, "screens_in_process", False):
            return None
        early = self.evaluator.screen(self.task, arch)  # type: ignore[attr-defined]
        return None if early is None else self._record(arch, early)

    def round(self, draw: Callable[[], tuple[int, ...]], answered: Callable[[tuple[int, ...], float], None]) -> None:
        """One round of a batched searcher: proposals from ``draw()`` until ``parallel`` of them need evaluating (or
        the evaluations left, or the proposals, run out), then those evaluated side by side. ``answered(actions,
        reward)`` gets every answer: at once for those that cost nothing (repeats, proposals screened out: a searcher
        learns from them before it proposes again, as the sequential algorithm would), then the batch's in the order
        proposed, then those that repeated one of the batch. Under screening a round so keeps every worker busy:
        drawing a fixed ``parallel`` proposals, about ``keep`` of them would reach the proxy, mostly one at a time."""
        batch: list[tuple[int, ...]] = []
        again: list[tuple[int, ...]] = []
        """proposals repeating one of the batch: answered after it, with its reward"""
        archs: set[ArchSpec] = set()
        while len(batch) < min(self.parallel, self.left) and self.draws < 100 * self.n:
            self.draws += 1
            actions = draw()
            arch = self.space.arch(actions)
            if arch in archs:
                again.append(actions)
                continue
            reward = self.ask(arch)
            if reward is None:
                batch.append(actions)
                archs.add(arch)
            else:
                answered(actions, reward)
        for actions, reward in zip(batch, self.many([self.space.arch(a) for a in batch])):
            answered(actions, reward)
        for actions in again:
            answered(actions, self._seen[self.space.arch(actions)].reward)

    @property
    def exhausted(self) -> bool:
        """Done, or out of proposals (a searcher whose draws keep repeating what it has: ``100 n`` draws at most)."""
        return self.done or self.draws >= 100 * self.n

    def _record(self, arch: ArchSpec, m: Any) -> float:
        reward = task_reward(self.task, m.metrics, self.teacher)
        self._seen[arch] = Step(arch, reward, m.metrics.robust_acc, m.metrics.macs, m.cached)
        self.trajectory.append(self._seen[arch])
        # whether an answer is the proxy's is settled when it arrives: a screened-out sub-network stays out
        self._at_proxy += self._reached is None or self._reached(self.task, arch)
        return reward

    def many(self, archs: Sequence[ArchSpec]) -> list[float]:
        """The rewards of ``archs``, the new ones evaluated side by side (at most :attr:`left` of them; the rest
        must be repeats) and added to the trajectory in the order given, whichever finishes first."""
        new = list(dict.fromkeys(a for a in archs if a not in self._seen))
        if len(new) > self.left:
            raise ValueError(f"{len(new)} new sub-networks asked for with {self.left} evaluations left")
        if len(new) > 1:
            for arch, m in zip(new, _side_by_side(self.task, self.evaluator, new)):
                self._record(arch, m)
        return [self(a) for a in archs]


def _side_by_side(task: Task, evaluator: Evaluator, archs: list[ArchSpec]) -> list[Any]:
    """The evaluations of ``archs`` run at once. A screening evaluator that screens in this process screens them one
    after the other first and learns from the results in the order given: which are promoted never depends on
    which evaluation finished first."""
    from concurrent.futures import ThreadPoolExecutor

    screening: Any = evaluator if getattr(evaluator, "screens_in_process", False) else None
    early = [screening.screen(task, a) for a in archs] if screening else [None] * len(archs)
    inner = screening.inner if screening else evaluator
    todo = [a for a, e in zip(archs, early) if e is None]
    with ThreadPoolExecutor(max(1, len(todo))) as pool:
        done = dict(zip(todo, pool.map(lambda a: inner.evaluate(task, a), todo)))
    for a in todo if screening else ():
        screening.learn(task, a, done[a])
    return [e if e is not None else done[a] for a, e in zip(archs, early)]


Searcher = Callable[[Budgeted, np.random.Generator], None]
SEARCHERS: Registry[Searcher] = Registry("searcher")
PPO_SEARCHERS = ("rl", "ppo-scratch")
"""the searchers the agent runs (RLlib, in ``agents/``): meta-trained then fine-tuned, or PPO from scratch"""


DETERMINISTIC = ("compound", "uniform", "prune")
"""rules without randomness: one run per task stands for every seed"""


def searcher_names() -> list[str]:
    """Every searcher train.py and the benchmarks accept: the agent's, then the baselines below."""
    return [*PPO_SEARCHERS, *SEARCHERS.ordered()]


@SEARCHERS.register("random")
def random_search(ev: Budgeted, rng: np.random.Generator) -> None:
    """Uniformly random valid actions per stage, until ``n`` distinct sub-networks are evaluated (``ev.parallel`` at
    a time)."""
    while not ev.exhausted:
        ev.round(lambda: ev.space.sample(rng), lambda actions, reward: None)


def mutate(space: CompressionSpace, actions: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...]:
    """Change one stage's choice to another valid one, keeping the rest where the budget wall still allows it
    (later stages that no longer fit get random valid choices). A stage without an alternative is skipped; when no
    stage has one, the result is a fresh random sub-network."""
    for stage in rng.permutation(space.n_stages):
        valid = np.flatnonzero(space.mask(actions[:stage]))
        others = [int(a) for a in valid if a != actions[stage]]
        if not others:
            continue
        out = actions[:stage] + (int(rng.choice(others)),)
        for i in range(stage + 1, space.n_stages):
            valid = np.flatnonzero(space.mask(out))
            out += (actions[i] if actions[i] in valid else int(rng.choice(valid)),)
        return out
    return space.sample(rng)


@SEARCHERS.register("evolution")
def regularized_evolution(ev: Budgeted, rng: np.random.Generator, population: int = 10, sample: int = 3) -> None:
    """Regularized evolution (Real et al., AAAI 2019): tournament selection, one-stage mutation, oldest dies.
    Sub-networks ``ev`` already holds (another searcher's, handed over) seed the population: the best
    ``population`` of them instead of random ones, the worst taking the place of the oldest (it dies first).
    With ``ev.parallel`` k > 1, each round breeds children until k need evaluating and evaluates those side by side
    (asynchronous evolution's batch form; a child answered at once, a repeat or one screened out, joins the
    population before the next is bred); k = 1 is the sequential algorithm."""
    seeded = sorted(ev.trajectory, key=lambda s: s.reward)[-population:]
    pop: list[tuple[tuple[int, ...], float]] = [(ev.space.actions_of(s.arch), s.reward) for s in seeded]
    while len(pop) < population and not ev.done:
        first = [ev.space.sample(rng) for _ in range(min(ev.parallel, ev.left, population - len(pop)))]
        pop += zip(first, ev.many([ev.space.arch(a) for a in first]))

    def child() -> tuple[int, ...]:
        contenders = [pop[i] for i in rng.choice(len(pop), size=min(sample, len(pop)), replace=False)]
        return mutate(ev.space, max(contenders, key=lambda p: p[1])[0], rng)

    def answered(actions: tuple[int, ...], reward: float) -> None:
        pop.append((actions, reward))
        pop.pop(0)

    while not ev.exhausted:
        ev.round(child, answered)


@SEARCHERS.register("compound")
def compound_scaling(ev: Budgeted, rng: np.random.Generator) -> None:
    """RobustResNet's compound-scaling rule (Huang et al., CVPR 2023): depths D1:D2:D3 = 2:2:1 and widths
    W1:W2:W3 = 2:2.5:1, scaled down to the budget. Evaluates the largest rule-following sub-networks that fit,
    from the most MACs down, one per depth scale."""
    t, space = ev.space.teacher, ev.space
    fits: list[ArchSpec] = []
    for kd in np.linspace(max(t.arch.depths) / 2, 0.5, 40):
        best = None
        for kw in np.linspace(max(t.widths) / 2, 0.4, 60):
            depths = tuple(min(d, max(1, round(r * kd))) for d, r in zip(t.arch.depths, (2, 2, 1)))
            widths = tuple(min(w, max(1, math.floor(r * kw + 0.5))) for w, r in zip(t.widths, (2, 2.5, 1)))
            arch = t.subnet(depths, widths, t.arch.blocks)
            if space.cost(arch).macs <= space.budget:
                best = arch
                break
        if best is not None and best not in fits:
            fits.append(best)
    for arch in sorted(fits, key=lambda a: -space.cost(a).macs):
        if ev.done:
            return
        ev(arch)


@SEARCHERS.register("uniform")
def uniform(ev: Budgeted, rng: np.random.Generator) -> None:
    """The teacher shrunk by one factor in depth and width to the budget: a single sub-network."""
    ev(uniform_shrink(ev.space))


@SEARCHERS.register("prune")
def prune(ev: Budgeted, rng: np.random.Generator) -> None:
    """The baseline a robustness user tries first: the robust teacher pruned to the budget by network slimming's
    global threshold on its BN scales (:func:`rcnas.space.baselines.slimming_prune`), then adversarially fine-tuned
    and attacked like every candidate (the evaluator's proxy): a single sub-network."""
    if not ev.teacher.bn_scales:
        raise ConfigError(f"{ev.task.name}: the pruning baseline needs the teacher's BN scales, and this evaluator's "
                          "teacher record has none (a table written before they were recorded): rebuild the table "
                          "with bench/build_table.py")
    ev(slimming_prune(ev.space, ev.teacher.bn_scales))


def in_space(space: CompressionSpace, archs: Sequence[ArchSpec]) -> list[ArchSpec]:
    """The sub-networks of ``archs`` that ``space`` holds (its teacher's, within its budget): a handed-over list
    read from a store may hold another budget's sub-networks of a task with the same name."""
    out = []
    for arch in archs:
        try:
            space.actions_of(arch)
        except ValueError:
            continue
        out.append(arch)
    return out


def run_searcher(name: str, task: Task, evaluator: Evaluator, n: int, seed: int = 0,
                 start: Sequence[ArchSpec] = (), parallel: int = 1, proxy: Optional[int] = None) -> list[Step]:
    """Run searcher ``name`` for at most ``n`` distinct evaluations; returns its trajectory. ``start``: sub-networks
    another searcher already evaluated (a handover): those in the task's space are asked for first (the store answers
    them), counted in ``n``, and, for evolution, its first population. ``parallel``: evaluations asked for at once by
    the searchers that can (random search, evolution; the rules evaluate one or a few sub-networks). ``proxy``:
    under screening, stop once this many sub-networks (``start`` included) reached the proxy, ``n`` then capping the
    proposals."""
    ev = Budgeted(task, task.space, evaluator, n, parallel, proxy)
    for arch in in_space(task.space, start):
        if not ev.done:
            ev(arch)
    SEARCHERS.get(name)(ev, np.random.default_rng(seed))
    return ev.trajectory
