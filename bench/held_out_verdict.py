"""Does the agent meet the held-out targets? Reads the ``results.json`` of ``bench/table_quality.py --kind ...`` runs
and, per held-out kind and per task (and pooled over a kind's tasks), compares the agent with every baseline:

- at the early budgets (default N = 10, 25) the agent must be **ahead**: its mean regret below every baseline's, with
  95% intervals that do not overlap;
- at the late ones (N = 50, 100) it must be **not behind**: no baseline's interval lies wholly below the agent's;
- **best found**: the share of its seeds whose pick at the last N is the table's best (regret 0) is at least every
  baseline's.

Other searchers of the run (``random+surrogate@0.1``, ablations) are shown beside the agent with ``--also``, and never
count as baselines.

Several folders of one kind (say, a run of another searcher on the same tasks) are read as one run. A searcher
measured only to a smaller N is judged there only (``--not-behind ""``).

    python bench/held_out_verdict.py runs/bench/tq-tighter runs/bench/tq-looser ... [--agent rl] [--also NAME,...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rcnas.infra.cli import run_main
from rcnas.infra.errors import ConfigError
from rcnas.search.quality import ci95

BASELINES = ("ppo-scratch", "random", "evolution", "compound", "uniform", "prune")
"""what the agent is measured against: PPO from scratch, the searches and the hand-made rules"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="output folders of table_quality.py runs (each holds results.json)")
    p.add_argument("--agent", default="rl")
    p.add_argument("--also", default="", help="comma-separated searchers shown beside the agent (not baselines)")
    p.add_argument("--ahead", default="10,25", help="budgets where the agent must be ahead")
    p.add_argument("--not-behind", default="50,100", help="budgets where it must not be behind")
    return p.parse_args(argv)


def read_run(folder: str) -> dict[str, Any]:
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; give the --out folder of a finished bench/table_quality.py run")
    try:
        data = json.loads(path.read_text())
        per_task = data["per_task"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: not the results of bench/table_quality.py with per-task curves "
                          "(re-run it)") from None
    tasks: dict[str, dict[str, list[list[float]]]] = {}
    for key, curves in per_task.items():
        task, _, searcher = key.partition("/")
        tasks.setdefault(task, {})[searcher] = curves
    return {"kind": data.get("kind") or Path(folder).name, "tasks": tasks}


def cell(curves: list[list[float]], n: int) -> tuple[float, float]:
    if any(len(c) < n for c in curves):
        raise ConfigError(f"a searcher was measured to fewer than N = {n} evaluations: judge it at smaller N only "
                          "(--ahead / --not-behind)")
    return ci95([c[n - 1] for c in curves])


def verdict(by: dict[str, list[list[float]]], agent: str, ahead: list[int], not_behind: list[int]) -> dict[str, Any]:
    """The agent against the baselines present in ``by`` (searcher -> one regret curve per seed)."""
    if agent not in by:
        raise ConfigError(f"searcher {agent!r} is not in these results (searchers: {', '.join(by)})")
    bases = [b for b in BASELINES if b in by]
    if not bases:
        raise ConfigError(f"no baseline in these results (searchers: {', '.join(by)}; baselines: "
                          f"{', '.join(BASELINES)}): give the folder of a run that measured them too")
    out: dict[str, Any] = {"cells": {}, "ok": True}
    for n in ahead + not_behind:
        m, h = cell(by[agent], n)
        others = {b: cell(by[b], n) for b in bases}
        best = min(others, key=lambda b: others[b][0])
        if n in ahead:
            ok = all(m + h < bm - bh for bm, bh in others.values())
        else:
            ok = not any(bm + bh < m - h for bm, bh in others.values())
        out["cells"][n] = (m, h, best, others[best], ok)
        out["ok"] &= ok
    last = max(ahead + not_behind)
    found = {s: sum(c[last - 1] <= 1e-12 for c in by[s]) for s in [agent, *bases]}
    most = max(bases, key=lambda b: found[b])
    out["found"] = (found[agent], len(by[agent]), most, found[most], len(by[most]))
    out["found_ok"] = found[agent] / len(by[agent]) >= found[most] / len(by[most])
    out["ok"] &= out["found_ok"]
    return out


def row(name: str, v: dict[str, Any], by: dict[str, list[list[float]]], also: list[str], ns: list[int]) -> str:
    cells = []
    for n in ns:
        m, h, best, (bm, bh), ok = v["cells"][n]
        extra = "".join(f"; {a} {cell(by[a], n)[0]:.3f}" for a in also if a in by)
        cells.append(f"{'**' if ok else ''}{m:.3f} ± {h:.3f}{'**' if ok else ''} vs {best} {bm:.3f} ± {bh:.3f}{extra}")
    fa, na, most, fm, nm = v["found"]
    return (f"| {name} | " + " | ".join(cells) + f" | {fa}/{na} vs {most} {fm}/{nm} | "
            + ("met" if v["ok"] else "not met") + " |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ahead = [int(x) for x in args.ahead.split(",") if x]
    not_behind = [int(x) for x in args.not_behind.split(",") if x]
    ns = ahead + not_behind
    also = [a for a in args.also.split(",") if a]
    runs: list[dict[str, Any]] = []
    for r in map(read_run, args.runs):  # runs of one kind (other searchers, same tasks) are read as one
        same = next((x for x in runs if x["kind"] == r["kind"]), None)
        if same is None:
            runs.append(r)
            continue
        for task, by in r["tasks"].items():
            if twice := set(by) & set(same["tasks"].get(task, {})):
                raise ConfigError(f"{sorted(twice)} on {task} are in two of the folders given for kind "
                                  f"{r['kind']}: give one run of each searcher")
            same["tasks"].setdefault(task, {}).update(by)
    print(f"The agent ({args.agent}) against the baselines ({', '.join(BASELINES)}): mean regret ± 95% CI at each N "
          f"and the best baseline there; bold = target met (ahead at N = {args.ahead}, intervals apart; not behind "
          f"at N = {args.not_behind}); best found = seeds whose pick at N = {max(ns)} is the table's best.\n")
    print("| kind / task | " + " | ".join(f"N={n}" for n in ns) + " | best found | targets |")
    print("|" + "---|" * (3 + len(ns)))
    for run in runs:
        pooled: dict[str, list[list[float]]] = {}
        for task, by in run["tasks"].items():
            print(row(f"{run['kind']} / {task}", verdict(by, args.agent, ahead, not_behind), by, also, ns))
            for s, curves in by.items():
                pooled.setdefault(s, []).extend(curves)
        print(row(f"**{run['kind']}, pooled**", verdict(pooled, args.agent, ahead, not_behind), pooled, also, ns))
    return 0


if __name__ == "__main__":
    run_main(main)
