"""The evaluation workers: Ray actors that run proxy evaluations, and the pool that places them, hands out idle ones,
and replaces the ones that die.

- Workers ask for what the experiment says they need (``worker_spec``: e.g. one GPU each), whether or not those
  resources exist yet, so that an autoscaler launches nodes for them and the pool grows as they join; a worker
  enters the pool once it is placed, and a pool still short of workers after ``pending_warn_s`` says so in one line.
  Without a spec, workers ask for one GPU each when the cluster reports GPUs, and fractional CPUs otherwise, so
  that RLlib's own workers can never be starved of the CPUs they hold.
- A worker that dies (or passes ``call_timeout_s``) mid-call is replaced and the call retried on another worker.
  A long job (a teacher's training: a day on a GPU) has no wall-clock limit: it is judged alive by its progress
  (an epoch ended) and given up on only after ``stall_s`` without any; its retry continues from the checkpoint it
  kept in the run folder (``rcnas.distributed.run_files``).
- A worker that cannot start (e.g. given a GPU that torch cannot see) stops the pool's calls with its one line
  instead of leaving them waiting for a worker that never comes.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import ray

from rcnas.distributed.remote import raise_unwrapped, start_worker
from rcnas.distributed.resources import cluster_gpus
from rcnas.infra.errors import EvaluationFailed, GpuNotVisible
from rcnas.infra.log import say
from rcnas.proxy.local import ProxyRunner
from rcnas.proxy.records import ProxyMetrics, TeacherStats
from rcnas.space.arch import ArchSpec
from rcnas.task import Task


@dataclass(frozen=True)
class PoolSettings:
    """How the pool asks for workers and how long it waits for them."""

    max_retries: int = 3
    """a call is retried on this many other workers when its worker dies or times out"""
    wait_s: float = 3600.0
    """the longest wait for a free worker (e.g. for one that cannot be placed): then one line, not a hang"""
    call_timeout_s: float = 6 * 3600.0
    """a short call (a proxy evaluation) still running after this long is given up on: its worker is replaced and
    the call retried"""
    stall_s: float = 3 * 3600.0
    """a long call (a teacher's training) is given up on (worker replaced, call retried) only after this long
    without progress: no epoch ended and nothing kept"""
    check_s: float = 60.0
    """how often a long call's progress is looked at"""
    pending_warn_s: float = 300.0
    """while no worker is free and some are not placed yet, one line this often says what they ask for"""
    gpus_per_worker: float = 1.0
    """without ``worker_spec``, on a cluster with GPUs: each GPU worker's share of a GPU"""
    cpus_per_worker: float = 0.5
    """without ``worker_spec``: each CPU worker's CPUs"""
    n_cpu_workers: int = 0
    """without ``worker_spec``, on a cluster with GPUs: CPU workers besides the GPU ones"""
    worker_spec: Optional[dict[str, Any]] = None
    """Ray resources of one worker (``num_gpus``, ``num_cpus``, ``resources``), requested as given: an autoscaler
    adds the nodes that can hold them"""


def worker_specs(n_workers: int, settings: PoolSettings) -> list[dict[str, Any]]:
    """The Ray resources each of ``n_workers`` asks for: ``worker_spec`` as given, else a GPU (share) each while
    the cluster has GPUs and fractional CPUs otherwise (asking for a GPU nobody has would wait forever)."""
    if settings.worker_spec is not None:
        return [dict(settings.worker_spec) for _ in range(n_workers)]
    gpus = cluster_gpus()
    n_gpu = min(n_workers, int(gpus // settings.gpus_per_worker)) if gpus > 0 else 0
    specs = [{"num_gpus": settings.gpus_per_worker, "num_cpus": 1} for _ in range(n_gpu)]
    n_cpu = settings.n_cpu_workers if gpus > 0 else n_workers
    return specs + [{"num_gpus": 0, "num_cpus": settings.cpus_per_worker} for _ in range(n_cpu)]


@ray.remote
class EvalWorker:
    """Runs proxy evaluations; a thin shell over :class:`rcnas.proxy.local.ProxyRunner`."""

    def __init__(self, cache_dir: Optional[str], data_root: Optional[str]) -> None:
        started = start_worker()
        self.gpu_ids, self.warnings = started.gpu_ids, started.warnings
        self.runner = ProxyRunner(cache_dir, data_root, device=started.device, log=say)

    def teacher_state(self, task: Task, mirror: Any = None) -> dict[str, Any]:
        """The task's teacher, trained or imported here (or found in this node's cache), as CPU tensors and its
        training record: the service ships it to every other worker through the object store. ``mirror``
        (``rcnas.distributed.run_files.Mirror``) keeps a training's checkpoints in the run folder."""
        from rcnas.proxy.teacher import teacher_record

        model, _ = self.runner.teacher(task, mirror)
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


async def _alive_while_progressing(ref: Any, progress: tuple[Any, str], s: PoolSettings) -> Any:
    """``ref``'s result, however long it takes while its job reports progress; TimeoutError after ``stall_s``
    without any (counted from the call's start until the first report)."""
    files, tag = progress
    task = asyncio.ensure_future(_awaited(ref))
    started = time.monotonic()
    while True:
        done, _ = await asyncio.wait({task}, timeout=s.check_s)
        if done:
            return task.result()
        quiet = await files.quiet_for.remote(tag)
        if min(quiet if quiet is not None else math.inf, time.monotonic() - started) > s.stall_s:
            task.cancel()
            raise asyncio.TimeoutError


async def _awaited(ref: Any) -> Any:
    return await ref


def startup_failure(exc: BaseException) -> Optional[BaseException]:
    """The setup error a worker's constructor raised (:class:`GpuNotVisible`), from the error Ray gives for a call
    on it; None when the worker died for another reason (a lost node: replaced, not fatal). Ray 2.60 hands the
    caller an ``ActorDiedError`` that carries the constructor's failure only as text (its remote traceback)."""
    if not getattr(exc, "actor_init_failed", False):
        return None
    return GpuNotVisible.find(str(exc))


class WorkerPool:
    """:class:`EvalWorker` actors, spread over the cluster, and a queue of the idle ones. Lives in an actor's event
    loop (the service's): workers are created on the first call, each joining the pool when it is placed."""

    def __init__(self, n_workers: int, settings: PoolSettings, cache_dir: Optional[str],
                 data_root: Optional[str]) -> None:
        self.settings = settings
        self._specs = worker_specs(n_workers, settings)
        self._worker_args = (cache_dir, data_root)
        self.idle: asyncio.Queue = asyncio.Queue()
        self.workers: dict[Any, dict[str, Any]] = {}
        self.placed: set[Any] = set()
        self.retried = 0
        self.closed = False
        self.broken: Optional[BaseException] = None
        """why a worker could not start (set once): every call then fails with it instead of waiting"""
        self._started = False

    def start(self) -> None:
        """Create the workers (once; in the running event loop)."""
        if self._started:
            return
        self._started = True
        for spec in self._specs:
            self._spawn(spec)

    def _spawn(self, spec: dict[str, Any]) -> None:
        worker = EvalWorker.options(scheduling_strategy="SPREAD", max_restarts=0, **spec).remote(*self._worker_args)
        self.workers[worker] = spec
        asyncio.ensure_future(self._when_placed(worker))

    def _replace(self, worker: Any) -> None:
        ray.kill(worker, no_restart=True)  # dead already, or stuck past the time limit
        self.placed.discard(worker)
        spec = self.workers.pop(worker, None)
        if spec is not None and not self.closed:
            self._spawn(spec)
        self.retried += 1

    async def _when_placed(self, worker: Any) -> None:
        try:
            where = await worker.where.remote()
        except ray.exceptions.RayActorError as exc:
            cause = startup_failure(exc)
            if cause is not None and self.broken is None:
                self.broken = cause
                self.idle.put_nowait(None)  # wakes a caller waiting for a worker: it raises the cause
            return  # else died before it was placed: whoever killed it spawns the replacement
        self.placed.add(worker)
        say(f"evaluation pool: worker {len(self.placed)}/{len(self.workers)} placed on node "
              f"{where['node_id'][:8]} ({where['device']})")
        self.idle.put_nowait(worker)

    async def _next_idle(self) -> Any:
        """The next free worker; while none is free and some are still waiting to be placed, one line every
        ``pending_warn_s`` says so (what they ask for, what the cluster has). TimeoutError after ``wait_s``."""
        s = self.settings
        waited = 0.0
        while True:
            step = min(s.pending_warn_s, s.wait_s - waited)
            try:
                worker = await asyncio.wait_for(self.idle.get(), timeout=step)
                if self.broken is not None:
                    self.idle.put_nowait(worker)  # the next caller learns it too
                    raise self.broken
                return worker
            except asyncio.TimeoutError:
                waited += step
                pending = [spec for w, spec in self.workers.items() if w not in self.placed]
                if waited >= s.wait_s and pending:
                    raise
                if not pending:  # every worker placed and busy (e.g. teachers training for a day): wait on
                    waited = 0.0
                    continue
            if pending:
                say(f"evaluation pool: {len(pending)} of {len(self.workers)} workers still waiting to be placed "
                      f"after {waited:.0f} s, asking for {pending[0]} each; the cluster has "
                      f"{ray.cluster_resources()}; an autoscaler adds nodes for them (see `ray status`)")

    async def call(self, what: str, method: str, *args: Any, progress: Optional[tuple[Any, str]] = None) -> Any:
        """Call ``method`` on the next idle worker. A worker goes back to the pool whatever the outcome; a dead (or
        timed-out) one is replaced and the call retried elsewhere; any other failure is one
        :class:`EvaluationFailed` line naming ``what``, the worker's node and the cause. Nothing waits forever.

        Args:
            progress: ``(run_files, tag)`` for a long call: no time limit, but given up on after ``stall_s``
                without a progress report under ``tag`` (``rcnas.distributed.run_files.RunFiles``).
        """
        self.start()
        s = self.settings
        for _ in range(s.max_retries + 1):
            try:
                worker = await self._next_idle()
            except asyncio.TimeoutError:
                raise EvaluationFailed(
                    f"{what}: no evaluation worker became free in {s.wait_s:.0f} s ({len(self.workers)} workers "
                    f"asking for {sorted({str(spec) for spec in self.workers.values()})}; cluster resources "
                    f"{ray.cluster_resources()}): a worker that cannot be placed waits for resources; see `ray status`"
                ) from None
            try:
                ref = getattr(worker, method).remote(*args)
                result = await (_alive_while_progressing(ref, progress, s) if progress
                                else asyncio.wait_for(ref, timeout=s.call_timeout_s))
            except (ray.exceptions.RayActorError, asyncio.TimeoutError):
                self._replace(worker)
                continue
            except ray.exceptions.RayTaskError as exc:
                self.idle.put_nowait(worker)
                raise_unwrapped(exc, what)
            self.idle.put_nowait(worker)
            return result
        limit = f"{s.stall_s:.0f} s without progress" if progress else f"{s.call_timeout_s:.0f} s"
        raise EvaluationFailed(f"{what}: failed on {s.max_retries + 1} workers in a row (each died or passed "
                               f"{limit})")

    def close(self) -> None:
        """End every worker (their resources, e.g. whole GPUs, go back to the cluster). Call it when no call is in
        flight; the pool is not used afterwards."""
        self.closed = True
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers.clear()
        self.placed.clear()
        while not self.idle.empty():
            self.idle.get_nowait()

    def handles(self) -> list[Any]:
        self.start()
        return list(self.workers)

    async def placement(self) -> list[dict[str, Any]]:
        """Where each worker runs (waits until every worker is placed)."""
        self.start()
        return list(await asyncio.gather(*(w.where.remote() for w in self.workers)))

    def stats(self) -> dict[str, int]:
        """Workers asked for, placed, and calls retried after a worker died or timed out. Starts nothing: asking
        how the pool does must not place workers (they would take GPUs a whole-GPU teacher pool is waiting for)."""
        asked = len(self.workers) if self._started else len(self._specs)
        return {"retried": self.retried, "workers": asked, "placed": len(self.placed)}
