"""The evaluation service: a pool of Ray actors that run proxy evaluations, behind one named coordinator actor
that every environment of a run reaches by name (never through a global).

- Workers ask for what the experiment says they need (``worker_spec``: e.g. one GPU each), whether or not those
  resources exist yet, so that an autoscaler launches nodes for them and the pool grows as they join; a worker
  enters the pool once it is placed, and a pool still short of workers after ``pending_warn_s`` says so in one line.
  Without a spec, workers ask for one GPU each when the cluster reports GPUs, and fractional CPUs otherwise, so
  that RLlib's own workers can never be starved of the CPUs they hold.
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
from rcnas.infra.errors import EvaluationFailed, RcnasError
from rcnas.proxy.keys import stats_key, store_fidelity, task_key, teacher_key
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

    def __init__(self, cache_dir: Optional[str], data_root: Optional[str]) -> None:
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

    def teacher_state(self, task: Task) -> dict[str, Any]:
        """The task's teacher, trained or imported here (or found in this node's cache), as CPU tensors and its
        training record: the service ships it to every other worker through the object store."""
        from rcnas.proxy.teacher import teacher_record

        model, _ = self.runner.teacher(task)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        record = teacher_record(task, self.runner.cache)
        return {"state": state, "record": {**record, "node": ray.get_runtime_context().get_node_id()}}

    def _install(self, task: Task, shipped: list[Any]) -> None:
        """This node's cache gets the teacher from the object store unless it has it already (never trained
        twice: without a shared cache every node would train it again)."""
        from rcnas.proxy.teacher import install_teacher, teacher_folder

        if shipped and not (teacher_folder(task, self.runner.cache) / "model.pt").is_file():
            got = ray.get(shipped[0])
            install_teacher(task, self.runner.cache, got["state"], {**got["record"], "received": "object store"})

    def teacher_stats(self, task: Task, shipped: Optional[list[Any]] = None) -> TeacherStats:
        self._install(task, shipped or [])
        return self.runner.teacher_stats(task)

    def compute(self, task: Task, arch: ArchSpec, seed: int, shipped: Optional[list[Any]] = None) -> ProxyMetrics:
        self._install(task, shipped or [])
        return self.runner.compute(task, arch, seed)

    def where(self) -> dict[str, Any]:
        return {"node_id": ray.get_runtime_context().get_node_id(), "device": str(self.runner.device),
                "gpu_ids": [str(g) for g in self.gpu_ids], "warnings": self.warnings,
                "cache": str(self.runner.cache.resolve()), "data_root": self.runner.data_root}


@ray.remote(num_cpus=0)
class EvaluationService:
    """The coordinator: store lookups, de-duplication, a queue of idle workers, retries on worker death."""

    def __init__(self, run_dir: str, n_workers: int, cache_dir: Optional[str], data_root: Optional[str] = None,
                 gpus_per_worker: float = 1.0, cpus_per_worker: float = 0.5, n_cpu_workers: int = 0,
                 max_retries: int = 3, wait_s: float = 3600.0, call_timeout_s: float = 6 * 3600.0,
                 worker_spec: Optional[dict[str, Any]] = None, pending_warn_s: float = 300.0) -> None:
        self.store = EvaluationStore(Path(run_dir) / "evaluations.sqlite")
        self.cache_dir, self.data_root, self.max_retries = cache_dir, data_root, max_retries
        self.wait_s, self.call_timeout_s, self.pending_warn_s = wait_s, call_timeout_s, pending_warn_s
        if worker_spec is not None:  # asked for as given: an autoscaler adds the nodes that can hold them
            specs = [dict(worker_spec)] * n_workers
        else:
            gpus = cluster_gpus()
            n_gpu = min(n_workers, int(gpus // gpus_per_worker)) if gpus > 0 else 0
            specs = [{"num_gpus": gpus_per_worker, "num_cpus": 1}] * n_gpu
            specs += [{"num_gpus": 0, "num_cpus": cpus_per_worker}] * (n_cpu_workers if gpus > 0 else n_workers)
        self.idle: asyncio.Queue = asyncio.Queue()
        self.workers: dict[Any, dict[str, Any]] = {}
        self.placed: set[Any] = set()
        self._specs = specs
        self._started = False
        self.inflight: dict[Any, asyncio.Future] = {}
        self.teachers: dict[str, asyncio.Future] = {}
        self.teacher_refs: dict[str, Any] = {}
        self.counts = {"computed": 0, "from_store": 0, "deduplicated": 0, "failed": 0, "retried": 0,
                       "teachers_shipped": 0}

    def _start(self) -> None:
        """Create the pool (in the actor's event loop: each worker joins the pool when it is placed)."""
        if self._started:
            return
        self._started = True
        for spec in self._specs:
            self._spawn(spec)

    def _spawn(self, spec: dict[str, Any]) -> None:
        worker = EvalWorker.options(scheduling_strategy="SPREAD", max_restarts=0, **spec).remote(
            self.cache_dir, self.data_root)
        self.workers[worker] = spec
        asyncio.ensure_future(self._when_placed(worker))

    async def _when_placed(self, worker: Any) -> None:
        try:
            where = await worker.where.remote()
        except ray.exceptions.RayActorError:
            return  # died before it was placed: whoever killed it spawns the replacement
        self.placed.add(worker)
        print(f"evaluation pool: worker {len(self.placed)}/{len(self.workers)} placed on node "
              f"{where['node_id'][:8]} ({where['device']})", flush=True)
        self.idle.put_nowait(worker)

    async def _next_idle(self) -> Any:
        """The next free worker; while none is free and some are still waiting to be placed, one line every
        ``pending_warn_s`` says so (what they ask for, what the cluster has). TimeoutError after ``wait_s``."""
        waited = 0.0
        while True:
            step = min(self.pending_warn_s, self.wait_s - waited)
            try:
                return await asyncio.wait_for(self.idle.get(), timeout=step)
            except asyncio.TimeoutError:
                waited += step
                if waited >= self.wait_s:
                    raise
            pending = [spec for w, spec in self.workers.items() if w not in self.placed]
            if pending:
                print(f"evaluation pool: {len(pending)} of {len(self.workers)} workers still waiting to be placed "
                      f"after {waited:.0f} s, asking for {pending[0]} each; the cluster has "
                      f"{ray.cluster_resources()}; an autoscaler adds nodes for them (see `ray status`)", flush=True)

    async def _on_worker(self, what: str, method: str, *args: Any) -> Any:
        """Call ``method`` on the next idle worker. A worker goes back to the pool whatever the outcome; a dead (or
        timed-out) one is replaced and the call retried elsewhere; any other failure is one
        :class:`EvaluationFailed` line naming ``what``, the worker's node and the cause. Nothing waits forever."""
        for _ in range(self.max_retries + 1):
            try:
                worker = await self._next_idle()
            except asyncio.TimeoutError:
                raise EvaluationFailed(
                    f"{what}: no evaluation worker became free in {self.wait_s:.0f} s ({len(self.workers)} workers "
                    f"asking for {sorted({str(s) for s in self.workers.values()})}; cluster resources "
                    f"{ray.cluster_resources()}): a worker that cannot be placed waits for resources; see `ray status`"
                ) from None
            try:
                result = await asyncio.wait_for(getattr(worker, method).remote(*args), timeout=self.call_timeout_s)
            except (ray.exceptions.RayActorError, asyncio.TimeoutError):
                ray.kill(worker, no_restart=True)  # dead already, or stuck past the time limit
                self.placed.discard(worker)
                self._spawn(self.workers.pop(worker))
                self.counts["retried"] += 1
                continue
            except ray.exceptions.RayTaskError as exc:
                self.idle.put_nowait(worker)
                cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                code = cause.exit_code if isinstance(cause, RcnasError) else 1
                where = f"the worker at {exc.ip}" if getattr(exc, "ip", None) else "a worker"
                raise EvaluationFailed(f"{what} on {where}: {type(cause).__name__}: {cause}", code) from None
            self.idle.put_nowait(worker)
            return result
        raise EvaluationFailed(f"{what}: failed on {self.max_retries + 1} workers in a row (each died or passed "
                               f"{self.call_timeout_s:.0f} s)")

    async def teacher_ref(self, task: Task) -> list[Any]:
        """``[ref]`` to the task's teacher weights in the object store: trained (or imported) once, on one worker,
        then put there by this service (which owns it for the run), so no other node trains it again. In a list,
        so that Ray hands workers the reference, and a worker whose cache has the teacher never fetches it."""
        self._start()
        key = teacher_key(task)
        if key not in self.teacher_refs:
            self.teacher_refs[key] = asyncio.ensure_future(self._ship_teacher(task))
        try:
            return [await asyncio.shield(self.teacher_refs[key])]
        except Exception:
            self.teacher_refs.pop(key, None)  # let a later call try again
            raise

    async def _ship_teacher(self, task: Task) -> Any:
        if task.config.teacher_weights is not None:
            # an imported teacher's file lies on this (the head's) disk, not necessarily on the workers' nodes
            shipped = await asyncio.get_running_loop().run_in_executor(None, _read_imported, task)
        else:
            shipped = await self._on_worker(f"teacher {task.teacher.name} of task {task.name}", "teacher_state",
                                            task)
        self.counts["teachers_shipped"] += 1
        return ray.put(shipped)

    async def teacher_stats(self, task: Task) -> TeacherStats:
        self._start()
        cfg = task.config
        key = teacher_key(task) + stats_key(cfg)
        if key not in self.teachers:
            what = f"teacher {task.teacher.name} of task {task.name}"
            self.teachers[key] = asyncio.ensure_future(self._stats(what, task))
        try:
            return await asyncio.shield(self.teachers[key])
        except Exception:
            self.teachers.pop(key, None)  # let a later call try again
            raise

    async def _stats(self, what: str, task: Task) -> TeacherStats:
        return await self._on_worker(what, "teacher_stats", task, await self.teacher_ref(task))

    async def evaluate(self, task: Task, arch: ArchSpec, seed: int = 0, client: str = "") -> Evaluation:
        """The proxy evaluation of ``arch``; ``client`` (a run or searcher tag) has its request order logged."""
        self._start()
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
            shipped = await self.teacher_ref(task) if task.config.proxy.inherit else None
            metrics = await self._on_worker(f"sub-network {arch.short()} of task {task.name}", "compute", task, arch,
                                            seed, shipped)
            if metrics.status != "error":  # a crash (out of memory, a lost file) may not recur: never stored
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
        self._start()
        return {**self.counts, "stored": len(self.store), "workers": len(self.workers), "placed": len(self.placed),
                "inflight": len(self.inflight), "time": time.time()}

    def rows(self, task: str, fidelity: str) -> list[dict[str, Any]]:
        """Every stored evaluation of a task key at a fidelity (arch and metrics as plain dicts)."""
        return list(self.store.rows(task, fidelity))

    def requests(self, client: str) -> list[dict[str, Any]]:
        """``client``'s evaluation requests in order, with their metrics."""
        return self.store.requests(client)

    def worker_handles(self) -> list[Any]:
        self._start()
        return list(self.workers)

    async def placement(self) -> list[dict[str, Any]]:
        """Where each worker runs (waits until every worker is placed)."""
        self._start()
        return list(await asyncio.gather(*(w.where.remote() for w in self.workers)))


def _read_imported(task: Task) -> dict[str, Any]:
    """An imported teacher, loaded (strictly, as ``rcnas.models.imports`` does) from its file on this node."""
    from rcnas.models.builder import build_model
    from rcnas.models.imports import load_weights

    w = task.config.teacher_weights
    assert w is not None
    model = build_model(task.teacher.arch, task.shape)
    info = load_weights(model, w.path, w.format, task.teacher.name)
    return {"state": model.state_dict(), "record": {"seconds": 0.0, "imported": w.path, "sha256": w.sha256, **info}}


def start_service(run_dir: str | Path, n_workers: Optional[int] = None, cache_dir: str | Path | None = None,
                  data_root: str | Path | None = None, name: str = SERVICE_NAME, **kwargs: Any) -> Any:
    """Start (or reuse) the named service, pinned to this node so that its store lives in ``run_dir`` here.

    Args:
        n_workers: evaluation workers; default one per GPU, or one per CPU when there are none.
        cache_dir: the teacher cache every worker uses (a shared folder: each teacher is computed once through
            it). Default: ``$RCNAS_CACHE`` as this process sees it when set, else each worker's own node default
            (its ``$RCNAS_CACHE``, else ``runs/cache`` in its working directory): per-node caches, kept consistent
            by shipping teachers through the object store.
        worker_spec: Ray resources of one worker (``num_gpus``, ``num_cpus``, ``resources``), requested as given.
    """
    import os

    from rcnas.infra.files import CACHE_ENV, cache_root

    explicit = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV)
    if n_workers is None:
        gpus = cluster_gpus()
        n_workers = int(gpus) if gpus else max(1, int(ray.cluster_resources().get("CPU", 1)))
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return EvaluationService.options(name=name, namespace=NAMESPACE, get_if_exists=True,
                                     scheduling_strategy=here).remote(
        str(Path(run_dir).resolve()), n_workers, str(cache_root(explicit).resolve()) if explicit else None,
        None if data_root is None else str(data_root), **kwargs)


class RayEvaluator:
    """The one client of the named service: the env's evaluator on Ray, and the reader of its store and counters.
    Found by name in any process of the cluster, so it pickles into env runners and callbacks."""

    def __init__(self, name: str = SERVICE_NAME, client: str = "", timeout_s: float = 24 * 3600.0) -> None:
        self.name, self.client, self.timeout_s = name, client, timeout_s
        self._handle: Any = None

    def _get(self, ref: Any) -> Any:
        """``ray.get`` with a time limit; the service's one-line failure arrives as itself, not wrapped."""
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise EvaluationFailed(f"no answer from the evaluation service {self.name} in {self.timeout_s:.0f} s"
                                   ) from None
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, EvaluationFailed):
                raise exc.cause from None
            if isinstance(exc.cause, RcnasError):  # e.g. a store damaged while the run works: still one line
                raise EvaluationFailed(str(exc.cause), exc.cause.exit_code) from None
            raise

    def _service(self) -> Any:
        if self._handle is None:
            self._handle = ray.get_actor(self.name, namespace=NAMESPACE)
        return self._handle

    def teacher_stats(self, task: Task) -> TeacherStats:
        return self._get(self._service().teacher_stats.remote(task))

    def evaluate(self, task: Task, arch: ArchSpec) -> Evaluation:
        return self._get(self._service().evaluate.remote(task, arch, 0, self.client))

    def rows(self, task: Task) -> list[dict[str, Any]]:
        """Every stored evaluation of ``task`` (by content: its teacher, attack and proxy fidelity), oldest first."""
        return self._get(self._service().rows.remote(task_key(task), store_fidelity(task.config)))

    def requests(self, client: str | None = None) -> list[dict[str, Any]]:
        """``client``'s (default: this client's) requests in order, with their metrics."""
        return self._get(self._service().requests.remote(client if client is not None else self.client))

    def stats(self) -> dict[str, Any]:
        """The service's counters: computed, from_store, deduplicated, failed, retried, stored, workers."""
        return self._get(self._service().stats.remote())

    def placement(self) -> list[dict[str, Any]]:
        """Where each evaluation worker runs (node, device, GPU ids, cache, data root)."""
        return self._get(self._service().placement.remote())

    def teacher_weights(self, task: Task) -> Any:
        """A reference to ``task``'s teacher state dict in the object store, owned by this process (so it outlives
        the service): the final comparison's workers load the teacher from it on whatever node they run."""
        (ref,) = self._get(self._service().teacher_ref.remote(task))
        return ray.put(ray.get(ref)["state"])

    def __getstate__(self) -> dict[str, Any]:
        # handles are looked up again in the receiving process
        return {"name": self.name, "client": self.client, "timeout_s": self.timeout_s, "_handle": None}
