"""The search as one keyword call (:func:`run_search`, also ``rcnas.run_search``), and train.py's body over it:
resolve the experiment and overrides, run the search, then the final comparison."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents import rerun
from agents.comparison import final_comparison
from agents.config import ExperimentConfig, load_experiment, task_path, with_changes
from agents.manifest import verify_from, verify_resume
from agents.overrides import apply_overrides, parse_sets
from agents.phases import SearchOptions, run_phases
from agents.size import run_size
from agents.stages import check_layout, module_dir
from agents.storage import pull, tune_uri
from rcnas.data.registry import load_splits
from rcnas.evaluation.jobs import read_results
from rcnas.evaluation.tables import text_table
from rcnas.infra.cli import RESUME_HINT
from rcnas.infra.errors import ConfigError
from rcnas.infra.files import inside
from rcnas.infra.locks import run_folder_lock
from rcnas.infra.log import log
from rcnas.infra.process import leaves_process_as_found
from rcnas.proxy.store import check_store
from rcnas.search.searchers import searcher_names
from rcnas.task import Task, load_task


@dataclass(frozen=True)
class SearchRun:
    """What :func:`search` returns."""

    out: Path
    summary: dict[str, Any]
    """what ``summary.json`` holds: the chosen sub-network, its YAML, reward, MACs, checkpoints, provenance"""
    results: list[Any] = field(default_factory=list)
    """the final comparison (``FinalResult`` per network; empty when the final evaluation did not run)"""


@leaves_process_as_found
def run_search(experiment: str | Path = "configs/experiments/digits.yaml", *, out: str | Path | None = None,
           task: str | None = None, M: int | None = None, seed: int | None = None, searcher: str = "rl", n: int = 25,
           from_checkpoint: str | None = None, resume: bool = False, no_tune: bool = False, final_eval: bool = True,
           data_root: str | None = None, ray_address: str | None = None, storage: str | None = None,
           allow_pending_workers: bool = False, overrides: list[str] | dict[str, Any] | None = None,
           verbose: bool = False, trust_checkpoint: bool = False, log: Callable[[str], None] = log) -> SearchRun:
    """Run the search (meta-train, fine-tune, report) and the final comparison; the Python form of train.py, whose
    flags are these keywords. Leaves the caller's process as it found it (Ray, torch's threads).

    Args:
        experiment: the experiment YAML (meta-training tasks, target task, PPO and worker settings).
        out: the run folder (default ``runs/<experiment name>``); one run at a time holds it.
        task: the target task (a YAML path or a name under ``configs/tasks``) instead of the experiment's.
        searcher: ``rl`` (meta-train + fine-tune), ``ppo-scratch``, or a baseline spending ``n`` evaluations.
        from_checkpoint: a meta checkpoint (``summary.json``'s ``meta_checkpoint``): fine-tune only.
        resume: continue the interrupted run in ``out`` (same settings).
        storage: a URI that keeps the run beyond this machine (``s3://``, ``gs://``, ``file://``).
        overrides: ``--set``: ``["training.epochs=2"]`` or ``{"ppo.lr": 0.001}``, any experiment or task key.
        trust_checkpoint: restore a checkpoint this user's key did not sign (pickles: only ones you trust).

    Returns:
        the run folder, what ``summary.json`` holds (paths absolute) and the final comparison's results.

    Raises:
        ConfigError: any bad input, before Ray starts or anything is computed.

    Example:
        >>> run = run_search("configs/experiments/smoke.yaml", out="runs/smoke", final_eval=False)  # doctest: +SKIP
    """
    import torch

    # the driver shares the machine with the evaluation workers: torch's default thread pool in every process
    # oversubscribes the cores (measured about 10x slower on 2 cores)
    torch.set_num_threads(1)
    exp, metas, target = load_experiment(experiment)
    if task:
        target = task_path(task)
        metas = [m for m in metas if Path(m).resolve() != Path(target).resolve()]
    if M is not None:
        if M < 1:
            raise ConfigError(f"--M {M}: the number of sub-networks per policy update must be >= 1")
        exp = with_changes(exp, f"--M {M}", M=M)
    if seed is not None:
        exp = with_changes(exp, f"--seed {seed}", seed=seed)
    out = Path(out or f"runs/{exp.name}")
    if from_checkpoint and "://" not in from_checkpoint:
        from_checkpoint = str(Path(from_checkpoint).resolve())  # Ray reads a relative path as a URI without scheme
    sets = parse_sets(overrides)
    # 1. every check that writes nothing, before the run folder is touched
    if storage:
        from agents.storage import check_storage, is_uri

        if not is_uri(storage):
            raise ConfigError(f"--storage {storage}: not a URI; give e.g. s3://bucket/runs/{exp.name} (for a folder "
                              "on this machine, --out is enough)")
        check_storage(storage)
    check_run_folder(out, resume and not storage)  # with --storage, a new head's folder is pulled under the lock
    target_task = load_task(target)
    if from_checkpoint and not Path(module_dir(from_checkpoint)).is_dir():
        raise ConfigError(f"--from {from_checkpoint}: not an algorithm checkpoint (no "
                          f"{module_dir(from_checkpoint)}); pass a meta checkpoint folder from summary.json")
    if from_checkpoint:
        verify_from(from_checkpoint, trust_checkpoint)  # a pickle: signed by this user's key, or trusted explicitly
        check_layout(from_checkpoint)
    if from_checkpoint and searcher != "rl":
        raise ConfigError(f"--from applies to the rl searcher, not --searcher {searcher}")
    if not metas and searcher == "rl" and not from_checkpoint:
        raise ConfigError(f"--task {task} was the experiment's only meta-training task: nothing is left to "
                          "meta-train on; pass --from <meta checkpoint> or another --experiment")
    if n < 1:
        raise ConfigError(f"--n {n}: a searcher needs at least one evaluation")
    if no_tune and (exp.trackers.mlflow or exp.trackers.wandb):
        raise ConfigError("trackers: MLflow and W&B receive Tune's results; drop --no-tune or the trackers section")
    if searcher not in searcher_names():
        raise ConfigError(f"--searcher {searcher}: unknown; choose from {', '.join(searcher_names())}")
    tasks = [target_task, *map(load_task, metas)]  # resolved once (again only if --set changes them)
    check_tasks(tasks, data_root)
    if ray_address:
        check_ray_address(ray_address)
    # --set checked now (nothing written: a refused command leaves no run folder), written under the lock
    check_workers_can_run(apply_overrides(exp, metas, target, sets, None)[0], ray_address, allow_pending_workers)
    opts = SearchOptions(out=out, no_tune=no_tune, resume=resume, from_checkpoint=from_checkpoint,
                         ray_address=ray_address, searcher=searcher, n=n, data_root=data_root, storage=storage,
                         verbose=verbose, trust_checkpoint=trust_checkpoint)
    # 2. the lock before any write or pull: a second run on a live folder changes nothing in it
    with run_folder_lock(out):
        if storage and resume and pull(storage, out):
            log(f"run folder pulled from {storage} (a new head): resuming from it")
        check_run_folder(out, resume)
        check_store(out / "evaluations.sqlite")  # a planted or damaged store: one line now, not tracebacks from Ray
        exp, metas, target = apply_overrides(exp, metas, target, sets, inside(out, "config/overridden"))
        if sets:
            tasks = [load_task(t) for t in [target, *metas]]
            target_task = tasks[0]
            check_tasks(tasks, data_root)
            check_workers_can_run(exp, ray_address, allow_pending_workers)
        fp = rerun.fingerprint(exp, tasks, searcher=searcher, n=n,
                               from_checkpoint=from_checkpoint, no_tune=no_tune)
        need_final = final_eval and exp.final_eval.enabled
        done = rerun.finished_summary(out, fp, need_final)
        if done is not None:
            log(f"{out} holds this run, finished: nothing is computed again (for a new run, pick another --out or "
                "other settings)")
            results = sorted(read_results(out / "final") if need_final else [], key=_comparison_order)
            return SearchRun(out, rerun.absolute_paths(out, done), results)
        if resume:
            rerun.check_resume(out, fp)
            verify_resume(out, trust_checkpoint, storage)  # Tune's state is pickles: signed, or trusted explicitly
        elif (moved := rerun.set_aside(out)) is not None:
            log(f"{out} held an earlier search (other settings, or interrupted and not resumed): its Tune "
                f"experiments and reports moved to {moved}; stored evaluations are reused")
        rerun.mark(out, fp, finished=False)
        log(run_size(exp, tasks, searcher=searcher, n=n, meta=not from_checkpoint,
                     final_eval=final_eval))
        run = _search_and_evaluate(exp, tasks, opts, final_eval, log)
        rerun.mark(out, fp, finished=True)
        return run


def _comparison_order(result: Any) -> int:
    """The comparison table's row order (results.json keeps them in the order they finished)."""
    return {"rl-chosen": 0, "uniform-shrink": 1, "slimming-pruned": 2}.get(result.name, 3)


def check_tasks(tasks: list[Task], data_root: str | None) -> None:
    """Every dataset and every imported teacher's weights the run needs, here and now: a missing dataset or a file
    that is not the teacher it claims is one line before Ray starts, not a worker's traceback minutes later."""
    for cfg in {t.config.dataset.model_dump_json(): t.config.dataset for t in tasks}.values():
        load_splits(cfg, data_root)
    seen: set[tuple[str, str]] = set()
    for t in tasks:
        w = t.config.teacher_weights
        if w is None or (w.path, w.format) in seen:
            continue
        seen.add((w.path, w.format))
        from rcnas.evaluation.command import check_checkpoint

        check_checkpoint(w.path, t.teacher.arch, t, w.format, f"{t.source or t.name}: teacher_weights.path",
                         t.teacher.name)


def check_ray_address(address: str, timeout_s: float = 10.0) -> None:
    """An explicit Ray address must answer: an unreachable one would otherwise hang in ``ray.init`` for minutes."""
    import socket

    if address in ("auto", "local"):
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--ray-address {address}: give host:port (e.g. 10.0.0.5:6379, the head's GCS address) "
                          "or ray://host:10001")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"--ray-address {address}: nothing answers there ({exc.strerror or exc}); is the cluster "
                          "up (ray status on the head) and the port open to this machine?") from None


def run_pipeline(args: argparse.Namespace, argv: list[str]) -> int:
    """train.py's body: its flags as :func:`search`'s keywords, the table printed, the resume hint set."""
    RESUME_HINT.append(" ".join(["python train.py", *argv, *([] if args.resume else ["--resume"])]))
    run = run_search(args.experiment, out=args.out, task=args.task, M=args.M, seed=args.seed, searcher=args.searcher,
                 n=args.n, from_checkpoint=args.from_checkpoint, resume=args.resume, no_tune=args.no_tune,
                 final_eval=not args.no_final_eval, data_root=args.data_root, ray_address=args.ray_address,
                 storage=args.storage, allow_pending_workers=args.allow_pending_workers, overrides=args.set,
                 verbose=args.verbose, trust_checkpoint=args.trust_checkpoint)
    if run.results:
        print(text_table(run.results))
    tune_dir = tune_uri(args.storage) if args.storage else run.out / "tune"
    print(f"\nrun folder: {run.out}{f' (kept at {args.storage})' if args.storage else ''} (tensorboard --logdir "
          f"{tune_dir})")
    return 0


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
            "cannot grow; run it on a cluster (as a Ray job there, or with --ray-address: README 'On a Ray "
            "cluster'), set workers.gpus to 0 to evaluate on CPUs, or pass --allow-pending-workers to wait anyway")


def check_run_folder(out: Path, resume: bool) -> None:
    """``--out`` must be a folder; ``--resume`` needs something there to resume."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a folder; pick a folder for the run")
    if resume and not ((out / "tune").is_dir() or (out / "evaluations.sqlite").is_file()):
        raise ConfigError(f"--resume: {out} holds no run to resume (no tune/ or evaluations.sqlite there); check "
                          "the folder, or drop --resume to start a new run")


def _search_and_evaluate(exp: ExperimentConfig, tasks: list[Task], opts: SearchOptions,
                         final_eval: bool, log: Callable[[str], None]) -> SearchRun:
    outcome = run_phases(exp, tasks, opts, log=log)
    summary = outcome.summary
    log(f"chosen: {summary['chosen']} (reward {summary['reward']:.4f}, val robust acc "
        f"{summary['val_robust_acc']:.4f}, {summary['macs']:,} MACs <= budget {summary['budget']:,.0f}); "
        f"written {summary['yaml']} and {opts.out / 'report.md'}")
    results: list[Any] = []
    if exp.final_eval.enabled and final_eval:
        from rcnas.space.schema import load_subnet

        chosen, _ = load_subnet(summary["yaml"])
        results = final_comparison(exp, tasks[0], chosen, opts.out / "final", data_root=opts.data_root,
                                   teacher_weights=outcome.teacher_weights, pruned=outcome.pruned)
    if opts.storage:
        from agents.storage import push

        push(opts.out, opts.storage, include_tune=opts.no_tune)
    return SearchRun(opts.out, summary, results)
