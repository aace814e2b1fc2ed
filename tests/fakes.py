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
        return TeacherStats("fake", 0.95, 0.7, 12.0, 100, 0.0, made_up_bn_scales(task))

    def evaluate(self, task: Task, arch: ArchSpec) -> Evaluation:
        self.calls += 1
        space, attack = task.space, task.config.attack
        cost = space.cost(arch)
        robust = 0.2 + 0.5 * (cost.macs / space.teacher_macs) ** 0.5
        m = ProxyMetrics("ok", "", robust, 0.0, robust + 0.2, cost.macs, cost.params, attack.name,
                         attack.epsilon, attack.steps, 100, 0, 1, 0.0, 0, 0, 0.0, "cpu", "test", "test")
        return Evaluation(eval_key(task, arch), m, cached=False)


def made_up_bn_scales(task: Task) -> tuple[tuple[tuple[float, ...], ...], ...]:
    """BN scales for the pruning baseline: later blocks and channels matter less."""
    return tuple(tuple(tuple(round((1 - j / (2 * s.depth)) * (1 - k / s.channels), 4) for k in range(s.channels))
                       for j in range(s.depth)) for s in task.teacher.arch.stages)


def synthetic_table(path, tasks: list[Task], scale: float = 1.0) -> None:
    """A table file for ``tasks`` (as bench/build_table.py writes it) with made-up, deterministic accuracies: robust
    accuracy grows with MACs, with a per-sub-network wiggle, so that searchers have a non-trivial optimum.
    ``scale``: accuracies and seconds multiplied by it (a cheaper fidelity that ranks alike)."""
    import hashlib
    from dataclasses import asdict

    from rcnas.infra.provenance import code_version
    from rcnas.proxy.keys import fidelity_key, teacher_key
    from rcnas.search.table import Row, attack_column, every_subnet, table_task, write_table

    tt = table_task(tasks)
    space = tt.space
    cols = [attack_column(tt.config.attack), *tt.config.proxy.also_attacks]
    rows = []
    for actions in every_subnet(space):
        arch = space.arch(actions)
        cost = space.cost(arch)
        wiggle = int(hashlib.sha256(arch.key().encode()).hexdigest()[:6], 16) / 16**6
        base = 0.2 + 0.4 * (cost.macs / space.teacher_macs) ** 0.5 + 0.1 * wiggle
        rows.append(Row(arch, cost.macs, cost.params, "ok", scale * (base + 0.2),
                        {c: scale * (base - 0.05 * k) for k, c in enumerate(cols)}, scale))
    scales = made_up_bn_scales(tt)
    teacher = {c: asdict(TeacherStats("fake", 0.95, 0.7 - 0.05 * k, 12.0, 359, 0.0, scales))
               for k, c in enumerate(cols)}
    header = {"teacher": tt.teacher.name, "teacher_key": teacher_key(tt), "fidelity_key": fidelity_key(tt.config),
              "proxy": tt.config.proxy.model_dump(exclude={"also_attacks"}), "ratio": tt.config.budget.ratio,
              "attacks": {cols[0]: tt.config.attack.model_dump(),
                          **{c: a.model_dump() for c, a in tt.config.proxy.also_attacks.items()}},
              "teacher_stats": teacher, "base_channels": list(tt.teacher.base_channels), "n_val": 359,
              "tasks": [t.name for t in tasks], "code_version": code_version(), "rows": len(rows),
              "command": "tests/fakes.py synthetic_table"}
    write_table(path, header, rows, ["synthetic: made-up accuracies for unit tests"])
