"""Does re-ranking the search's best candidates at a higher fidelity choose a sub-network that is better after full
training? The live measurement behind ``rerank:`` in the experiment config.

For each task: the ``--top-k`` sub-networks by the default proxy, taken from the tabular benchmark (the candidates a
search that found them would hold; the table's values are the live proxy's own), are evaluated again at the higher
fidelity (``rcnas.search.rerank``: ``--epochs`` of fine-tuning, ``--repeats`` seeds) through the live evaluation
service and its store. Then **every** one of the k is trained from scratch with the task's recipe (``--train-seeds``
seeds) and attacked on the test split with FGSM, PGD-20 and CW-40 (fp32). Reported per task, under the task's attack
family at the reported strength: the test robust accuracy of the plain pick (best proxy reward), of the re-ranked
pick (best higher-fidelity reward), of the best of the k after full training (what a perfect re-ranking would pick)
and the mean of the k; Kendall's tau of the proxy's and of the higher fidelity's order against the test order; the
seconds the re-ranking costs against a search of 50 proxy evaluations (the candidates are also evaluated live at
the default fidelity, for that cost and to check the table against the live proxy). The test split is only read to
measure: the picks themselves see the validation split only.

    python bench/rerank_quality.py [--table bench/tables/digits-e20-t444.csv.gz] [--top-k 5] [--epochs 4]
        [--repeats 2] [--train-seeds 3] [--tasks digits-cw-e20-t444-r30,...] [--out runs/bench/rerank]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agents.config import task_path
from rcnas.distributed.resources import ensure_ray
from rcnas.distributed.service import RayEvaluator, evaluation_service
from rcnas.evaluation.command import run_jobs
from rcnas.evaluation.final import EvalJob, FinalResult
from rcnas.infra.cli import run_main
from rcnas.infra.configio import eps_label
from rcnas.infra.errors import ConfigError
from rcnas.search.candidates import Candidate
from rcnas.search.quality import mean_sd, scored
from rcnas.search.rerank import rerank
from rcnas.search.searchers import run_searcher
from rcnas.search.table import Scorer, TableEvaluator, open_table
from rcnas.space.arch import ArchSpec
from rcnas.task import Task, load_task

SERVICE = "bench-rerank"
ATTACKS = ("clean", "fgsm", "pgd20", "cw40")
REPORTED = {"fgsm": "fgsm", "pgd": "pgd20", "cw": "cw40"}
"""a task's attack family -> the reported attack that measures it on the test split"""
SEARCH_EVALUATIONS = 50
"""the search budget the re-ranking's cost is compared with"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", default="bench/tables/digits-e20-t444.csv.gz")
    p.add_argument("--tasks", default="digits-cw-e20-t444-r30,digits-cw-e20-t444-r50,digits-fgsm-e20-t444-r30,"
                                      "digits-pgd-e20-t444-r45")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--epochs", type=float, default=4, help="fine-tuning epochs of the higher fidelity")
    p.add_argument("--repeats", type=int, default=2, help="seeds averaged by the higher fidelity")
    p.add_argument("--train-seeds", type=int, default=3, help="full trainings per candidate")
    p.add_argument("--out", default="runs/bench/rerank")
    p.add_argument("--workers", type=int, default=None, help="evaluation workers (default: one per CPU or GPU)")
    return p.parse_args(argv)


def top_candidates(task: Task, table_file: str, k: int) -> list[Candidate]:
    """The task's ``k`` best sub-networks by the table's proxy reward, as a search's candidates."""
    ev = TableEvaluator(open_table(table_file, task))
    for _, row in Scorer(task, ev).ranked[:k]:
        ev.evaluate(task, row.arch)
    return scored(ev.requests, task, ev.teacher_stats(task))


def training_twin(tasks: list[Task]) -> None:
    """The full trainings are shared between tasks (one job per sub-network and seed): only right when the tasks
    train and attack alike, which is checked here, before any work."""
    first = tasks[0].config
    for t in tasks[1:]:
        if (t.config.training != first.training or t.config.dataset != first.dataset
                or t.config.attack.epsilon != first.attack.epsilon):
            raise ConfigError(f"{t.name} trains or attacks differently from {tasks[0].name}: measure it in its own run")


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two scores of the same items."""
    from scipy.stats import kendalltau

    tau = kendalltau(a, b).statistic
    return float("nan") if tau != tau else float(tau)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if min(args.top_k, args.repeats, args.train_seeds) < 1 or args.epochs <= 0:
        raise ConfigError("--top-k, --repeats and --train-seeds must be at least 1 and --epochs above 0 "
                          f"(got {args.top_k}, {args.repeats}, {args.train_seeds}, {args.epochs:g})")
    t_start = time.perf_counter()
    table_file = str(Path(args.table).resolve())
    tasks = [load_task(task_path(t)) for t in args.tasks.split(",")]
    training_twin(tasks)
    tops = {t.name: top_candidates(t, table_file, args.top_k) for t in tasks}
    # the baseline a robustness user tries first, trained and attacked like the candidates
    pruned = {t.name: run_searcher("prune", t, TableEvaluator(open_table(table_file, t)), 1)[0].arch for t in tasks}
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ensure_ray(verbose=False)  # library noise silenced in every worker
    with evaluation_service(out, n_workers=args.workers, name=SERVICE):  # ends before the full trainings
        evaluator = RayEvaluator(SERVICE, client="rerank")
        # the candidates at the default fidelity, live and side by side with the re-ranking: the cost ratio is measured
        # under the same conditions, and the table's figures are checked against the live proxy on the way
        with ThreadPoolExecutor(max_workers=2 * args.top_k) as pool:
            live = {t.name: list(pool.map(lambda c, t=t: evaluator.evaluate(t, c.arch).metrics, tops[t.name]))
                    for t in tasks}
        proxy_seconds = statistics.fmean(m.seconds for ms in live.values() for m in ms)
        # a task of the table's first attack derives the table's seeds: its figures must be equal; the other columns
        # were measured on that task's fine-tuned network, while a live task of their attack derives its own seed, so
        # they differ by the proxy's seed-to-seed noise (measured here)
        same: list[bool] = []
        noise: list[float] = []
        for t in tasks:
            table = open_table(table_file, t)
            first = table.columns[0] == table.column_for(t)
            for m, c in zip(live[t.name], tops[t.name]):
                if first:
                    same.append(abs(m.robust_acc - c.metrics.robust_acc) < 1e-6)
                else:
                    noise.append(abs(m.robust_acc - c.metrics.robust_acc) * 100)
        t0 = time.perf_counter()
        hi: dict[str, dict[str, Candidate]] = {}
        for t in tasks:
            pairs = rerank(t, tops[t.name], evaluator, args.top_k, args.epochs, args.repeats)
            hi[t.name] = {lo.arch.key(): h for lo, h in pairs}
            print(f"{t.name}: re-ranked {len(pairs)} candidates", flush=True)
        t_rerank = time.perf_counter() - t0
        hi_seconds = sum(c.metrics.seconds for cands in hi.values() for c in cands.values())
    # the search is over: its block has freed the evaluation workers' CPUs/GPUs for the full trainings (held, they
    # would leave the trainings fewer cores than there are)
    jobs: dict[str, EvalJob] = {}
    for t in tasks:
        for arch in [*(c.arch for c in tops[t.name]), pruned[t.name]]:
            for seed in range(args.train_seeds):
                name = f"{arch.short().replace(' ', '_')}/seed{seed}"
                jobs.setdefault(name, EvalJob(name, arch, t, ATTACKS, str(out / "final"), seed=seed))
    t0 = time.perf_counter()
    results = {r.name: r for r in run_jobs(list(jobs.values()), out / "final")}
    t_final = time.perf_counter() - t0
    rows = [task_row(t, tops[t.name], hi[t.name], results, args.train_seeds, pruned[t.name]) for t in tasks]
    report = render(args, tasks, rows, results, t_rerank, hi_seconds, proxy_seconds, t_final,
                    time.perf_counter() - t_start, same, noise)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    (out / "report.md").write_text(report + "\n")
    print("\n" + report)
    return 0


def task_row(task: Task, top: list[Candidate], hi: dict[str, Candidate], results: dict[str, FinalResult],
             seeds: int, pruned: ArchSpec) -> dict[str, Any]:
    """One task's picks and their test robust accuracy (mean over the training seeds, in %)."""
    label = REPORTED[task.config.attack.name]

    def test(arch: ArchSpec) -> list[float]:
        name = arch.short().replace(" ", "_")
        return [100 * (results[f"{name}/seed{s}"].accuracy(label) or 0.0) for s in range(seeds)]

    cands = [{"arch": c.arch.short(), "macs": c.macs, "proxy_reward": c.reward,
              "rerank_reward": hi[c.arch.key()].reward if c.arch.key() in hi else None, "test": test(c.arch)}
             for c in top]
    plain = cands[0]
    reranked = max((c for c in cands if c["rerank_reward"] is not None), key=lambda c: c["rerank_reward"])
    best = max(cands, key=lambda c: statistics.fmean(c["test"]))
    means = [statistics.fmean(c["test"]) for c in cands]
    return {"task": task.name, "attack": label, "eps": eps_label(task.config.attack.epsilon), "candidates": cands,
            "plain": plain["arch"], "reranked": reranked["arch"], "best": best["arch"],
            "plain_test": plain["test"], "reranked_test": reranked["test"], "best_test": best["test"],
            "pruned": pruned.short(), "pruned_test": test(pruned),
            "mean_of_k": statistics.fmean(means),
            "tau_proxy": kendall_tau([c["proxy_reward"] for c in cands], means),
            "tau_rerank": kendall_tau([c["rerank_reward"] if c["rerank_reward"] is not None else float("-inf")
                                       for c in cands], means)}


def _ms(xs: list[float]) -> str:
    m, sd = mean_sd(xs)
    return f"{m:.1f} ± {sd:.1f}"


def render(args: argparse.Namespace, tasks: list[Task], rows: list[dict[str, Any]], results: dict[str, FinalResult],
           t_rerank: float, hi_seconds: float, proxy_seconds: float, t_final: float, total: float,
           same: list[bool], noise: list[float]) -> str:
    f0 = next(iter(results.values()))
    lines = [f"{len(tasks)} tasks, top {args.top_k} of the table {args.table} per task, re-ranked at {args.epochs:g} "
             f"fine-tuning epochs x {args.repeats} seeds; every candidate trained from scratch with the task's recipe "
             f"x {args.train_seeds} seeds and attacked on the test split (n={f0.n_examples}, fp32, attack seed "
             f"{f0.seed}); whole run {total / 60:.1f} min (re-ranking {t_rerank / 60:.1f} min, full trainings "
             f"{t_final / 60:.1f} min).", "",
             "| task | attack (test) | plain pick | re-ranked pick | plain | re-ranked | best of k | mean of k | "
             "pruned (slimming) | tau proxy | tau re-rank |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['task']} | {r['attack']} eps {r['eps']} | {r['plain']} | {r['reranked']} | "
                     f"{_ms(r['plain_test'])} | {_ms(r['reranked_test'])} | {_ms(r['best_test'])} | "
                     f"{r['mean_of_k']:.1f} | {r['pruned']}: {_ms(r['pruned_test'])} | {r['tau_proxy']:.2f} | "
                     f"{r['tau_rerank']:.2f} |")
    ratio = hi_seconds / len(rows) / (SEARCH_EVALUATIONS * proxy_seconds)
    gain = [statistics.fmean(r["reranked_test"]) - statistics.fmean(r["plain_test"]) for r in rows]
    lines += ["", f"Re-ranked minus plain pick, mean over tasks: {statistics.fmean(gain):+.2f} points "
              f"(per task: {', '.join(f'{g:+.1f}' for g in gain)}); re-ranked pick = plain pick on "
              f"{sum(r['plain'] == r['reranked'] for r in rows)} of {len(rows)} tasks; best of k picked by the "
              f"re-ranking on {sum(r['reranked'] == r['best'] for r in rows)} and by the proxy on "
              f"{sum(r['plain'] == r['best'] for r in rows)}.",
              f"Cost: the re-ranking's evaluations took {hi_seconds:.0f} worker-seconds ({hi_seconds / len(rows):.0f} "
              f"per task) against {SEARCH_EVALUATIONS * proxy_seconds:.0f} for a search of {SEARCH_EVALUATIONS} proxy "
              f"evaluations ({proxy_seconds:.1f} s each, the candidates' own default-fidelity evaluations in this "
              f"run): x{ratio:.2f} of the search.",
              f"Live default-fidelity evaluations of the table's first attack equal its figures for {sum(same)} of "
              f"{len(same)} candidates (to 1e-6); for the other attacks (measured on the first attack's fine-tuned "
              f"network, another derived seed than a live task's) they differ by "
              + (f"{statistics.fmean(noise):.1f} points on average (max {max(noise):.1f}): the proxy's seed noise."
                 if noise else "- (no such task)."), "",
              "_test robust accuracy in %, mean ± sd over the training seeds, under the reported attack of the task's "
              "family (fgsm; pgd20 = PGD-20; cw40 = CW-40 margin loss, 40 steps); plain = the best proxy reward, "
              "re-ranked = the best higher-fidelity reward (validation split), best of k = the best test mean "
              "(hindsight, not a method); pruned = the teacher pruned to the budget by network slimming's global "
              "BN-scale threshold (the baseline a robustness user tries first), trained like the others; "
              "tau = Kendall's tau of the k candidates' validation scores against their "
              "test means_"]
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
