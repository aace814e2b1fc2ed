"""Search quality on the tabular benchmark: every searcher x many seeds x held-out tasks, answered from a table.

For each held-out task x seed x searcher: the **regret** (the best reward in the table within the task's budget minus
the best reward among the searcher's first N distinct evaluations) and the **rank** of that pick among all the
task's feasible sub-networks (1 = the table's best), at N = 10 / 25 / 50 / 100; mean with a 95% confidence interval
(Student t over every task x seed run). A plot of mean regret against evaluations goes to ``--out`` (PNG) and a text
chart into the report.

The searchers run exactly as in a live search (the same env, RLlib PPO, baselines and reward); only the evaluator
differs: :class:`rcnas.search.table.TableEvaluator`, which answers from the table in microseconds and refuses any
sub-network outside it. ``rl`` is meta-trained ``--meta-seeds`` times on the experiment's meta tasks (also answered
from the table), and search seed s fine-tunes meta-training s mod that number: the meta-training's own luck is part
of every interval (with one shared meta-training, 30 seeds measured one meta policy). ``rl-repeats`` and
``ppo-scratch-repeats`` are the same agents with ``avoid_repeats`` off (the ablation of the repeat mask).
``rl>evolution@25`` is the agent until its first 25 distinct evaluations (to the end of the PPO iteration that
reaches them: 25-29 with M = 5), then regularized evolution seeded with the best of them (a hybrid that hands over
to a local search late); a screening suffix screens the agent's part only.

Searcher names may carry a screening suffix: ``rl+surrogate``, ``random+screen`` (``rcnas.search.screening``; the
low fidelity's answers come from ``--screen-table``), then ``+handover`` (the hand-over screened too) and ``+pace``
(the promoter paced); ``+w8`` runs a searcher as the product does with 8 evaluation workers (``workers_of``), and
``+refresh`` after it trains the agent on its lagged episodes with ``lagged: refresh``.
Besides regret per evaluation, the report gives regret against evaluation seconds (each table row's measured proxy
seconds), the cost that screening and a surrogate cut. A low-fidelity evaluation costs the screening table's own
seconds, or ``--screen-cost R`` times the proxy's for the same sub-network: the tables' rows each ran three attacks,
which a live evaluation of one task does not, so the tables overstate what the low fidelity costs next to the proxy
(``R`` measured side by side on one task: ``bench/proxy_fidelity.py``).

``--kind NAME`` takes the meta tasks, the held-out tasks and the tables from a held-out kind of ``--splits``
(``bench/splits/digits.yaml``: budgets tighter or looser than every meta task's, another teacher, the reverse), so
that each way a user's task can lie outside the meta-training is measured on its own; the report then gives every
held-out task its own table beside the pooled one, and the share of seeds whose pick is the table's best.

    python bench/table_quality.py [--kind tighter|looser|other-teacher|reverse] [--seeds 30] [--n 10,25,50,100]
        [--table bench/tables/digits-e20-t444.csv.gz[,...]] [--held-out TASK,...]
        [--searchers rl,ppo-scratch,rl-repeats,random,evolution,compound,uniform,prune] [--out runs/bench/table-quality]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from pathlib import Path
from typing import Any

import ray

from agents.config import load_experiment, task_path, with_changes
from agents.quality_runs import TableRuns, fine_tune, meta_train
from rcnas.config import ScreeningConfig
from rcnas.distributed.resources import ensure_ray
from rcnas.infra.cli import run_main
from rcnas.infra.configio import StrictModel, read_yaml, validate
from rcnas.infra.errors import ConfigError
from rcnas.search.quality import best_so_far, ci95, distinct, held, scored, text_chart
from rcnas.search.screening import SCREEN_SUFFIX, ScreeningEvaluator, proposals_for
from rcnas.search.searchers import DETERMINISTIC, SEARCHERS, run_searcher
from rcnas.search.table import Scorer, TableEvaluator, open_table, open_tables
from rcnas.task import Task, load_task, shared_grid

DEFAULT_TABLE = "bench/tables/digits-e20-t444.csv.gz"
DEFAULT_HELD_OUT = "digits-cw-e20-t444-r30,digits-cw-e20-t444-r50,digits-fgsm-e20-t444-r30,digits-pgd-e20-t444-r45"


class Split(StrictModel):
    """One held-out kind of a splits file."""

    meta: list[str]
    """the tasks the agent meta-trains on"""
    held_out: list[str]
    """the tasks every searcher is measured on; none may be a meta task"""
    tables: list[str]
    """the tables that answer them, one per teacher"""


def load_split(path: str, kind: str) -> Split:
    """The kind ``kind`` of the splits file ``path``; one line naming the known kinds when it is not one."""
    raw = read_yaml(path)
    if kind not in raw:
        raise ConfigError(f"--kind {kind!r} is not a held-out kind of {path} (known: {', '.join(raw)})")
    return validate(Split, raw[kind], f"{path}: {kind}")


PPO_VARIANTS = {"rl": (True, True), "ppo-scratch": (False, True), "rl-repeats": (True, False),
                "ppo-scratch-repeats": (False, False)}
"""searcher -> (starts from the meta-trained policy, avoid_repeats)"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", default=None, help="a held-out kind of --splits: its meta tasks, held-out tasks and "
                                                "tables replace the experiment's meta tasks and the defaults")
    p.add_argument("--splits", default="bench/splits/digits.yaml")
    p.add_argument("--table", default=None, help="comma-separated tables, one per teacher (default: the kind's, or "
                                                 f"{DEFAULT_TABLE})")
    p.add_argument("--screen-table", default="bench/tables/digits-e20-t444-screen.csv.gz",
                   help="the same sub-networks at the screening fidelity (for the +screen searchers)")
    p.add_argument("--screen-cost", type=float, default=None,
                   help="a low-fidelity evaluation costs this share of the proxy's seconds for the same sub-network "
                        "(default: the screening table's own seconds; see above)")
    p.add_argument("--experiment", default="configs/experiments/digits.yaml")
    p.add_argument("--held-out", default=None,
                   help=f"comma-separated tasks (default: the kind's, or {DEFAULT_HELD_OUT})")
    p.add_argument("--searchers", default="rl,ppo-scratch,rl-repeats,random,evolution,compound,uniform,prune")
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--n", default="10,25,50,100", help="evaluation budgets; every search runs to the largest")
    p.add_argument("--meta-iterations", type=int, default=30, help="PPO iterations of meta-training (M episodes each)")
    p.add_argument("--meta-seeds", type=int, default=5,
                   help="independent meta-trainings; search seed s fine-tunes meta-training s mod this (one shared "
                        "meta-training would leave its own luck out of every interval)")
    p.add_argument("--out", default="runs/bench/table-quality")
    p.add_argument("--jobs", type=int, default=None, help="searches at once (default: one per CPU)")
    return p.parse_args(argv)


SCREENED = {"surrogate": {"by": "surrogate"}, "screen": {"by": "low_fidelity"}}
"""a searcher name's suffix (``rl+surrogate``, ``random+screen``) -> the screening it runs with"""
FLAGS = ("handover", "pace")
"""flags after a screening suffix: each switches on the screening setting of its name"""
WORKERS = re.compile(r"w([1-9][0-9]*)")
"""``+w8`` anywhere after a searcher's name: the search as the product runs it on 8 evaluation workers (below)"""


REFRESH = "refresh"
"""``+refresh`` after ``+wN``: the agent's ``lagged: refresh`` (an episode decided by an older policy is trained on
as if the current one had decided it) instead of ``as_sampled`` (PPO's ratio against the probabilities it was
sampled with)"""


def experiment_part(p: str) -> bool:
    """Whether ``p`` (one ``+`` part of a searcher's name) sets the experiment, not the screening."""
    return bool(WORKERS.fullmatch(p)) or p == REFRESH


def refreshed(s: str) -> bool:
    """``rl+w8+refresh`` -> True; refused where nothing lags (no ``+wN``) or no agent learns."""
    if REFRESH not in s.split("+")[1:]:
        return False
    if not workers_of(s) or handover(split_name(s)[0])[0] not in PPO_VARIANTS:
        raise ConfigError(f"--searchers: {s!r}: +refresh changes how the agent learns from lagged episodes; it needs "
                          "an agent (rl, ppo-scratch, ...) and +wN (one evaluation at a time, nothing lags)")
    return True


def workers_of(s: str) -> int:
    """``rl+surrogate+w8`` -> 8: the agent keeps 8 + M evaluations in flight, as the async sampler does with 8
    service workers, taking them in the order decided (``ordered``: which table answer came back first would
    otherwise decide), and a local search asks for 8 at a time, as the product's hand-over and baselines do. Each
    episode is then decided by a policy that has not seen the results of the 12 before it: the price of keeping 8
    workers busy, measured without timing. A hybrid's agent hands over once its evaluations in flight are back, so
    ``rl>evolution@10+w8`` hands over after more than 10 (every one counted in N). 0 (no ``+wN``): one evaluation
    at a time, in the order decided."""
    found = [int(m.group(1)) for p in s.split("+")[1:] if (m := WORKERS.fullmatch(p))]
    if len(found) > 1:
        raise ConfigError(f"--searchers: {s!r}: more than one +wN")
    return found[0] if found else 0


def split_name(s: str) -> tuple[str, dict[str, Any] | None]:
    """``rl+surrogate`` -> (``rl``, its screening settings), ``rl+surrogate@0.1`` with ``keep: 0.1``; ``rl`` ->
    (``rl``, None). A hybrid's screening covers the agent's part; ``+handover`` after it, the hand-over's too
    (``rl>evolution@10+surrogate@0.1+handover``); ``+pace``, the promoter paced (``screening.pace``)."""
    base, *rest = s.split("+")
    suffix, *flags = [p for p in rest if not experiment_part(p)] or [""]
    if unknown := set(flags) - set(FLAGS):
        raise ConfigError(f"--searchers: {s!r}: unknown flag(s) {sorted(unknown)}; known: {', '.join(FLAGS)}")
    if "handover" in flags and ">" not in base:
        raise ConfigError(f"--searchers: {s!r}: +handover screens a hand-over, and {base!r} hands over to nothing")
    kind, _, keep = suffix.partition("@")
    if suffix and kind not in SCREENED:
        raise ConfigError(f"--searchers: {s!r}: unknown suffix {kind!r}; known: {', '.join(SCREENED)}")
    if not suffix:
        return base, None
    try:
        return base, {**SCREENED[kind], **({"keep": float(keep)} if keep else {}), **{f: True for f in flags}}
    except ValueError:
        raise ConfigError(f"--searchers: {s!r}: {keep!r} after @ is not a share to keep (e.g. 0.1)") from None


def handover(base: str) -> tuple[str, str | None, int]:
    """``rl>evolution@25`` -> (``rl``, ``evolution``, 25): the agent's first 25 distinct evaluations, then evolution
    from the best of them (the hybrid that hands over to a local search); ``rl`` -> (``rl``, None, 0)."""
    agent, _, rest = base.partition(">")
    if not rest:
        return agent, None, 0
    local, _, k = rest.partition("@")
    if agent not in PPO_VARIANTS or local not in SEARCHERS.names() or not k.isdigit() or int(k) < 1:
        raise ConfigError(f"--searchers: {base!r}: a handover is AGENT>SEARCHER@K (e.g. rl>evolution@25), AGENT one "
                          f"of {', '.join(PPO_VARIANTS)}, SEARCHER one of {', '.join(SEARCHERS.names())}, K the "
                          "agent's evaluations before it hands over")
    return agent, local, int(k)


def typical_seconds(table: Any, bins: int = 20) -> dict[str, float]:
    """Each row's cost: the median of the table's measured seconds over the rows of about its size (``bins`` MACs
    quantiles). The seconds column also carries the load of the machine that built the table (its 90th percentile is
    2.4 times its median, its maximum 20 times): a search that happened to ask for a row measured under load would
    pay for that load, not for the sub-network."""
    import numpy as np

    rows = list(table.rows.items())
    macs = np.asarray([r.macs for _, r in rows], dtype=float)
    secs = np.asarray([r.seconds for _, r in rows])
    edges = np.quantile(macs, np.linspace(0, 1, bins + 1)[1:-1])
    which = np.searchsorted(edges, macs, side="right")
    median = {b: float(np.median(secs[which == b])) for b in set(which.tolist())}
    return {k: median[int(b)] for (k, _), b in zip(rows, which)}


def one_search(s: str, task_file: str, seed: int, exp: Any, grid: tuple[int, int], tables: list[tuple[str, str]],
               n: int, meta: dict[str, Any] | None, screen_cost: float | None = None,
               ) -> tuple[list[float], list[float], float]:
    """One search until ``n`` distinct evaluations at the task's proxy: the reward of each distinct sub-network in
    the order asked for, the evaluation seconds spent when each was made (screening's low-fidelity evaluations
    included; a surrogate's predictions cost none), and the wall seconds the search took. ``tables``: (path, a task
    file of its teacher), the screening table last when there is one."""
    task = load_task(task_file)
    t0 = time.perf_counter()
    client = f"{s}/{task.name}/seed{seed}"
    base, screening = split_name(s)
    base, local, k = handover(base)
    workers = workers_of(s)
    runs = TableRuns([open_table(path, teacher_task) for path, teacher_task in tables], grid,
                     meta["stored"] if meta else None)
    if base in PPO_VARIANTS:
        changes: dict[str, Any] = {"seed": seed, "avoid_repeats": PPO_VARIANTS[base][1]}
        if screening:
            changes["screening"] = screening
        if workers:
            changes.update(in_flight=workers + exp.M, ordered=True)
        if refreshed(s):
            changes["lagged"] = "refresh"
        fine_tune(runs, with_changes(exp, s, **changes), task_file, client, min(k, n) if local else n,
                  meta["checkpoint"] if meta and PPO_VARIANTS[base][0] else None)
        if local:  # the agent's sub-networks seed the local search, which spends the rest of the n
            found = distinct(runs.requests(client), task.name)
            done = [r.arch for r in found]
            ev = runs.evaluator(client)
            budget = n
            if screening and screening.get("handover"):  # screened as the product's hand-over is (agents/phases.py)
                cfg = ScreeningConfig(**screening)
                screened = ScreeningEvaluator(ev, cfg, prior=[load_task(m) for m in runs.stored])
                screened.learn_from(task, [(r.arch, r.metrics) for r in found])  # the agent's evaluations
                ev, budget = screened, len(done) + proposals_for(n - len(done), cfg)
            run_searcher(local, task, ev, budget, seed, start=done, proxy=n if budget != n else None,
                         parallel=max(1, workers))
    else:
        ev: Any = runs.evaluator(client)
        proposals = n
        if screening:
            cfg = ScreeningConfig(**screening)
            ev = ScreeningEvaluator(ev, cfg, prior=[load_task(m) for m in runs.stored])
            proposals = proposals_for(n, cfg)  # about n of them promoted
        run_searcher(base, task, ev, proposals, seed, parallel=max(1, workers), proxy=n if screening else None)
    log = runs.requests(client)
    table_ev = runs.evaluator(client)
    found = scored(log, task, table_ev.teacher_stats(task))
    cost = {"proxy": typical_seconds(table_ev.table_for(task)[0])}
    if screening and screening["by"] == "low_fidelity":
        cost["screen"] = (typical_seconds(runs.tables[-1]) if screen_cost is None else
                          {k: screen_cost * v for k, v in cost["proxy"].items()})
    spent, costs = 0.0, []
    for r in distinct(log, None):  # every first evaluation costs its seconds, at whichever fidelity
        spent += cost["screen" if r.task_name.endswith(SCREEN_SUFFIX) else "proxy"][r.arch_key]
        if r.task_name == task.name:
            costs.append(spent)
    return [c.reward for c in found][:n], costs[:n], time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    exp, metas, _ = load_experiment(args.experiment)
    split = load_split(args.splits, args.kind) if args.kind else None
    if split:
        metas = [task_path(m) for m in split.meta]
    held_out = [str(Path(task_path(t)).resolve())
                for t in (args.held_out or (",".join(split.held_out) if split else DEFAULT_HELD_OUT)).split(",")]
    table_files = [str(Path(t).resolve()) for t in (args.table.split(",") if args.table else
                                                    split.tables if split else [DEFAULT_TABLE])]
    tasks = [load_task(t) for t in held_out]
    if args.screen_cost is not None and not 0 < args.screen_cost <= 10:
        raise ConfigError(f"--screen-cost {args.screen_cost:g}: a share of the proxy's seconds, above 0 (0.3: a "
                          "low-fidelity evaluation costs 30% of a proxy evaluation)")
    meta_tasks = [load_task(m) for m in metas]
    if overlap := {t.name for t in tasks} & {m.name for m in meta_tasks}:
        raise ConfigError(f"--held-out {sorted(overlap)} are meta-training tasks"
                          + (f" of --kind {args.kind}" if split else f" of {args.experiment}"))
    # every task, meta ones included, must be answerable: refused before any work
    table_list = open_tables(table_files, [*tasks, *meta_tasks])
    # one process: the env lives in the search's own process (env_runners 0), so the table evaluator handed to it is
    # the one whose requests are read (agents/quality_runs.py)
    # the plain agent: a searcher's name says what screens it and what it hands over to (the experiment's own
    # screening and hand-over would change every PPO searcher alike)
    exp = with_changes(exp, "--meta-iterations", meta_iterations=args.meta_iterations, env_runners=0,
                       screening={"by": "none"}, handover={"evaluations": 0})
    budgets = sorted(int(x) for x in args.n.split(","))
    searchers = args.searchers.split(",")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    g = shared_grid([*tasks, *meta_tasks])
    grid = (g.max_depth, g.max_width)
    ensure_ray(num_cpus=args.jobs, verbose=False)  # library noise silenced in every worker
    # each table travels as (path, a task file of its teacher): a search's process opens it again
    by_teacher = {t.teacher.name: str(t.source) for t in [*tasks, *meta_tasks]}
    tables = [(f, by_teacher[t.header["teacher"]]) for f, t in zip(table_files, table_list)]
    if any((split_name(x)[1] or {}).get("by") == "low_fidelity" for x in searchers):
        screen = open_table(args.screen_table, tasks[0])
        low = ScreeningConfig(by="low_fidelity").fidelity
        for t in tasks:  # every held-out task's screening fidelity must be a column of it: refused before any work
            screen.column_for(t.replace(proxy=t.config.proxy.model_copy(update=low)))
        tables.append((str(Path(args.screen_table).resolve()), held_out[0]))
    metas_done: list[dict[str, Any]] = []
    for x in searchers:  # a malformed name is refused before any work
        handover(split_name(x)[0])
        if screening := split_name(x)[1]:
            validate(ScreeningConfig, screening, f"--searchers {x!r}")
        if workers_of(x):
            with_changes(exp, f"--searchers {x!r}", in_flight=workers_of(x) + exp.M)
        refreshed(x)
    if any(PPO_VARIANTS.get(handover(split_name(x)[0])[0], (False,))[0] or split_name(x)[1] for x in searchers):
        for k in range(args.meta_seeds):
            metas_done.append(meta_train(TableRuns(table_list, grid), with_changes(exp, "--meta-seeds", seed=k), metas,
                                         out, f"meta-seed{k}", f"meta-seed{k}"))
        print(f"meta-training: {args.meta_seeds} x {metas_done[0]['iterations']} iterations "
              f"({statistics.fmean(m['seconds'] for m in metas_done):.0f} s each; answered from the table)",
              flush=True)
    meta = {"seconds": statistics.fmean(m["seconds"] for m in metas_done), "iterations": metas_done[0]["iterations"],
            "seeds": len(metas_done)} if metas_done else None
    curves: dict[str, list[list[float]]] = {s: [] for s in searchers}
    spent: dict[str, list[tuple[list[float], list[float], float]]] = {s: [] for s in searchers}
    ranks: dict[tuple[str, int], list[int]] = {}
    seconds: dict[str, float] = {s: 0.0 for s in searchers}
    runs = [(s, task_file, seed) for task_file in held_out for s in searchers
            for seed in range(1 if split_name(s)[0] in DETERMINISTIC else args.seeds)]
    # one Ray task per search, as many at once as there are CPUs (each is one process: PPO's env, learner and the
    # table all live in it)
    job = ray.remote(num_cpus=1)(one_search)
    refs = [job.remote(s, f, seed, exp, grid, tables, budgets[-1],
                       metas_done[seed % len(metas_done)] if metas_done else None, args.screen_cost)
            for s, f, seed in runs]
    results = dict(zip(runs, ray.get(refs)))
    per_task: dict[tuple[str, str], list[list[float]]] = {}
    best_found: dict[tuple[str, str], list[bool]] = {}
    for task_file, task in zip(held_out, tasks):
        scorer = Scorer(task, TableEvaluator(table_list))
        for s in searchers:
            once = split_name(s)[0] in DETERMINISTIC
            for seed in range(1 if once else args.seeds):
                rewards, costs, took = results[s, task_file, seed]
                seconds[s] += took
                bsf = best_so_far(rewards[: budgets[-1]])
                regret = held([scorer.all[0] - b for b in bsf], budgets[-1])  # stopped early: keeps its last pick
                # a deterministic rule gives the same run for every seed: it counts once per seed in the means
                for _ in range(args.seeds if once else 1):
                    curves[s].append(regret)
                    per_task.setdefault((task.name, s), []).append(regret)
                    best_found.setdefault((task.name, s), []).append(scorer.rank(bsf[-1]) == 1)
                    spent[s].append(([scorer.all[0] - b for b in bsf], costs, scorer.all[0] - scorer.all[-1]))
                    for n in budgets:
                        ranks.setdefault((s, n), []).append(scorer.rank(bsf[min(n, len(bsf)) - 1]))
            print(f"{task.name} {s}: mean regret at N={budgets[-1]} "
                  f"{statistics.fmean(c[-1] for c in curves[s][-args.seeds:]):.4f}", flush=True)
    report = render(args, exp, tasks, metas, searchers, budgets, curves, ranks, seconds, meta,
                    time.perf_counter() - t_start, [t.header for t in table_list], best_found)
    report += "\n\n" + per_task_tables(tasks, searchers, budgets, per_task, best_found)
    report += "\n\n" + cost_table(searchers, spent, 25 if budgets[-1] >= 25 else budgets[-1], args.screen_cost)
    if metas_done:
        report += "\n\n" + surrogate_quality(table_list, metas_done, tasks)
    (out / "results.json").write_text(json.dumps({"kind": args.kind, "curves": curves,
                                                  "per_task": {f"{t}/{s}": c for (t, s), c in per_task.items()},
                                                  "ranks": {f"{s}@{n}": r for (s, n), r in ranks.items()},
                                                  "costs": {s: [c for _, c, _ in v] for s, v in spent.items()}},
                                                 indent=0))
    plot(curves, out / "regret.png", [t.name for t in tasks], args.seeds)
    (out / "report.md").write_text(report + "\n")
    print("\n" + report)
    return 0


COST_FRACTIONS = (0.1, 0.2, 0.5, 1.0)
"""evaluation-seconds budgets reported, as shares of what the reference searcher spends on 25 evaluations (the
target of a cheaper search: the reference's regret at 25 for a fifth of its seconds)"""


def regret_within(run: tuple[list[float], list[float], float], budget_s: float) -> float:
    """A search's regret once it has spent ``budget_s`` evaluation seconds: that of its best pick made by then (the
    task's worst regret while it has made none)."""
    regrets, costs, worst = run
    made = [r for r, c in zip(regrets, costs) if c <= budget_s + 1e-9]
    return made[-1] if made else worst


def cost_table(searchers: list[str], spent: dict[str, list[tuple[list[float], list[float], float]]],
               ref_n: int, screen_cost: float | None = None) -> str:
    """Regret against evaluation seconds: at shares of what the first searcher spends on its first ``ref_n``
    evaluations (the reference), and the seconds each searcher spends to ``ref_n``."""
    low = ("the screening table's seconds" if screen_cost is None else
           f"{screen_cost:g} x the proxy's for the same sub-network")
    ref = searchers[0]
    at_ref = [c[ref_n - 1] for _, c, _ in spent[ref] if len(c) >= ref_n]
    if not at_ref:
        return f"(no {ref} search made {ref_n} evaluations: no cost table)"
    budget = statistics.fmean(at_ref)
    head = (f"| searcher | eval s to N={ref_n} | "
            + " | ".join(f"regret at {f:g} x ({f * budget:.0f} s)" for f in COST_FRACTIONS)
            + " |\n|" + "---|" * (2 + len(COST_FRACTIONS)))
    lines = [f"Regret against evaluation seconds (reference: {ref}'s mean seconds to its evaluation {ref_n}, "
             f"{budget:.1f} s; a row costs the table's median seconds for sub-networks of its size, low-fidelity "
             f"screening counted too at {low}, surrogate predictions free; mean ± 95% CI over tasks x seeds):", "",
             head]
    for s in searchers:
        to_ref = [c[ref_n - 1] for _, c, _ in spent[s] if len(c) >= ref_n]
        cells = [ci95([regret_within(run, f * budget) for run in spent[s]]) for f in COST_FRACTIONS]
        lines.append(f"| {s} | {statistics.fmean(to_ref) if to_ref else math.nan:.1f} | "
                     + " | ".join(f"{m:.4f} ± {h:.4f}" for m, h in cells) + " |")
    return "\n".join(lines)


def surrogate_quality(tables: list[Any], metas_done: list[dict[str, Any]], tasks: list[Task]) -> str:
    """How well the screening surrogate ranks each held-out task's sub-networks when it knows only what a search
    starts with (one meta-training's evaluations): Kendall's tau of its predictions against the table's rewards over
    every feasible sub-network of the task, mean over the meta-trainings."""
    from scipy.stats import kendalltau

    from rcnas.search.surrogate import Point, Surrogate

    ev = TableEvaluator(tables)
    taus: dict[str, list[float]] = {t.name: [] for t in tasks}
    for m in metas_done:
        s = Surrogate()
        for file, keys in m["stored"].items():
            t = load_task(file)
            teacher = ev.teacher_stats(t).robust_acc
            table, col = ev.table_for(t)
            s.add([Point(t, table.rows[k].arch, table.rows[k].robust[col] / teacher) for k in keys])
        for t in tasks:
            scorer = Scorer(t, ev)
            rows = [r for _, r in scorer.ranked]
            pred = s.predict(t, [r.arch for r in rows]) * scorer.teacher.robust_acc
            taus[t.name].append(float(kendalltau([scorer.reward(p, r.macs, True) for p, r in zip(pred, rows)],
                                                 [reward for reward, _ in scorer.ranked])[0]))
    n = statistics.fmean(len(keys) for m in metas_done for keys in [sum(m["stored"].values(), [])])
    return (f"Screening surrogate on held-out rows: trained on one meta-training's evaluations (mean {n:.0f} rows of "
            "the meta tasks, none of the held-out task), Kendall's tau of its predicted reward against the table's "
            f"over every feasible sub-network of the task, mean over the {len(metas_done)} meta-trainings: "
            + ", ".join(f"{name} {statistics.fmean(v):.2f}" for name, v in taus.items()) + ".")


def render(args: argparse.Namespace, exp: Any, tasks: list[Task], metas: list[str], searchers: list[str],
           budgets: list[int], curves: dict[str, list[list[float]]], ranks: dict[tuple[str, int], list[int]],
           seconds: dict[str, float], meta: dict[str, Any] | None, total: float, headers: list[dict[str, Any]],
           best_found: dict[tuple[str, str], list[bool]]) -> str:
    kind = f"held-out kind {args.kind} of {args.splits}; " if args.kind else ""
    lines = [f"{kind}{len(tasks)} held-out tasks ({', '.join(t.name for t in tasks)}) x {args.seeds} seeds; meta "
             f"tasks {', '.join(Path(m).stem for m in metas)}; tables "
             + ", ".join(f"{Path(h['source']).name} ({h['rows']} sub-networks of {h['teacher']}, code "
                         f"{h['code_version']})" for h in headers)
             + f"; whole run {total / 60:.1f} min"
             + (f", meta-training {meta['seconds']:.0f} s each ({meta['iterations']} iterations, {meta['seeds']} "
                f"independent meta-trainings: seed s fine-tunes meta-training s mod {meta['seeds']})" if meta else "")
             + f". PPO: M={exp.M}, lr {exp.ppo.lr:g}, {exp.ppo.num_epochs} epochs, entropy {exp.ppo.entropy_coeff:g}.",
             "", "| searcher | " + " | ".join(f"regret N={n}" for n in budgets) + " | "
             + " | ".join(f"rank N={n}" for n in budgets) + f" | best found N={budgets[-1]} | s/search |",
             "|" + "---|" * (3 + 2 * len(budgets))]
    for s in searchers:
        reg = [ci95([c[n - 1] for c in curves[s]]) for n in budgets]
        rk = [ci95([float(r) for r in ranks[s, n]]) for n in budgets]
        runs = 1 if s in DETERMINISTIC else args.seeds
        lines.append(f"| {s} | " + " | ".join(f"{m:.4f} ± {h:.4f}" for m, h in reg) + " | "
                     + " | ".join(f"{m:.0f} ± {h:.0f}" for m, h in rk)
                     + f" | {found_share(best_found, [t.name for t in tasks], s)} | "
                     f"{seconds[s] / (runs * len(tasks)):.2f} |")
    lines += ["", "_regret = best reward in the table (within the task's budget) minus the best reward among the first "
              "N distinct evaluations; rank of that pick among the task's feasible sub-networks (1 = best); mean ± "
              "95% CI half-width over tasks x seeds; rewards are robust accuracy relative to the teacher's, with the "
              "MACs bonus (docs/method.md); the proxy's validation split only_", "",
              "Mean regret against distinct evaluations (all tasks and seeds):", "", "```",
              text_chart({s: [statistics.fmean(c[i] for c in curves[s]) for i in range(budgets[-1])]
                          for s in searchers}), "```"]
    return "\n".join(lines)


def found_share(best_found: dict[tuple[str, str], list[bool]], task_names: list[str], s: str) -> str:
    """How many of ``s``'s searches on ``task_names`` ended with the table's best sub-network, as "k/n"."""
    hits = [b for t in task_names for b in best_found[t, s]]
    return f"{sum(hits)}/{len(hits)}"


def per_task_tables(tasks: list[Task], searchers: list[str], budgets: list[int],
                    per_task: dict[tuple[str, str], list[list[float]]],
                    best_found: dict[tuple[str, str], list[bool]]) -> str:
    """One table per held-out task: each searcher's regret at every N (mean ± 95% CI over seeds) and how many seeds
    ended with the table's best (a deterministic rule: all or none)."""
    lines = [f"Per held-out task (mean regret ± 95% CI over seeds; best found = seeds whose pick at N={budgets[-1]} "
             "is the table's best):"]
    for t in tasks:
        lines += ["", f"**{t.name}**", "", "| searcher | " + " | ".join(f"regret N={n}" for n in budgets)
                  + f" | best found N={budgets[-1]} |", "|" + "---|" * (2 + len(budgets))]
        for s in searchers:
            reg = [ci95([c[n - 1] for c in per_task[t.name, s]]) for n in budgets]
            lines.append(f"| {s} | " + " | ".join(f"{m:.4f} ± {h:.4f}" for m, h in reg)
                         + f" | {found_share(best_found, [t.name], s)} |")
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
