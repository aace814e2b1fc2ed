"""What the proxy's caches and the evaluation store are keyed by: content hashes of the parts of a task config a
measurement depends on (never its name, so an edited task cannot reuse stale results)."""

from __future__ import annotations

from rcnas.config import TaskConfig
from rcnas.infra.provenance import content_key


def teacher_key(task: TaskConfig) -> str:
    """What a trained teacher depends on: data, split, architecture, recipe and weight-sharing rule (not the task's
    attack or budget)."""
    what = {"dataset": task.dataset.model_dump(), "teacher": task.teacher, "training": task.training.model_dump()}
    if task.proxy.supernet != "plain":  # only then: plain teachers keep the keys (and caches) they always had
        what["supernet"] = [task.proxy.supernet, task.proxy.sandwich_random]
    if task.teacher_weights is not None:  # imported: the weights' content, not where the file lies
        what["weights"] = [task.teacher_weights.format, task.teacher_weights.sha256]
    return content_key(what)


def task_key(task: TaskConfig) -> str:
    """What a proxy evaluation depends on besides the sub-network and fidelity: the teacher and the task's attack.

    The budget, reward weights and name do not change a measurement, so tasks differing only there share results.
    """
    return content_key({"teacher": teacher_key(task), "attack": task.attack.model_dump()})


def stats_key(task: TaskConfig) -> str:
    """What a teacher's measurement depends on besides the teacher: the task's attack and the validation subset."""
    return content_key([task.attack.model_dump(), task.proxy.val_examples])


PROXY_VERSION = 1
"""bump when a change to the scoring code changes what a proxy evaluation returns: stores then recompute"""


def store_fidelity(task: TaskConfig) -> str:
    """The fidelity part of a store key: the proxy settings and the scoring code's version (seeds stay derived from
    :func:`fidelity_key` alone, so bumping the version re-measures without changing any draw)."""
    return f"{fidelity_key(task)}.v{PROXY_VERSION}"


def fidelity_key(task: TaskConfig) -> str:
    return content_key(task.proxy.model_dump())
