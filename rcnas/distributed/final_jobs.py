"""The final evaluations' fan-out (train.py's comparison, evaluate.py): one Ray task per sub-network, with the
resources the caller asks for (train.py: a whole GPU each when the experiment's workers use GPUs, so that an
autoscaler adds GPU nodes even when none is left) or, without, a GPU each when the cluster has GPUs, CPUs otherwise.

Each training keeps its checkpoint in the run folder after every epoch and its final weights there at the end
(``rcnas.distributed.run_files``): a task retried on another node after its node was lost continues from its last
epoch, and no weights stay behind on a worker's disk."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray

from rcnas.distributed.remote import raise_unwrapped, start_worker
from rcnas.distributed.resources import ensure_ray, worker_resources
from rcnas.distributed.run_files import Mirror, start_run_files
from rcnas.evaluation.final import EvalJob, FinalResult, evaluate_job
from rcnas.infra.log import say
from rcnas.space.cost import arch_cost


def _evaluate_remote(job: EvalJob, mirror: Mirror) -> FinalResult:
    from dataclasses import replace

    result = evaluate_job(job, log=say, device=start_worker().device, mirror=mirror)
    # which Ray node did it (the host name alone does not tell nodes of one machine, or containers, apart)
    return replace(result, provenance={**result.provenance, "ray_node": ray.get_runtime_context().get_node_id()})


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
    resources: dict[str, Any] | None = None,
) -> None:
    """Evaluate ``jobs`` in parallel on Ray, handing each result to ``on_result`` as soon as it is done.

    Args:
        resources: Ray resources of each job (``num_gpus``, ``num_cpus``, ``resources``), asked for as given
            (default: :func:`worker_resources`, decided from what the cluster has now).

    A task whose node is lost is retried by Ray (``max_retries``, no time limit on a training of days); the
    checkpoint kept in the run folder lets the retry continue from the last finished epoch on any node.
    """
    ensure_ray(address)
    out_dirs = {job.out_dir for job in jobs}
    if len(out_dirs) != 1:
        raise ValueError(f"jobs of one call share one output folder, not {sorted(out_dirs)}")
    files = start_run_files(out_dirs.pop())
    where = ray.get(files.where.remote())
    spec = resources if resources is not None else worker_resources()
    remote = ray.remote(_evaluate_remote).options(max_retries=2, **spec)
    pending: list[Any] = []
    try:
        refs = {remote.remote(job, Mirror(files, f"{job.name}/train_state.pt", f"final {job.name}", *where)):
                job.name for job in longest_first(ship_checkpoints(jobs))}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                raise_unwrapped(exc)  # a user-facing failure as one line; a bug with its remote traceback
            on_result(result)
            log(f"done: {refs[done[0]]} ({len(jobs) - len(pending)}/{len(jobs)})")
    finally:
        for ref in pending:  # one job failed: the others would fail at their next epoch without the files actor
            ray.cancel(ref, force=True)
        ray.kill(files, no_restart=True)
