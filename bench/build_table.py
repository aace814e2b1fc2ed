"""Build a tabular benchmark: every sub-network of the tasks' teacher within their largest budget, scored by their
proxy (one fine-tuning, every task's attack), through the evaluation service and its store.

Resumable: the store in ``--out`` keeps every finished evaluation, so an interrupted run picks up where it stopped
(kill it at any time; run the same command again). The table file is written when every row is in.

    python bench/build_table.py [--tasks digits-pgd-e20-t444-r35,digits-fgsm-e20-t444-r50,digits-cw-e20-t444-r30]
        [--out runs/table/digits-e20-t444] [--table bench/tables/digits-e20-t444.csv.gz] [--workers 2] [--limit N]
        [--screening]

``--screening``: the same sub-networks at the screening fidelity (``screening: {by: low_fidelity}``'s default
settings: inherit, recalibrate BN, no fine-tuning), into ``<table>-screen.csv.gz`` from the store
``<out>-screen``: what the table benchmark's ``+screen`` searchers read.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict

from agents.config import task_path
from rcnas.config import ScreeningConfig
from rcnas.distributed.resources import ensure_ray
from rcnas.distributed.service import RayEvaluator, evaluation_service
from rcnas.infra.cli import run_main
from rcnas.infra.provenance import code_version
from rcnas.proxy.keys import fidelity_key, teacher_key
from rcnas.search.screening import low_fidelity_task
from rcnas.search.table import Row, attack_column, every_subnet, numerics, table_task, task_for_column, write_table
from rcnas.task import load_task

SERVICE = "bench-tabulate"
DEFAULT_TASKS = "digits-pgd-e20-t444-r35,digits-fgsm-e20-t444-r50,digits-cw-e20-t444-r30"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated task names or YAML paths")
    ap.add_argument("--out", default="runs/table/digits-e20-t444", help="run folder (the store: resumable)")
    ap.add_argument("--table", default="bench/tables/digits-e20-t444.csv.gz", help="the table file to write")
    ap.add_argument("--workers", type=int, default=None, help="evaluation workers (default: one per CPU)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N sub-networks (a smoke run)")
    ap.add_argument("--screening", action="store_true", help="the screening fidelity's table (see above)")
    args = ap.parse_args(argv)
    tasks = [load_task(task_path(t.strip())) for t in args.tasks.split(",") if t.strip()]
    if args.screening:
        low = ScreeningConfig(by="low_fidelity")
        tasks = [low_fidelity_task(t, low) for t in tasks]
        args.out += "-screen"
        args.table = args.table.removesuffix(".csv.gz") + "-screen.csv.gz"
    ttask = table_task(tasks)
    space = ttask.space
    archs = [space.arch(a) for a in every_subnet(space)]
    # a fixed shuffle: the rate and ETA seen early hold for the whole run (small and large sub-networks mix)
    random.Random(0).shuffle(archs)
    if args.limit is not None:
        archs = archs[: args.limit]
    print(f"table of {len(archs)} sub-networks of {ttask.teacher.name} within {ttask.config.budget.ratio:.0%} of its "
          f"MACs; columns {[attack_column(ttask.config.attack), *ttask.config.proxy.also_attacks]}", flush=True)

    ensure_ray()
    with evaluation_service(args.out, n_workers=args.workers, name=SERVICE):  # the service for this block
        ev = RayEvaluator(SERVICE, client="tabulate")
        cols = [attack_column(ttask.config.attack), *ttask.config.proxy.also_attacks]
        teacher = {c: asdict(ev.teacher_stats(task_for_column(ttask, c))) for c in cols}
        print("teacher " + ", ".join(f"{c} {t['robust_acc']:.4f}" for c, t in teacher.items()), flush=True)

        rows: list[Row] = []
        n_val = 0
        t0, computed = time.perf_counter(), 0
        pool = ThreadPoolExecutor(max_workers=2 * max(1, len(ev.placement())))
        try:
            futures = {pool.submit(ev.evaluate, ttask, arch): arch for arch in archs}
            for i, fut in enumerate(as_completed(futures), 1):
                e = fut.result()
                m = e.metrics
                computed += not e.cached
                n_val = m.n_val
                rows.append(Row(futures[fut], m.macs, m.params, m.status, m.clean_acc,
                                {cols[0]: m.robust_acc, **m.also}, m.seconds))
                if i % 25 == 0 or i == len(archs):
                    el = time.perf_counter() - t0
                    rate = computed / el if computed else 0.0
                    eta = (len(archs) - i) / rate / 60 if rate else 0.0
                    print(f"{i}/{len(archs)} done ({computed} computed now, {i - computed} from the store), "
                          f"{rate * 60:.1f}/min, ETA {eta:.0f} min", flush=True)
        finally:
            # Ctrl-C: the sub-networks not yet started are dropped, not evaluated first (a pool's own exit waits
            # for every queued one: hours); what finished is in the store for the next run
            pool.shutdown(wait=False, cancel_futures=True)
    if args.limit is not None:
        print("--limit: no table written (it would be incomplete)")
        return 0
    header = {
        "teacher": ttask.teacher.name, "teacher_key": teacher_key(ttask), "fidelity_key": fidelity_key(ttask.config),
        "proxy": ttask.config.proxy.model_dump(exclude={"also_attacks"}), "ratio": ttask.config.budget.ratio,
        "attacks": {cols[0]: ttask.config.attack.model_dump(),
                    **{c: a.model_dump() for c, a in ttask.config.proxy.also_attacks.items()}},
        "teacher_stats": teacher, "base_channels": list(ttask.teacher.base_channels), "n_val": n_val,
        "tasks": [t.name for t in tasks], "code_version": code_version(), "rows": len(rows),
        **numerics(),  # the rows are this CPU's and this torch's figures: another rounds differently
        "command": "python bench/build_table.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
    }
    write_table(args.table, header, rows, [
        f"{len(rows)} sub-networks of {ttask.teacher.name} within {ttask.config.budget.ratio:.0%} of its MACs, "
        f"dataset {ttask.config.dataset.name} (validation split, {header['n_val']} examples)",
        f"columns: robust accuracy per attack ({fidelity_words(ttask.config.proxy.epochs)}), clean accuracy, "
        "seconds the evaluation took",
    ])
    print(f"wrote {args.table} ({len(rows)} rows)")
    return 0


def fidelity_words(epochs: float) -> str:
    """What a row's figures measured, for the table's comment line."""
    if epochs == 0:
        return "screening fidelity: inherit, recalibrate BN, attack; no fine-tuning"
    return f"proxy: inherit, fine-tune adversarially for {epochs:g} epoch(s), attack"


if __name__ == "__main__":
    run_main(main)
