"""Final evaluation of one sub-network (METHOD §6): adversarial training from scratch with the task's recipe (or a
saved checkpoint), then clean / FGSM / PGD-20 / CW-40 / AutoAttack on the test split, params, MACs and LIPS.

A pure function of its inputs, so that a Ray worker runs it unchanged (``rcnas.distributed.final``).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from rcnas.attacks import suite_attack
from rcnas.config import TaskConfig
from rcnas.configio import eps_label
from rcnas.data.registry import DATASETS, augmentation, load_splits
from rcnas.devices import pick_device
from rcnas.evaluation import local_lipschitz, robust_accuracy
from rcnas.models.builder import build_model
from rcnas.space.arch import ArchSpec
from rcnas.space.cost import arch_cost
from rcnas.train import adversarial_train


@dataclass(frozen=True)
class EvalJob:
    """One sub-network to evaluate, with everything needed to do it in another process."""

    name: str
    arch: ArchSpec
    task: TaskConfig
    attacks: tuple[str, ...]
    out_dir: str
    epochs: Optional[float] = None
    checkpoint: Optional[str] = None
    n_examples: Optional[int] = None
    seed: int = 0
    data_root: Optional[str] = None


def evaluate_job(
    job: EvalJob, log: Callable[[str], None] = print, device: torch.device | None = None
) -> dict[str, Any]:
    """Train (or load) and attack ``job``'s sub-network; returns a JSON-ready result and saves the weights."""
    t0 = time.perf_counter()
    device = device or pick_device()
    info = DATASETS.get(job.task.dataset.name)
    data = load_splits(job.task.dataset, job.data_root)
    cost = arch_cost(job.arch, info.shape)
    torch.manual_seed(job.seed)
    model = build_model(job.arch, info.shape).to(device)
    out = Path(job.out_dir) / job.name
    out.mkdir(parents=True, exist_ok=True)
    recipe = job.task.training.model_copy(
        update={"seed": job.seed, **({"epochs": job.epochs} if job.epochs is not None else {})}
    )
    train_info: dict[str, Any] = {}
    if job.checkpoint:
        model.load_state_dict(torch.load(job.checkpoint, map_location=device, weights_only=True))
        train_info = {"checkpoint": job.checkpoint}
    else:
        log(f"[{job.name}] training {recipe.epochs:g} epochs ({recipe.loss}, eps {eps_label(recipe.attack.epsilon)}) "
            f"on {len(data.train)} examples, device {device}")
        res = adversarial_train(
            model, data, recipe, num_classes=info.shape.num_classes, **augmentation(job.task.dataset),
            checkpoint=out / "train_state.pt",
            progress=lambda r: log(f"[{job.name}] epoch {r['epoch']}: loss {r['train_loss']:.3f} "
                                   f"val clean {r['val_clean']:.3f} val robust {r['val_robust']:.3f}"),
        )
        if res.diverged:
            log(f"[{job.name}] training diverged: {res.reason}; evaluating the best checkpoint kept")
        train_info = {"epochs": res.epochs_run, "best_epoch": res.best_epoch,
                      "best_val_robust": res.best_val_robust, "seconds": round(res.seconds, 1),
                      "diverged": res.diverged, "loss": recipe.loss}
        torch.save(model.state_dict(), out / "model.pt")
    test = data.test if job.n_examples is None else data.test.head(job.n_examples)
    eps = job.task.attack.epsilon
    attacks = {label: suite_attack(label, eps) for label in job.attacks if label != "clean"}
    report = robust_accuracy(model, test, attacks, num_classes=info.shape.num_classes, seed=job.seed,
                             state_dir=out, progress=lambda m: log(f"[{job.name}] {m}"))
    lips = local_lipschitz(model, test.head(256), suite_attack("pgd20", eps), num_classes=info.shape.num_classes,
                           seed=job.seed)
    return {
        "name": job.name,
        "arch": job.arch.short(),
        "params": cost.params,
        "macs": cost.macs,
        "dataset": job.task.dataset.name,
        "task": job.task.name,
        "epsilon": eps,
        "eps_255": eps_label(eps),
        "seed": job.seed,
        "n_examples": report.n_examples,
        "split": "test",
        "clean": report.clean,
        "attacks": [asdict(a) for a in report.attacks],
        "worst_case": report.worst_case,
        "lipschitz": lips,
        "train": train_info,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "device": str(device),
        "node": platform.node(),
    }
