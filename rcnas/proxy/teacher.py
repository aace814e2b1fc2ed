"""Adversarially trained teachers, trained once per (dataset, teacher, recipe, weight-sharing rule) and cached on
disk by content hash.

Concurrent processes wanting the same teacher (several evaluation actors on one node) serialise on a file lock, so
it is trained once; a killed training resumes from its checkpoint.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from rcnas.config import AttackConfig
from rcnas.data.registry import augmentation
from rcnas.data.tensors import DataSplits
from rcnas.evaluation.robustness import local_lipschitz, robust_accuracy
from rcnas.infra.provenance import content_key, derive_seed
from rcnas.models.builder import PreActResNet, build_model
from rcnas.proxy.keys import teacher_key
from rcnas.proxy.records import TeacherStats
from rcnas.task import Task
from rcnas.train import LOSSES, adversarial_train
from rcnas.train.sandwich import sandwich_objective

CACHE_ENV = "RCNAS_CACHE"


def cache_root(override: str | Path | None = None) -> Path:
    return Path(override or os.environ.get(CACHE_ENV) or "runs/cache")


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_or_train_teacher(task: Task, data: DataSplits, cache: Path, device: torch.device,
                          log: Callable[[str], None] = print) -> tuple[PreActResNet, float]:
    """The task's teacher with trained weights; trains and caches it on first use.

    Returns:
        (model in eval mode on ``device``, training seconds spent when it was trained).
    """
    cfg = task.config
    key = teacher_key(cfg)
    folder = cache / "teachers" / key
    with file_lock(folder / ".lock"):
        torch.manual_seed(cfg.training.seed)
        model = build_model(task.teacher.arch, task.shape).to(device)
        if not (folder / "model.pt").is_file():
            sandwich = cfg.proxy.supernet == "sandwich"
            log(f"training teacher {task.teacher.name} on {cfg.dataset.name} ({cfg.training.epochs:g} epochs, "
                f"{cfg.training.loss}{', sandwich rule' if sandwich else ''}); cached as {folder}")
            objective = (sandwich_objective(model, task.teacher, LOSSES.get(cfg.training.loss),
                                            cfg.proxy.sandwich_random) if sandwich else None)
            res = adversarial_train(model, data, cfg.training, num_classes=task.shape.num_classes,
                                    **augmentation(cfg.dataset), checkpoint=folder / "train_state.pt",
                                    objective=objective)
            if res.diverged:
                raise RuntimeError(f"teacher {task.teacher.name} diverged: {res.reason}; lower training.lr")
            torch.save(model.state_dict(), folder / "model.tmp")
            os.replace(folder / "model.tmp", folder / "model.pt")
            (folder / "train.json").write_text(json.dumps({"seconds": res.seconds, "best_epoch": res.best_epoch,
                                                           "best_val_robust": res.best_val_robust}))
            (folder / "train_state.pt").unlink(missing_ok=True)
        model.load_state_dict(torch.load(folder / "model.pt", map_location=device, weights_only=True))
    seconds = json.loads((folder / "train.json").read_text())["seconds"]
    return model.eval(), seconds


def measure_teacher(task: Task, model: PreActResNet, data: DataSplits, cache: Path,
                    train_seconds: float) -> TeacherStats:
    """Teacher accuracy under the task's attack on the proxy's validation subset, and its LIPS; cached per attack."""
    cfg = task.config
    key = teacher_key(cfg)
    path = cache / "teachers" / key / f"stats-{content_key([cfg.attack.model_dump(), cfg.proxy.val_examples])}.json"
    if path.is_file():
        return TeacherStats(**json.loads(path.read_text()))
    val = data.val.head(cfg.proxy.val_examples)
    seed = derive_seed(key, "teacher")
    report = robust_accuracy(model, val, {"task": cfg.attack}, num_classes=task.shape.num_classes, seed=seed)
    lips = local_lipschitz(model, val, AttackConfig.suite("pgd20", cfg.attack.epsilon),
                           num_classes=task.shape.num_classes, seed=seed)
    stats = TeacherStats(key, report.clean, report.attacks[0].accuracy, lips, len(val), train_seconds)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(stats)))
    os.replace(tmp, path)
    return stats
