"""The in-process evaluator: the default of the environment, and what each Ray evaluation actor runs inside."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch

from rcnas.data.registry import load_splits
from rcnas.data.tensors import DataSplits
from rcnas.infra.devices import pick_device
from rcnas.infra.files import cache_root
from rcnas.infra.log import say
from rcnas.infra.provenance import content_key
from rcnas.models.builder import PreActResNet
from rcnas.models.importance import importance_ordered
from rcnas.proxy.candidate import proxy_evaluate
from rcnas.proxy.keys import store_fidelity, task_key, teacher_key
from rcnas.proxy.records import EvalKey, Evaluation, ProxyMetrics, TeacherStats
from rcnas.proxy.store import EvaluationStore
from rcnas.proxy.teacher import load_or_train_teacher, measure_teacher
from rcnas.space.arch import ArchSpec
from rcnas.task import Task
from rcnas.train import CheckpointMirror


def eval_key(task: Task, arch: ArchSpec, seed: int = 0) -> EvalKey:
    return EvalKey(task_key(task), arch.key(), store_fidelity(task.config), seed)


class ProxyRunner:
    """Computes proxy evaluations, keeping datasets and trained teachers in memory between calls."""

    def __init__(self, cache_dir: str | Path | None = None, data_root: str | Path | None = None,
                 device: Optional[torch.device] = None, log: Callable[[str], None] = say) -> None:
        self.cache = cache_root(cache_dir)
        self.data_root = data_root
        self.device = device or pick_device()
        self.log = log
        self._data: dict[str, DataSplits] = {}
        self._teachers: dict[str, tuple[PreActResNet, float]] = {}
        self._ordered: dict[str, PreActResNet] = {}

    def data(self, task: Task) -> DataSplits:
        k = content_key(task.config.dataset.model_dump())
        if k not in self._data:
            self._data[k] = load_splits(task.config.dataset, self.data_root)
        return self._data[k]

    def teacher(self, task: Task, mirror: Optional[CheckpointMirror] = None) -> tuple[PreActResNet, float]:
        """The task's teacher (``mirror``: where a training keeps its checkpoints besides this node's cache)."""
        k = teacher_key(task)
        if k not in self._teachers:
            self._teachers[k] = load_or_train_teacher(task, self.data(task), self.cache, self.device, self.log,
                                                      mirror)
        return self._teachers[k]

    def teacher_stats(self, task: Task) -> TeacherStats:
        model, seconds = self.teacher(task)
        return measure_teacher(task, model, self.data(task), self.cache, seconds)

    def inherit_source(self, task: Task) -> Optional[PreActResNet]:
        """What a sub-network inherits from: the teacher, with its channels sorted once per teacher where the proxy
        asks for ``channel_order: importance``."""
        p = task.config.proxy
        if not p.inherit:
            return None
        teacher = self.teacher(task)[0]
        if p.channel_order == "first":
            return teacher
        k = teacher_key(task)
        if k not in self._ordered:
            self._ordered[k] = importance_ordered(teacher)
        return self._ordered[k]

    def compute(self, task: Task, arch: ArchSpec, seed: int = 0) -> ProxyMetrics:
        return proxy_evaluate(task, arch, self.data(task), self.inherit_source(task), self.device, seed)


class LocalEvaluator:
    """The environment's default evaluator: a :class:`ProxyRunner` in this process behind an optional store."""

    def __init__(self, store: EvaluationStore | str | Path | None = None, **runner_kwargs: object) -> None:
        self.runner = ProxyRunner(**runner_kwargs)  # type: ignore[arg-type]
        self.store = EvaluationStore(store) if isinstance(store, (str, Path)) else store

    def teacher_stats(self, task: Task) -> TeacherStats:
        return self.runner.teacher_stats(task)

    def evaluate(self, task: Task, arch: ArchSpec, seed: int = 0) -> Evaluation:
        key = eval_key(task, arch, seed)
        if self.store is not None:
            hit = self.store.get(key)
            if hit is not None:
                return Evaluation(key, hit, cached=True)
        metrics = self.runner.compute(task, arch, seed)
        if self.store is not None and metrics.status != "error":  # an error may not recur: never store it
            self.store.put(key, arch, metrics, task.name)
        return Evaluation(key, metrics, cached=False)
