"""rcnas: reinforced compressive NAS for adversarial robustness.

The public API, imported lazily (``import rcnas`` loads neither torch nor Ray)::

    task = rcnas.load_task("configs/tasks/digits-cw-e20-t444-r30.yaml")   # a resolved Task: config, teacher, space
    arch, _ = rcnas.load_subnet("configs/subnets/digits/tiny-444.yaml")   # a sub-network genotype (ArchSpec)
    model = rcnas.build_model(arch, task.shape)                            # its nn.Module
    metrics = rcnas.LocalEvaluator().evaluate(task, arch).metrics          # the search's proxy score
    run = rcnas.run_search("configs/experiments/digits.yaml", out="runs/digits", overrides=["M=4"])  # train.py
    results = rcnas.evaluate([run.summary["yaml"]], task, attacks=["clean", "pgd20"])  # evaluate.py

The layers, bottom to top: ``infra`` (registries, errors, strict YAML), ``vocab`` (block types, attack kinds,
the evaluation suite), ``config`` (schemas), ``space`` (genotype, MACs, the budget wall), ``data``, ``models``,
``attacks``, ``train``, ``task`` (the resolved task), ``proxy`` (scoring candidates), ``evaluation`` (final
evaluation), ``search`` (baseline searchers); ``distributed`` is the only Ray code.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "Task": "rcnas.task", "load_task": "rcnas.task", "resolve_task": "rcnas.task",
    "TaskConfig": "rcnas.config", "AttackConfig": "rcnas.config",
    "ArchSpec": "rcnas.space.arch", "load_subnet": "rcnas.space.schema", "dump_subnet": "rcnas.space.schema",
    "arch_cost": "rcnas.space.cost", "build_model": "rcnas.models.builder",
    "adversarial_train": "rcnas.train", "LoopOptions": "rcnas.train", "robust_accuracy": "rcnas.evaluation.robustness",
    "LocalEvaluator": "rcnas.proxy.local", "EvalJob": "rcnas.evaluation.final",
    "evaluate_job": "rcnas.evaluation.final", "ConfigError": "rcnas.infra.errors",
    "evaluate": "rcnas.evaluation.command",
    # the agent (RLlib): imported only when called, so that `import rcnas` stays free of Ray
    "run_search": "agents.pipeline:run_search",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        module, _, attr = _API[name].partition(":")
        return getattr(import_module(module), attr or name)
    raise AttributeError(f"module 'rcnas' has no attribute {name!r}")
