"""A task setting resolved once: the validated config with its teacher, the dataset's input shape, the MACs budget
and the compression space.

This is the one loader above the schema (``rcnas.config``), data, model and space layers: those layers never look
each other up, and everything downstream (environment, evaluators, searchers, final evaluation) takes a
:class:`Task` instead of resolving names again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from rcnas.config import TaskConfig, TeacherWeights, is_file_reference
from rcnas.data.registry import DATASETS
from rcnas.infra.configio import load_config
from rcnas.infra.errors import ConfigError
from rcnas.infra.files import sha256_file
from rcnas.models.teachers import get_teacher
from rcnas.space.arch import InputShape, TeacherSpec
from rcnas.space.cost import arch_cost
from rcnas.space.schema import load_subnet
from rcnas.space.space import ActionGrid, CompressionSpace
from rcnas.vocab import WEIGHTS_FORMATS


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
    if is_file_reference(config.teacher):
        path = _beside(config.teacher, source)
        config = config.model_copy(update={"teacher": str(path)})
        teacher = _declared_teacher(path, where)
    else:
        try:
            teacher = get_teacher(config.teacher)
        except ConfigError as exc:
            raise ConfigError(f"{where}: teacher: {exc}") from None
    try:
        shape = DATASETS.get(config.dataset.name).shape
    except ConfigError as exc:
        raise ConfigError(f"{where}: dataset.name: {exc}") from None
    norm = teacher.arch.input_norm
    if norm is not None and len(norm[0]) != shape.channels:
        raise ConfigError(f"{where}: teacher's input normalisation has {len(norm[0])} channels, "
                          f"{config.dataset.name} images have {shape.channels}")
    foreign = sorted(set(config.blocks) - set(teacher.arch.blocks))
    if foreign and config.proxy.epochs == 0:
        raise ConfigError(f"{where}: blocks: {foreign} are not {teacher.name}'s own: a stage switched to them starts "
                          "untrained, so proxy.epochs must be > 0 (e.g. 2)")
    if config.teacher_weights is not None:
        config = config.model_copy(update={"teacher_weights": _weights(config, source)})
        teacher = _wired_for(teacher, config.teacher_weights, where)
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


def _beside(name: str, source: str) -> Path:
    """``name`` as a path, relative to the folder of the task file ``source`` unless absolute."""
    path = Path(name).expanduser()
    if not path.is_absolute() and source:
        path = Path(source).parent / path
    return path.resolve()


def _declared_teacher(path: Path, where: str) -> TeacherSpec:
    """A teacher declared by a sub-network YAML file: its architecture, and the planes of one width unit per stage
    (``rcnas.base_channels``, default 16, 32, 64, ...: the CIFAR WideResNet convention) so that a sub-network's
    width factors map to planes."""
    if not path.is_file():
        raise ConfigError(f"{where}: teacher: {path} is not a file (a registered teacher name, or a sub-network "
                          "YAML relative to the task file)")
    arch, f = load_subnet(path)
    n = len(arch.stages)
    bases = tuple(f.rcnas.base_channels) if f.rcnas and f.rcnas.base_channels else tuple(16 << i for i in range(n))
    if len(bases) != n:
        raise ConfigError(f"{path}: rcnas.base_channels has {len(bases)} entries for {n} stages")
    for i, (stage, base) in enumerate(zip(arch.stages, bases)):
        if base < 1 or stage.channels % base:
            raise ConfigError(f"{path}: stage {i + 1} has {stage.channels} planes, not a multiple of its width unit "
                              f"{base}; set rcnas.base_channels (one entry per stage) to units that divide them")
    return TeacherSpec(name=path.stem, arch=arch, base_channels=bases)


def _wired_for(teacher: TeacherSpec, w: TeacherWeights, where: str) -> TeacherSpec:
    """The teacher with the wiring its weights' format was trained with and the input standardisation they need,
    so that the imported network computes exactly the checkpoint's function (and its sub-networks inherit it)."""
    fmt = WEIGHTS_FORMATS.get(w.format)
    arch = teacher.arch
    norm = arch.input_norm
    if w.input_normalization is not None:
        given = (tuple(w.input_normalization.mean), tuple(w.input_normalization.std))
        if norm is not None and norm != given:
            raise ConfigError(f"{where}: teacher_weights.input_normalization: {given} differs from the one teacher "
                              f"{teacher.name} declares, {norm}; keep one")
        norm = given
    if norm is None and fmt.needs_input_normalization:
        raise ConfigError(
            f"{where}: teacher_weights.input_normalization: {w.format} networks standardise their input and the "
            "file does not record how; give it, e.g. CIFAR-10: {mean: [0.4914, 0.4822, 0.4465], std: [0.2471, "
            "0.2435, 0.2616]}, CIFAR-100: {mean: [0.5071, 0.4865, 0.4409], std: [0.2673, 0.2564, 0.2762]}")
    arch = replace(arch, input_norm=norm)
    if fmt.downsample_padding is not None:
        arch = replace(arch, downsample_padding=fmt.downsample_padding)
    if fmt.conv1_input is not None:
        arch = replace(arch, block_params=replace(arch.block_params, conv1_input=fmt.conv1_input))
    return replace(teacher, arch=arch)


def _weights(config: TaskConfig, source: str) -> TeacherWeights:
    """The teacher's weights file, resolved next to the task file and hashed (the teacher cache is keyed by it)."""
    w = config.teacher_weights
    assert w is not None
    path = _beside(w.path, source)
    if not path.is_file():
        raise ConfigError(f"{source or config.name}: teacher_weights.path: {path} is not a file")
    digest = sha256_file(path)
    if w.sha256 is not None and w.sha256 != digest:
        raise ConfigError(f"{source or config.name}: teacher_weights.sha256: {path} has sha256 {digest}, "
                          f"not {w.sha256}; the file changed")
    return w.model_copy(update={"path": str(path), "sha256": digest})


def load_task(path: str | Path) -> Task:
    """Load a task YAML, validate it strictly and resolve it.

    Raises:
        rcnas.infra.errors.ConfigError: any problem, as one line naming the file.
    """
    return resolve_task(load_config(path, TaskConfig), str(path))


def shared_grid(tasks: list[Task]) -> ActionGrid:
    """The smallest action grid holding every task's teacher: one action space for all tasks of an experiment."""
    return ActionGrid.covering([t.space for t in tasks])
