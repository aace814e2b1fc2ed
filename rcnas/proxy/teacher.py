"""Adversarially trained teachers, trained once per (dataset, teacher, recipe, weight-sharing rule) and cached on
disk by content hash.

Concurrent processes wanting the same teacher (several evaluation actors on one node) serialise on a file lock, so
it is trained once; a killed training resumes from its checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Optional

import torch

from rcnas.config import AttackConfig
from rcnas.data.registry import augmentation
from rcnas.data.tensors import DataSplits
from rcnas.evaluation.robustness import local_lipschitz, robust_accuracy
from rcnas.infra.errors import ConfigError
from rcnas.infra.files import write_atomic
from rcnas.infra.locks import file_lock
from rcnas.infra.log import say
from rcnas.infra.progress import eta
from rcnas.infra.provenance import derive_seed
from rcnas.models.builder import PreActResNet, build_model
from rcnas.models.importance import bn_scales
from rcnas.models.imports import load_weights
from rcnas.proxy.keys import stats_key, teacher_key
from rcnas.proxy.records import TeacherStats
from rcnas.task import Task
from rcnas.train import LOSSES, CheckpointMirror, LoopOptions, adversarial_train, save_atomic
from rcnas.train.sandwich import sandwich_objective


def load_or_train_teacher(task: Task, data: DataSplits, cache: Path, device: torch.device,
                          log: Callable[[str], None] = say,
                          mirror: Optional[CheckpointMirror] = None) -> tuple[PreActResNet, float]:
    """The task's teacher with trained weights; trains and caches it on first use. With ``mirror``, a training
    continues from the run folder's checkpoint and keeps each epoch's there (a retry on another node loses nothing).

    Returns:
        (model in eval mode on ``device``, training seconds spent when it was trained).
    """
    cfg = task.config
    folder = teacher_folder(task, cache)
    with file_lock(folder / ".lock"):
        torch.manual_seed(cfg.training.seed)
        model = build_model(task.teacher.arch, task.shape).to(device)
        if not (folder / "model.pt").is_file():
            record = (_import_weights(task, model, log) if cfg.teacher_weights is not None
                      else _train(task, model, data, folder, log, mirror))
            # the record first, the weights last: model.pt (swapped in atomically) marks a complete cache entry
            write_atomic(folder / "train.json", json.dumps(record))
            save_atomic(model.state_dict(), folder / "model.pt")
            (folder / "train_state.pt").unlink(missing_ok=True)
        try:
            model.load_state_dict(torch.load(folder / "model.pt", map_location=device, weights_only=True))
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: say which, never run its code
            raise ConfigError(f"{folder / 'model.pt'}: not a usable checkpoint of {task.teacher.name} "
                              f"({type(exc).__name__}); delete the folder to train the teacher again") from None
    return model.eval(), _train_seconds(folder / "train.json")


def teacher_folder(task: Task, cache: Path) -> Path:
    return cache / "teachers" / teacher_key(task)


def teacher_record(task: Task, cache: Path) -> dict[str, Any]:
    """The cached teacher's training record (empty when missing or damaged)."""
    try:
        return dict(json.loads((teacher_folder(task, cache) / "train.json").read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def install_teacher(task: Task, cache: Path, state: dict[str, torch.Tensor], record: dict[str, Any]) -> bool:
    """Put weights computed elsewhere (another node's training or import, shipped through Ray's object store) into
    this cache, as if trained here; False when the cache already had them. ``record`` says where they came from."""
    folder = teacher_folder(task, cache)
    with file_lock(folder / ".lock"):
        if (folder / "model.pt").is_file():
            return False
        write_atomic(folder / "train.json", json.dumps(record))
        save_atomic(state, folder / "model.pt")
    return True


def _train(task: Task, model: PreActResNet, data: DataSplits, folder: Path, log: Callable[[str], None],
           mirror: Optional[CheckpointMirror] = None) -> dict[str, float]:
    """Adversarially train the teacher with the task's recipe (resumable from ``folder/train_state.pt``, which
    ``mirror`` first fetches from the run folder when this node has none)."""
    cfg = task.config
    checkpoint = folder / "train_state.pt"
    if mirror is not None:
        mirror.restore(checkpoint)
    sandwich = cfg.proxy.supernet == "sandwich"
    log(f"training teacher {task.teacher.name} on {cfg.dataset.name} ({cfg.training.epochs:g} epochs, "
        f"{cfg.training.loss}{', sandwich rule' if sandwich else ''}); cached as {folder}")
    objective = (sandwich_objective(model, task.teacher, LOSSES.get(cfg.training.loss),
                                    cfg.proxy.sandwich_random) if sandwich else None)
    name = task.teacher.name

    def progress(r: dict[str, float]) -> None:
        # called after the epoch's checkpoint is saved: keeping it now is keeping the epoch
        if mirror is not None:
            mirror.keep(checkpoint)
        log(f"teacher {name} epoch {r['epoch']}/{r['epochs']}: loss {r['train_loss']:.3f} val robust "
            f"{r['val_robust']:.3f} {eta(r['epoch'], r['epochs'], r['seconds'])}".rstrip())

    res = adversarial_train(model, data, cfg.training, LoopOptions(
        num_classes=task.shape.num_classes, **augmentation(cfg.dataset), checkpoint=checkpoint,
        objective=objective, progress=progress, desc=f"teacher {name}"))
    if res.diverged:
        raise RuntimeError(f"teacher {task.teacher.name} diverged: {res.reason}; lower training.lr")
    return {"seconds": res.seconds, "best_epoch": res.best_epoch, "best_val_robust": res.best_val_robust}


def _import_weights(task: Task, model: PreActResNet, log: Callable[[str], None]) -> dict[str, object]:
    """Load the task's ``teacher_weights`` into ``model`` (``rcnas.models.imports``: safe tensors only, every
    tensor used, every shape checked; a mismatch is one line naming the file and the first bad key)."""
    w = task.config.teacher_weights
    assert w is not None
    log(f"importing teacher {task.teacher.name} from {w.path} ({w.format} format, not trained)")
    info = load_weights(model, w.path, w.format, task.teacher.name)
    if info["unused"]:
        log(f"  left out {len(info['unused'])} tensors its network never uses: {', '.join(info['unused'][:3])}...")
    return {"seconds": 0.0, "imported": w.path, "sha256": w.sha256, **info}


def _train_seconds(path: Path) -> float:
    """The recorded training time; 0 when the record is missing or damaged (the weights are complete anyway)."""
    try:
        return float(json.loads(path.read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def measure_teacher(task: Task, model: PreActResNet, data: DataSplits, cache: Path,
                    train_seconds: float) -> TeacherStats:
    """Teacher accuracy under the task's attack on the proxy's validation subset, and its LIPS; cached per attack."""
    cfg = task.config
    key = teacher_key(task)
    path = teacher_folder(task, cache) / f"stats-{stats_key(cfg)}.json"
    scales = bn_scales(model)  # from the weights, not the cache: records from before it gain it too
    if path.is_file():
        try:
            return replace(TeacherStats(**json.loads(path.read_text())), bn_scales=scales)
        except (ValueError, TypeError):
            pass  # damaged: measure again
    val = data.val.head(cfg.proxy.val_examples)
    seed = derive_seed(key, "teacher")
    report = robust_accuracy(model, val, {"task": cfg.attack}, num_classes=task.shape.num_classes, seed=seed)
    lips = local_lipschitz(model, val, AttackConfig.suite("pgd20", cfg.attack.epsilon),
                           num_classes=task.shape.num_classes, seed=seed)
    stats = TeacherStats(key, report.clean, report.attacks[0].accuracy, lips, len(val), train_seconds, scales)
    write_atomic(path, json.dumps(asdict(stats)))
    return stats
