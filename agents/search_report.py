"""The search report: the chosen sub-network as a RobustResNet-schema YAML, its metrics, and a Markdown report with
plots (reward over iterations, every candidate's robust accuracy against MACs with the budget line, and the chosen
depth and width per stage next to the teacher's: the paper's topology figure)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: no display on cluster nodes or CI
import matplotlib.pyplot as plt  # noqa: E402

from rcnas.evaluation.tables import human  # noqa: E402
from rcnas.infra.configio import eps_label  # noqa: E402
from rcnas.infra.files import write_atomic  # noqa: E402
from rcnas.infra.provenance import environment
from rcnas.search.candidates import Candidate, best  # noqa: E402
from rcnas.space.schema import dump_subnet, from_arch  # noqa: E402
from rcnas.space.space import CompressionSpace  # noqa: E402
from rcnas.task import Task  # noqa: E402

DATASET_DIRS = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "tiny-imagenet": "TinyImageNet", "digits": "DIGITS"}


def subnet_path(out: Path, task: Task) -> Path:
    """Named like the original results: ``<DATASET>/RL_<budget>.yaml`` (budget as 5G, 712K...)."""
    name = task.config.dataset.name
    return out / DATASET_DIRS.get(name, name.upper()) / f"RL_{human(task.budget)}.yaml"


def progress_rows(trial_root: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for f in sorted(trial_root.rglob("progress.csv")):
        with open(f) as handle:
            rows += list(csv.DictReader(handle))
    return rows


def plot_rewards(stages: dict[str, Path], rows: list[Candidate], path: Path) -> None:
    """PPO runs: mean and best-so-far reward per iteration of each Tune stage. Baseline searchers (no stages):
    each evaluation's reward and the best so far, in evaluation order."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    offset = 0
    for name, root in stages.items():
        progress = progress_rows(root)
        ys = [float(r.get("env_runners/episode_return_mean") or "nan") for r in progress]
        best = [float(r.get("rcnas/best_reward") or "nan") for r in progress]
        xs = list(range(offset + 1, offset + len(ys) + 1))
        ax.plot(xs, ys, marker="o", label=f"{name}: mean episode reward")
        ax.plot(xs, best, linestyle="--", label=f"{name}: best so far")
        offset += len(ys)
    if not stages:
        rewards = [r.reward for r in rows]
        xs = list(range(1, len(rewards) + 1))
        ax.plot(xs, rewards, marker="o", linestyle="", label="evaluation reward")
        ax.plot(xs, np.maximum.accumulate(rewards), label="best so far")
    ax.set_xlabel("PPO iteration" if stages else "evaluation")
    ax.set_ylabel("reward")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_candidates(rows: list[Candidate], chosen: Candidate, path: Path, task: Task) -> None:
    attack = task.config.attack
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter([r.macs for r in rows], [r.robust_acc for r in rows], s=14, alpha=0.6, label="evaluated")
    ax.scatter([chosen.macs], [chosen.robust_acc], s=80, marker="*", color="red", label="chosen")
    ax.axvline(task.budget, color="gray", linestyle="--", label="budget")
    ax.set_xlabel("MACs")
    ax.set_ylabel(f"val robust acc ({attack.name}, eps {eps_label(attack.epsilon)})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_topology(chosen: Candidate, space: CompressionSpace, path: Path) -> None:
    t, arch = space.teacher, chosen.arch
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    stages = [f"stage {i + 1}" for i in range(len(t.arch.stages))]
    for ax, title, teacher_vals, vals in (
        (axes[0], "depth", t.arch.depths, arch.depths),
        (axes[1], "width (channels)", t.arch.channels, arch.channels),
    ):
        xs = range(len(stages))
        ax.bar([x - 0.2 for x in xs], teacher_vals, width=0.4, label=f"teacher {t.name}")
        ax.bar([x + 0.2 for x in xs], vals, width=0.4, label="chosen")
        ax.set_xticks(list(xs), stages)
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, task: Task, space: CompressionSpace, rows: list[Candidate],
                 stages: dict[str, Path], reranked: list[tuple[Candidate, Candidate]] | None = None
                 ) -> tuple[Candidate, Path]:
    """Write the chosen sub-network, its metrics, the plots and ``report.md``; returns the chosen candidate and the
    path of its YAML. With ``reranked`` ((search's candidate, its higher-fidelity evaluation) pairs, best first), the
    pick is the re-ranking's best, reported with its higher-fidelity figures."""
    chosen = reranked[0][1] if reranked else best(rows)[0]
    attack = task.config.attack
    yaml_path = subnet_path(out, task)
    metrics = {"reward": chosen.reward, "robust_acc": chosen.robust_acc, "macs": chosen.macs, "budget": chosen.budget,
               "teacher_robust_acc": chosen.teacher_robust_acc}
    dump_subnet(from_arch(chosen.arch, space.shape.num_classes, teacher=task.teacher.name, task=task.name,
                          metrics={**metrics, "split": "validation", "attack": attack.name,
                                   "epsilon": eps_label(attack.epsilon)}, provenance=environment()), yaml_path)
    write_atomic(out / "chosen_metrics.json", json.dumps({**chosen.metrics.to_dict(), **metrics,
                                                         "arch": chosen.arch.short()}, indent=2))
    plot_rewards(stages, rows, out / "reward.png")
    plot_candidates(rows, chosen, out / "candidates.png", task)
    plot_topology(chosen, space, out / "topology.png")
    top = best(rows, 10)
    lines = [
        f"# Search report: {task.name}", "",
        f"Teacher {task.teacher.name} ({human(space.teacher_macs)} MACs), budget {human(space.budget)} MACs; attack "
        f"{attack.name} eps {eps_label(attack.epsilon)}, {attack.steps} steps, on "
        f"{chosen.metrics.n_val} validation examples (the test split is never used by the search).", "",
        f"Chosen: `{chosen.arch.short()}`: reward {chosen.reward:.4f}, val robust acc "
        f"{100 * chosen.robust_acc:.2f}% (teacher {100 * chosen.teacher_robust_acc:.2f}%), "
        f"{human(chosen.macs)} MACs; written to `{yaml_path.relative_to(out)}`.", "",
        f"{len(rows)} sub-networks evaluated for this task.", "",
        "![reward](reward.png)", "", "![candidates](candidates.png)", "", "![topology](topology.png)", "",
        "| rank | sub-network | reward | val robust acc | MACs |", "|---|---|---|---|---|",
    ]
    lines += [f"| {i + 1} | `{r.arch.short()}` | {r.reward:.4f} | {100 * r.robust_acc:.2f} | "
              f"{human(r.macs)} |" for i, r in enumerate(top)]
    if reranked:
        first = reranked[0][1].metrics
        lines += ["", f"Re-ranked: the top {len(reranked)} by the search's reward, measured again with "
                  f"{first.fine_tune_epochs:g} fine-tuning epochs x {first.repeats} seeds (the pick is the best "
                  "here):", "", "| re-rank | sub-network | search reward | re-ranked reward | val robust acc |",
                  "|---|---|---|---|---|"]
        lines += [f"| {i + 1} | `{lo.arch.short()}` | {lo.reward:.4f} | {hi.reward:.4f} | "
                  f"{100 * hi.robust_acc:.2f} |" for i, (lo, hi) in enumerate(reranked)]
    write_atomic(out / "report.md", "\n".join(lines) + "\n")
    return chosen, yaml_path
