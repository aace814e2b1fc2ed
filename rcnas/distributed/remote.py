"""What every Ray worker of rcnas shares: how it starts (threads, device, warnings), and how its failures reach the
caller (one line for a user's mistake, the remote traceback for a bug)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, NoReturn

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
    """what the device choice warned about (e.g. a GPU torch cannot see), each printed once already"""


def start_worker() -> WorkerStart:
    """The start of every rcnas Ray worker (the evaluation pool's actors, evaluate.py's tasks): torch's threads set
    to the CPUs Ray assigned (Ray sets OMP_NUM_THREADS=1 for a one-CPU worker: workers on one node must not
    oversubscribe its cores), the device from the GPUs Ray assigned (one torch cannot see falls back to the CPU,
    with a warning), and each warning printed as one line, which reaches the driver's log."""
    import torch

    from rcnas.infra.devices import pick_device

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    gpu_ids = list(ray.get_gpu_ids())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        device = pick_device(want_gpu=bool(gpu_ids))
    messages = [str(w.message) for w in caught]
    for message in messages:
        say(f"warning: {message}")
    return WorkerStart(device, gpu_ids, messages)


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
