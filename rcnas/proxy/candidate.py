"""The proxy evaluation of one candidate (docs/method.md, "Scoring a candidate"): inherit the adversarially
trained teacher's weights, fine-tune adversarially for a few epochs on the training split, attack the fixed
validation subset with the task's attack.

Never raises for a bad candidate: a non-finite loss or an exception in the model becomes a ``failed`` record with
its reason, so a search keeps going.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Optional

import torch

from rcnas.data.registry import augmentation
from rcnas.data.tensors import DataSplits, to_float
from rcnas.evaluation.robustness import robust_accuracy
from rcnas.infra.provenance import code_version, derive_seed
from rcnas.models.builder import PreActResNet, build_model, inherit_weights, recalibrate_bn
from rcnas.proxy.keys import fidelity_key, task_key
from rcnas.proxy.records import ProxyMetrics
from rcnas.space.arch import ArchSpec
from rcnas.space.cost import arch_cost
from rcnas.task import Task
from rcnas.train import LoopOptions, adversarial_train


def proxy_evaluate(task: Task, arch: ArchSpec, data: DataSplits, teacher: Optional[PreActResNet],
                   device: torch.device, seed: int = 0) -> ProxyMetrics:
    """Score ``arch`` on ``task``; ``teacher`` supplies inherited weights when ``proxy.inherit`` is set."""
    t0 = time.perf_counter()
    cfg, shape = task.config, task.shape
    cost = arch_cost(arch, shape)
    p = cfg.proxy
    base = dict(macs=cost.macs, params=cost.params, attack=cfg.attack.name, epsilon=cfg.attack.epsilon,
                steps=cfg.attack.steps, n_val=min(p.val_examples, len(data.val)), seed=seed, repeats=p.repeats,
                fine_tune_epochs=p.epochs, device=str(device), node=platform.node(), code_version=code_version())
    robust, clean, counts = [], [], {"inherited": 0, "fresh": 0}
    also: dict[str, list[float]] = {label: [] for label in p.also_attacks}
    try:
        for r in range(p.repeats):
            s = derive_seed(task_key(task), arch.key(), fidelity_key(cfg), seed, r)
            torch.manual_seed(s)
            model = build_model(arch, shape).to(device)
            if p.inherit and teacher is not None:
                counts = inherit_weights(model, teacher)
            if p.recalibrate_bn:
                recalibrate_bn(model, to_float(data.train.head(p.recalibrate_bn).x).to(device))
            if p.epochs > 0:
                recipe = cfg.training.model_copy(update={"epochs": p.epochs, "lr": p.lr, "schedule": p.schedule,
                                                          "select_on_val": False, "seed": s})
                res = adversarial_train(model, data, recipe, LoopOptions(
                    num_classes=shape.num_classes, **augmentation(cfg.dataset), data_fraction=p.data_fraction))
                if res.diverged:
                    return _failed(base, counts, f"fine-tuning diverged: {res.reason}", t0)
            # the same measurement as the teacher's (rcnas.proxy.teacher.measure_teacher), in one batch of <= 512
            # each attack draws from its own generator: the extra ones leave the task attack's value unchanged
            report = robust_accuracy(model, data.val.head(p.val_examples), {"task": cfg.attack, **p.also_attacks},
                                     num_classes=shape.num_classes, seed=s, batch_size=512)
            clean.append(report.clean)
            robust.append(report.attacks[0].accuracy)
            for a in report.attacks[1:]:
                also[a.label].append(a.accuracy)
    except Exception as exc:  # noqa: BLE001 - any failure of one candidate must not stop the search
        # "error", not "failed": a crash (out of memory, a lost file) may not recur, so it is never stored
        return _failed(base, counts, f"{type(exc).__name__}: {exc}", t0, status="error")
    return ProxyMetrics(status="ok", reason="", robust_acc=statistics.fmean(robust),
                        robust_sd=statistics.pstdev(robust), clean_acc=statistics.fmean(clean),
                        inherited_blocks=counts["inherited"], fresh_blocks=counts["fresh"],
                        seconds=time.perf_counter() - t0, also={k: statistics.fmean(v) for k, v in also.items()},
                        **base)  # type: ignore[arg-type]


def _failed(base: dict, counts: dict[str, int], reason: str, t0: float, status: str = "failed") -> ProxyMetrics:
    return ProxyMetrics(status=status, reason=reason, robust_acc=0.0, robust_sd=0.0, clean_acc=0.0,
                        inherited_blocks=counts["inherited"], fresh_blocks=counts["fresh"],
                        seconds=time.perf_counter() - t0, **base)
