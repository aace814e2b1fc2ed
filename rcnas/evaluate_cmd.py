"""The body of ``evaluate.py``: load sub-network files and the task, check them, evaluate (in-process or on Ray
workers), write ``results.json`` / ``results.md`` and print the table."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from rcnas.attacks import SUITE_CHOICES
from rcnas.config import TaskConfig, load_task
from rcnas.data.registry import DATASETS
from rcnas.errors import ConfigError
from rcnas.final_eval import EvalJob, evaluate_job
from rcnas.models.teachers import get_teacher
from rcnas.report import markdown_table, text_table
from rcnas.space.arch import ArchSpec, InputShape
from rcnas.space.cost import arch_cost
from rcnas.space.schema import SubnetFile, load_subnet
from rcnas.space.space import CompressionSpace


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


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_attacks(text: str) -> tuple[str, ...]:
    labels = tuple(a.strip() for a in text.split(",") if a.strip())
    bad = [a for a in labels if a not in SUITE_CHOICES]
    if bad or not labels:
        raise ConfigError(f"--attacks: unknown {bad}; choose from {', '.join(SUITE_CHOICES)} (comma-separated)")
    return labels


def check_fits(path: str, arch: ArchSpec, sub: SubnetFile, task: TaskConfig) -> None:
    teacher = get_teacher(task.teacher)
    why = teacher.contains(arch)
    if why:
        raise ConfigError(f"{path}: {why}; evaluate it with a task whose teacher contains it")
    shape = DATASETS.get(task.dataset.name).shape
    if sub.model.num_classes is not None and sub.model.num_classes != shape.num_classes:
        raise ConfigError(f"{path}: model.num_classes is {sub.model.num_classes} but {task.dataset.name} has "
                          f"{shape.num_classes} classes")


def profile(args: EvaluateArgs) -> int:
    shape = DATASETS.get(load_task(args.task).dataset.name).shape if args.task else InputShape()
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


def run_jobs(jobs: list[EvalJob], out: Path, no_ray: bool = False, ray_address: str | None = None,
             previous: list[dict] | None = None) -> list[dict]:
    """Evaluate ``jobs`` (on Ray workers when there are several), writing ``results.json`` / ``results.md`` under
    ``out`` after every finished job, so an interrupted run keeps what it finished; ``previous`` results (of an
    earlier run into ``out``) are written with them, so they are never overwritten."""
    results: list[dict] = list(previous or [])

    def keep(result: dict) -> None:
        results.append(result)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / "results.md").write_text(markdown_table(results))

    out.mkdir(parents=True, exist_ok=True)
    if len(jobs) > 1 and not no_ray:
        from rcnas.distributed.final import evaluate_jobs

        evaluate_jobs(jobs, log, keep, ray_address)
    else:
        for job in jobs:
            keep(evaluate_job(job, log=log))
    return results


def run_evaluate(args: EvaluateArgs) -> int:
    if args.profile:
        return profile(args)
    if not args.task:
        raise ConfigError("--task is required (it gives the dataset, the attack's epsilon and the training recipe)")
    task = load_task(args.task)
    attacks = parse_attacks(args.attacks)
    if args.checkpoint and len(args.configs) > 1:
        raise ConfigError("--checkpoint holds the weights of one sub-network: give exactly one config with it")
    out = Path(args.out or f"runs/eval/{time.strftime('%Y%m%d-%H%M%S')}")
    budget = CompressionSpace.for_task(task).budget
    jobs = []
    for path in args.configs:
        arch, sub = load_subnet(path)
        check_fits(path, arch, sub, task)
        macs = arch_cost(arch, DATASETS.get(task.dataset.name).shape).macs
        if macs > budget:
            log(f"note: {path} has {macs:,} MACs, over the task's budget of {budget:,.0f} (evaluated anyway)")
        jobs.append(EvalJob(Path(path).stem, arch, task, attacks, str(out), args.epochs, args.checkpoint,
                            args.n_examples, args.seed, args.data_root))
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ConfigError(f"two configs share a file name ({names}); results are stored by name, rename one")
    out.mkdir(parents=True, exist_ok=True)
    (out / "task.yaml").write_text(yaml.safe_dump(task.model_dump(mode="json"), sort_keys=False))
    results = run_jobs(jobs, out, no_ray=args.no_ray, ray_address=args.ray_address)
    print(text_table(results))
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.md'}")
    return 0
