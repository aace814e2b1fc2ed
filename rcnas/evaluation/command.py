"""The body of ``evaluate.py``: load sub-network files and the task, check them, evaluate (in-process or on Ray
workers), write ``results.json`` / ``results.md`` and print the table."""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import yaml

from rcnas.data.registry import load_splits
from rcnas.evaluation.final import EvalJob, FinalResult, evaluate_job
from rcnas.evaluation.tables import markdown_table, text_table
from rcnas.infra.errors import ConfigError
from rcnas.infra.files import write_atomic
from rcnas.space.arch import ArchSpec, InputShape
from rcnas.space.cost import arch_cost
from rcnas.space.schema import SubnetFile, load_subnet
from rcnas.task import Task, load_task
from rcnas.vocab import SUITE


@dataclass(frozen=True)
class EvaluateArgs:
    configs: list[str]
    task: Optional[str]
    attacks: str
    epochs: Optional[float]
    checkpoint: Optional[str]
    n_examples: Optional[int]
    seed: int
    out: Optional[str]
    data_root: Optional[str]
    profile: bool
    no_ray: bool
    ray_address: Optional[str]
    teacher: bool = False
    """evaluate the task's imported teacher (its ``teacher_weights``) instead of configs"""
    export: Optional[str] = None
    """a folder: each evaluated network is also exported for RobustBench there (``rcnas.evaluation.export``)"""
    data_parallel: int = 1
    """train each network on this many data-parallel workers (Ray Train); 1: one process each"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_attacks(text: str) -> tuple[str, ...]:
    labels = tuple(a.strip() for a in text.split(",") if a.strip())
    bad = [a for a in labels if a not in SUITE]
    if bad or not labels:
        raise ConfigError(f"--attacks: unknown {bad}; choose from {', '.join(SUITE.ordered())} (comma-separated)")
    return labels


def check_fits(path: str, arch: ArchSpec, sub: SubnetFile, task: Task) -> None:
    why = task.teacher.contains(arch)
    if why:
        raise ConfigError(f"{path}: {why}; evaluate it with a task whose teacher contains it")
    if sub.model.num_classes is not None and sub.model.num_classes != task.shape.num_classes:
        raise ConfigError(f"{path}: model.num_classes is {sub.model.num_classes} but {task.config.dataset.name} has "
                          f"{task.shape.num_classes} classes")


def check_checkpoint(path: str, arch: ArchSpec, task: Task, fmt: str = "rcnas", flag: str = "--checkpoint",
                     name: str = "the sub-network") -> None:
    """The weights load into ``arch`` as safe tensors and match it exactly, or one line says why (before any long
    work starts)."""
    from rcnas.models.builder import build_model
    from rcnas.models.imports import load_weights

    if not Path(path).is_file():
        raise ConfigError(f"{flag} {path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error says it all
            load_weights(build_model(arch, task.shape), path, fmt, name)
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def check_values(args: EvaluateArgs) -> None:
    """The numeric flags, before anything is loaded."""
    if args.epochs is not None and not (math.isfinite(args.epochs) and args.epochs > 0):
        raise ConfigError(f"--epochs {args.epochs}: a training length is a positive number of epochs")
    if args.n_examples is not None and args.n_examples < 1:
        raise ConfigError(f"--n-examples {args.n_examples}: attack at least one example")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: a file, not a folder; pick a folder for the results")
    if args.data_parallel < 1:
        raise ConfigError(f"--data-parallel {args.data_parallel}: train on at least one worker")
    if args.export and Path(args.export).exists() and not Path(args.export).is_dir():
        raise ConfigError(f"--export robustbench {args.export}: a file, not a folder; pick a folder for the export")


def profile(args: EvaluateArgs) -> int:
    shape = load_task(args.task).shape if args.task else InputShape()
    out = []
    for path in args.configs:
        arch, sub = load_subnet(path)
        if not args.task and sub.model.num_classes:
            shape = InputShape(shape.channels, shape.resolution, sub.model.num_classes)
        cost = arch_cost(arch, shape)
        out.append({"config": path, "arch": arch.short(), "params": cost.params, "macs": cost.macs,
                    "input": {"channels": shape.channels, "resolution": shape.resolution,
                              "num_classes": shape.num_classes}})
    print(json.dumps(out if len(out) > 1 else out[0], indent=2))
    return 0


def read_results(out: Path) -> list[FinalResult]:
    """The results already in ``out/results.json`` (none when there is no such file)."""
    path = out / "results.json"
    if not path.is_file():
        return []
    try:
        return [FinalResult.from_json(r) for r in json.loads(path.read_text())]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a results file of this version ({exc}); move it away or pick another "
                          "--out") from None


def run_jobs(jobs: list[EvalJob], out: Path, no_ray: bool = False, ray_address: str | None = None,
             log: Callable[[str], None] = log) -> list[FinalResult]:
    """Evaluate ``jobs`` (on Ray workers when there are several), writing ``results.json`` / ``results.md`` under
    ``out`` after every finished job, so an interrupted run keeps what it finished.

    A job whose result is already in ``out/results.json`` with the same :meth:`EvalJob.key` is not run again (a
    rerun into the same folder answers from it); other earlier results there are kept, except those replaced by a
    job of the same name. Returns the results of ``jobs``, in their order.
    """
    # keys computed here, once: a worker process could see another code version (a file edited meanwhile)
    keys = {j.name: j.key() for j in jobs}
    if len(keys) != len(jobs):
        raise ValueError(f"job names must be unique within one folder: {[j.name for j in jobs]}")
    earlier = read_results(out)
    done = {r.job_key: r for r in earlier if r.job_key}
    todo = [j for j in jobs if keys[j.name] not in done]
    results: list[FinalResult] = [r for r in earlier if r.name not in keys]
    results += [done[keys[j.name]] for j in jobs if keys[j.name] in done]
    if len(todo) < len(jobs):
        log(f"reusing {len(jobs) - len(todo)} finished result(s) from {out / 'results.json'}")

    def keep(result: FinalResult) -> None:
        result = replace(result, job_key=keys[result.name])
        results.append(result)
        write_atomic(out / "results.json", json.dumps([r.to_json() for r in results], indent=2))
        write_atomic(out / "results.md", markdown_table(results))

    out.mkdir(parents=True, exist_ok=True)
    for job in [j for j in todo if j.data_parallel > 1]:  # one at a time: each takes several workers
        from rcnas.distributed.data_parallel import evaluate_data_parallel

        keep(evaluate_data_parallel(job, log))
    todo = [j for j in todo if j.data_parallel <= 1]
    if len(todo) > 1 and not no_ray:
        from rcnas.distributed.final_jobs import evaluate_jobs

        evaluate_jobs(todo, log, keep, ray_address)
    else:
        for job in todo:
            keep(evaluate_job(job, log=log))
    by_name = {r.name: r for r in results}
    return [by_name[j.name] for j in jobs]


def teacher_job(args: EvaluateArgs, task: Task, attacks: tuple[str, ...], out: Path) -> EvalJob:
    """The task's teacher, imported from its ``teacher_weights`` as the search would (wiring, standardisation and
    strict checks included), evaluated without training: check a published checkpoint before searching from it."""
    w = task.config.teacher_weights
    if w is None:
        raise ConfigError(f"--teacher: {args.task} gives no teacher_weights; --teacher evaluates an imported teacher "
                          "(train a registered one with a sub-network config instead)")
    if args.checkpoint or args.epochs is not None:
        raise ConfigError("--teacher evaluates the task's teacher_weights as they are: drop --checkpoint/--epochs")
    check_checkpoint(w.path, task.teacher.arch, task, w.format, "teacher_weights.path", task.teacher.name)
    return EvalJob(f"teacher-{task.teacher.name}", task.teacher.arch, task, attacks, str(out), None, w.path,
                   args.n_examples, args.seed, args.data_root, w.format)


def evaluate(subnets: Sequence[str | Path] = (), task: str | Path | None = None, *,
             attacks: str | Sequence[str] = "clean,fgsm,pgd20,cw40,aa", epochs: Optional[float] = None,
             checkpoint: Optional[str] = None, teacher: bool = False, n_examples: Optional[int] = None, seed: int = 0,
             out: str | Path | None = None, data_root: Optional[str] = None, no_ray: bool = False,
             ray_address: Optional[str] = None, export_robustbench: str | Path | None = None,
             data_parallel: int = 1) -> list[FinalResult]:
    """Train (or load) each sub-network config and attack it on the test split; the Python form of evaluate.py,
    whose flags are these keywords (``rcnas.evaluate``). Results are also written under ``out``.

    Raises:
        ConfigError: any bad input, before any training starts.
    """
    labels = attacks if isinstance(attacks, str) else ",".join(attacks)
    return _evaluate(EvaluateArgs([str(p) for p in subnets], None if task is None else str(task), labels, epochs,
                                  checkpoint, n_examples, seed, None if out is None else str(out), data_root, False,
                                  no_ray, ray_address, teacher,
                                  None if export_robustbench is None else str(export_robustbench), data_parallel))


def export_job(job: EvalJob, result: FinalResult, test_size: int, folder: Path) -> list[Path]:
    """Export one evaluated network for RobustBench: its weights as evaluated (trained here, or its checkpoint)."""
    from rcnas.evaluation.export import export_robustbench
    from rcnas.models.builder import build_model
    from rcnas.models.imports import load_weights
    from rcnas.space.schema import dump_subnet, from_arch

    model = build_model(job.arch, job.task.shape)
    trained = Path(job.out_dir) / job.name / "model.pt"
    if trained.is_file():
        load_weights(model, trained, "rcnas", job.name)
    elif job.checkpoint:
        load_weights(model, job.checkpoint, job.checkpoint_format, job.name)
    else:
        raise ConfigError(f"--export: no weights of {job.name} to export (no {trained})")
    path = folder / "architecture.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    dump_subnet(from_arch(job.arch, job.task.shape.num_classes, task=job.task.name), path)
    arch_yaml = path.read_text()
    return [path, *export_robustbench(result, job.arch, job.task.shape, model.state_dict(), arch_yaml, test_size,
                                      folder)]


def run_evaluate(args: EvaluateArgs) -> int:
    """evaluate.py's body."""
    if args.profile:
        parse_attacks(args.attacks)
        check_values(args)
        return profile(args)
    print(text_table(_evaluate(args)))
    return 0


def _evaluate(args: EvaluateArgs) -> list[FinalResult]:
    attacks = parse_attacks(args.attacks)
    check_values(args)
    if not args.task:
        raise ConfigError("--task is required (it gives the dataset, the attack's epsilon and the training recipe)")
    task = load_task(args.task)
    # the data here, once, before any job starts: a missing dataset or too few test examples is one line now
    test_size = len(load_splits(task.config.dataset, args.data_root).test)
    if args.n_examples is not None and args.n_examples > test_size:
        raise ConfigError(f"--n-examples {args.n_examples}: the {task.config.dataset.name} test split has "
                          f"{test_size}")
    if args.checkpoint and len(args.configs) > 1:
        raise ConfigError("--checkpoint holds the weights of one sub-network: give exactly one config with it")
    out = Path(args.out or f"runs/eval/{time.strftime('%Y%m%d-%H%M%S')}")
    budget = task.budget
    jobs = [teacher_job(args, task, attacks, out)] if args.teacher else []
    for path in args.configs:
        arch, sub = load_subnet(path)
        check_fits(path, arch, sub, task)
        if args.checkpoint:
            check_checkpoint(args.checkpoint, arch, task)
        macs = arch_cost(arch, task.shape).macs
        if macs > budget:
            log(f"note: {path} has {macs:,} MACs, over the task's budget of {budget:,.0f} (evaluated anyway)")
        jobs.append(EvalJob(Path(path).stem, arch, task, attacks, str(out), args.epochs, args.checkpoint,
                            args.n_examples, args.seed, args.data_root,
                            data_parallel=1 if args.checkpoint else args.data_parallel))
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ConfigError(f"two configs share a file name ({names}); results are stored by name, rename one")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "task.yaml", yaml.safe_dump(task.config.model_dump(mode="json"), sort_keys=False))
    results = run_jobs(jobs, out, no_ray=args.no_ray, ray_address=args.ray_address)
    written = [out / "results.json", out / "results.md"]
    if len(results) > 1:
        from rcnas.evaluation.plots import pareto_plot

        if pareto_plot(results, out / "pareto.png"):
            written.append(out / "pareto.png")
    if args.export:
        for job, result in zip(jobs, results):
            written += export_job(job, result, test_size, Path(args.export) / job.name)
    log(f"written: {', '.join(map(str, written))}")
    return results
