"""The pipeline's last phase: the chosen sub-network trained from scratch and attacked on the test split, next to
the teacher, a uniformly shrunk teacher and the teacher pruned by network slimming (both of the same budget), in
one comparison table."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from agents.config import ExperimentConfig
from rcnas.distributed.resources import whole_gpu
from rcnas.evaluation.final import EvalJob, FinalResult
from rcnas.evaluation.jobs import run_jobs
from rcnas.evaluation.tables import text_table
from rcnas.infra.files import write_atomic
from rcnas.proxy.keys import teacher_key
from rcnas.space.arch import ArchSpec
from rcnas.space.baselines import uniform_shrink
from rcnas.task import Task


def final_comparison(exp: ExperimentConfig, task: Task, chosen: ArchSpec, out: Path,
                     data_root: str | None = None, teacher_weights: Optional[Any] = None,
                     pruned: Optional[ArchSpec] = None) -> list[FinalResult]:
    """Args:
        pruned: the slimming baseline's sub-network (``rcnas.space.baselines.slimming_prune``), trained and
            attacked like the others (it is the architecture that is compared, under one recipe).
        teacher_weights: the search's teacher in the object store (``RayEvaluator.teacher_weights``): evaluated as
            it is when it was imported, or trained with exactly this recipe and seed; otherwise the teacher is
            trained from scratch like the others. Through the object store it reaches whatever node runs the job
            (a cache or a weights file on the head would not).
    """
    fe = exp.final_eval
    attacks = tuple(fe.attacks)
    same_recipe = fe.epochs is None and exp.seed == task.config.training.seed
    reuse = teacher_weights is not None and (task.config.teacher_weights is not None or same_recipe)
    teacher = {"weights": (teacher_weights,), "weights_key": teacher_key(task)} if reuse else {}
    jobs = [
        EvalJob("rl-chosen", chosen, task, attacks, str(out), fe.epochs, None, fe.n_examples, exp.seed, data_root),
        EvalJob("uniform-shrink", uniform_shrink(task.space), task, attacks, str(out), fe.epochs, None,
                fe.n_examples, exp.seed, data_root),
        *([EvalJob("slimming-pruned", pruned, task, attacks, str(out), fe.epochs, None, fe.n_examples, exp.seed,
                   data_root)] if pruned is not None else []),
        EvalJob(f"teacher-{task.teacher.name}", task.teacher.arch, task, attacks, str(out), fe.epochs, None,
                fe.n_examples, exp.seed, data_root, **teacher),
    ]
    # whole GPUs when the experiment's workers use GPUs, asked for even when no GPU node is left (the autoscaler
    # adds them): deciding from what the cluster has now would train for days on the head's CPUs
    results = run_jobs(jobs, out, resources=whole_gpu(exp.workers.spec()))
    write_atomic(out / "comparison.txt", text_table(results) + "\n")
    return results
