"""Ray start-up and resource decisions taken from what the cluster reports, never assumed."""

from __future__ import annotations

import os
import sys

import ray


def ensure_ray(address: str | None = None, num_cpus: int | None = None, verbose: bool = True) -> None:
    """Connect to ``address`` (or $RAY_ADDRESS, or start a local Ray) unless already connected; unless ``verbose``,
    known-harmless library noise is silenced in every process of the job (``rcnas.infra.quiet``)."""
    if ray.is_initialized():
        return
    runtime_env = None
    if not verbose:
        from rcnas.infra.quiet import quiet

        quiet()
        runtime_env = {"worker_process_setup_hook": "rcnas.infra.quiet.quiet"}
    if os.environ.get("RAY_AUTH_MODE") == "disabled":
        # rcnas never switches it off: the token is what guards Ray's ports, which listen on the routable address
        print("warning: RAY_AUTH_MODE=disabled: anyone who can reach this machine's Ray ports can run code on it",
              file=sys.stderr, flush=True)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, runtime_env=runtime_env)


def cluster_gpus() -> float:
    """GPUs the cluster has; Ray omits the key entirely when there are none."""
    return float(ray.cluster_resources().get("GPU", 0))


def worker_resources(gpus_per_worker: float = 1.0, cpus_without_gpu: float = 1.0) -> dict[str, float]:
    """Resources for one evaluation worker: a GPU (or fraction) each when the cluster has GPUs, CPUs otherwise.

    Asking for a GPU on a cluster without one would wait forever with no error, so the request is decided here.
    """
    if cluster_gpus() > 0:
        return {"num_gpus": gpus_per_worker, "num_cpus": 1}
    return {"num_gpus": 0, "num_cpus": cpus_without_gpu}
