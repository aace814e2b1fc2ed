"""A deterministic stand-in evaluator for unit tests of the environment and agent plumbing (never used outside
tests): robust accuracy grows with the sub-network's MACs, so a learning agent has something to find."""

from __future__ import annotations

from rcnas.proxy.local import eval_key
from rcnas.proxy.records import Evaluation, ProxyMetrics, TeacherStats
from rcnas.space.arch import ArchSpec
from rcnas.task import Task


class FakeEvaluator:
    def __init__(self) -> None:
        self.calls = 0

    def teacher_stats(self, task: Task) -> TeacherStats:
        return TeacherStats("fake", 0.95, 0.7, 12.0, 100, 0.0)

    def evaluate(self, task: Task, arch: ArchSpec) -> Evaluation:
        self.calls += 1
        space, attack = task.space, task.config.attack
        cost = space.cost(arch)
        robust = 0.2 + 0.5 * (cost.macs / space.teacher_macs) ** 0.5
        m = ProxyMetrics("ok", "", robust, 0.0, robust + 0.2, cost.macs, cost.params, attack.name,
                         attack.epsilon, attack.steps, 100, 0, 1, 0.0, 0, 0, 0.0, "cpu", "test", "test")
        return Evaluation(eval_key(task, arch), m, cached=False)
