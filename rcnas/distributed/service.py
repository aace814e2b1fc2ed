"""The evaluation service: a pool of Ray actors that run proxy evaluations, behind one named coordinator actor
that every environment of a run reaches by name (never through a global).

- Workers ask for one GPU (or a configured fraction) each when the cluster reports GPUs, and fractional CPUs
  otherwise, so that RLlib's own workers can never be starved of the CPUs they hold.
- Every result goes into the run's SQLite store; an identical request is answered from it, and two identical
  requests in flight are computed once.
- A worker that dies mid-evaluation is replaced and the request retried on another worker; nothing stored is lost.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rcnas.distributed.resources import cluster_gpus
from rcnas.proxy.keys import teacher_key
from rcnas.proxy.local import ProxyRunner, eval_key
from rcnas.proxy.records import Evaluation, ProxyMetrics, TeacherStats
from rcnas.proxy.store import EvaluationStore
from rcnas.space.arch import ArchSpec
from rcnas.task import Task

SERVICE_NAME = "rcnas-evaluation-service"
NAMESPACE = "rcnas"


@ray.remote
class EvalWorker:
    """Runs proxy evaluations; a thin shell over :class:`rcnas.proxy.local.ProxyRunner`."""

    def __init__(self, cache_dir: str, data_root: Optional[str]) -> None:
        import torch

        from rcnas.infra.devices import pick_device

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        torch.set_num_threads(max(1, int(cpus)))
        self.gpu_ids = ray.get_gpu_ids()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            device = pick_device(want_gpu=bool(self.gpu_ids))
        self.warnings = [str(w.message) for w in caught]
        for message in self.warnings:
            print(f"warning: {message}", flush=True)
        self.runner = ProxyRunner(cache_dir, data_root, device=device, log=lambda m: print(m, flush=True))

    def teacher_stats(self, task: Task) -> TeacherStats:
        return self.runner.teacher_stats(task)

    def compute(self, task: Task, arch: ArchSpec, seed: int) -> ProxyMetrics:
        return self.runner.compute(task, arch, seed)

    def where(self) -> dict[str, Any]:
        return {"node_id": ray.get_runtime_context().get_node_id(), "device": str(self.runner.device),
                "gpu_ids": [str(g) for g in self.gpu_ids], "warnings": self.warnings}


@ray.remote(num_cpus=0)
class EvaluationService:
    """The coordinator: store lookups, de-duplication, a queue of idle workers, retries on worker death."""

    def __init__(self, run_dir: str, n_workers: int, cache_dir: str, data_root: Optional[str] = None,
                 gpus_per_worker: float = 1.0, cpus_per_worker: float = 0.5, n_cpu_workers: int = 0,
                 max_retries: int = 3) -> None:
        self.store = EvaluationStore(Path(run_dir) / "evaluations.sqlite")
        self.cache_dir, self.data_root, self.max_retries = cache_dir, data_root, max_retries
        gpus = cluster_gpus()
        n_gpu = min(n_workers, int(gpus // gpus_per_worker)) if gpus > 0 else 0
        specs = [{"num_gpus": gpus_per_worker, "num_cpus": 1}] * n_gpu
        specs += [{"num_gpus": 0, "num_cpus": cpus_per_worker}] * (n_cpu_workers if gpus > 0 else n_workers)
        self.idle: asyncio.Queue = asyncio.Queue()
        self.workers: dict[Any, dict[str, float]] = {}
        for spec in specs:
            self._spawn(spec)
        self.inflight: dict[Any, asyncio.Future] = {}
        self.teachers: dict[str, asyncio.Future] = {}
        self.counts = {"computed": 0, "from_store": 0, "deduplicated": 0, "failed": 0, "retried": 0}

    def _spawn(self, spec: dict[str, float]) -> None:
        worker = EvalWorker.options(scheduling_strategy="SPREAD", max_restarts=0, **spec).remote(
            self.cache_dir, self.data_root)
        self.workers[worker] = spec
        self.idle.put_nowait(worker)

    async def _on_worker(self, method: str, *args: Any) -> Any:
        """Call ``method`` on the next idle worker; a dead worker is replaced and the call retried elsewhere."""
        for _ in range(self.max_retries + 1):
            worker = await self.idle.get()
            try:
                result = await getattr(worker, method).remote(*args)
            except ray.exceptions.RayActorError:
                self._spawn(self.workers.pop(worker))
                self.counts["retried"] += 1
                continue
            self.idle.put_nowait(worker)
            return result
        raise RuntimeError(f"evaluation failed on {self.max_retries + 1} workers in a row (all died)")

    async def teacher_stats(self, task: Task) -> TeacherStats:
        cfg = task.config
        key = teacher_key(cfg) + cfg.attack.model_dump_json() + str(cfg.proxy.val_examples)
        if key not in self.teachers:
            self.teachers[key] = asyncio.ensure_future(self._on_worker("teacher_stats", task))
        try:
            return await asyncio.shield(self.teachers[key])
        except Exception:
            self.teachers.pop(key, None)  # let a later call try again
            raise

    async def evaluate(self, task: Task, arch: ArchSpec, seed: int = 0, client: str = "") -> Evaluation:
        """The proxy evaluation of ``arch``; ``client`` (a run or searcher tag) has its request order logged."""
        result = await self._evaluate(task, arch, seed)
        if client:
            self.store.log_request(client, result.key, task.name, result.cached)
        return result

    async def _evaluate(self, task: Task, arch: ArchSpec, seed: int) -> Evaluation:
        key = eval_key(task, arch, seed)
        hit = self.store.get(key)
        if hit is not None:
            self.counts["from_store"] += 1
            return Evaluation(key, hit, cached=True)
        if key in self.inflight:
            self.counts["deduplicated"] += 1
            return Evaluation(key, await asyncio.shield(self.inflight[key]), cached=True)
        future = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        try:
            if task.config.proxy.inherit:
                await self.teacher_stats(task)  # train the teacher once, before workers race for it
            metrics = await self._on_worker("compute", task, arch, seed)
            self.store.put(key, arch, metrics, task.name)
            self.counts["computed"] += 1
            self.counts["failed"] += int(not metrics.ok)
            future.set_result(metrics)
            return Evaluation(key, metrics, cached=False)
        except Exception as exc:
            future.set_exception(exc)
            raise
        finally:
            self.inflight.pop(key, None)

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "stored": len(self.store), "workers": len(self.workers), "inflight": len(self.inflight),
                "time": time.time()}

    def rows(self, task_name: str) -> list[dict[str, Any]]:
        """Every stored evaluation of ``task_name`` (arch and metrics as plain dicts)."""
        return list(self.store.rows(task_name))

    def requests(self, client: str) -> list[dict[str, Any]]:
        """``client``'s evaluation requests in order, with their metrics."""
        return self.store.requests(client)

    def worker_handles(self) -> list[Any]:
        return list(self.workers)

    async def placement(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(w.where.remote() for w in self.workers)))


def start_service(run_dir: str | Path, n_workers: Optional[int] = None, cache_dir: str | Path | None = None,
                  data_root: str | Path | None = None, name: str = SERVICE_NAME, **kwargs: Any) -> Any:
    """Start (or reuse) the named service, pinned to this node so that its store lives in ``run_dir`` here.

    Args:
        n_workers: evaluation workers; default one per GPU, or one per CPU when there are none.
    """
    from rcnas.proxy.teacher import cache_root

    if n_workers is None:
        gpus = cluster_gpus()
        n_workers = int(gpus) if gpus else max(1, int(ray.cluster_resources().get("CPU", 1)))
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return EvaluationService.options(name=name, namespace=NAMESPACE, get_if_exists=True,
                                     scheduling_strategy=here).remote(
        str(Path(run_dir).resolve()), n_workers, str(cache_root(cache_dir).resolve()),
        None if data_root is None else str(data_root), **kwargs)


class RayEvaluator:
    """The one client of the named service: the env's evaluator on Ray, and the reader of its store and counters.
    Found by name in any process of the cluster, so it pickles into env runners and callbacks."""

    def __init__(self, name: str = SERVICE_NAME, client: str = "") -> None:
        self.name, self.client = name, client
        self._handle: Any = None

    def _service(self) -> Any:
        if self._handle is None:
            self._handle = ray.get_actor(self.name, namespace=NAMESPACE)
        return self._handle

    def teacher_stats(self, task: Task) -> TeacherStats:
        return ray.get(self._service().teacher_stats.remote(task))

    def evaluate(self, task: Task, arch: ArchSpec) -> Evaluation:
        return ray.get(self._service().evaluate.remote(task, arch, 0, self.client))

    def rows(self, task_name: str) -> list[dict[str, Any]]:
        """Every stored evaluation of ``task_name``, oldest first."""
        return ray.get(self._service().rows.remote(task_name))

    def requests(self, client: str | None = None) -> list[dict[str, Any]]:
        """``client``'s (default: this client's) requests in order, with their metrics."""
        return ray.get(self._service().requests.remote(client if client is not None else self.client))

    def stats(self) -> dict[str, Any]:
        """The service's counters: computed, from_store, deduplicated, failed, retried, stored, workers."""
        return ray.get(self._service().stats.remote())

    def placement(self) -> list[dict[str, Any]]:
        """Where each evaluation worker runs (node, device, GPU ids)."""
        return ray.get(self._service().placement.remote())

    def __getstate__(self) -> dict[str, Any]:
        # handles are looked up again in the receiving process
        return {"name": self.name, "client": self.client, "_handle": None}
