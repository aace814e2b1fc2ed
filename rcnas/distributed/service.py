"""The evaluation service: one named coordinator actor, reached by name from every environment of a run (never
through a global), in front of a pool of evaluation workers (``rcnas.distributed.pool``).

- Every result goes into the run's SQLite store; an identical request is answered from it, and two identical
  requests in flight are computed once.
- Each task's teacher is trained (or imported) once, on one worker, and shipped to the others through the object
  store. A trained teacher is kept in the run folder (``teachers/<key>/``), and so in ``--storage``: a run resumed
  on a new head, or after ``ray down``, trains none again. While it trains, its checkpoint reaches the run folder
  after every epoch, and the training is judged alive by that progress, not by a time limit: a worker lost mid-way
  is replaced and the training continues from its last epoch on another node. With fractional GPUs per
  evaluation worker, teachers train in a pool of whole-GPU workers of their own, ended once every teacher is ready
  (:meth:`EvaluationService.prepare_teachers`).
- A worker that dies mid-evaluation is replaced and the request retried on another worker; nothing stored is lost.
- :func:`evaluation_service` owns the service's lifetime: started on entry, its store closed and the actor (and so
  its workers) gone on exit.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, TypeVar

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rcnas.distributed.pool import PoolSettings, WorkerPool
from rcnas.distributed.remote import raise_unwrapped
from rcnas.distributed.resources import cluster_gpus, whole_gpu
from rcnas.distributed.run_files import Mirror, start_run_files
from rcnas.infra.errors import EvaluationFailed
from rcnas.proxy.keys import stats_key, store_fidelity, task_key, teacher_key
from rcnas.proxy.local import eval_key
from rcnas.proxy.records import Evaluation, Request, TeacherStats
from rcnas.proxy.store import EvaluationStore
from rcnas.proxy.teacher import install_teacher, teacher_folder
from rcnas.space.arch import ArchSpec
from rcnas.task import Task

SERVICE_NAME = "rcnas-evaluation-service"
NAMESPACE = "rcnas"

T = TypeVar("T")


async def memoised(cache: dict[Hashable, asyncio.Future], key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
    """``make()``'s result, computed once per ``key`` however many callers ask, at once or later. A failure is not
    kept (every caller waiting then gets it, and the next call tries again); a caller that is cancelled does not
    cancel the computation the others wait on."""
    if key not in cache:
        cache[key] = asyncio.ensure_future(make())
    future = cache[key]
    try:
        return await asyncio.shield(future)
    except Exception:
        if cache.get(key) is future:
            cache.pop(key)  # let a later call try again
        raise


@ray.remote(num_cpus=0)
class EvaluationService:
    """The coordinator: store lookups, de-duplication, teacher shipping; the pool runs the evaluations."""

    def __init__(self, run_dir: str, n_workers: int, cache_dir: Optional[str], data_root: Optional[str] = None,
                 settings: Optional[PoolSettings] = None) -> None:
        self.run_dir = Path(run_dir)
        self.store = EvaluationStore(self.run_dir / "evaluations.sqlite")
        self.files = start_run_files(run_dir)
        settings = settings or PoolSettings()
        self.pool = WorkerPool(n_workers, settings, cache_dir, data_root)
        whole = whole_gpu_settings(settings)
        # a teacher trains for hours to days: never on a fraction of a GPU shared with evaluations
        self.teacher_pool = (WorkerPool(max(1, math.ceil(n_workers * settings.worker_spec["num_gpus"])), whole,
                                        cache_dir, data_root) if whole is not settings else self.pool)
        self.inflight: dict[Any, asyncio.Future] = {}
        self.teachers: dict[Hashable, asyncio.Future] = {}
        self.teacher_refs: dict[Hashable, asyncio.Future] = {}
        self.counts = {"computed": 0, "from_store": 0, "deduplicated": 0, "failed": 0, "teachers_shipped": 0}

    async def teacher_ref(self, task: Task) -> list[Any]:
        """``[ref]`` to the task's teacher weights in the object store: trained (or imported) once, on one worker,
        then put there by this service (which owns it for the run), so no other node trains it again. In a list,
        so that Ray hands workers the reference, and a worker whose cache has the teacher never fetches it."""
        return [await memoised(self.teacher_refs, teacher_key(task), lambda: self._ship_teacher(task))]

    async def _ship_teacher(self, task: Task) -> Any:
        loop = asyncio.get_running_loop()
        if task.config.teacher_weights is not None:
            # an imported teacher's file lies on this (the head's) disk, not necessarily on the workers' nodes
            shipped = await loop.run_in_executor(None, _read_imported, task)
        elif (kept := await loop.run_in_executor(None, read_kept_teacher, task, self.run_dir)) is not None:
            shipped = kept  # trained by an earlier run of this folder (or pulled back from --storage)
        else:
            tag = f"teacher {teacher_key(task)}"
            where = await self.files.where.remote()  # awaited: a blocking get would stall this event loop
            mirror = Mirror(self.files, str(teacher_folder(task, Path()) / "train_state.pt"), tag, *where)
            shipped = await self.teacher_pool.call(_teacher_what(task), "teacher_state", task, mirror,
                                                   progress=(self.files, tag))
            await loop.run_in_executor(None, keep_teacher, task, self.run_dir, shipped)
        self.counts["teachers_shipped"] += 1
        return ray.put(shipped)

    async def prepare_teachers(self, tasks: list[Task]) -> list[TeacherStats]:
        """Every task's teacher ready (trained, imported or restored) and measured, side by side, before the search
        samples anything: a policy iteration then never waits on a teacher. Ends the whole-GPU teacher pool."""
        # first every teacher trained (on the whole-GPU pool), and that pool ended once none is in flight, so its
        # GPUs are free before the evaluation workers (which measure the teachers) are placed
        shipped = await asyncio.gather(*(self.teacher_ref(t) for t in tasks), return_exceptions=True)
        if self.teacher_pool is not self.pool:
            self.teacher_pool.close()
            self.teacher_pool = self.pool  # a teacher needed later trains on an evaluation worker
        failed = [r for r in shipped if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        return list(await asyncio.gather(*(self.teacher_stats(t) for t in tasks)))

    async def teacher_stats(self, task: Task) -> TeacherStats:
        return await memoised(self.teachers, teacher_key(task) + stats_key(task.config), lambda: self._stats(task))

    async def _stats(self, task: Task) -> TeacherStats:
        return await self.pool.call(_teacher_what(task), "teacher_stats", task, await self.teacher_ref(task))

    async def evaluate(self, task: Task, arch: ArchSpec, seed: int = 0, client: str = "") -> Evaluation:
        """The proxy evaluation of ``arch``; ``client`` (a run or searcher tag) has its request order logged."""
        self.pool.start()
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
            metrics = await self.pool.call(f"sub-network {arch.short()} of task {task.name}", "compute", task, arch,
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
        return {**self.counts, **self.pool.stats(), "stored": len(self.store), "inflight": len(self.inflight),
                "time": time.time()}

    def rows(self, task: str, fidelity: str) -> list[dict[str, Any]]:
        """Every stored evaluation of a task key at a fidelity (arch and metrics as plain dicts)."""
        return list(self.store.rows(task, fidelity))

    def requests(self, client: str) -> list[Request]:
        """``client``'s evaluation requests in order, with their metrics."""
        return self.store.requests(client)

    def run_files(self) -> Any:
        """The run folder's :class:`~rcnas.distributed.run_files.RunFiles` (long jobs' checkpoints and progress)."""
        return self.files

    def worker_handles(self) -> list[Any]:
        return self.pool.handles()

    async def placement(self) -> list[dict[str, Any]]:
        """Where each worker runs (waits until every worker is placed)."""
        return await self.pool.placement()

    def close(self) -> None:
        """Close the store (everything in it written to its file): the last call before the actor is killed."""
        self.store.close()


def whole_gpu_settings(settings: PoolSettings) -> PoolSettings:
    """``settings`` for long trainings: the same worker spec with a whole GPU where it asks for a fraction (the
    same ``settings`` object when nothing changes)."""
    from dataclasses import replace

    spec = whole_gpu(settings.worker_spec)
    return settings if spec is settings.worker_spec else replace(settings, worker_spec=spec)


def keep_teacher(task: Task, run_dir: Path, shipped: dict[str, Any]) -> None:
    """A trained teacher kept in the run folder (``teachers/<key>/``), as a teacher cache entry: the run folder is
    its cache. Its training checkpoint there is done with."""
    install_teacher(task, run_dir, shipped["state"], {**shipped["record"], "kept": "run folder"})
    (teacher_folder(task, run_dir) / "train_state.pt").unlink(missing_ok=True)


def read_kept_teacher(task: Task, run_dir: Path) -> Optional[dict[str, Any]]:
    """The teacher this run folder kept, checked (safe tensors only, every tensor of the teacher's network), or
    None when it has none."""
    import json

    import torch

    from rcnas.infra.errors import ConfigError
    from rcnas.models.builder import build_model

    folder = teacher_folder(task, run_dir)
    if not (folder / "model.pt").is_file():
        return None
    model = build_model(task.teacher.arch, task.shape)
    try:
        model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
        record = dict(json.loads((folder / "train.json").read_text()))
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: say which, never run its code
        raise ConfigError(f"{folder / 'model.pt'}: not a usable teacher {task.teacher.name} "
                          f"({type(exc).__name__}); delete {folder} to train it again") from None
    return {"state": model.state_dict(), "record": {**record, "received": "run folder"}}


def _teacher_what(task: Task) -> str:
    return f"teacher {task.teacher.name} of task {task.name}"


def _read_imported(task: Task) -> dict[str, Any]:
    """An imported teacher, loaded (strictly, as ``rcnas.models.imports`` does) from its file on this node."""
    from rcnas.models.builder import build_model
    from rcnas.models.imports import load_weights

    w = task.config.teacher_weights
    assert w is not None
    model = build_model(task.teacher.arch, task.shape)
    info = load_weights(model, w.path, w.format, task.teacher.name)
    return {"state": model.state_dict(), "record": {"seconds": 0.0, "imported": w.path, "sha256": w.sha256, **info}}


def _start_service(run_dir: str | Path, n_workers: Optional[int] = None, cache_dir: str | Path | None = None,
                  data_root: str | Path | None = None, name: str = SERVICE_NAME, **settings: Any) -> Any:
    """Start (or reuse) the named service, pinned to this node so that its store lives in ``run_dir`` here; its
    handle. Prefer :func:`evaluation_service`, which also ends it: a named actor lives only as long as a handle to
    it does, so whoever calls this keeps the handle for as long as the service is needed.

    Args:
        n_workers: evaluation workers; default one per GPU, or one per CPU when there are none.
        cache_dir: the teacher cache every worker uses (a shared folder: each teacher is computed once through
            it). Default: ``$RCNAS_CACHE`` as this process sees it when set, else each worker's own node default
            (its ``$RCNAS_CACHE``, else ``runs/cache`` in its working directory): per-node caches, kept consistent
            by shipping teachers through the object store.
        settings: fields of :class:`~rcnas.distributed.pool.PoolSettings` (``worker_spec``, ``cpus_per_worker``,
            ``wait_s``, ...).
    """
    import os

    from rcnas.infra.files import CACHE_ENV, cache_root

    pool = PoolSettings(**settings)
    explicit = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV)
    if n_workers is None:
        gpus = cluster_gpus()
        n_workers = int(gpus) if gpus else max(1, int(ray.cluster_resources().get("CPU", 1)))
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return EvaluationService.options(name=name, namespace=NAMESPACE, get_if_exists=True,
                                     scheduling_strategy=here).remote(
        str(Path(run_dir).resolve()), n_workers, str(cache_root(explicit).resolve()) if explicit else None,
        None if data_root is None else str(data_root), pool)


@contextmanager
def evaluation_service(run_dir: str | Path, n_workers: Optional[int] = None, cache_dir: str | Path | None = None,
                       data_root: str | Path | None = None, name: str = SERVICE_NAME,
                       **settings: Any) -> Iterator[RayEvaluator]:
    """The named evaluation service for the length of a ``with`` block, as a :class:`RayEvaluator` (whose ``name``
    any process reaches it by)::

        with evaluation_service(out, n_workers=4, name=name, worker_spec={"num_gpus": 1}) as client:
            ...

    Started (or joined) on entry as :func:`_start_service` does (same arguments); on exit, however the block ends,
    its store is closed and the actor killed, and its workers go with it. Take what must outlive it first (e.g.
    :meth:`RayEvaluator.teacher_weights`)."""
    handle = _start_service(run_dir, n_workers, cache_dir, data_root, name, **settings)
    try:
        yield RayEvaluator(name)
    finally:
        stop_service(handle, name)


def stop_service(handle: Any, name: str = SERVICE_NAME, timeout_s: float = 30.0) -> None:
    """Close the service's store, kill the actor (its workers go with it) and wait until its name is free again,
    so that a service started next under the same name is a new one."""
    if not ray.is_initialized():
        return  # Ray is gone already, and every actor with it
    try:
        ray.get(handle.close.remote(), timeout=timeout_s)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
        pass  # dead or stuck: killed all the same; the store's committed rows are on disk either way
    ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return
        time.sleep(0.05)


class RayEvaluator:
    """The one client of the named service: the env's evaluator on Ray, and the reader of its store and counters.
    Found by name in any process of the cluster, so it pickles into env runners and callbacks."""

    def __init__(self, name: str = SERVICE_NAME, client: str = "", timeout_s: float = 24 * 3600.0) -> None:
        self.name, self.client, self.timeout_s = name, client, timeout_s
        self._handle: Any = None

    def _get(self, ref: Any) -> Any:
        """``ray.get`` with a time limit; the service's one-line failure arrives as itself, not wrapped, and any
        other user-facing one (e.g. a store damaged while the run works) as one :class:`EvaluationFailed` line."""
        try:
            return ray.get(ref, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise EvaluationFailed(f"no answer from the evaluation service {self.name} in {self.timeout_s:.0f} s"
                                   ) from None
        except ray.exceptions.RayTaskError as exc:
            raise_unwrapped(exc, findable=True)

    @property
    def handle(self) -> Any:
        """The service's actor handle (looked up by name once per process): for calls made side by side."""
        if self._handle is None:
            self._handle = ray.get_actor(self.name, namespace=NAMESPACE)
        return self._handle

    def teacher_stats(self, task: Task) -> TeacherStats:
        return self._get(self.handle.teacher_stats.remote(task))

    def prepare_teachers(self, tasks: list[Task]) -> list[TeacherStats]:
        """Every task's teacher ready and measured (``EvaluationService.prepare_teachers``). No time limit here: a
        training is judged by its progress in the service's pool, and a stalled one fails there."""
        try:
            return ray.get(self.handle.prepare_teachers.remote(tasks))
        except ray.exceptions.RayTaskError as exc:
            raise_unwrapped(exc, findable=True)

    def evaluate(self, task: Task, arch: ArchSpec) -> Evaluation:
        return self._get(self.handle.evaluate.remote(task, arch, 0, self.client))

    def rows(self, task: Task) -> list[dict[str, Any]]:
        """Every stored evaluation of ``task`` (by content: its teacher, attack and proxy fidelity), oldest first."""
        return self._get(self.handle.rows.remote(task_key(task), store_fidelity(task.config)))

    def requests(self, client: str | None = None) -> list[Request]:
        """``client``'s (default: this client's) requests in order, with their metrics."""
        return self._get(self.handle.requests.remote(client if client is not None else self.client))

    def stats(self) -> dict[str, Any]:
        """The service's counters: computed, from_store, deduplicated, failed, retried, stored, workers."""
        return self._get(self.handle.stats.remote())

    def placement(self) -> list[dict[str, Any]]:
        """Where each evaluation worker runs (node, device, GPU ids, cache, data root)."""
        return self._get(self.handle.placement.remote())

    def teacher_weights(self, task: Task) -> Any:
        """A reference to ``task``'s teacher state dict in the object store, owned by this process (so it outlives
        the service): the final comparison's workers load the teacher from it on whatever node they run."""
        (ref,) = self._get(self.handle.teacher_ref.remote(task))
        return ray.put(ray.get(ref)["state"])

    def __getstate__(self) -> dict[str, Any]:
        # handles are looked up again in the receiving process
        return {"name": self.name, "client": self.client, "timeout_s": self.timeout_s, "_handle": None}
