"""The search at 8, 32 and 128 GPU workers, simulated: how busy the workers are, and what the policy learns per
evaluation, for the async sampler (the default) against RLlib's env runners (the search before it).

What is real: the agent (RLlib PPO, the stage-encoder policy, the compression env, the async sampler or RLlib's env
runners) and the answers (the digits table: every sub-network's measured proxy robustness, so regret is known). What
is simulated: the evaluation workers. Each evaluation holds one of W worker slots for the time the GPU cost model
gives it, scaled down by ``--time-scale`` so that it runs here:

    seconds = (fine-tune + attack at the reference size) x (its MACs / the reference MACs) x spread x straggler

with the reference figures of BENCHMARKS.md's GPU cost model (one proxy fine-tune 22 s at 5G MACs on an H100, then
the task's attack: PGD-20 4.7 s, CW 9.1 s, FGSM 0.5 s, AutoAttack 91 s), the digits teacher standing for a 10G-MACs
CIFAR teacher, a log-normal spread (sd 0.15) and one evaluation in 20 a straggler taking 4x (a slow node, a retried
worker). Repeats of a sub-network are answered at once, as the store answers them.

Two parts:
    1. **Utilisation**: meta-training on the experiment's meta tasks for ``--evaluations`` episodes (at least 4 W)
       at each W, for RLlib's env runners, the async sampler, and the async sampler taking episodes in order:
       busy worker-seconds over W x wall seconds, and evaluations per simulated GPU-hour. RLlib's env runners are
       run as on the cluster (``env_runners`` of the shipped cifar10 experiment, 8, one process each).
    2. **Regret per evaluation**: PPO from scratch on each held-out task, ``--seeds`` seeds, to N = 25 and 50
       distinct evaluations: the table's best reward within the budget minus the best found (mean and 95% CI over
       task x seed), for RLlib's sampler (one evaluation at a time: its sample efficiency does not depend on the
       runner count) and the async one at each W (its policy lag grows with W). These runs use their own time
       scale (``REGRET_SCALE_*``): what matters is the order evaluations come back in.

    python bench/scale_simulation.py [--workers 8,32,128] [--evaluations 400] [--seeds 30] [--time-scale 0.05]
        [--out runs/bench/scale-simulation]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from agents.async_ppo import episodes_per_update
from agents.config import load_experiment, task_path, with_changes
from agents.ppo import build_ppo_config
from agents.stages import stage_length
from envs.compression_env import CompressionEnv
from rcnas.distributed.resources import ensure_ray
from rcnas.infra.cli import run_main
from rcnas.proxy.records import Evaluation, TeacherStats
from rcnas.search.quality import best_so_far, ci95, held
from rcnas.search.table import Scorer, TableEvaluator, open_table
from rcnas.space.arch import ArchSpec
from rcnas.task import Task, load_task, shared_grid

FINE_TUNE_S = 22.0
"""one proxy fine-tune (1 epoch on 20% of CIFAR's train split) of a 5G-MACs sub-network on an H100, bf16"""
ATTACK_S = {"pgd": 4.7, "cw": 9.1, "fgsm": 0.5, "aa": 91.0}
"""the task's attack on 1,000 validation images at 5G MACs (PGD-20 and CW-40 measured, FGSM one step of PGD's cost,
standard AutoAttack assumed 10x CW-40)"""
REFERENCE_MACS = 5.0e9
TEACHER_MACS = 10.0e9
"""the CIFAR teacher the digits teacher stands for: candidates within 25-50% of it are 2.5-5G"""
SPREAD = 0.15
STRAGGLER = (0.05, 4.0)
"""one evaluation in 20 takes 4x"""
SHIPPED_ENV_RUNNERS = 8
"""configs/experiments/cifar10.yaml: env_runners 8 on 8 GPU workers"""
ENV = "rcnas-simulated"
REGRET_SCALE_PER_WORKER = 0.0025
"""the regret runs' time scale per worker: 0.02 at W = 8 (an evaluation back every ~50 ms, an update every ~250 ms,
the agent's ~80 ms update keeps up), 0.32 at W = 128"""
REGRET_SCALE_SEQUENTIAL = 0.0005
MODE_NAMES = {("env_runners", False): "env_runners", ("async", False): "async", ("async", True): "ordered"}


def gpu_seconds(task: Task, arch: ArchSpec, macs: int) -> float:
    """The cost model's seconds for one evaluation, the same for the same task and sub-network (seeded by them)."""
    seed = int.from_bytes(hashlib.sha256(f"{task.name}/{arch.key()}".encode()).digest()[:8], "little")
    u1, u2, u3 = ((seed >> s) % 1_000_003 / 1_000_003 for s in (0, 20, 40))
    normal = math.sqrt(-2 * math.log(max(u1, 1e-12))) * math.cos(2 * math.pi * u2)
    share = macs / task.teacher_macs * TEACHER_MACS / REFERENCE_MACS
    base = (FINE_TUNE_S + ATTACK_S[task.config.attack.name]) * share
    return base * math.exp(SPREAD * normal) * (STRAGGLER[1] if u3 < STRAGGLER[0] else 1.0)


class SimulatedWorkers:
    """The table's answer after holding one of ``workers`` slots for the cost model's time x ``scale``; every
    evaluation's (start, end) is appended to ``log`` (one JSON line each: env runner processes write there too)."""

    def __init__(self, table_file: str, task_file: str, workers: int, scale: float, log: str) -> None:
        self.table = TableEvaluator(open_table(table_file, load_task(task_file)))
        self.workers, self.scale, self.log = workers, scale, log
        self._slots = threading.Semaphore(workers)
        self._lock = threading.Lock()

    def teacher_stats(self, task: Task) -> TeacherStats:
        return self.table.teacher_stats(task)

    def stats(self) -> dict[str, int]:
        return {"workers": self.workers}  # what the async sampler sizes its default in_flight by, as the service's

    def evaluate(self, task: Task, arch: ArchSpec) -> Evaluation:
        with self._lock:
            result = self.table.evaluate(task, arch)
        if result.cached:  # the store answers a repeat without a worker
            return result
        seconds = gpu_seconds(task, arch, result.metrics.macs)
        with self._slots:
            start = time.monotonic()
            time.sleep(seconds * self.scale)
            end = time.monotonic()
        with self._lock, open(self.log, "a") as f:
            f.write(json.dumps({"start": start, "end": end, "gpu_s": seconds, "task": task.name,
                                "arch": arch.key()}) + "\n")
        return result

    def __deepcopy__(self, memo: dict[int, Any]) -> SimulatedWorkers:
        return self  # RLlib copies env_config: the copy must share the slots and the request log

    def __getstate__(self) -> dict[str, Any]:
        # RLlib puts its config in the object store for remote env runners (none in the async runs): a copy there
        # gets slots of its own
        return {k: v for k, v in self.__dict__.items() if k not in ("_slots", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._slots, self._lock = threading.Semaphore(self.workers), threading.Lock()


def steady_utilisation(rows: list[dict[str, Any]], workers: int) -> float:
    """Busy worker-seconds over W x the time from the first evaluation's start to the last one's: how busy the
    workers are while the search still has evaluations to hand out (a finite run then drains: its last evaluations
    run with fewer beside them, a few percent of a search of hundreds of rounds, more of a short benchmark run)."""
    if not rows:
        return math.nan
    a, b = min(r["start"] for r in rows), max(r["start"] for r in rows)
    if b <= a:
        return math.nan
    busy = sum(max(0.0, min(r["end"], b) - max(r["start"], a)) for r in rows)
    return busy / (workers * (b - a))


def make_env(cfg: dict[str, Any]) -> CompressionEnv:
    """An env runner's env (RLlib's sampler): the simulated workers built in its own process."""
    sim = cfg["simulated"]
    workers = SimulatedWorkers(sim["table"], sim["task"], sim["workers"], sim["scale"], sim["log"])
    return CompressionEnv(tasks=cfg["tasks"], grid=cfg.get("grid"), evaluator=workers,
                          avoid_repeats=cfg.get("avoid_repeats", False))


def search(exp: Any, tasks: list[str], grid: tuple[int, int], sampler: str, workers: int, scale: float,
           table_file: str, log: Path, episodes: int, runners: int = 0, ordered: bool = False,
           distinct_limit: int | None = None) -> dict[str, Any]:
    """PPO over ``tasks`` until ``episodes`` episodes (M per iteration, or the async sampler's larger batches), or
    until ``distinct_limit`` distinct evaluations came back; the evaluations' intervals go to ``log`` (a new file:
    evaluations of an earlier run may still be sleeping in their threads)."""
    if log.exists():
        raise FileExistsError(f"{log} exists: each run needs its own interval log")
    exp = with_changes(exp, "simulation", sampler=sampler, env_runners=runners, ordered=ordered)
    per_update = (episodes_per_update(exp.M, workers + exp.M, exp.policy_lag) if sampler == "async" else exp.M)
    iterations = max(1, episodes // per_update)
    config = build_ppo_config(exp, tasks, "", grid=grid, search_metrics=False)
    env_config = {**config.env_config, "simulated": {"table": table_file, "task": tasks[0], "workers": workers,
                                                     "scale": scale, "log": str(log)}}
    if sampler == "async":  # the env in this process, its evaluator given whole
        env_config["evaluator"] = SimulatedWorkers(table_file, tasks[0], workers, scale, str(log))
        config = config.environment(env=CompressionEnv, env_config=env_config)
    else:
        config = config.environment(env=ENV, env_config=env_config)
    algo = stage_length(config, iterations).build_algo()
    t0 = time.monotonic()
    try:
        for _ in range(iterations):
            algo.train()
            if distinct_limit is not None and log.is_file() and len(log.read_text().splitlines()) >= distinct_limit:
                break
        wall = time.monotonic() - t0
    finally:
        algo.stop()
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    busy = sum(r["end"] - r["start"] for r in rows)
    return {"sampler": sampler, "ordered": ordered, "workers": workers, "runners": runners, "iterations": iterations,
            "evaluations": len(rows), "wall_s": wall, "busy_s": busy,
            "utilisation": busy / (workers * wall) if wall > 0 else math.nan,
            "steady": steady_utilisation(rows, workers),
            "gpu_s": sum(r["gpu_s"] for r in rows), "sim_hours": wall / scale / 3600,
            "requests": [(r["task"], r["arch"]) for r in rows], "intervals": rows}


def regret_run(exp: Any, task_file: str, grid: tuple[int, int], sampler: str, workers: int, scale: float,
               table_file: str, log: Path, n: int, seed: int) -> tuple[list[float], list[float]]:
    """PPO from scratch on one task until ``n`` distinct evaluations (or 4 n / M iterations): the regret after
    each distinct evaluation, and the simulated seconds at which each came back on ``workers`` GPUs. RLlib's
    sampler runs one at a time here (its order of decisions is what matters); on the cluster its iterations of M
    run side by side and wait for their slowest, so its time is that: the sum over groups of M of their longest."""
    task = load_task(task_file)
    exp = with_changes(exp, "simulation", seed=seed)
    run = search(exp, [task_file], grid, sampler, workers, scale, table_file, log, 4 * n, distinct_limit=n)
    table = TableEvaluator(open_table(table_file, task))
    scorer, col = Scorer(task, table), table.table.column_for(task)
    rows = [table.table.rows[arch] for _, arch in run["requests"][:n]]  # the log holds distinct ones only
    rewards = [scorer.reward(r.robust[col], r.macs, r.status == "ok") for r in rows]
    if sampler == "async":
        t0 = min(r["start"] for r in run["intervals"])
        times = [(r["end"] - t0) / scale for r in run["intervals"][:n]]
    else:
        times, clock = [], 0.0
        for i in range(0, len(rows), exp.M):
            group = run["intervals"][i:i + exp.M]
            clock += max(r["gpu_s"] for r in group)
            times += [clock] * len(group)
    return held([scorer.all[0] - b for b in best_so_far(rewards)], n), times


_RUNS = iter(range(10**9))


def fresh(out: Path, part: str) -> Path:
    """A new interval log under ``out/intervals`` (emptied when the benchmark starts)."""
    return out / "intervals" / f"{part}-{next(_RUNS):05d}.jsonl"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", default="bench/tables/digits-e20-t444.csv.gz")
    p.add_argument("--experiment", default="configs/experiments/digits.yaml")
    p.add_argument("--held-out", default="digits-cw-e20-t444-r30,digits-pgd-e20-t444-r45")
    p.add_argument("--workers", default="8,32,128")
    p.add_argument("--evaluations", type=int, default=400, help="episodes of the utilisation runs")
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--n", default="25,50")
    p.add_argument("--time-scale", type=float, default=0.05, help="real seconds per simulated GPU-second")
    p.add_argument("--parts", default="utilisation,regret")
    p.add_argument("--samplers", default="env_runners,async,ordered", help="utilisation: which samplers")
    p.add_argument("--lagged", default="as_sampled", choices=["as_sampled", "refresh"],
                   help="the experiment's lagged setting for the async runs")
    p.add_argument("--regret-workers", default=None, help="W of the async regret runs (default: --workers)")
    p.add_argument("--no-baseline", action="store_true", help="regret: skip RLlib's sampler")
    p.add_argument("--out", default="runs/bench/scale-simulation")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exp, metas, _ = load_experiment(args.experiment)
    # the agent's sampling is what is measured: no screening (its proposals would not reach the workers) and no
    # hand-over, whatever the experiment ships with
    exp = with_changes(exp, "--lagged", lagged=args.lagged, screening={"by": "none"}, handover={"evaluations": 0})
    held_out = [str(Path(task_path(t)).resolve()) for t in args.held_out.split(",")]
    metas = [str(Path(m).resolve()) for m in metas]
    every = [load_task(t) for t in [*metas, *held_out]]
    g = shared_grid(every)
    grid = (g.max_depth, g.max_width)
    table_file = str(Path(args.table).resolve())
    for t in every:
        open_table(table_file, t).column_for(t)  # every task answerable, before any work
    out = Path(args.out).resolve()
    (out / "intervals").mkdir(parents=True, exist_ok=True)
    for old in (out / "intervals").glob("*.jsonl"):
        old.unlink()
    ws = [int(w) for w in args.workers.split(",")]
    budgets = sorted(int(x) for x in args.n.split(","))
    ensure_ray(num_cpus=os.cpu_count(), verbose=False)
    from ray.tune.registry import register_env

    register_env(ENV, make_env)
    results: dict[str, Any] = {"args": vars(args), "utilisation": [], "regret": {}}
    if "utilisation" in args.parts:
        for w in ws:
            for sampler, runners, ordered in [m for m in (("env_runners", min(SHIPPED_ENV_RUNNERS, w), False),
                                                          ("async", 0, False), ("async", 0, True))
                                              if MODE_NAMES[m[0], m[2]] in args.samplers.split(",")]:
                # RLlib's runners cannot use more than their count: their figure needs no more evaluations at large W
                episodes = args.evaluations // 2 if sampler == "env_runners" else max(args.evaluations, 4 * w)
                r = search(exp, metas, grid, sampler, w, args.time_scale, table_file, fresh(out, "utilisation"),
                           episodes, runners, ordered)
                r.pop("requests"), r.pop("intervals")
                results["utilisation"].append(r)
                label = f"{sampler}{' ordered' if ordered else ''}"
                print(f"W={w:>4} {label:>13}: utilisation {r['utilisation']:.1%}, {r['evaluations']} evaluations "
                      f"in {r['wall_s']:.1f} s ({r['sim_hours']:.2f} simulated h)", flush=True)
    if "regret" in args.parts:
        rws = [int(w) for w in args.regret_workers.split(",")] if args.regret_workers else ws
        modes = [*([] if args.no_baseline else [("env_runners", 1)]), *(("async", w) for w in rws)]
        for sampler, w in modes:
            # the order evaluations come back in matters, not their length: shorter, as long as the agent keeps up
            # with W workers (about one update per M completions); one at a time, timing does not matter at all
            scale = REGRET_SCALE_PER_WORKER * w if sampler == "async" else REGRET_SCALE_SEQUENTIAL
            runs = [regret_run(exp, t, grid, sampler, w, scale, table_file, fresh(out, "regret"), budgets[-1], seed)
                    for t in held_out for seed in range(args.seeds)]
            key = f"{sampler}@{w}"
            curves = [c for c, _ in runs]
            results["regret"][key] = curves
            results.setdefault("regret_times", {})[key] = [t for _, t in runs]
            print(f"{key}: " + ", ".join(f"N={n} regret {ci95([c[n - 1] for c in curves])[0]:.4f} "
                                         f"+- {ci95([c[n - 1] for c in curves])[1]:.4f}" for n in budgets),
                  flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=0))
    print("\n" + render(results, budgets, args))
    return 0


def render(results: dict[str, Any], budgets: list[int], args: argparse.Namespace) -> str:
    lines = [f"time scale {args.time_scale} real s per simulated GPU-s; table {Path(args.table).name}", "",
             "| W | sampler | evaluations | utilisation (whole run) | while evaluations remain to start | "
             "evaluations per simulated GPU-hour held |",
             "|---|---|---|---|---|---|"]
    for r in results["utilisation"]:
        per_gpu_h = r["evaluations"] / (r["workers"] * r["sim_hours"]) if r["sim_hours"] else math.nan
        name = (f"RLlib env runners ({r['runners']})" if r["sampler"] == "env_runners"
                else "async, ordered" if r["ordered"] else "async")
        lines.append(f"| {r['workers']} | {name} | {r['evaluations']} | {r['utilisation']:.1%} | {r['steady']:.1%} | "
                     f"{per_gpu_h:.1f} |")
    if results["regret"]:
        base = results["regret"].get("env_runners@1")
        target = ci95([c[budgets[-1] - 1] for c in base])[0] if base else None
        lines += ["", "| sampler | " + " | ".join(f"regret at N={n} (95% CI)" for n in budgets)
                  + (f" | simulated hours to regret <= {target:.4f} (reached in) |" if target is not None else " |"),
                  "|---|" + "---|" * len(budgets) + ("---|" if target is not None else "")]
        for key, curves in results["regret"].items():
            cells = []
            for n in budgets:
                m, h = ci95([c[n - 1] for c in curves])
                cells.append(f"{m:.4f} +- {h:.4f}")
            if target is not None:
                reached = [t[next(i for i, r in enumerate(c) if r <= target + 1e-12)]
                           for c, t in zip(curves, results["regret_times"][key])
                           if any(r <= target + 1e-12 for r in c[:len(t)])]
                cells.append(f"{statistics.fmean(reached) / 3600:.2f} h ({len(reached)}/{len(curves)} runs)"
                             if reached else f"not reached (0/{len(curves)})")
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
