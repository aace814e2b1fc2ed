"""What every Ray worker of rcnas shares: how it starts (threads, device, GPU memory share, warnings), and how its
failures reach the caller (one line for a user's mistake, the remote traceback for a bug)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, NoReturn, Optional

import ray

from rcnas.infra.errors import EvaluationFailed, RcnasError
from rcnas.infra.log import say


@dataclass(frozen=True)
class WorkerStart:
    """What :func:`start_worker` decided."""

    device: Any
    """the torch device the worker computes on"""
    gpu_ids: list[Any]
    """the GPUs Ray assigned it (none on a CPU worker)"""
    warnings: list[str]
    """what the device choice warned about, each printed once already (a GPU torch cannot see is no warning any
    more: the worker stops with :class:`~rcnas.infra.errors.GpuNotVisible`)"""
    memory_share: Optional[float] = None
    """the fraction of its GPU's memory this process may take (its share of a GPU Ray split between workers), None
    when it has a whole GPU or none"""


def start_worker() -> WorkerStart:
    """The start of every rcnas Ray worker (the evaluation pool's actors, evaluate.py's tasks): torch's threads set
    to the CPUs Ray assigned (Ray sets OMP_NUM_THREADS=1 for a one-CPU worker: workers on one node must not
    oversubscribe its cores), then the device and memory cap from the GPUs Ray assigned (:func:`place_worker`).

    Raises:
        GpuNotVisible: Ray assigned a GPU that torch cannot see: the worker stops with one line (driver version,
            torch's CUDA build, the fix) and never computes on the CPU while it holds the GPU.
    """
    import torch

    assigned = ray.get_runtime_context().get_assigned_resources()
    torch.set_num_threads(max(1, int(assigned.get("CPU", 1))))
    return place_worker(list(ray.get_gpu_ids()), assigned)


def place_worker(gpu_ids: list[Any], assigned: dict[str, float]) -> WorkerStart:
    """The device for a worker that Ray assigned ``gpu_ids`` and ``assigned`` resources, with its GPU memory capped
    to its share (:func:`cap_gpu_memory`), and what the choice warned about printed as one line each (which reaches
    the driver's log). Ray's side is read by :func:`start_worker`: this part runs, and is tested, without Ray."""
    from rcnas.infra.devices import pick_device

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        device = pick_device(want_gpu=bool(gpu_ids), gpu_ids=gpu_ids)
    messages = [str(w.message) for w in caught]
    for message in messages:
        say(f"warning: {message}")
    share = cap_gpu_memory(device, memory_share(assigned), gpu_ids)
    return WorkerStart(device, gpu_ids, messages, share)


def memory_share(assigned: dict[str, float]) -> Optional[float]:
    """The fraction of a GPU's memory a worker with Ray's ``assigned`` resources may take: its "GPU" value when
    below 1 (e.g. 0.5: two workers share the GPU), None for a whole GPU (or several) or none."""
    gpus = float(assigned.get("GPU", 0) or 0)
    return gpus if 0 < gpus < 1 else None


def cap_gpu_memory(device: Any, share: Optional[float], gpu_ids: list[Any]) -> Optional[float]:
    """Cap this process's memory on CUDA ``device`` to ``share`` of the GPU, with one line saying so; returns the
    share set (None when there is nothing to cap: a whole GPU, or the CPU).

    Ray's fractional GPUs are a scheduling count only: nothing stops one of two workers at 0.5 from taking the whole
    GPU's memory and the other from failing out of memory. The cap makes the share real: each worker's caching
    allocator stops at its fraction (its CUDA context aside), so a worker that outgrows it fails with its own
    out-of-memory error, alone."""
    import torch

    if share is None or getattr(device, "type", str(device)) != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(float(share), index)
    say(f"GPU memory capped to {share:.0%} of GPU {[str(g) for g in gpu_ids]} (cuda:{index}): Ray assigned this "
        f"worker {share:g} of a GPU")
    return float(share)


def raise_unwrapped(exc: ray.exceptions.RayTaskError, what: str = "", findable: bool = False) -> NoReturn:
    """Raise what a remote call's failure ``exc`` means here (call it in the ``except`` block that caught it).

    - With ``what`` (the call, named: a pool's evaluation): whatever the cause, one :class:`EvaluationFailed`
      line naming ``what``, the worker's node and the cause, with the cause's exit code when it is a user's
      mistake (a missing dataset), else 1.
    - Else a user-facing cause (an :class:`RcnasError`: an evaluation that failed, a missing dataset, a damaged
      store) as itself, one line and its exit code, not a remote traceback; with ``findable``, one that is not an
      :class:`EvaluationFailed` already becomes one (same line and exit code, with the marker that finds it again
      inside Tune's reports).
    - Else ``exc`` itself: a bug, whose remote traceback is what helps.
    """
    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
    if what:
        code = cause.exit_code if isinstance(cause, RcnasError) else 1
        where = f"the worker at {exc.ip}" if getattr(exc, "ip", None) else "a worker"
        raise EvaluationFailed(f"{what} on {where}: {type(cause).__name__}: {cause}", code) from None
    if isinstance(cause, RcnasError):
        if findable and not isinstance(cause, EvaluationFailed):
            raise EvaluationFailed(str(cause), cause.exit_code) from None
        raise cause from None
    raise exc
