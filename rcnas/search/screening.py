"""Screening: successive halving inside the search loop. Every proposal is scored cheaply first (a low proxy
fidelity, or a surrogate trained on the store); only proposals whose cheap score ranks in the best ``keep`` share of
those screened so far for the task are promoted to the task's proxy.

It is an evaluator wrapped around the search's evaluator, so every searcher (the agent, the baselines) screens
alike. What a searcher learns from: a promoted proposal's reward is the proxy's; a screened-out one's is its cheap
score, with a record that says so (its key's fidelity is the low fidelity's or ``surrogate``, its reason says
"screened out"). Why not drop screened-out episodes instead: the agent would never learn that a region scores
badly, and would keep proposing it; the cheap score is rank-correlated with the proxy (that is why it screens), so
learning from it moves the policy the right way at no proxy cost. A search's pick is only ever a promoted
sub-network: the report reads the task's own fidelity from the store, where screened-out scores never are.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from rcnas.config import ScreeningConfig
from rcnas.proxy.keys import task_key
from rcnas.proxy.protocol import Evaluator
from rcnas.proxy.records import EvalKey, Evaluation, ProxyMetrics, TeacherStats
from rcnas.reward import task_reward
from rcnas.search.surrogate import Point, Surrogate
from rcnas.space.arch import ArchSpec, arch_from_dict
from rcnas.task import Task

SCREEN_SUFFIX = "@screen"
"""the low-fidelity task's name: the task's own name with this suffix (its requests stay apart from the task's)"""


def low_fidelity_task(task: Task, cfg: ScreeningConfig) -> Task:
    """``task`` at the screening fidelity."""
    return task.replace(name=task.name + SCREEN_SUFFIX, proxy=task.config.proxy.model_copy(update=cfg.fidelity))


def proposals_for(evaluations: int, cfg: ScreeningConfig) -> int:
    """The proposals a screened local search may make to have about ``evaluations`` of them promoted: ``1 / keep``
    each, twice that when paced (a paced promoter only fills its share with proposals that also rank high enough, so
    a search needs more than ``1 / keep`` per promotion); the search stops at its proxy evaluations, these only cap
    it."""
    return math.ceil(max(0, evaluations) / cfg.keep) * (2 if cfg.pace else 1)


class Promoter:
    """Successive halving's rule, online: a score is promoted when it ranks within the best ``ceil(keep * n)`` of the
    ``n`` scores seen so far (itself included; ``reference`` scores count as seen). Without a reference the first
    score is always promoted, and so is any new best. With one (a surrogate's predictions for random sub-networks),
    even the first must beat most of it: on the digits table, promoting the first proposal regardless raised the
    screened random search's regret at a fifth of the agent's evaluation seconds from 0.035 to 0.039. A search whose
    proposals never rank high enough ends without a pick of its own task, with the error that says to search longer.

    ``pace``: besides, never more promoted than ``ceil(keep * proposals)`` (the reference not counted): a proposal
    that ranks high enough while the share is used up is screened out. The rank rule alone promotes more than
    ``keep`` for a policy whose proposals keep improving (each new one ranks high against the older ones: 41 of 100
    in a digits fine-tuning at keep 0.1); paced, the proxy evaluations are bounded whatever the policy does, which a
    cost model can rely on."""

    def __init__(self, keep: float, reference: Sequence[float] = (), pace: bool = False) -> None:
        self.keep, self.pace = keep, pace
        self.scores: list[float] = list(reference)
        self.proposals = self.promoted = 0

    def __call__(self, score: float) -> bool:
        self.scores.append(score)
        self.proposals += 1
        rank = 1 + sum(1 for s in self.scores if s > score)
        promote = rank <= math.ceil(self.keep * len(self.scores))
        if self.pace:
            promote = promote and self.promoted < math.ceil(self.keep * self.proposals)
        self.promoted += promote
        return promote


class ScreeningEvaluator:
    """An :class:`rcnas.proxy.protocol.Evaluator` that screens before it evaluates (see the module's doc).

    ``prior``: tasks whose stored evaluations train the surrogate from the start (the meta tasks: the store holds
    them, and they share the teacher); read through the wrapped evaluator's ``rows(task)`` where it has one. Thread
    safe: the agent evaluates several proposals at once."""

    def __init__(self, inner: Evaluator, cfg: ScreeningConfig, prior: Sequence[Task] = ()) -> None:
        self.inner, self.cfg = inner, cfg
        self._lock = threading.Lock()
        self._promoters: dict[str, Promoter] = {}
        self._low: dict[str, Task] = {}
        self._seen: dict[tuple[str, str], Evaluation] = {}
        self._out: set[tuple[str, str]] = set()
        """(task, sub-network) screened out"""
        self._known: set[tuple[str, str]] = set()
        """(task, sub-network) with a proxy result already (the prior's stored rows, :meth:`learn_from`'s, those
        promoted): asked for again, never screened, learnt from once"""
        self._learnt: set[tuple[str, str]] = set()
        self._teachers: dict[str, TeacherStats] = {}
        self.surrogate = Surrogate() if cfg.by == "surrogate" else None
        self.promoted = self.screened_out = 0
        if self.surrogate is not None:
            points = [p for t in prior for p in self._stored(t)]
            self.surrogate.add(points)
            self._known.update((p.task.name, p.arch.key()) for p in points)
            self._learnt.update(self._known)
        if hasattr(inner, "stats"):  # the service's worker count decides how many evaluations run at once
            self.stats = inner.stats

    def _stored(self, task: Task) -> list[Point]:
        rows = getattr(self.inner, "rows", None)
        if rows is None:
            return []
        teacher = self.teacher_stats(task).robust_acc
        return [Point(task, arch_from_dict(r["arch"]), r["metrics"]["robust_acc"] / teacher) for r in rows(task)
                if r["metrics"]["status"] == "ok" and teacher > 0]

    def teacher_stats(self, task: Task) -> TeacherStats:
        """The wrapped evaluator's, once per task: with the evaluation service each is a round trip, and every
        proposal needs it."""
        if task.name not in self._teachers:
            self._teachers[task.name] = self.inner.teacher_stats(task)
        return self._teachers[task.name]

    def evaluate(self, task: Task, arch: ArchSpec, seed: int = 0) -> Evaluation:
        early = self.screen(task, arch)
        if early is not None:
            return early
        result = self.inner.evaluate(task, arch)
        self.learn(task, arch, result)
        return result

    @property
    def screens_in_process(self) -> bool:
        """Whether :meth:`screen` is quick (a surrogate's prediction, not a low-fidelity evaluation): a caller that
        evaluates several proposals at once then screens them one after the other in its own thread and learns from
        their results in an order of its choosing, so that which proposals are promoted never depends on which
        evaluation finished first (the async sampler, a batched local search)."""
        return self.surrogate is not None

    def screen(self, task: Task, arch: ArchSpec) -> Evaluation | None:
        """The first half of :meth:`evaluate`: the answer when ``arch`` is screened out (or a repeat), None when it
        is promoted; the caller then has it evaluated by ``self.inner`` and hands the result to :meth:`learn`."""
        seen = self._seen.get((task.name, arch.key()))
        if seen is not None:  # a repeat: the same answer, and it is not screened (or counted) twice
            return replace(seen, cached=True)
        if (task.name, arch.key()) in self._known:  # a proxy result already, or one on its way: never screened
            return None
        cheap, score = self._cheap(task, arch)
        with self._lock:
            # no score yet (a surrogate still learning): promoted, and left out of the ranking
            promote = score is None or self._promoter(task)(score)
            self.promoted += promote
            self.screened_out += not promote
        if promote:
            # the same sub-network proposed again while this evaluation runs is promoted too (the store answers it)
            self._known.add((task.name, arch.key()))
            return None
        self._seen[(task.name, arch.key())] = cheap
        self._out.add((task.name, arch.key()))
        return cheap

    def reached_proxy(self, task: Task, arch: ArchSpec) -> bool:
        """Whether ``arch``'s answer for ``task`` is the proxy's (promoted), not a cheap score: a local search's budget
        counts these (:class:`rcnas.search.searchers.Budgeted`)."""
        return (task.name, arch.key()) not in self._out

    def learn_from(self, task: Task, found: Sequence[tuple[ArchSpec, ProxyMetrics]]) -> None:
        """Proxy results of ``task`` the surrogate learns from besides the prior tasks' stored rows (a hand-over: the
        agent's evaluations of the target task, and no others, so that a resumed hand-over screens as the first
        one did)."""
        new = [(a, m) for a, m in found if (task.name, a.key()) not in self._learnt]
        self._known.update((task.name, a.key()) for a, _ in found)
        self._learnt.update((task.name, a.key()) for a, _ in found)
        if self.surrogate is None:
            return
        teacher = self.teacher_stats(task).robust_acc
        with self._lock:
            self.surrogate.add([Point(task, a, m.robust_acc / teacher) for a, m in new if m.ok and teacher > 0])

    def learn(self, task: Task, arch: ArchSpec, result: Evaluation) -> None:
        """The second half: a promoted proposal's proxy result, remembered and learnt from (once)."""
        key = (task.name, arch.key())
        if self.surrogate is not None and result.metrics.ok and key not in self._learnt:
            self._learnt.add(key)
            teacher = self.teacher_stats(task).robust_acc
            with self._lock:
                self.surrogate.add([Point(task, arch, result.metrics.robust_acc / teacher)])
        self._seen[(task.name, arch.key())] = result

    def _promoter(self, task: Task) -> Promoter:
        """The task's promoter; a surrogate's starts from its predictions for ``warm`` random sub-networks of the
        space (drawn from a fixed seed: the same reference for every search of the task)."""
        if task.name not in self._promoters:
            reference: list[float] = []
            if self.surrogate is not None and self.cfg.warm:
                rng = np.random.default_rng(0)
                archs = [task.space.arch(task.space.sample(rng)) for _ in range(self.cfg.warm)]
                teacher = self.teacher_stats(task)
                reference = [task_reward(task, self._screened(task, a, float(rel) * teacher.robust_acc,
                                                              "surrogate").metrics, teacher)
                             for a, rel in zip(archs, self.surrogate.predict(task, archs))]
            self._promoters[task.name] = Promoter(self.cfg.keep, reference, self.cfg.pace)
        return self._promoters[task.name]

    def _cheap(self, task: Task, arch: ArchSpec) -> tuple[Evaluation, float | None]:
        """The cheap score of ``arch``: its evaluation as a screened-out record, and the value it is ranked by (its
        predicted or low-fidelity reward; None while a surrogate has too few points to predict)."""
        teacher = self.teacher_stats(task)
        if self.surrogate is not None:
            with self._lock:
                if len(self.surrogate) < self.cfg.min_points:
                    return self._screened(task, arch, 0.0, "surrogate"), None
                relative = float(self.surrogate.predict(task, [arch])[0])
            record = self._screened(task, arch, relative * teacher.robust_acc, "surrogate")
            return record, task_reward(task, record.metrics, teacher)
        low_task = self._low.setdefault(task.name, low_fidelity_task(task, self.cfg))
        low = self.inner.evaluate(low_task, arch)
        m = low.metrics
        metrics = replace(m, reason=m.reason or "screened out at the low fidelity")
        return replace(low, metrics=metrics), task_reward(task, m, self.teacher_stats(low_task))

    def _screened(self, task: Task, arch: ArchSpec, robust: float, fidelity: str) -> Evaluation:
        cost = task.space.cost(arch)
        a = task.config.attack
        metrics = ProxyMetrics(
            status="ok", reason=f"screened out by the {fidelity}", robust_acc=min(1.0, max(0.0, robust)),
            robust_sd=0.0, clean_acc=0.0, macs=cost.macs, params=cost.params, attack=a.name, epsilon=a.epsilon,
            steps=a.steps, n_val=0, seed=0, repeats=0, fine_tune_epochs=0.0, inherited_blocks=0, fresh_blocks=0,
            seconds=0.0, device="", node="", code_version="")
        return Evaluation(EvalKey(task_key(task), arch.key(), fidelity, 0), metrics, cached=False)
