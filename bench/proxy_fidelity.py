"""How well does the proxy reward rank sub-networks? Kendall tau / Spearman rho against the truth, spread between
sub-networks versus repeat noise, and seconds per evaluation, for several proxy fidelities.

Truth = each sub-network trained from scratch with the task's full recipe, then the task's attack on the **test**
split (used here only to judge the proxy; no search ever reads it), averaged over ``--truth-seeds`` training seeds:
one seed's own noise is about as large as the spread between sub-networks, so a single-seed truth caps tau. The
seed-vs-seed tau of the truth is printed as that ceiling. Truths are cached under ``<cache>/truth`` (they cost a
minute each), so a rerun with new settings only pays for the proxies. Proxy = the evaluator's own code
(`rcnas.proxy.candidate`) with the task's `proxy:` block replaced by each setting, two seeds each.

    python bench/proxy_fidelity.py [--task configs/tasks/digits-pgd-e20-t444-r35.yaml] [--subnets 20]
        [--truth-seeds 3] [--settings "inherit, 2 epochs;sandwich, 2 epochs"] [--workers 2]
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

from rcnas.data.registry import load_splits
from rcnas.distributed.resources import ensure_ray
from rcnas.distributed.service import evaluation_service
from rcnas.infra.cli import run_main
from rcnas.infra.configio import eps_label
from rcnas.space.arch import ArchSpec
from rcnas.space.space import CompressionSpace
from rcnas.task import Task, load_task

SETTINGS: dict[str, dict[str, Any]] = {
    "inherit, 0 epochs": {"inherit": True, "epochs": 0},
    "inherit, 1 epoch": {"inherit": True, "epochs": 1},
    "inherit, 2 epochs": {"inherit": True, "epochs": 2},
    "inherit, 4 epochs": {"inherit": True, "epochs": 4},
    "inherit, 2 epochs, half data": {"inherit": True, "epochs": 2, "data_fraction": 0.5},
    "inherit, 2 epochs, val 100": {"inherit": True, "epochs": 2, "val_examples": 100},
    "scratch, 2 epochs": {"inherit": False, "epochs": 2},
    "inherit, 0 epochs, BN recalibrated": {"inherit": True, "epochs": 0, "recalibrate_bn": 1024},
    "inherit, 0 epochs, BN recalibrated on 256": {"inherit": True, "epochs": 0, "recalibrate_bn": 256},
    "inherit, 1 epoch, BN recalibrated": {"inherit": True, "epochs": 1, "recalibrate_bn": 1024},
    "sandwich, 0 epochs, BN recalibrated": {"supernet": "sandwich", "epochs": 0, "recalibrate_bn": 1024},
    "sandwich, 1 epoch": {"supernet": "sandwich", "epochs": 1},
    "sandwich, 2 epochs": {"supernet": "sandwich", "epochs": 2},
}


# half a CPU: the service's idle workers hold the other half of each core, and the truths must run side by side
@ray.remote(num_cpus=0.5)
def truth(task: Task, arch: ArchSpec, seed: int) -> float:
    """Full adversarial training from scratch, then the task's attack on the test split; cached by content."""
    import json

    import torch

    from rcnas.data.registry import augmentation, load_splits
    from rcnas.evaluation.robustness import robust_accuracy
    from rcnas.infra.files import cache_root
    from rcnas.infra.provenance import content_key, derive_seed
    from rcnas.models.builder import build_model
    from rcnas.train import LoopOptions, adversarial_train

    cfg, shape = task.config, task.shape
    key = content_key([cfg.dataset.model_dump(), cfg.training.model_dump(), cfg.attack.model_dump(), arch.key(),
                       seed])
    path = cache_root() / "truth" / f"{key}.json"
    if path.is_file():
        return float(json.loads(path.read_text())["robust_acc"])
    torch.set_num_threads(1)
    data = load_splits(cfg.dataset)
    s = derive_seed("truth", arch.key(), seed)
    torch.manual_seed(s)  # initialisation, and below the batch order and attack noise: all of them vary by seed
    model = build_model(arch, shape)
    adversarial_train(model, data, cfg.training.model_copy(update={"seed": s}),
                      LoopOptions(num_classes=shape.num_classes,
                                  **augmentation(cfg.dataset)))
    report = robust_accuracy(model, data.test, {"task": cfg.attack}, num_classes=shape.num_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"robust_acc": report.attacks[0].accuracy, "arch": arch.short(), "seed": seed}))
    return report.attacks[0].accuracy


def pick_subnets(space: CompressionSpace, n: int, seed: int = 0) -> list[ArchSpec]:
    """``n`` distinct sub-networks spread evenly over the MACs range the budget allows."""
    rng = np.random.default_rng(seed)
    pool = {space.arch(space.sample(rng)) for _ in range(40 * n)}
    ranked = sorted(pool, key=lambda a: space.cost(a).macs)
    idx = np.linspace(0, len(ranked) - 1, n).round().astype(int)
    return [ranked[i] for i in dict.fromkeys(idx)]


def truth_ceiling(runs: np.ndarray) -> float:
    """Mean Kendall tau of one truth seed against another: how well any single measurement can rank."""
    pairs = [(i, j) for i in range(len(runs)) for j in range(i + 1, len(runs))]
    return float(np.mean([kendalltau(runs[i], runs[j])[0] for i, j in pairs])) if pairs else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="configs/tasks/digits-pgd-e20-t444-r35.yaml")
    p.add_argument("--subnets", type=int, default=20)
    p.add_argument("--truth-seeds", type=int, default=3)
    p.add_argument("--settings", default="", help="';'-separated setting names (default: all): " + "; ".join(SETTINGS))
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    names = [n.strip() for n in args.settings.split(";") if n.strip()] or list(SETTINGS)
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {unknown}; known: {'; '.join(SETTINGS)}")
    task = load_task(args.task)
    archs = pick_subnets(task.space, args.subnets)
    ensure_ray(num_cpus=args.workers)
    with evaluation_service(Path(tempfile.mkdtemp(prefix="rcnas-fidelity-")), n_workers=args.workers,
                            name="bench-fidelity", cpus_per_worker=0.5) as client:
        svc = client.handle
        t0 = time.perf_counter()
        refs = [truth.remote(task, a, s) for s in range(args.truth_seeds) for a in archs]
        runs = np.asarray(ray.get(refs)).reshape(args.truth_seeds, len(archs))
        t_truth = time.perf_counter() - t0
        true = runs.mean(0)
        truth_noise = 100 * float(np.abs(runs - true).mean()) if args.truth_seeds > 1 else float("nan")
        rows = []
        for name in names:
            update = SETTINGS[name]
            variant = task.replace(proxy=task.config.proxy.model_copy(update=update))
            ray.get(svc.teacher_stats.remote(variant))  # the (super)net once, before anything is timed
            t0 = time.perf_counter()
            out = ray.get([svc.evaluate.remote(variant, a, seed) for seed in (0, 1) for a in archs])
            secs = (time.perf_counter() - t0) * args.workers / len(out)
            s0 = np.asarray([o.metrics.robust_acc for o in out[: len(archs)]])
            s1 = np.asarray([o.metrics.robust_acc for o in out[len(archs):]])
            for label, score, cost in ((name, s0, secs), (f"{name}, mean of 2 seeds", (s0 + s1) / 2, 2 * secs)):
                noise = 100 * float(np.abs(s0 - s1).mean())
                rows.append((label, kendalltau(score, true)[0], spearmanr(score, true)[0],
                             kendalltau(score, runs[0])[0], 100 * score.std(), noise, cost))
            print(f"done: {name}", flush=True)
    cfg = task.config
    print(f"\n{task.name}: {len(archs)} sub-networks, truth = mean of {args.truth_seeds} seeds of "
          f"{cfg.training.epochs:g}-epoch {cfg.training.loss} from scratch + {cfg.attack.name}-{cfg.attack.steps} "
          f"eps {eps_label(cfg.attack.epsilon)} on the {len(load_splits(cfg.dataset).test)} test images "
          f"(spread sd {100 * true.std():.1f} pts; one seed's mean abs deviation from the mean {truth_noise:.1f} pts; "
          f"seed-vs-seed Kendall tau {truth_ceiling(runs):.2f}; {t_truth:.0f} s wall for the truths not cached)")
    print("| proxy setting | Kendall tau | Spearman rho | tau vs truth seed 0 alone | spread (sd, pts) "
          "| repeat noise (mean abs diff, pts) | s / evaluation |")
    print("|---|---|---|---|---|---|---|")
    for label, tau, rho, tau0, spread, noise, cost in rows:
        noise_txt = "-" if "mean of" in label else f"{noise:.1f}"
        print(f"| {label} | {tau:.2f} | {rho:.2f} | {tau0:.2f} | {spread:.1f} | {noise_txt} | {cost:.1f} |")
    print(f"\nsub-networks: {', '.join(a.short() for a in archs)}")
    for s, run in enumerate(runs):
        print(f"truth seed {s}: {', '.join(f'{t:.3f}' for t in run)}")
    print(f"(median s/evaluation over settings: {statistics.median(r[6] for r in rows):.1f})")


if __name__ == "__main__":
    run_main(main)
