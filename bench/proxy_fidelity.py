"""How well does the proxy reward rank sub-networks? Kendall tau / Spearman rho against the truth, spread between
sub-networks versus repeat noise, and seconds per evaluation, for several proxy fidelities.

Truth = each sub-network trained from scratch with the task's full recipe, then the task's attack on the **test**
split (used here only to judge the proxy; no search ever reads it). Proxy = the evaluator's own code
(`rcnas.proxy.evaluate`) with the task's `proxy:` block replaced by each setting, two seeds each.

    python bench/proxy_fidelity.py [--task configs/tasks/digits-pgd-e20-t444-r35.yaml] [--subnets 20] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
from scipy.stats import kendalltau, spearmanr

from rcnas.config import TaskConfig, load_task
from rcnas.distributed.resources import ensure_ray
from rcnas.distributed.service import start_service
from rcnas.space.arch import ArchSpec
from rcnas.space.space import CompressionSpace

SETTINGS: dict[str, dict[str, Any]] = {
    "inherit, 0 epochs": {"inherit": True, "epochs": 0},
    "inherit, 1 epoch": {"inherit": True, "epochs": 1},
    "inherit, 2 epochs": {"inherit": True, "epochs": 2},
    "inherit, 4 epochs": {"inherit": True, "epochs": 4},
    "inherit, 2 epochs, half data": {"inherit": True, "epochs": 2, "data_fraction": 0.5},
    "inherit, 2 epochs, val 100": {"inherit": True, "epochs": 2, "val_examples": 100},
    "scratch, 2 epochs": {"inherit": False, "epochs": 2},
}


@ray.remote(num_cpus=1)
def truth(task: TaskConfig, arch: ArchSpec) -> float:
    """Full adversarial training from scratch, then the task's attack on the test split."""
    import torch

    from rcnas.data.registry import DATASETS, load_splits
    from rcnas.evaluation import robust_accuracy
    from rcnas.models.builder import build_model
    from rcnas.provenance import derive_seed
    from rcnas.train import adversarial_train

    torch.set_num_threads(1)
    info = DATASETS.get(task.dataset.name)
    data = load_splits(task.dataset)
    torch.manual_seed(derive_seed("truth", arch.key()))
    model = build_model(arch, info.shape)
    adversarial_train(model, data, task.training, num_classes=info.shape.num_classes,
                      crop_padding=info.crop_padding if task.dataset.augment else 0)
    report = robust_accuracy(model, data.test, {"task": task.attack}, num_classes=info.shape.num_classes)
    return report.attacks[0].accuracy


def pick_subnets(space: CompressionSpace, n: int, seed: int = 0) -> list[ArchSpec]:
    """``n`` distinct sub-networks spread evenly over the MACs range the budget allows."""
    rng = np.random.default_rng(seed)
    pool = {space.arch(space.sample(rng)) for _ in range(40 * n)}
    ranked = sorted(pool, key=lambda a: space.cost(a).macs)
    idx = np.linspace(0, len(ranked) - 1, n).round().astype(int)
    return [ranked[i] for i in dict.fromkeys(idx)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="configs/tasks/digits-pgd-e20-t444-r35.yaml")
    p.add_argument("--subnets", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    task = load_task(args.task)
    archs = pick_subnets(CompressionSpace.for_task(task), args.subnets)
    ensure_ray(num_cpus=args.workers)
    svc = start_service(Path(tempfile.mkdtemp(prefix="rcnas-fidelity-")), n_workers=args.workers,
                        name="bench-fidelity", cpus_per_worker=0.5)
    ray.get(svc.teacher_stats.remote(task))  # the teacher once, before anything is timed
    t0 = time.perf_counter()
    true = np.asarray(ray.get([truth.remote(task, a) for a in archs]))
    t_truth = (time.perf_counter() - t0) * args.workers / len(archs)
    rows = []
    for name, update in SETTINGS.items():
        variant = task.model_copy(update={"proxy": task.proxy.model_copy(update=update)})
        t0 = time.perf_counter()
        out = ray.get([svc.evaluate.remote(variant, a, seed) for seed in (0, 1) for a in archs])
        secs = (time.perf_counter() - t0) * args.workers / len(out)
        s0 = np.asarray([o.metrics.robust_acc for o in out[: len(archs)]])
        s1 = np.asarray([o.metrics.robust_acc for o in out[len(archs):]])
        for label, score, cost in ((name, s0, secs), (f"{name}, mean of 2 seeds", (s0 + s1) / 2, 2 * secs)):
            rows.append((label, kendalltau(score, true)[0], spearmanr(score, true)[0], 100 * score.std(),
                         100 * float(np.abs(s0 - s1).mean()), cost))
        print(f"done: {name}", flush=True)
    print(f"\n{task.name}: {len(archs)} sub-networks, truth = {task.training.epochs:g}-epoch {task.training.loss} "
          f"from scratch + {task.attack.name}-{task.attack.steps} on {359 if task.dataset.name == 'digits' else '?'} "
          f"test images (spread {100 * true.std():.1f} pts, {t_truth:.0f} s each)")
    print("| proxy setting | Kendall tau | Spearman rho | spread (sd, pts) | repeat noise (mean abs diff, pts) "
          "| s / evaluation |")
    print("|---|---|---|---|---|---|")
    for label, tau, rho, spread, noise, cost in rows:
        noise_txt = "-" if "mean of" in label else f"{noise:.1f}"
        print(f"| {label} | {tau:.2f} | {rho:.2f} | {spread:.1f} | {noise_txt} | {cost:.1f} |")
    print(f"\nsub-networks: {', '.join(a.short() for a in archs)}")
    print(f"truth: {', '.join(f'{t:.3f}' for t in true)}")
    print(f"(median s/evaluation over settings: {statistics.median(r[5] for r in rows):.1f})")


if __name__ == "__main__":
    main()
