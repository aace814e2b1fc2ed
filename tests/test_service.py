"""The Ray evaluation service: store hits, de-duplication, restarts, a killed worker, and the env on top of it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from envs.compression_env import CompressionEnv
from rcnas.models.teachers import get_teacher
from rcnas.proxy.store import EvaluationStore
from tests.conftest import tiny_task

pytestmark = pytest.mark.ray

TEACHER = get_teacher("tiny-222")
ARCH = TEACHER.subnet((1, 2, 1), (2, 3, 2), ("basic_block",) * 3)


@pytest.fixture(scope="module")
def service(ray_local, tmp_path_factory):
    from rcnas.distributed.service import evaluation_service

    base = tmp_path_factory.mktemp("svc")
    with evaluation_service(base / "run", n_workers=2, cache_dir=base / "cache", name="svc-main") as client:
        svc = client.handle  # the actor itself: requests side by side
        ray_local.get(svc.teacher_stats.remote(tiny_task()))  # train the test teacher once
        yield svc, base


def test_repeat_is_answered_from_the_store(ray_local, service):
    svc, _ = service
    task = tiny_task()
    arch = TEACHER.subnet((1, 1, 1), (1, 1, 1), ("basic_block",) * 3)
    first = ray_local.get(svc.evaluate.remote(task, arch, 0, "client-a"))
    before = ray_local.get(svc.stats.remote())
    again = ray_local.get(svc.evaluate.remote(task, arch, 0, "client-a"))
    after = ray_local.get(svc.stats.remote())
    assert not first.cached and again.cached and again.metrics == first.metrics
    assert after["computed"] == before["computed"] and after["from_store"] == before["from_store"] + 1
    log = ray_local.get(svc.requests.remote("client-a"))
    assert [r.cached for r in log] == [False, True] and {r.arch_key for r in log} == {arch.key()}


def test_concurrent_identical_requests_compute_once(ray_local, service):
    svc, base = service
    task = tiny_task()
    arch = TEACHER.subnet((2, 1, 1), (1, 2, 1), ("basic_block",) * 3)
    before = ray_local.get(svc.stats.remote())["computed"]
    results = ray_local.get([svc.evaluate.remote(task, arch) for _ in range(3)])
    assert ray_local.get(svc.stats.remote())["computed"] == before + 1
    assert sum(not r.cached for r in results) == 1 and len({r.metrics for r in results}) == 1


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_request_retried(ray_local, service):
    svc, base = service
    task = tiny_task(proxy_epochs=20)  # long enough to be killed mid-way on a fast machine
    arch = TEACHER.subnet((2, 2, 2), (4, 4, 4), ("basic_block",) * 3)
    ref = svc.evaluate.remote(task, arch)
    deadline = time.time() + 60
    while ray_local.get(svc.stats.remote())["inflight"] == 0 and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # the evaluation is running on a worker now (the teacher is already trained and measured)
    for worker in ray_local.get(svc.worker_handles.remote()):
        ray_local.kill(worker, no_restart=True)
    result = ray_local.get(ref, timeout=1200)
    stats = ray_local.get(svc.stats.remote())
    assert result.metrics.ok and stats["retried"] >= 1 and stats["workers"] == 2
    store = EvaluationStore(base / "run" / "evaluations.sqlite")
    rows = [r for r in store.rows() if r["metrics"] == result.metrics.to_dict()]
    assert len(rows) == 1, "stored once, nothing lost or duplicated"


def test_a_restarted_service_reuses_the_store(ray_local, service):
    from rcnas.distributed.service import evaluation_service

    svc, base = service
    task = tiny_task()
    arch = TEACHER.subnet((1, 1, 2), (1, 1, 1), ("basic_block",) * 3)
    first = ray_local.get(svc.evaluate.remote(task, arch))
    with evaluation_service(base / "run", n_workers=1, cache_dir=base / "cache", name="svc-restarted") as fresh:
        again = fresh.evaluate(task, arch)
        assert again.cached and again.metrics == first.metrics
        assert fresh.stats()["computed"] == 0
        handle = fresh.handle
        workers = ray_local.get(handle.worker_handles.remote())
    with pytest.raises(ValueError):
        ray_local.get_actor("svc-restarted", namespace="rcnas")  # gone with its block, and its name free again
    for ref in [handle.stats.remote(), *(w.where.remote() for w in workers)]:  # the service and its workers
        with pytest.raises(ray_local.exceptions.RayActorError):
            ray_local.get(ref, timeout=60)


def test_env_episode_through_the_service(ray_local, service):
    import pickle

    from rcnas.distributed.service import RayEvaluator

    evaluator = pickle.loads(pickle.dumps(RayEvaluator("svc-main")))  # what an env runner receives
    env = CompressionEnv(task=tiny_task(), evaluator=evaluator)
    obs, _ = env.reset(seed=0)
    done = False
    while not done:
        obs, reward, done, _, info = env.step(int(np.flatnonzero(obs["action_mask"])[0]))
    assert info["metrics"]["status"] == "ok" and np.isfinite(reward)


def test_memoised_computes_once_and_forgets_a_failure():
    import asyncio

    from rcnas.distributed.service import memoised

    calls: list[bool] = []

    async def make(ok: bool) -> int:
        calls.append(ok)
        await asyncio.sleep(0.01)
        if not ok:
            raise RuntimeError("boom")
        return len(calls)

    async def main() -> None:
        cache: dict = {}
        together = await asyncio.gather(*(memoised(cache, "k", lambda: make(True)) for _ in range(3)))
        assert together == [1, 1, 1] and await memoised(cache, "k", lambda: make(True)) == 1 and calls == [True]
        for _ in range(2):  # a failure reaches its caller and is not kept: the next call tries again
            with pytest.raises(RuntimeError, match="boom"):
                await memoised(cache, "bad", lambda: make(False))
        assert "bad" not in cache and calls.count(False) == 2

    asyncio.run(main())


def test_a_remote_failure_is_one_line_when_it_is_the_users_and_left_alone_when_it_is_a_bug():
    import ray

    from rcnas.distributed.remote import raise_unwrapped
    from rcnas.infra.errors import DataNotFoundError, EvaluationFailed

    def raised(cause: BaseException, **kw) -> BaseException:
        exc = ray.exceptions.RayTaskError("compute", "Traceback (most recent call last): ...", cause, ip="10.0.0.7")
        try:
            raise_unwrapped(exc, **kw)
        except BaseException as got:  # what it raised is the point
            return got
        raise AssertionError("raise_unwrapped returned")

    missing = DataNotFoundError("cifar10 not found under data/")
    named = raised(missing, what="teacher tiny-222 of task t")  # the pool: every cause, named, one line
    assert isinstance(named, EvaluationFailed) and named.exit_code == 2
    assert named.detail == "teacher tiny-222 of task t on the worker at 10.0.0.7: DataNotFoundError: cifar10 not " \
                           "found under data/"
    bug = raised(ZeroDivisionError("x"), what="sub-network a of task t")
    assert isinstance(bug, EvaluationFailed) and bug.exit_code == 1 and "ZeroDivisionError: x" in str(bug)
    assert raised(missing) is missing, "evaluate.py's jobs: the user's error as itself"
    findable = raised(missing, findable=True)  # the service's client: with the marker Tune's reports are searched for
    assert isinstance(findable, EvaluationFailed) and findable.exit_code == 2 and "cifar10 not found" in str(findable)
    failed = EvaluationFailed("sub-network a of task t on a worker: boom", 1)
    assert raised(failed, findable=True) is failed
    other = raised(ZeroDivisionError("x"))
    assert isinstance(other, ray.exceptions.RayTaskError), "a bug keeps its remote traceback"
