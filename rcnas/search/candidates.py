"""The search's result records: every stored evaluation of a task, scored with the task's reward. Pure functions
over the store's rows, shared by the agent's report, its Tune metrics and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rcnas.proxy.records import ProxyMetrics, TeacherStats
from rcnas.reward import task_reward
from rcnas.space.arch import ArchSpec, arch_from_dict
from rcnas.task import Task


@dataclass(frozen=True)
class Candidate:
    """One evaluated sub-network of a task, with its reward."""

    index: int
    """position in evaluation order"""
    task: str
    arch: ArchSpec
    metrics: ProxyMetrics
    reward: float
    budget: float
    teacher_robust_acc: float

    @property
    def robust_acc(self) -> float:
        return self.metrics.robust_acc

    @property
    def macs(self) -> int:
        return self.metrics.macs


def candidate(index: int, task: Task, arch: ArchSpec, metrics: ProxyMetrics, teacher: TeacherStats) -> Candidate:
    """One evaluation of ``task`` scored by the task's reward (``teacher``: its teacher, as measured for it)."""
    return Candidate(index, task.name, arch, metrics, task_reward(task, metrics, teacher), task.budget,
                     teacher.robust_acc)


def score_rows(task: Task, rows: list[dict[str, Any]], teacher: TeacherStats) -> list[Candidate]:
    """``rows`` (the store's, of ``task``) as candidates scored by the task's reward, in evaluation order."""
    return [candidate(i, task, arch_from_dict(r["arch"]), ProxyMetrics(**r["metrics"]), teacher)
            for i, r in enumerate(rows)]


def best(candidates: list[Candidate], top: int = 1) -> list[Candidate]:
    """The ``top`` candidates by reward; a failed evaluation is never chosen while a successful one exists."""
    return sorted(candidates, key=lambda c: (c.metrics.ok, c.reward), reverse=True)[:top]
