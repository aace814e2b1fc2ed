"""What the proxy's caches and the evaluation store are keyed by: content hashes of the parts of a task config a
measurement depends on (never its name, so an edited task cannot reuse stale results)."""

from __future__ import annotations

from rcnas.config import TaskConfig, TrainConfig, is_file_reference
from rcnas.infra.provenance import content_key
from rcnas.task import Task


def teacher_key(task: Task) -> str:
    """What a trained teacher depends on: data, split, architecture, recipe and weight-sharing rule (not the task's
    attack or budget)."""
    cfg = task.config
    # a registered teacher by its name (the keys, and caches, it always had); one declared in a file by content
    teacher: object = cfg.teacher
    if is_file_reference(cfg.teacher):
        teacher = {"arch": task.teacher.arch.key(), "base_channels": list(task.teacher.base_channels)}
    what = {"dataset": cfg.dataset.model_dump(), "teacher": teacher, "training": recipe_dump(cfg.training)}
    if cfg.proxy.supernet != "plain":  # only then: plain teachers keep the keys (and caches) they always had
        what["supernet"] = [cfg.proxy.supernet, cfg.proxy.sandwich_random]
    w = cfg.teacher_weights
    if w is not None:  # imported: the weights' content, not where the file lies; and the standardisation given
        what["weights"] = [w.format, w.sha256]
        if w.input_normalization is not None:
            what["weights"].append(w.input_normalization.model_dump())
    return content_key(what)


LATER_RECIPE_FIELDS = {"precision": "auto", "channels_last": True, "compile": False, "ema": None}
"""training settings added after caches existed: at their defaults they are left out of a key, so results and
teachers from before them keep their keys (and caches). Precision's default is ``auto`` (fp32 on a CPU, as the old
default was, so CPU results keep their keys; bf16 on CUDA); an explicit ``fp32`` is a recipe of its own. Like every
key, ``auto`` names the recipe, not the hardware that ran it: a result's record says which precision ran
(``rcnas.train.step.effective_precision``)."""


def recipe_dump(recipe: TrainConfig) -> dict:
    d = recipe.model_dump()
    for name, default in LATER_RECIPE_FIELDS.items():
        if d.get(name) == default:
            d.pop(name)
    return d


def task_key(task: Task) -> str:
    """What a proxy evaluation depends on besides the sub-network and fidelity: the teacher and the task's attack.

    The budget, reward weights and name do not change a measurement, so tasks differing only there share results.
    """
    return content_key({"teacher": teacher_key(task), "attack": task.config.attack.model_dump()})


def stats_key(task: TaskConfig) -> str:
    """What a teacher's measurement depends on besides the teacher: the task's attack and the validation subset."""
    return content_key([task.attack.model_dump(), task.proxy.val_examples])


PROXY_VERSION = 1
"""bump when a change to the scoring code changes what a proxy evaluation returns: stores then recompute"""


def store_fidelity(task: TaskConfig) -> str:
    """The fidelity part of a store key: the proxy settings and the scoring code's version (seeds stay derived from
    :func:`fidelity_key` alone, so bumping the version re-measures without changing any draw)."""
    key = f"{fidelity_key(task)}.v{PROXY_VERSION}"
    if task.proxy.also_attacks:  # the same draws, but a record that carries more: stored apart
        key += "." + content_key({k: a.model_dump() for k, a in task.proxy.also_attacks.items()})[:8]
    return key


def fidelity_key(task: TaskConfig) -> str:
    """The proxy settings that decide a measurement's draws (not ``also_attacks``: extra columns measured on the
    same fine-tuned network leave the task attack's value as it is)."""
    d = task.proxy.model_dump(exclude={"also_attacks"})
    for name, default in LATER_PROXY_FIELDS.items():
        if d.get(name) == default:
            d.pop(name)
    return content_key(d)


LATER_PROXY_FIELDS = {"channel_order": "first"}
"""proxy settings added after stores and tables existed: at their defaults they are left out of the key, so stored
evaluations and the committed tables keep their keys"""
