"""The body of ``evaluate.py``: load sub-network files and the task, check them, evaluate (in-process or on Ray
workers), write ``results.json`` / ``results.md`` and print the table."""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from rcnas.data.registry import load_splits
from rcnas.evaluation.final import EvalJob, FinalResult
from rcnas.evaluation.jobs import log, run_jobs
from rcnas.infra.errors import ConfigError
from rcnas.infra.files import write_atomic
from rcnas.infra.process import leaves_process_as_found
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


def print_profile(args: EvaluateArgs) -> None:
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


@leaves_process_as_found
def evaluate(subnets: Sequence[str | Path] = (), task: str | Path | None = None, *,
             attacks: str | Sequence[str] = "clean,fgsm,pgd20,cw40,aa", epochs: Optional[float] = None,
             checkpoint: Optional[str] = None, teacher: bool = False, n_examples: Optional[int] = None, seed: int = 0,
             out: str | Path | None = None, data_root: Optional[str] = None, no_ray: bool = False,
             ray_address: Optional[str] = None, export_robustbench: str | Path | None = None,
             data_parallel: int = 1, profile: bool = False) -> list[FinalResult]:
    """Train (or load) each sub-network config and attack it on the test split; the Python form of evaluate.py,
    whose flags are these keywords (``rcnas.evaluate``). Results are also written under ``out``.

    Args:
        subnets: sub-network YAML files (RobustResNet schema).
        task: the task YAML: dataset, attack epsilon, training recipe.
        attacks: labels of ``rcnas.vocab.SUITE`` (a list or a comma-separated string).
        checkpoint: weights to load instead of training (one config only).
        teacher: evaluate the task's imported teacher (its ``teacher_weights``) as it is.
        export_robustbench: a folder: each network is also exported for RobustBench there.
        profile: print params and MACs as JSON instead of evaluating (returns no results).

    Returns:
        One :class:`FinalResult` per network, in the order given.

    Raises:
        ConfigError: any bad input, before any training starts.
    """
    args = EvaluateArgs(
        configs=[str(p) for p in subnets], task=None if task is None else str(task),
        attacks=attacks if isinstance(attacks, str) else ",".join(attacks), epochs=epochs, checkpoint=checkpoint,
        n_examples=n_examples, seed=seed, out=None if out is None else str(out), data_root=data_root,
        profile=profile, no_ray=no_ray, ray_address=ray_address, teacher=teacher,
        export=None if export_robustbench is None else str(export_robustbench), data_parallel=data_parallel)
    if args.profile:
        parse_attacks(args.attacks)
        check_values(args)
        print_profile(args)
        return []
    return _evaluate(args)


def export_job(job: EvalJob, result: FinalResult, test_size: int, folder: Path) -> list[Path]:
    """Export one evaluated network for RobustBench: exactly the weights it was measured with, from where that
    evaluation took them (its checkpoint, else the weights trained here), checked against the hash the result
    recorded; ``test_size`` is the size of the test split on disk (a truncated folder is footnoted)."""
    from rcnas.evaluation.export import check_measured, export_robustbench, full_test_size
    from rcnas.models.builder import build_model
    from rcnas.models.imports import load_weights
    from rcnas.space.schema import dump_subnet, from_arch

    model = build_model(job.arch, job.task.shape)
    # the job's own source: a checkpoint job never trains, so a model.pt in --out is some earlier run's weights
    source = Path(job.checkpoint) if job.checkpoint else Path(job.out_dir) / job.name / "model.pt"
    if not source.is_file():
        raise ConfigError(f"--export: no weights of {job.name} to export (no {source})")
    load_weights(model, source, job.checkpoint_format if job.checkpoint else "rcnas", job.name)
    check_measured(result, model.state_dict(), str(source))  # before anything is written
    path = folder / "architecture.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    dump_subnet(from_arch(job.arch, job.task.shape.num_classes, task=job.task.name), path)
    arch_yaml = path.read_text()
    return [path, *export_robustbench(result, job.arch, job.task.shape, model.state_dict(), arch_yaml,
                                      full_test_size(result.dataset, test_size), folder, str(source))]


def _job_name(path: str) -> str:
    """A config's file name, which names its result folder under --out: a plain name, or one line."""
    from rcnas.infra.configio import check_identifier

    try:
        return check_identifier(Path(path).stem)
    except ValueError as exc:
        raise ConfigError(f"{path}: its file name names the result folder, and {exc}; rename the file") from None


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
        jobs.append(EvalJob(_job_name(path), arch, task, attacks, str(out), args.epochs, args.checkpoint,
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
