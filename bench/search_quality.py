"""Is the RL search worth it? Every searcher on held-out digits tasks, several seeds, the same service and store.

For each held-out task x seed x searcher: the validation robust accuracy (and reward) of the sub-network the
searcher would pick (highest reward) among its first N = 10 / 25 / 50 *distinct* evaluations; mean +- sd over seeds,
and the mean over tasks. Then the N = 25 picks trained from scratch with the task's recipe and attacked on the test
split with the full suite (evaluate.py's jobs). Meta-training (the `rl` searcher's one-off cost) is reported apart.

Everything goes through one evaluation service whose store lives in ``--out``: a sub-network's proxy value is the
same whoever asks (seeds derive from task and sub-network), each searcher replays its own request log, and a rerun
on the same folder reuses every evaluation, the meta checkpoint and finished final evaluations.

    python bench/search_quality.py [--out runs/bench/search-quality] [--seeds 3] [--n 10,25,50]
        [--held-out digits-cw-e20-t444-r30,digits-pgd-e10-t444-r25] [--searchers rl,ppo-scratch,random,...]
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from agents.config import load_experiment, task_path, with_changes
from agents.quality_runs import LiveRuns, fine_tune, meta_train
from rcnas.distributed.resources import ensure_ray
from rcnas.distributed.service import RayEvaluator, evaluation_service
from rcnas.evaluation.command import run_jobs
from rcnas.evaluation.final import EvalJob, FinalResult
from rcnas.infra.cli import run_main
from rcnas.infra.configio import eps_label
from rcnas.infra.errors import ConfigError
from rcnas.infra.provenance import content_key
from rcnas.search.candidates import Candidate
from rcnas.search.quality import best_so_far, best_within, held, mean_sd, scored, text_chart
from rcnas.search.searchers import DETERMINISTIC, PPO_SEARCHERS, run_searcher, searcher_names
from rcnas.task import Task, load_task, shared_grid

SERVICE = "bench-search-quality"
Picks = dict[tuple[str, str, int, int], tuple[Candidate, int]]
"""(searcher, task name, seed, N) -> the pick among the first N distinct evaluations, and how many were made"""


def agent_tag(exp: Any) -> str:
    """The PPO searchers' settings in a short hash: runs with other settings are other clients of the store."""
    return content_key([exp.M, exp.meta_iterations, exp.ppo.model_dump(), exp.model.model_dump()])[:6]


def search(name: str, exp: Any, target: str, seed: int, n: int, runs: LiveRuns, meta_checkpoint: str | None,
           finished: Path) -> str:
    """One search; its request log in the store is its result. Skipped when a previous run finished it (a PPO
    search that converged before ``n`` distinct evaluations is finished too: rerunning it would change it)."""
    task = load_task(target)
    client = f"{name}{'-' + agent_tag(exp) if name in PPO_SEARCHERS else ''}/{task.name}/seed{seed}/n{n}"
    if client in _finished(finished):
        return client
    if name in PPO_SEARCHERS:
        fine_tune(runs, with_changes(exp, "seed", seed=seed), target, client, n,
                  meta_checkpoint if name == "rl" else None)
    else:
        run_searcher(name, task, RayEvaluator(SERVICE, client=client), n, seed)
    with _LOCK:
        finished.write_text("\n".join(sorted(_finished(finished) | {client})) + "\n")
    return client


_LOCK = threading.Lock()  # baselines finish on several threads


def _finished(path: Path) -> set[str]:
    return set(path.read_text().split()) if path.is_file() else set()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="configs/experiments/digits.yaml")
    p.add_argument("--held-out", default="digits-cw-e20-t444-r30,digits-pgd-e10-t444-r25",
                   help="comma-separated task names or YAML paths, none of them in the experiment's meta set")
    p.add_argument("--searchers", default=",".join(searcher_names()))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--n", default="10,25,50", help="evaluation budgets; the search runs to the largest")
    p.add_argument("--meta-iterations", type=int, default=30,
                   help="PPO iterations of M episodes for meta-training (reported apart from N; the experiment's own "
                        "count is for the quick pipeline)")
    p.add_argument("--entropy-coeff", type=float, default=None, help="PPO entropy bonus (default: the experiment's)")
    p.add_argument("--final-n", type=int, default=25, help="whose picks are trained from scratch (0: none)")
    p.add_argument("--out", default="runs/bench/search-quality")
    p.add_argument("--workers", type=int, default=None, help="evaluation workers (default: one per CPU or GPU)")
    return p.parse_args()


def run_searches(exp: Any, searchers: list[str], held_out: list[str], seeds: int, n: int, runs: LiveRuns,
                 meta: dict[str, Any] | None, out: Path) -> dict[tuple[str, str, int], str]:
    """Every (searcher, held-out task, seed) search, skipping finished ones; returns each one's store client."""
    # PPO runs one at a time (each keeps every evaluation worker busy through its env runners); the sequential
    # baselines run side by side, one per evaluation worker, so that they use the workers too
    clients: dict[tuple[str, str, int], str] = {}
    finished = out / "finished-searches.txt"
    jobs = [(s, t, seed) for t in held_out for seed in range(seeds) for s in searchers
            if not (s in DETERMINISTIC and seed > 0)]  # deterministic rules: one run each
    for key in [j for j in jobs if j[0] in PPO_SEARCHERS]:
        clients[key] = search(key[0], exp, key[1], key[2], n, runs, meta and meta["checkpoint"], finished)
        print(f"done: {clients[key]}", flush=True)
    n_workers = RayEvaluator(SERVICE).stats()["workers"]
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        futures = {key: pool.submit(search, key[0], exp, key[1], key[2], n, runs, None, finished)
                   for key in jobs if key[0] not in PPO_SEARCHERS}
        for key, f in futures.items():
            clients[key] = f.result()
            print(f"done: {clients[key]}", flush=True)
    return clients


def collect_picks(clients: dict[tuple[str, str, int], str], tasks: dict[str, Task], budgets: list[int],
                  searchers: list[str], runs: LiveRuns) -> tuple[Picks, dict[str, list[list[float]]]]:
    """The pick of every search at every N, and its best-so-far reward curve."""
    teacher = {t: RayEvaluator(SERVICE).teacher_stats(task) for t, task in tasks.items()}
    picks: Picks = {}
    curves: dict[str, list[list[float]]] = {s: [] for s in searchers}
    for (s, t, seed), client in clients.items():
        found = scored(runs.requests(client), tasks[t], teacher[t])
        for n in budgets:
            best = best_within(found, n, lambda c: c.reward)
            if best is not None:
                picks[s, tasks[t].name, seed, n] = (best, min(n, len(found)))
        # rewards are ratios to the task's teacher, so curves of different tasks can be averaged
        curves[s].append(best_so_far([c.reward for c in found][: budgets[-1]]))
    return picks, curves


def main() -> None:
    args = parse_args()
    t_start = time.perf_counter()
    exp, metas, _ = load_experiment(args.experiment)
    # the plain agent, as measured since the first version of this benchmark (the experiment's screening and
    # hand-over are measured on the table: bench/table_quality.py)
    exp = with_changes(exp, "--meta-iterations", meta_iterations=args.meta_iterations, screening={"by": "none"},
                       handover={"evaluations": 0})
    if args.entropy_coeff is not None:
        ppo = {**exp.ppo.model_dump(mode="json"), "entropy_coeff": args.entropy_coeff}
        exp = with_changes(exp, "--entropy-coeff", ppo=ppo)
    held_out = [task_path(t) for t in args.held_out.split(",")]
    tasks = {t: load_task(t) for t in held_out}
    meta_tasks = [load_task(m) for m in metas]
    if overlap := {t.name for t in tasks.values()} & {t.name for t in meta_tasks}:
        raise ConfigError(f"--held-out {sorted(overlap)} are meta-training tasks of {args.experiment}; pick others")
    budgets = sorted(int(x) for x in args.n.split(","))
    searchers = args.searchers.split(",")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ensure_ray()
    with evaluation_service(out, n_workers=args.workers, name=SERVICE):  # ends before the final trainings
        action_grid = shared_grid(meta_tasks + list(tasks.values()))
        runs = LiveRuns(SERVICE, (action_grid.max_depth, action_grid.max_width))
        meta = None
        if "rl" in searchers:
            meta = meta_train(runs, exp, metas, out, f"meta-{agent_tag(exp)}", f"rl-meta-{agent_tag(exp)}")
            print(f"meta-training: {meta['seconds']:.0f} s, {meta['iterations']} iterations, {meta['episodes']} "
                  f"episodes, {meta['distinct']} distinct evaluations", flush=True)
        t0 = time.perf_counter()
        clients = run_searches(exp, searchers, held_out, args.seeds, budgets[-1], runs, meta, out)
        t_search = time.perf_counter() - t0
        picks, curves = collect_picks(clients, tasks, budgets, searchers, runs)
        lines = [results_table(picks, searchers, [tasks[t].name for t in held_out], budgets, args.seeds), "",
                 "Scored with: " + "; ".join(
                     f"{t.name} = {t.config.attack.name}-{t.config.attack.steps} eps "
                     f"{eps_label(t.config.attack.epsilon)} "
                     f"on the first {t.config.proxy.val_examples} validation images" for t in tasks.values())]
        lines += ["", "Best-so-far reward (mean over tasks and seeds) against distinct evaluations:", "", "```",
                  text_chart({s: mean_curve(curves[s], budgets[-1]) for s in searchers}), "```"]
        print("\n".join(lines), flush=True)
    if args.final_n:
        # the search's block has freed the evaluation workers' CPUs/GPUs for the final trainings (held, they left
        # the final jobs a single core here, so that 22 jobs ran one after another: 33 min instead of about 17)
        final = final_evaluation(picks, args.final_n, tasks, exp, out)
        lines += ["", final_table(final, searchers, [tasks[t].name for t in held_out])]
    total = time.perf_counter() - t_start
    header = (f"{len(held_out)} held-out tasks ({', '.join(tasks[t].name for t in held_out)}), {args.seeds} seeds, "
              f"searchers {', '.join(searchers)}; searches {t_search / 60:.1f} min"
              + (f", meta-training {meta['seconds'] / 60:.1f} min ({meta['distinct']} distinct evaluations on "
                 f"{len(metas)} meta tasks, not counted in N)" if meta else "")
              + f"; whole run {total / 60:.1f} min. PPO (rl, ppo-scratch): M={exp.M} episodes per update, lr "
              f"{exp.ppo.lr:g}, {exp.ppo.num_epochs} epochs, entropy {exp.ppo.entropy_coeff:g}, "
              f"{exp.meta_iterations} meta iterations")
    report = header + "\n\n" + "\n".join(lines)
    (out / "report.md").write_text(report + "\n")
    print("\n" + report)


def mean_curve(curves: list[list[float]], n: int) -> list[float]:
    """Mean over runs of best-so-far; a run that stopped early (a converged PPO) keeps its last value."""
    runs = [held(c, n) for c in curves if c]
    return [sum(r[i] for r in runs) / len(runs) for i in range(n)] if runs else []


def results_table(picks: Picks, searchers: list[str], task_names: list[str], budgets: list[int], seeds: int) -> str:
    head = "| searcher | task | " + " | ".join(f"N={n}: val robust acc (reward)" for n in budgets) + " |"
    out = [head, "|" + "---|" * (2 + len(budgets))]
    for s in searchers:
        per_task: dict[int, list[tuple[float, float]]] = {n: [] for n in budgets}
        for t in task_names:
            cells = []
            for n in budgets:
                got = [picks[s, t, seed, n] for seed in range(seeds) if (s, t, seed, n) in picks]
                acc, acc_sd = mean_sd([c.robust_acc * 100 for c, _ in got])
                rew, _ = mean_sd([c.reward for c, _ in got])
                short = min((made for _, made in got), default=0) < n
                cells.append(f"{acc:.1f} ± {acc_sd:.1f} ({rew:.3f}){' †' if short else ''}")
                per_task[n].append((acc, rew))
            out.append(f"| {s} | {t} | " + " | ".join(cells) + " |")
        means = [(sum(a for a, _ in per_task[n]) / len(per_task[n]), sum(r for _, r in per_task[n]) / len(per_task[n]))
                 for n in budgets]
        out.append(f"| **{s}** | mean over tasks | " + " | ".join(f"**{a:.1f}** ({r:.3f})" for a, r in means) + " |")
    note = ("robust acc in %, mean ± sd over seeds, of the highest-reward sub-network among the first N distinct "
            "evaluations (task's attack on the fixed validation subset, proxy fidelity of the task config); "
            "† = fewer than N distinct evaluations were made (a converged policy repeats itself; the compound rule has "
            "a handful of candidates, one per depth scale, and uniform shrinking one)")
    return "\n".join(out) + "\n\n_" + note + "_"


def final_evaluation(picks: Picks, n: int, tasks: dict[str, Task], exp: Any, out: Path) -> list[FinalResult]:
    """The N=n picks trained from scratch (task recipe) and attacked on the test split; one job per distinct
    (task, sub-network), finished ones reused from the folder's results.json."""
    by_name = {t.name: t for t in tasks.values()}
    folder = out / f"final-N{n}"
    jobs: dict[str, EvalJob] = {}
    who: dict[str, list[tuple[str, int]]] = {}
    for (s, t, seed, m), (pick, _) in picks.items():
        if m != n:
            continue
        arch = pick.arch
        name = f"{t}/{arch.short().replace(' ', '_')}"
        who.setdefault(name, []).append((s, seed))
        jobs[name] = EvalJob(name, arch, by_name[t], tuple(exp.final_eval.attacks), str(folder),
                             exp.final_eval.epochs, None, exp.final_eval.n_examples, exp.seed)
    results = run_jobs(list(jobs.values()), folder)
    return [replace(r, extras={**r.extras, "by": who[r.name]}) for r in results]


def final_table(final: list[FinalResult], searchers: list[str], task_names: list[str]) -> str:
    attacks = [a.label for a in final[0].attacks] if final else []
    out = ["| searcher | task | clean | " + " | ".join(attacks) + " | MACs |", "|" + "---|" * (4 + len(attacks))]
    for s in searchers:
        for t in task_names:
            mine = [(r, seed) for r in final for who, seed in r.extras["by"] if who == s and r.name.startswith(t + "/")]
            if not mine:
                continue
            clean = mean_sd([r.clean * 100 for r, _ in mine])
            cols = [mean_sd([(r.accuracy(k) or 0.0) * 100 for r, _ in mine]) for k in attacks]
            macs = sum(r.macs for r, _ in mine) / len(mine)
            out.append(f"| {s} | {t} (eps {mine[0][0].eps_255}) | {clean[0]:.1f} ± {clean[1]:.1f} | "
                       + " | ".join(f"{m:.1f} ± {sd:.1f}" for m, sd in cols) + f" | {macs / 1e6:.2f}M |")
    label = ""
    if final:
        f0 = final[0]
        label = (f"_test split, n={f0.n_examples}, training seed {f0.seed}; "
                 f"trained from scratch with the task's recipe; mean ± sd over the seeds' picks_")
    return "\n".join(out) + "\n\n" + label


if __name__ == "__main__":
    run_main(main)
