"""The pipeline's last phase: the chosen sub-network trained from scratch and attacked on the test split, next to
the teacher and a uniformly shrunk teacher of the same budget, in one comparison table."""

from __future__ import annotations

from pathlib import Path

from agents.config import ExperimentConfig
from rcnas.evaluation.command import run_jobs
from rcnas.evaluation.final import EvalJob, FinalResult
from rcnas.evaluation.tables import text_table
from rcnas.infra.files import cache_root, write_atomic
from rcnas.proxy.keys import teacher_key
from rcnas.space.arch import ArchSpec
from rcnas.space.baselines import uniform_shrink
from rcnas.task import Task


def final_comparison(exp: ExperimentConfig, task: Task, chosen: ArchSpec, out: Path,
                     data_root: str | None = None) -> list[FinalResult]:
    fe = exp.final_eval
    attacks = tuple(fe.attacks)
    # an imported teacher is evaluated as its own file; one trained with exactly this recipe and seed for the
    # search is reused from the cache; any other is trained like the others
    w = task.config.teacher_weights
    cached = cache_root().resolve() / "teachers" / teacher_key(task) / "model.pt"
    reuse = cached.is_file() and fe.epochs is None and exp.seed == task.config.training.seed
    teacher_weights, teacher_format = (w.path, w.format) if w else (str(cached) if reuse else None, "rcnas")
    jobs = [
        EvalJob("rl-chosen", chosen, task, attacks, str(out), fe.epochs, None, fe.n_examples, exp.seed, data_root),
        EvalJob("uniform-shrink", uniform_shrink(task.space), task, attacks, str(out), fe.epochs, None,
                fe.n_examples, exp.seed, data_root),
        EvalJob(f"teacher-{task.teacher.name}", task.teacher.arch, task, attacks, str(out), fe.epochs,
                teacher_weights, fe.n_examples, exp.seed, data_root, teacher_format),
    ]
    results = run_jobs(jobs, out)
    write_atomic(out / "comparison.txt", text_table(results) + "\n")
    return results
