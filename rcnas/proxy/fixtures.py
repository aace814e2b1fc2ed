"""Small real inputs for tests and smoke benchmarks: a digits task whose teacher trains in seconds and whose proxy
evaluations take a fraction of an epoch (``tests/`` and ``bench/cluster_throughput.py`` share it)."""

from __future__ import annotations

from rcnas.task import Task


def tiny_task(name: str = "tiny-real", proxy_epochs: float = 0.3, teacher: str = "tiny-222") -> Task:
    """A real digits task (resolved) small enough for tests: 1-epoch teacher, a fraction of an epoch of fine-tuning."""
    from rcnas.config import TaskConfig
    from rcnas.task import resolve_task

    return resolve_task(TaskConfig.model_validate({
        "name": name, "dataset": {"name": "digits", "val_fraction": 0.25, "augment": False},
        "teacher": teacher, "attack": {"name": "pgd", "epsilon": "1/10", "steps": 5, "step_size": "1/40"},
        "budget": {"ratio": 0.5},
        "training": {"loss": "pgd_at", "attack": {"name": "pgd", "epsilon": "1/10", "steps": 2, "step_size": "1/20"},
                     "epochs": 1, "batch_size": 128, "lr": 0.1, "schedule": "cosine", "val_examples": 64},
        "proxy": {"epochs": proxy_epochs, "val_examples": 64},
    }))
