"""The reward of a finished sub-network (docs/method.md, "Reward"): one pure function with its weights in the task
config, and the one place that assembles its inputs from a task, a measurement and the teacher's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rcnas.config import RewardConfig

if TYPE_CHECKING:
    from rcnas.proxy.records import ProxyMetrics, TeacherStats
    from rcnas.task import Task


def compression_reward(robust_acc: float, teacher_robust_acc: float, macs: float, budget: float,
                       cfg: RewardConfig, ok: bool = True) -> float:
    """``R = acc_rob(subnet) / acc_rob(teacher) * (1 + mu * (1 - MACs / B))``; ``cfg.failure`` for a failed
    evaluation. The ratio makes rewards comparable across tasks of different difficulty (meta-training); the bonus
    prefers the cheaper of two equally robust sub-networks."""
    if not ok:
        return cfg.failure
    ratio = robust_acc / max(teacher_robust_acc, 1e-3)
    return ratio * (1.0 + cfg.mu * (1.0 - macs / budget))


def task_reward(task: Task, metrics: ProxyMetrics, teacher: TeacherStats) -> float:
    """The reward of ``metrics`` (one proxy evaluation) on ``task`` whose teacher measured ``teacher``."""
    return compression_reward(metrics.robust_acc, teacher.robust_acc, metrics.macs, task.budget,
                              task.config.reward, ok=metrics.ok)
