"""The reward of a finished sub-network (METHOD §3), one pure function with its weights in the task config."""

from __future__ import annotations

from rcnas.config import RewardConfig


def compression_reward(robust_acc: float, teacher_robust_acc: float, macs: float, budget: float,
                       cfg: RewardConfig, ok: bool = True) -> float:
    """``R = acc_rob(subnet) / acc_rob(teacher) * (1 + mu * (1 - MACs / B))``; ``cfg.failure`` for a failed
    evaluation. The ratio makes rewards comparable across tasks of different difficulty (meta-training); the bonus
    prefers the cheaper of two equally robust sub-networks."""
    if not ok:
        return cfg.failure
    ratio = robust_acc / max(teacher_robust_acc, 1e-3)
    return ratio * (1.0 + cfg.mu * (1.0 - macs / budget))
