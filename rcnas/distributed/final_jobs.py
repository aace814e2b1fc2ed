"""evaluate.py's fan-out: one Ray task per sub-network, a GPU each when the cluster has GPUs, CPUs otherwise."""

from __future__ import annotations

from collections.abc import Callable

import ray

from rcnas.distributed.remote import raise_unwrapped, start_worker
from rcnas.distributed.resources import ensure_ray, worker_resources
from rcnas.evaluation.final import EvalJob, FinalResult, evaluate_job
from rcnas.infra.log import say
from rcnas.space.cost import arch_cost


def _evaluate_remote(job: EvalJob) -> FinalResult:
    return evaluate_job(job, log=say, device=start_worker().device)


def longest_first(jobs: list[EvalJob]) -> list[EvalJob]:
    """``jobs`` by decreasing MACs. Training and attacks both cost about in proportion to MACs, and Ray starts
    queued tasks in submission order: starting the longest first keeps a long job from being the lone one left
    running at the end while the other workers idle (in train.py the teacher's attacks took 147 s against 90 s
    for either sub-network)."""
    return sorted(jobs, key=lambda j: -arch_cost(j.arch, j.task.shape).macs)


def ship_checkpoints(jobs: list[EvalJob]) -> list[EvalJob]:
    """Jobs whose weights come from a file, with the weights read here (checked as usual) and put in the object
    store: the worker node that runs a job may not have the file (a checkpoint or a published teacher downloaded on
    the head), so it loads them from Ray instead."""
    from dataclasses import replace

    from rcnas.infra.files import sha256_file
    from rcnas.models.builder import build_model
    from rcnas.models.imports import load_weights

    out = []
    for job in jobs:
        if job.checkpoint and not job.weights:
            model = build_model(job.arch, job.task.shape)
            load_weights(model, job.checkpoint, job.checkpoint_format, job.name)
            ref = ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})
            job = replace(job, weights=(ref,),
                          weights_key=f"{job.checkpoint_format} {job.checkpoint} sha256 {sha256_file(job.checkpoint)}")
        out.append(job)
    return out


def evaluate_jobs(
    jobs: list[EvalJob],
    log: Callable[[str], None],
    on_result: Callable[[FinalResult], None],
    address: str | None = None,
) -> None:
    """Evaluate ``jobs`` in parallel on Ray, handing each result to ``on_result`` as soon as it is done.

    A worker that dies is retried by Ray (``max_retries``); the training checkpoint in the job's output folder
    lets the retry continue from the last finished epoch.
    """
    ensure_ray(address)
    remote = ray.remote(_evaluate_remote).options(max_retries=2, **worker_resources())
    refs = {remote.remote(job): job.name for job in longest_first(ship_checkpoints(jobs))}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            result = ray.get(done[0])
        except ray.exceptions.RayTaskError as exc:
            raise_unwrapped(exc)  # a user-facing failure as one line; a bug with its remote traceback
        on_result(result)
        log(f"done: {refs[done[0]]} ({len(jobs) - len(pending)}/{len(jobs)})")
