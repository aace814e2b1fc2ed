"""A task setting resolved once: the validated config with its teacher, the dataset's input shape, the MACs budget
and the compression space.

This is the one loader above the schema (``rcnas.config``), data, model and space layers: those layers never look
each other up, and everything downstream (environment, evaluators, searchers, final evaluation) takes a
:class:`Task` instead of resolving names again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from rcnas.config import TaskConfig, TeacherWeights
from rcnas.data.registry import DATASETS
from rcnas.infra.configio import load_config
from rcnas.infra.errors import ConfigError
from rcnas.models.teachers import get_teacher
from rcnas.space.arch import InputShape, TeacherSpec
from rcnas.space.cost import arch_cost
from rcnas.space.space import ActionGrid, CompressionSpace


@dataclass(frozen=True, eq=False)
class Task:
    """One task setting, resolved. Picklable (it crosses Ray process boundaries; the space pickles as its arguments)."""

    config: TaskConfig
    teacher: TeacherSpec
    shape: InputShape
    budget: float
    """MACs"""
    source: str = ""
    """the YAML file it came from ("" when built in code)"""

    @property
    def name(self) -> str:
        return self.config.name

    @cached_property
    def space(self) -> CompressionSpace:
        """The space on the smallest action grid holding this task's teacher."""
        return self.on_grid(None)

    @property
    def teacher_macs(self) -> int:
        return self.space.teacher_macs

    def on_grid(self, grid: ActionGrid | None) -> CompressionSpace:
        """The space on ``grid``, the action grid shared by every task of an experiment."""
        return CompressionSpace(self.teacher, self.shape, self.budget, self.config.blocks, grid)

    def replace(self, **update: object) -> Task:
        """This task with top-level config fields replaced (e.g. ``proxy=...``), resolved again."""
        return resolve_task(self.config.model_copy(update=update), self.source or None)


def resolve_task(config: TaskConfig, where: str | None = None) -> Task:
    """Check ``config`` against the registries and its teacher, and resolve it.

    Raises:
        ConfigError: an unknown teacher or dataset, a block type the proxy cannot score, or a budget below the
            teacher's smallest sub-network; one line naming ``where`` (the file) and the key.
    """
    source, where = where or "", where or config.name
    try:
        teacher = get_teacher(config.teacher)
    except ConfigError as exc:
        raise ConfigError(f"{where}: teacher: {exc}") from None
    try:
        shape = DATASETS.get(config.dataset.name).shape
    except ConfigError as exc:
        raise ConfigError(f"{where}: dataset.name: {exc}") from None
    foreign = sorted(set(config.blocks) - set(teacher.arch.blocks))
    if foreign and config.proxy.epochs == 0:
        raise ConfigError(f"{where}: blocks: {foreign} are not {teacher.name}'s own: a stage switched to them starts "
                          "untrained, so proxy.epochs must be > 0 (e.g. 2)")
    if config.teacher_weights is not None:
        config = config.model_copy(update={"teacher_weights": _weights(config, source)})
    teacher_macs = arch_cost(teacher.arch, shape).macs
    b = config.budget
    budget = float(b.macs) if b.macs is not None else float(b.ratio or 0) * teacher_macs
    task = Task(config, teacher, shape, budget, source)
    if task.space.min_macs > budget:
        raise ConfigError(
            f"{where}: budget.{'macs' if b.macs is not None else 'ratio'}: {budget:,.0f} MACs is below the smallest "
            f"sub-network of {teacher.name} ({task.space.min_macs:,} MACs, "
            f"{task.space.min_macs / teacher_macs:.3f} of the teacher); raise the budget"
        )
    return task


def _weights(config: TaskConfig, source: str) -> TeacherWeights:
    """The teacher's weights file, resolved next to the task file and hashed (the teacher cache is keyed by it)."""
    w = config.teacher_weights
    assert w is not None
    path = Path(w.path).expanduser()
    if not path.is_absolute() and source:
        path = Path(source).parent / path
    if not path.is_file():
        raise ConfigError(f"{source or config.name}: teacher_weights.path: {path} is not a file")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if w.sha256 is not None and w.sha256 != digest.hexdigest():
        raise ConfigError(f"{source or config.name}: teacher_weights.sha256: {path} has sha256 {digest.hexdigest()}, "
                          f"not {w.sha256}; the file changed")
    return w.model_copy(update={"path": str(path.resolve()), "sha256": digest.hexdigest()})


def load_task(path: str | Path) -> Task:
    """Load a task YAML, validate it strictly and resolve it.

    Raises:
        rcnas.infra.errors.ConfigError: any problem, as one line naming the file.
    """
    return resolve_task(load_config(path, TaskConfig), str(path))


def shared_grid(tasks: list[Task]) -> ActionGrid:
    """The smallest action grid holding every task's teacher: one action space for all tasks of an experiment."""
    return ActionGrid.covering([t.space for t in tasks])
