"""train.py's body: resolve the experiment and CLI overrides, run the search, then the final comparison."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agents.comparison import final_comparison
from agents.config import ExperimentConfig, load_experiment, task_path
from agents.search import SearchOptions, run_search
from agents.stages import check_layout, module_dir
from rcnas.data.registry import load_splits
from rcnas.evaluation.tables import text_table
from rcnas.infra.cli import RESUME_HINT
from rcnas.infra.errors import ConfigError
from rcnas.infra.locks import run_folder_lock
from rcnas.task import Task, load_task


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_pipeline(args: argparse.Namespace) -> int:
    import torch

    # the driver shares the machine with the evaluation workers: torch's default thread pool in every process
    # oversubscribes the cores (measured about 10x slower on 2 cores)
    torch.set_num_threads(1)
    exp, metas, target = load_experiment(args.experiment)
    if args.task:
        target = task_path(args.task)
        metas = [m for m in metas if Path(m).resolve() != Path(target).resolve()]
    if args.M is not None:
        exp = exp.model_copy(update={"M": args.M})
    # every user mistake is reported before Ray starts
    task = load_task(target)
    if args.from_checkpoint and not Path(module_dir(args.from_checkpoint)).is_dir():
        raise ConfigError(f"--from {args.from_checkpoint}: not an algorithm checkpoint (no "
                          f"{module_dir(args.from_checkpoint)}); pass a meta checkpoint folder from summary.json")
    if args.from_checkpoint:
        check_layout(args.from_checkpoint)
    if args.from_checkpoint and args.searcher != "rl":
        raise ConfigError(f"--from applies to the rl searcher, not --searcher {args.searcher}")
    if not metas and args.searcher == "rl" and not args.from_checkpoint:
        raise ConfigError(f"--task {args.task} was the experiment's only meta-training task: nothing is left to "
                          "meta-train on; pass --from <meta checkpoint> or another --experiment")
    if args.n < 1:
        raise ConfigError(f"--n {args.n}: a searcher needs at least one evaluation")
    if args.M is not None and args.M < 1:
        raise ConfigError(f"--M {args.M}: the number of sub-networks per policy update must be >= 1")
    out = Path(args.out or f"runs/{exp.name}")
    check_run_folder(out, args.resume)
    check_workers_can_run(exp, args.ray_address, args.allow_pending_workers)
    # every dataset the run needs, here and now: a missing one is one line before Ray starts, not minutes later
    for cfg in {t.config.dataset.model_dump_json(): t.config.dataset for t in [task, *map(load_task, metas)]}.values():
        load_splits(cfg, args.data_root)
    opts = SearchOptions(out=out, no_tune=args.no_tune, resume=args.resume, from_checkpoint=args.from_checkpoint,
                         ray_address=args.ray_address, searcher=args.searcher, n=args.n, data_root=args.data_root)
    RESUME_HINT.append(" ".join(["python train.py", *sys.argv[1:], *([] if args.resume else ["--resume"])]))
    with run_folder_lock(out):
        return _search_and_evaluate(args, exp, metas, target, task, out, opts)


def check_workers_can_run(exp: ExperimentConfig, ray_address: str | None, insist: bool = False) -> None:
    """An experiment whose workers need GPUs cannot run on a Ray that this process starts on a machine without
    one: nothing would ever add a GPU, and the pool would wait for hours. Refused before anything starts, unless
    the user insists; a cluster joined with an address may grow (an autoscaler), so it is waited for instead."""
    import os

    gpus = exp.workers.gpus
    if not gpus or insist or ray_address or os.environ.get("RAY_ADDRESS"):
        return
    import torch

    if torch.cuda.device_count() == 0:
        raise ConfigError(
            f"{exp.name}: workers.gpus is {gpus:g} per worker, but this machine has no GPU and the Ray started here "
            "cannot grow; run it on a cluster (--ray-address, see README 'On a Ray cluster'), set workers.gpus "
            "to 0 to evaluate on CPUs, or pass --allow-pending-workers to wait anyway")


def check_run_folder(out: Path, resume: bool) -> None:
    """``--out`` must be a folder; ``--resume`` needs something there to resume."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a folder; pick a folder for the run")
    if resume and not ((out / "tune").is_dir() or (out / "evaluations.sqlite").is_file()):
        raise ConfigError(f"--resume: {out} holds no run to resume (no tune/ or evaluations.sqlite there); check "
                          "the folder, or drop --resume to start a new run")


def _search_and_evaluate(args: argparse.Namespace, exp: ExperimentConfig, metas: list[str], target: str, task: Task,
                         out: Path, opts: SearchOptions) -> int:
    outcome = run_search(exp, metas, target, opts, log=log)
    summary = outcome.summary
    log(f"chosen: {summary['chosen']} (reward {summary['reward']:.4f}, val robust acc "
        f"{summary['val_robust_acc']:.4f}, {summary['macs']:,} MACs <= budget {summary['budget']:,.0f}); "
        f"written {summary['yaml']} and {out / 'report.md'}")
    if exp.final_eval.enabled and not args.no_final_eval:
        from rcnas.space.schema import load_subnet

        chosen, _ = load_subnet(summary["yaml"])
        results = final_comparison(exp, task, chosen, out / "final", data_root=args.data_root,
                                   teacher_weights=outcome.teacher_weights)
        print(text_table(results))
    print(f"\nrun folder: {out} (tensorboard --logdir {out / 'tune'})")
    return 0


