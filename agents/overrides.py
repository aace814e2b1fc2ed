"""``--set key=value``: dotted overrides of any experiment or task key, from the command line or the Python API.

A key whose first part is an experiment field (``M``, ``ppo.lr``, ``final_eval.epochs``, ``workers.count``) changes
the experiment; one whose first part is a task field (``training.epochs``, ``proxy.epochs``, ``attack.steps``)
changes every task of the run, meta and target alike. The two schemas share no top-level name, so a key is never
ambiguous. Values are read as YAML scalars (``2``, ``0.5``, ``true``, ``"8/255"``, ``[clean, pgd20]``).

Overridden tasks are written, fully resolved, to ``<out>/config/overridden/`` and the run uses those files: every
process that loads a task (env runners, evaluation workers) reads the same content, and the keys of caches and
stores follow the content, so an override never reuses a result measured without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from agents.config import ExperimentConfig
from rcnas.config import TaskConfig, is_file_reference
from rcnas.infra.configio import read_yaml, validate
from rcnas.infra.errors import ConfigError
from rcnas.infra.files import write_atomic


def parse_sets(sets: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """``["a.b=1", ...]`` (or a ready dict) as ``{"a.b": 1}``; one line for a malformed item."""
    if not sets:
        return {}
    if isinstance(sets, dict):
        return dict(sets)
    out: dict[str, Any] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item}: give key=value, e.g. --set training.epochs=2")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: the value is not YAML ({exc.__class__.__name__})") from None
    return out


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {p} is a value, not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(exp: ExperimentConfig, metas: list[str], target: str, sets: dict[str, Any],
                    folder: Optional[Path]) -> tuple[ExperimentConfig, list[str], str]:
    """The experiment and task paths with ``sets`` applied (unchanged when empty); every problem is one line
    naming the key, before any work starts. The overridden tasks are written to ``folder``; with ``folder=None``
    everything is checked and nothing written (a command refused before it takes its run folder)."""
    if not sets:
        return exp, metas, target
    from rcnas.task import resolve_task

    exp_fields, task_fields = set(ExperimentConfig.model_fields), set(TaskConfig.model_fields) - {"name"}
    exp_sets = {k: v for k, v in sets.items() if k.split(".")[0] in exp_fields}
    task_sets = {k: v for k, v in sets.items() if k.split(".")[0] in task_fields}
    unknown = sorted(set(sets) - set(exp_sets) - set(task_sets))
    if unknown:
        raise ConfigError(f"--set {unknown[0]}: not an experiment or task key; experiment keys: "
                          f"{', '.join(sorted(exp_fields))}; task keys: {', '.join(sorted(task_fields))}")
    if exp_sets:
        data = exp.model_dump(mode="json")
        for k, v in exp_sets.items():
            _put(data, k, v)
        exp = validate(ExperimentConfig, data, f"--set {', '.join(exp_sets)}")
    if task_sets:
        changed = []
        for p in [*metas, target]:
            # the raw YAML (bases merged), not a dump of the parsed config: values keep their units ("1/5")
            data = read_yaml(p)
            _absolute_files(data, Path(p).parent)
            for k, v in task_sets.items():
                _put(data, k, v)
            cfg = validate(TaskConfig, data, f"--set {', '.join(task_sets)} ({p})")
            resolve_task(cfg, str(p))  # resolved: e.g. a budget the teacher cannot meet is refused here
            changed.append((cfg.name, data))
        if folder is None:
            return exp, metas, target  # checked only: nothing written
        paths = []
        for name, data in changed:  # written only once every task passed
            path = folder / f"{name}.yaml"
            write_atomic(path, yaml.safe_dump(data, sort_keys=False))
            paths.append(str(path))
        metas, target = paths[:-1], paths[-1]
    return exp, metas, target


def _absolute_files(data: dict[str, Any], where: Path) -> None:
    """File references of a task (a teacher declared by a file, imported weights) are relative to the task file:
    made absolute, so that the overridden copy written elsewhere names the same files."""
    teacher = data.get("teacher")
    if isinstance(teacher, str) and is_file_reference(teacher) and not Path(teacher).is_absolute():
        data["teacher"] = str((where / teacher).resolve())
    weights = data.get("teacher_weights")
    if isinstance(weights, dict) and isinstance(weights.get("path"), str) and not Path(weights["path"]).is_absolute():
        weights["path"] = str((where / weights["path"]).resolve())
