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
    from rcnas.distributed.service import start_service

    base = tmp_path_factory.mktemp("svc")
    svc = start_service(base / "run", n_workers=2, cache_dir=base / "cache", name="svc-main")
    ray_local.get(svc.teacher_stats.remote(tiny_task()))  # train the test teacher once
    return svc, base


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
    assert [r["cached"] for r in log] == [False, True] and {r["arch_key"] for r in log} == {arch.key()}


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
    from rcnas.distributed.service import start_service

    svc, base = service
    task = tiny_task()
    arch = TEACHER.subnet((1, 1, 2), (1, 1, 1), ("basic_block",) * 3)
    first = ray_local.get(svc.evaluate.remote(task, arch))
    fresh = start_service(base / "run", n_workers=1, cache_dir=base / "cache", name="svc-restarted")
    again = ray_local.get(fresh.evaluate.remote(task, arch))
    assert again.cached and again.metrics == first.metrics
    assert ray_local.get(fresh.stats.remote())["computed"] == 0
    ray_local.kill(fresh)


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
