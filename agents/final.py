"""The pipeline's last phase: the chosen sub-network trained from scratch and attacked on the test split, next to
the teacher and a uniformly shrunk teacher of the same budget, in one comparison table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agents.config import ExperimentConfig
from rcnas.config import load_task
from rcnas.evaluate_cmd import run_jobs
from rcnas.final_eval import EvalJob
from rcnas.models.teachers import get_teacher
from rcnas.provenance import teacher_key
from rcnas.proxy.teacher import cache_root
from rcnas.report import text_table
from rcnas.space.arch import ArchSpec
from rcnas.space.baselines import uniform_shrink
from rcnas.space.space import CompressionSpace


def final_comparison(exp: ExperimentConfig, target: str, chosen: ArchSpec, out: Path) -> list[dict[str, Any]]:
    task = load_task(target)
    space = CompressionSpace.for_task(task)
    fe = exp.final_eval
    attacks = tuple(fe.attacks)
    # the teacher was trained with exactly this recipe and seed for the search: reuse its weights
    cached = cache_root().resolve() / "teachers" / teacher_key(task) / "model.pt"
    teacher_ckpt = str(cached) if fe.epochs is None and cached.is_file() and exp.seed == task.training.seed else None
    jobs = [
        EvalJob("rl-chosen", chosen, task, attacks, str(out), fe.epochs, None, fe.n_examples, exp.seed),
        EvalJob("uniform-shrink", uniform_shrink(space), task, attacks, str(out), fe.epochs, None, fe.n_examples,
                exp.seed),
        EvalJob(f"teacher-{task.teacher}", get_teacher(task.teacher).arch, task, attacks, str(out), fe.epochs,
                teacher_ckpt, fe.n_examples, exp.seed),
    ]
    results = run_jobs(jobs, out)
    order = {j.name: i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: order[r["name"]])
    (out / "comparison.txt").write_text(text_table(results) + "\n")
    return results
