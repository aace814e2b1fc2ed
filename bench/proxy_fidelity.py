"""How well does the proxy reward rank sub-networks? Kendall tau / Spearman rho against the truth, spread between
sub-networks versus repeat noise, and seconds per evaluation, for several proxy fidelities, on one or more tasks.

Truth = each sub-network trained from scratch with the task's full recipe, then the task's attack on the **test**
split (used here only to judge the proxy; no search ever reads it), averaged over ``--truth-seeds`` training seeds:
one seed's own noise is about as large as the spread between sub-networks, so a single-seed truth caps tau. The
seed-vs-seed tau of the truth is printed as that ceiling. Truths are cached under ``<cache>/truth`` (they cost a
minute each), so a rerun with new settings only pays for the proxies. Proxy = the evaluator's own code
(`rcnas.proxy.candidate`) with the task's `proxy:` block replaced by each setting, two seeds each.

    python bench/proxy_fidelity.py [--tasks configs/tasks/digits-pgd-e20-t444-r35.yaml,...] [--subnets 40]
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
    "importance order, 0 epochs, BN recalibrated": {"inherit": True, "epochs": 0, "recalibrate_bn": 1024,
                                                     "channel_order": "importance"},
    "importance order, 1 epoch, BN recalibrated": {"inherit": True, "epochs": 1, "recalibrate_bn": 1024,
                                                   "channel_order": "importance"},
}


# half a CPU: the service's idle workers hold the other half of each core, and the truths must run side by side
@ray.remote(num_cpus=0.5)
def truth(tasks: list[Task], arch: ArchSpec, seed: int) -> list[float]:
    """Full adversarial training from scratch, then each task's attack on the test split. The trained weights are
    cached by what training depends on (tasks differing only in their attack share them), each accuracy by its
    attack too."""
    import json

    import torch

    from rcnas.data.registry import augmentation, load_splits
    from rcnas.evaluation.robustness import robust_accuracy
    from rcnas.infra.files import cache_root
    from rcnas.infra.provenance import content_key, derive_seed
    from rcnas.models.builder import build_model
    from rcnas.train import LoopOptions, adversarial_train

    cfg, shape = tasks[0].config, tasks[0].shape
    trained = content_key([cfg.dataset.model_dump(), cfg.training.model_dump(), arch.key(), seed])
    folder = cache_root() / "truth"
    paths = [folder / f"{content_key([trained, t.config.attack.model_dump()])}.json" for t in tasks]
    if all(p.is_file() for p in paths):
        return [float(json.loads(p.read_text())["robust_acc"]) for p in paths]
    torch.set_num_threads(1)
    data = load_splits(cfg.dataset)
    model = build_model(arch, shape)
    weights = folder / f"{trained}.pt"
    if weights.is_file():
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    else:
        s = derive_seed("truth", arch.key(), seed)
        torch.manual_seed(s)  # initialisation, and below the batch order and attack noise: all of them vary by seed
        adversarial_train(model, data, cfg.training.model_copy(update={"seed": s}),
                          LoopOptions(num_classes=shape.num_classes, **augmentation(cfg.dataset)))
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), weights)
    model.eval()
    out = []
    for t, path in zip(tasks, paths):
        report = robust_accuracy(model, data.test, {"task": t.config.attack}, num_classes=shape.num_classes)
        path.write_text(json.dumps({"robust_acc": report.attacks[0].accuracy, "arch": arch.short(), "seed": seed,
                                    "attack": t.config.attack.name}))
        out.append(report.attacks[0].accuracy)
    return out


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
    p.add_argument("--tasks", default="configs/tasks/digits-pgd-e20-t444-r35.yaml,"
                                      "configs/tasks/digits-cw-e20-t444-r50.yaml",
                   help="comma-separated tasks sharing teacher, data and recipe (they differ in attack or budget); "
                        "the sub-networks are drawn within the first one's budget")
    p.add_argument("--subnets", type=int, default=40)
    p.add_argument("--truth-seeds", type=int, default=3)
    p.add_argument("--settings", default="", help="';'-separated setting names (default: all): " + "; ".join(SETTINGS))
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    names = [n.strip() for n in args.settings.split(";") if n.strip()] or list(SETTINGS)
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {unknown}; known: {'; '.join(SETTINGS)}")
    tasks = [load_task(t.strip()) for t in args.tasks.split(",") if t.strip()]
    first = tasks[0].config
    if any(t.config.dataset != first.dataset or t.config.training != first.training
           or t.config.teacher != first.teacher for t in tasks):
        p.error("--tasks must share dataset, teacher and training recipe (their truths share the trained networks)")
    archs = pick_subnets(tasks[0].space, args.subnets)
    ensure_ray(num_cpus=args.workers)
    with evaluation_service(Path(tempfile.mkdtemp(prefix="rcnas-fidelity-")), n_workers=args.workers,
                            name="bench-fidelity", cpus_per_worker=0.5) as client:
        svc = client.handle
        t0 = time.perf_counter()
        refs = [truth.remote(tasks, a, s) for s in range(args.truth_seeds) for a in archs]
        # (seed, subnet, task) -> (task, seed, subnet)
        runs = np.asarray(ray.get(refs)).reshape(args.truth_seeds, len(archs), len(tasks)).transpose(2, 0, 1)
        t_truth = time.perf_counter() - t0
        rows: dict[str, list[tuple]] = {t.name: [] for t in tasks}
        for name in names:
            update = SETTINGS[name]
            for task, task_runs in zip(tasks, runs):
                true = task_runs.mean(0)
                variant = task.replace(proxy=task.config.proxy.model_copy(update=update))
                ray.get(svc.teacher_stats.remote(variant))  # the (super)net once, before anything is timed
                t0 = time.perf_counter()
                out = ray.get([svc.evaluate.remote(variant, a, seed) for seed in (0, 1) for a in archs])
                secs = (time.perf_counter() - t0) * args.workers / len(out)
                s0 = np.asarray([o.metrics.robust_acc for o in out[: len(archs)]])
                s1 = np.asarray([o.metrics.robust_acc for o in out[len(archs):]])
                for label, score, cost in ((name, s0, secs), (f"{name}, mean of 2 seeds", (s0 + s1) / 2, 2 * secs)):
                    noise = 100 * float(np.abs(s0 - s1).mean())
                    rows[task.name].append((label, kendalltau(score, true)[0], spearmanr(score, true)[0],
                                            kendalltau(score, task_runs[0])[0], 100 * score.std(), noise, cost))
            print(f"done: {name}", flush=True)
    n_test = len(load_splits(first.dataset).test)
    print(f"\n{len(archs)} sub-networks within {first.budget.ratio:.0%} of {tasks[0].teacher.name}'s MACs, truth = "
          f"mean of {args.truth_seeds} seeds of {first.training.epochs:g}-epoch {first.training.loss} from scratch, "
          f"each task's attack on the {n_test} test images ({t_truth:.0f} s wall for the truths not cached)")
    header = ("| proxy setting | Kendall tau | Spearman rho | tau vs truth seed 0 alone | spread (sd, pts) "
              "| repeat noise (mean abs diff, pts) | s / evaluation |\n|---|---|---|---|---|---|---|")
    for task, task_runs in zip(tasks, runs):
        true, a = task_runs.mean(0), task.config.attack
        noise = 100 * float(np.abs(task_runs - true).mean()) if args.truth_seeds > 1 else float("nan")
        print(f"\n{task.name} ({a.name}-{a.steps} eps {eps_label(a.epsilon)}): spread sd {100 * true.std():.1f} pts; "
              f"one seed's mean abs deviation from the mean {noise:.1f} pts; seed-vs-seed Kendall tau "
              f"{truth_ceiling(task_runs):.2f}\n{header}")
        for label, tau, rho, tau0, spread, noise, cost in rows[task.name]:
            noise_txt = "-" if "mean of" in label else f"{noise:.1f}"
            print(f"| {label} | {tau:.2f} | {rho:.2f} | {tau0:.2f} | {spread:.1f} | {noise_txt} | {cost:.1f} |")
    print(f"\nmean over the {len(tasks)} tasks\n| proxy setting | Kendall tau | Spearman rho | s / evaluation |\n"
          "|---|---|---|---|")
    for i, label in enumerate(r[0] for r in rows[tasks[0].name]):
        per = [rows[t.name][i] for t in tasks]
        print(f"| {label} | {np.mean([r[1] for r in per]):.2f} | {np.mean([r[2] for r in per]):.2f} "
              f"| {np.mean([r[6] for r in per]):.1f} |")
    print(f"\nsub-networks: {', '.join(a.short() for a in archs)}")
    for task, task_runs in zip(tasks, runs):
        for s, run in enumerate(task_runs):
            print(f"{task.name} truth seed {s}: {', '.join(f'{t:.3f}' for t in run)}")
    print(f"(median s/evaluation over settings: {statistics.median(r[6] for r in rows[tasks[0].name]):.1f})")


if __name__ == "__main__":
    run_main(main)
