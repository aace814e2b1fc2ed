"""Search quality on the tabular benchmark: every searcher x many seeds x held-out tasks, answered from a table.

For each held-out task x seed x searcher: the **regret** (the best reward in the table within the task's budget minus
the best reward among the searcher's first N distinct evaluations) and the **rank** of that pick among all the
task's feasible sub-networks (1 = the table's best), at N = 10 / 25 / 50 / 100; mean with a 95% confidence interval
(Student t over every task x seed run). A plot of mean regret against evaluations goes to ``--out`` (PNG) and a text
chart into the report.

The searchers run exactly as in a live search (the same env, RLlib PPO, baselines and reward); only the evaluator
differs: :class:`rcnas.search.table.TableEvaluator`, which answers from the table in microseconds and refuses any
sub-network outside it. ``rl`` is meta-trained once on the experiment's meta tasks (also answered from the table), then
fine-tuned per seed; ``rl-repeats`` and ``ppo-scratch-repeats`` are the same agents with ``avoid_repeats`` off (the
ablation of the repeat mask).

    python bench/table_quality.py [--table bench/tables/digits-e20-t444.csv.gz] [--seeds 30] [--n 10,25,50,100]
        [--held-out digits-cw-e20-t444-r30,digits-cw-e20-t444-r50,digits-fgsm-e20-t444-r30,digits-pgd-e20-t444-r45]
        [--searchers rl,ppo-scratch,rl-repeats,random,evolution,compound,uniform,prune] [--out runs/bench/table-quality]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import ray

from agents.config import load_experiment, task_path, with_changes
from agents.quality_runs import TableRuns, fine_tune, meta_train
from rcnas.distributed.resources import ensure_ray
from rcnas.infra.cli import run_main
from rcnas.infra.errors import ConfigError
from rcnas.search.quality import best_so_far, ci95, held, scored, text_chart
from rcnas.search.searchers import DETERMINISTIC, run_searcher
from rcnas.search.table import Scorer, TableEvaluator, open_table
from rcnas.task import Task, load_task, shared_grid

PPO_VARIANTS = {"rl": (True, True), "ppo-scratch": (False, True), "rl-repeats": (True, False),
                "ppo-scratch-repeats": (False, False)}
"""searcher -> (starts from the meta-trained policy, avoid_repeats)"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", default="bench/tables/digits-e20-t444.csv.gz")
    p.add_argument("--experiment", default="configs/experiments/digits.yaml")
    p.add_argument("--held-out", default="digits-cw-e20-t444-r30,digits-cw-e20-t444-r50,digits-fgsm-e20-t444-r30,"
                                         "digits-pgd-e20-t444-r45")
    p.add_argument("--searchers", default="rl,ppo-scratch,rl-repeats,random,evolution,compound,uniform,prune")
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--n", default="10,25,50,100", help="evaluation budgets; every search runs to the largest")
    p.add_argument("--meta-iterations", type=int, default=30, help="PPO iterations of meta-training (M episodes each)")
    p.add_argument("--out", default="runs/bench/table-quality")
    p.add_argument("--jobs", type=int, default=None, help="searches at once (default: one per CPU)")
    return p.parse_args(argv)


def one_search(s: str, task_file: str, seed: int, exp: Any, grid: tuple[int, int], table: str, n: int,
               meta: str | None) -> tuple[list[float], float]:
    """One search of at most ``n`` distinct evaluations: the reward of each distinct sub-network in the order asked
    for, and the seconds it took."""
    task = load_task(task_file)
    t0 = time.perf_counter()
    client = f"{s}/{task.name}/seed{seed}"
    runs = TableRuns(open_table(table, task), grid)
    if s in PPO_VARIANTS:
        fine_tune(runs, with_changes(exp, s, seed=seed, avoid_repeats=PPO_VARIANTS[s][1]), task_file, client,
                  n, meta)
    else:
        run_searcher(s, task, runs.evaluator(client), n, seed)
    found = scored(runs.requests(client), task, runs.evaluator(client).teacher_stats(task))
    return [c.reward for c in found], time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    exp, metas, _ = load_experiment(args.experiment)
    held_out = [str(Path(task_path(t)).resolve()) for t in args.held_out.split(",")]
    tasks = [load_task(t) for t in held_out]
    table = open_table(args.table, tasks[0])
    for t in [*tasks, *(load_task(m) for m in metas)]:
        table.column_for(t)  # every task, meta ones included, must be answerable: refused before any work
    if overlap := {t.name for t in tasks} & {load_task(m).name for m in metas}:
        raise ConfigError(f"--held-out {sorted(overlap)} are meta-training tasks of {args.experiment}")
    table_file = str(Path(args.table).resolve())
    # one process: the env lives in the search's own process (env_runners 0), so the table evaluator handed to it is
    # the one whose requests are read (agents/quality_runs.py)
    exp = with_changes(exp, "--meta-iterations", meta_iterations=args.meta_iterations, env_runners=0)
    budgets = sorted(int(x) for x in args.n.split(","))
    searchers = args.searchers.split(",")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    g = shared_grid([*tasks, *(load_task(m) for m in metas)])
    grid = (g.max_depth, g.max_width)
    ensure_ray(num_cpus=args.jobs, verbose=False)  # library noise silenced in every worker
    meta = None
    if any(PPO_VARIANTS.get(s, (False,))[0] for s in searchers):
        meta = meta_train(TableRuns(table, grid), exp, metas, out, "meta", "meta")
        print(f"meta-training: {meta['seconds']:.0f} s, {meta['iterations']} iterations, {meta['episodes']} "
              "episodes (answered from the table)", flush=True)
    curves: dict[str, list[list[float]]] = {s: [] for s in searchers}
    ranks: dict[tuple[str, int], list[int]] = {}
    seconds: dict[str, float] = {s: 0.0 for s in searchers}
    runs = [(s, task_file, seed) for task_file in held_out for s in searchers
            for seed in range(1 if s in DETERMINISTIC else args.seeds)]
    # one Ray task per search, as many at once as there are CPUs (each is one process: PPO's env, learner and the
    # table all live in it)
    job = ray.remote(num_cpus=1)(one_search)
    refs = [job.remote(s, f, seed, exp, grid, table_file, budgets[-1],
                       meta["checkpoint"] if meta and PPO_VARIANTS.get(s, (False,))[0] else None)
            for s, f, seed in runs]
    results = dict(zip(runs, ray.get(refs)))
    for task_file, task in zip(held_out, tasks):
        scorer = Scorer(task, TableEvaluator(table))
        for s in searchers:
            for seed in range(1 if s in DETERMINISTIC else args.seeds):
                rewards, spent = results[s, task_file, seed]
                seconds[s] += spent
                bsf = best_so_far(rewards[: budgets[-1]])
                regret = held([scorer.all[0] - b for b in bsf], budgets[-1])  # stopped early: keeps its last pick
                # a deterministic rule gives the same run for every seed: it counts once per seed in the means
                for _ in range(args.seeds if s in DETERMINISTIC else 1):
                    curves[s].append(regret)
                    for n in budgets:
                        ranks.setdefault((s, n), []).append(scorer.rank(bsf[min(n, len(bsf)) - 1]))
            print(f"{task.name} {s}: mean regret at N={budgets[-1]} "
                  f"{statistics.fmean(c[-1] for c in curves[s][-args.seeds:]):.4f}", flush=True)
    report = render(args, exp, tasks, metas, searchers, budgets, curves, ranks, seconds, meta,
                    time.perf_counter() - t_start, table.header)
    (out / "results.json").write_text(json.dumps({"curves": curves, "ranks": {f"{s}@{n}": r for (s, n), r in
                                                                               ranks.items()}}, indent=0))
    plot(curves, out / "regret.png", [t.name for t in tasks], args.seeds)
    (out / "report.md").write_text(report + "\n")
    print("\n" + report)
    return 0


def render(args: argparse.Namespace, exp: Any, tasks: list[Task], metas: list[str], searchers: list[str],
           budgets: list[int], curves: dict[str, list[list[float]]], ranks: dict[tuple[str, int], list[int]],
           seconds: dict[str, float], meta: dict[str, Any] | None, total: float, header: dict[str, Any]) -> str:
    lines = [f"{len(tasks)} held-out tasks ({', '.join(t.name for t in tasks)}) x {args.seeds} seeds; table "
             f"{args.table} ({header['rows']} sub-networks of {header['teacher']}, code {header['code_version']}); "
             f"whole run {total / 60:.1f} min"
             + (f", meta-training {meta['seconds']:.0f} s ({meta['iterations']} iterations)" if meta else "")
             + f". PPO: M={exp.M}, lr {exp.ppo.lr:g}, {exp.ppo.num_epochs} epochs, entropy {exp.ppo.entropy_coeff:g}.",
             "", "| searcher | " + " | ".join(f"regret N={n}" for n in budgets) + " | "
             + " | ".join(f"rank N={n}" for n in budgets) + " | s/search |",
             "|" + "---|" * (2 + 2 * len(budgets))]
    for s in searchers:
        reg = [ci95([c[n - 1] for c in curves[s]]) for n in budgets]
        rk = [ci95([float(r) for r in ranks[s, n]]) for n in budgets]
        runs = 1 if s in DETERMINISTIC else args.seeds
        lines.append(f"| {s} | " + " | ".join(f"{m:.4f} ± {h:.4f}" for m, h in reg) + " | "
                     + " | ".join(f"{m:.0f} ± {h:.0f}" for m, h in rk)
                     + f" | {seconds[s] / (runs * len(tasks)):.2f} |")
    lines += ["", "_regret = best reward in the table (within the task's budget) minus the best reward among the first "
              "N distinct evaluations; rank of that pick among the task's feasible sub-networks (1 = best); mean ± "
              "95% CI half-width over tasks x seeds; rewards are robust accuracy relative to the teacher's, with the "
              "MACs bonus (docs/method.md); the proxy's validation split only_", "",
              "Mean regret against distinct evaluations (all tasks and seeds):", "", "```",
              text_chart({s: [statistics.fmean(c[i] for c in curves[s]) for i in range(budgets[-1])]
                          for s in searchers}), "```"]
    return "\n".join(lines)


def plot(curves: dict[str, list[list[float]]], path: Path, task_names: list[str], seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s, runs in curves.items():
        n = len(runs[0])
        stats = [ci95([r[i] for r in runs]) for i in range(n)]
        xs = range(1, n + 1)
        ax.plot(xs, [m for m, _ in stats], label=s)
        ax.fill_between(xs, [m - h for m, h in stats], [m + h for m, h in stats], alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("distinct evaluations")
    ax.set_ylabel("regret (reward)")
    ax.set_title(f"tabular benchmark: {len(task_names)} held-out tasks x {seeds} seeds (95% CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run_main(main)
