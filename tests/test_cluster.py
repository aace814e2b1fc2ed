"""Multi-node, simulated: nodes joining, leaving, and declaring a GPU that torch cannot see."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray


def test_a_worker_given_a_gpu_torch_cannot_see_stops_with_one_line_and_never_runs_on_the_cpu(tmp_path):
    """A node declaring a GPU that torch cannot see: the pool's GPU worker dies in its ``__init__`` with
    GpuNotVisible's line (driver, torch's CUDA build, the fix), never computing on the CPU; the CPU worker runs."""
    import ray
    import torch
    from ray.cluster_utils import Cluster

    from rcnas.distributed.service import evaluation_service
    from rcnas.infra.errors import GpuNotVisible

    if torch.cuda.is_available():
        pytest.skip("needs a machine where torch sees no GPU")
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, num_gpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        assert ray.cluster_resources().get("GPU") == 1
        with evaluation_service(tmp_path / "run", n_workers=1, n_cpu_workers=1, cache_dir=tmp_path / "cache",
                                name="svc-cluster") as svc:
            with pytest.raises(ray.exceptions.RayError) as info:  # the pool's placement: waits on every worker
                ray.get(svc.handle.placement.remote(), timeout=480)
            # every call of the pool now fails with that line at once, never waiting for a worker that cannot come
            from rcnas.infra.errors import RcnasError
            from rcnas.space.baselines import uniform_shrink
            from tests.conftest import tiny_task

            task = tiny_task()
            with pytest.raises(RcnasError, match="torch cannot see it"):
                svc.evaluate(task, uniform_shrink(task.space))
            outcomes = []
            for worker in ray.get(svc.handle.worker_handles.remote(), timeout=480):
                try:
                    outcomes.append(ray.get(worker.where.remote(), timeout=480))
                except ray.exceptions.RayActorError as exc:
                    outcomes.append(exc)
        found = GpuNotVisible.find(str(info.value))
        assert found is not None and "torch cannot see it" in str(found) and "GPU ids ['0']" in str(found)
        (died,) = [o for o in outcomes if isinstance(o, Exception)]
        assert isinstance(died, ray.exceptions.ActorDiedError) and died.actor_init_failed
        assert str(GpuNotVisible.find(str(died))) == str(found)
        (cpu,) = [o for o in outcomes if isinstance(o, dict)]
        assert cpu["device"] == "cpu" and not cpu["gpu_ids"] and not cpu["warnings"]
    finally:
        ray.shutdown()
        cluster.shutdown()


def _archs(task, n: int, seed: int = 0) -> list:
    import numpy as np

    rng, out = np.random.default_rng(seed), {}
    while len(out) < n:
        arch = task.space.arch(task.space.sample(rng))
        out[arch.key()] = arch
    return list(out.values())


def test_workers_asking_for_a_resource_nobody_has_wait_and_start_when_a_node_brings_it(tmp_path, cluster):
    """The autoscaling case: the pool asks for what the experiment says (here a custom 'fake_gpu'), stays pending,
    and evaluates as soon as a node with it joins."""
    import ray

    from rcnas.distributed.service import evaluation_service
    from tests.conftest import tiny_task

    with evaluation_service(tmp_path / "run", n_workers=1, cache_dir=tmp_path / "cache", name="svc-pending",
                            worker_spec={"num_cpus": 1, "resources": {"fake_gpu": 1}}, pending_warn_s=1) as client:
        svc = client.handle
        task = tiny_task()
        ref = svc.evaluate.remote(task, _archs(task, 1)[0])
        ready, _ = ray.wait([ref], timeout=5)
        stats = client.stats()
        assert not ready and stats["placed"] == 0 and stats["workers"] == 1
        node = cluster.add_node(num_cpus=1, resources={"fake_gpu": 1})
        result = ray.get(ref, timeout=1200)
        assert result.metrics.ok and not result.cached
        (where,) = client.placement()
        assert where["node_id"] == node.node_id


def test_without_a_shared_cache_each_teacher_is_trained_once_and_shipped_to_the_other_node(tmp_path, cluster):
    import ray
    import torch

    from rcnas.distributed.service import evaluation_service
    from rcnas.proxy.keys import teacher_key
    from tests.conftest import tiny_task

    caches = {name: tmp_path / f"cache-{name}" for name in ("a", "b")}
    data = tmp_path / "not-the-default-data"  # digits need no files: what matters is that workers got it
    for cache in caches.values():
        cluster.add_node(num_cpus=1, env_vars={"RCNAS_CACHE": str(cache)})
    cluster.wait_for_nodes()
    with evaluation_service(tmp_path / "run", n_workers=2, name="svc-two-nodes", data_root=str(data),
                            worker_spec={"num_cpus": 1}) as client:
        svc = client.handle
        placement = ray.get(svc.placement.remote(), timeout=480)
        assert {p["cache"] for p in placement} == {str(c.resolve()) for c in caches.values()}, "one worker per node"
        assert {p["data_root"] for p in placement} == {str(data)}, "the data root reached every worker process"
        task = tiny_task()
        results = ray.get([svc.evaluate.remote(task, arch) for arch in _archs(task, 6)], timeout=2400)
        assert all(r.metrics.ok for r in results)
        shipped = client.stats()["teachers_shipped"]
    records = []
    for cache in caches.values():
        folder = cache / "teachers" / teacher_key(task)
        assert (folder / "model.pt").is_file(), f"{cache} never got the teacher"
        records.append(json.loads((folder / "train.json").read_text()))
    assert sorted("received" in r for r in records) == [False, True], "trained on one node, shipped to the other"
    a, b = (torch.load(c / "teachers" / teacher_key(task) / "model.pt", weights_only=True) for c in caches.values())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert shipped == 1


def test_a_node_lost_mid_evaluation_loses_nothing(tmp_path, cluster):
    import ray

    from rcnas.distributed.service import evaluation_service
    from rcnas.proxy.store import EvaluationStore
    from tests.conftest import tiny_task

    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    with evaluation_service(tmp_path / "run", n_workers=1, cache_dir=tmp_path / "cache", name="svc-node-loss",
                            worker_spec={"num_cpus": 1}) as client:
        svc = client.handle
        (where,) = ray.get(svc.placement.remote(), timeout=480)
        task = tiny_task(proxy_epochs=3)  # seconds of work: the node goes while it runs
        arch = _archs(task, 1)[0]
        ref = svc.evaluate.remote(task, arch)
        time.sleep(2)
        (doomed,) = [n for n in nodes if n.node_id == where["node_id"]]
        cluster.remove_node(doomed)
        result = ray.get(ref, timeout=2400)
        assert result.metrics.ok
        stats = client.stats()
        assert stats["retried"] >= 1 and stats["computed"] == 1
        (moved,) = ray.get(svc.placement.remote(), timeout=480)
        assert moved["node_id"] != where["node_id"]
    assert len(EvaluationStore(tmp_path / "run" / "evaluations.sqlite")) == 1


def test_a_gpu_experiment_on_a_machine_that_cannot_get_a_gpu_is_refused_before_anything_starts(monkeypatch):
    import torch

    from agents.config import ExperimentConfig
    from agents.pipeline import check_workers_can_run
    from rcnas.infra.errors import ConfigError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    exp = ExperimentConfig.model_validate({"name": "gpu", "meta_tasks": ["a"], "target_task": "b",
                                           "workers": {"count": 2, "gpus": 1}})
    with pytest.raises(ConfigError, match="workers.gpus is 1 per worker, but this machine has no GPU and the Ray "
                                          "started here cannot grow"):
        check_workers_can_run(exp, None)
    check_workers_can_run(exp, "10.0.0.1:6379")  # a cluster may grow: its pool waits for the autoscaler
    check_workers_can_run(exp, None, insist=True)
    check_workers_can_run(exp.model_copy(update={"workers": exp.workers.model_copy(update={"gpus": 0})}), None)
    assert exp.workers.spec() == {"num_gpus": 1, "num_cpus": 1.0}


def test_evaluate_jobs_ship_checkpoints_so_workers_never_need_the_file(tmp_path, cluster):
    """evaluate.py on a cluster: a checkpoint (or a published teacher) that exists only where the command runs
    reaches the worker through the object store. Here the file is deleted before any worker starts."""
    import torch

    from agents.config import task_path
    from rcnas.distributed.final_jobs import evaluate_jobs, ship_checkpoints
    from rcnas.evaluation.final import EvalJob
    from rcnas.models.builder import build_model
    from rcnas.task import load_task

    cluster.add_node(num_cpus=2)
    task = load_task(task_path("digits-pgd-e20-t444-r35"))
    archs = _archs(task, 2)
    jobs = []
    for i, arch in enumerate(archs):
        torch.manual_seed(i)
        path = tmp_path / f"w{i}.pt"
        torch.save(build_model(arch, task.shape).state_dict(), path)
        jobs.append(EvalJob(f"net{i}", arch, task, ("clean", "fgsm"), str(tmp_path / "out"), checkpoint=str(path),
                            n_examples=16))
    shipped = ship_checkpoints(jobs)
    for j in jobs:
        Path(j.checkpoint).unlink()  # gone from this disk: a worker that opened it would fail
    results = []
    evaluate_jobs(shipped, lambda m: None, results.append)
    assert sorted(r.name for r in results) == ["net0", "net1"]
    assert all(r.train["source"] == "object store" and "sha256" in r.train["weights"] for r in results)
