"""Evaluations per minute: an in-process sequential loop vs the Ray evaluation service with 1 and 2 workers, on the
same candidates; the service's overhead per evaluation; store lookups per second.

    python bench/service_throughput.py [--candidates 8] [--task configs/tasks/digits-pgd-e20-t444-r35.yaml]

The teacher is trained (or read from the cache) first, so every mode measures candidate evaluations only. Each
service mode gets a fresh store, so nothing is answered from a previous mode's results.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

from rcnas.distributed.resources import ensure_ray
from rcnas.distributed.service import evaluation_service
from rcnas.infra.cli import run_main
from rcnas.proxy.local import ProxyRunner, eval_key
from rcnas.proxy.store import EvaluationStore
from rcnas.task import load_task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="configs/tasks/digits-pgd-e20-t444-r35.yaml")
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--cache", default="runs/cache")
    args = p.parse_args()
    task = load_task(args.task)
    space = task.space
    rng = np.random.default_rng(0)
    archs = list({space.arch(space.sample(rng)) for _ in range(args.candidates * 3)})[: args.candidates]
    torch.set_num_threads(1)
    runner = ProxyRunner(args.cache)
    runner.teacher_stats(task)  # trains or loads the teacher: not part of any figure below

    t0 = time.perf_counter()
    seq = [runner.compute(task, a) for a in archs]
    t_seq = time.perf_counter() - t0
    rows = [("in-process, sequential, 1 thread", t_seq)]

    ensure_ray(num_cpus=2)
    tmp = Path(tempfile.mkdtemp(prefix="rcnas-bench-"))
    for n in (1, 2):
        with evaluation_service(tmp / f"run{n}", n_workers=n, cache_dir=args.cache, name=f"bench-{n}",
                                cpus_per_worker=1) as client:
            svc = client.handle
            ray.get(svc.teacher_stats.remote(task))
            ray.get([svc.placement.remote()])  # workers up before timing
            t0 = time.perf_counter()
            out = ray.get([svc.evaluate.remote(task, a) for a in archs])
            rows.append((f"service, {n} worker{'s' * (n > 1)}", time.perf_counter() - t0))
            assert all(not o.cached for o in out)
            if n == 1:
                same = sum(o.metrics.robust_acc == s.robust_acc for o, s in zip(out, seq))
                t0 = time.perf_counter()
                for _ in range(20):
                    ray.get([svc.evaluate.remote(task, a) for a in archs])
                svc_lookups = 20 * len(archs) / (time.perf_counter() - t0)
    store = EvaluationStore(tmp / "run1" / "evaluations.sqlite")
    keys = [eval_key(task, a) for a in archs]
    t0 = time.perf_counter()
    for _ in range(200):
        for k in keys:
            store.get(k)
    store_lookups = 200 * len(keys) / (time.perf_counter() - t0)

    n = len(archs)
    print(f"{n} candidates of {task.name}, proxy {task.config.proxy.epochs:g} epochs, n_val "
          f"{task.config.proxy.val_examples}")
    print(f"{'mode':36s} {'wall s':>8s} {'evals/min':>10s} {'vs 1 worker':>12s}")
    one = dict(rows)["service, 1 worker"]
    for name, t in rows:
        print(f"{name:36s} {t:8.1f} {60 * n / t:10.2f} {one / t:12.2f}")
    print(f"service overhead per evaluation (1 worker vs in-process, both 1 thread): "
          f"{(one - t_seq) / n:+.2f} s = {100 * (one - t_seq) / t_seq:+.1f}% of {t_seq / n:.2f} s")
    print(f"identical results in-process vs service: {same}/{n}")
    print(f"store lookups/s: {store_lookups:,.0f} direct SQLite, {svc_lookups:,.0f} through the service actor")


if __name__ == "__main__":
    run_main(main)
