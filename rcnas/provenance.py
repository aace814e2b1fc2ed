"""Stable content keys for tasks, fidelities and teachers, deterministic seeds, and the code version stamp."""

from __future__ import annotations

import hashlib
import json
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from rcnas.config import TaskConfig


def content_key(obj: Any) -> str:
    """16 hex chars of sha256 over canonical JSON: equal content, equal key, in every process."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def teacher_key(task: TaskConfig) -> str:
    """What a trained teacher depends on: data, split, architecture, recipe and weight-sharing rule (not the task's
    attack or budget)."""
    what = {"dataset": task.dataset.model_dump(), "teacher": task.teacher, "training": task.training.model_dump()}
    if task.proxy.supernet != "plain":  # only then: plain teachers keep the keys (and caches) they always had
        what["supernet"] = [task.proxy.supernet, task.proxy.sandwich_random]
    return content_key(what)


def task_key(task: TaskConfig) -> str:
    """What a proxy evaluation depends on besides the sub-network and fidelity: the teacher and the task's attack.

    The budget, reward weights and name do not change a measurement, so tasks differing only there share results.
    """
    return content_key({"teacher": teacher_key(task), "attack": task.attack.model_dump()})


def fidelity_key(task: TaskConfig) -> str:
    return content_key(task.proxy.model_dump())


def derive_seed(*parts: Any) -> int:
    """A deterministic 31-bit seed per (task, sub-network, repeat): the same candidate always gets the same
    initialisation, batches and attack noise, so rewards differ because sub-networks do, not because seeds do."""
    return int(content_key(list(parts)), 16) % (2**31 - 1)


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version and, in a git checkout, the commit (with ``+dirty`` for local changes)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("rcnas")
    except PackageNotFoundError:
        v = "unknown"
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return v
    return f"{v}+{commit}{'.dirty' if dirty else ''}" if commit else v
