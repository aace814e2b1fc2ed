"""Long jobs on a cluster (teachers, final trainings): no wall-clock cap, progress kept in the run folder after every
epoch, a training lost with its node continued elsewhere from its last epoch, teachers kept in the run folder, and
the final jobs' resources taken from the experiment."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

pytestmark = pytest.mark.ray


def _long_teacher_task(epochs: int = 40):
    """A digits task whose teacher trains for ``epochs`` short epochs: long enough to lose its node mid-way."""
    from rcnas.config import TaskConfig
    from rcnas.task import resolve_task

    return resolve_task(TaskConfig.model_validate({
        "name": "long-teacher", "dataset": {"name": "digits", "val_fraction": 0.25, "augment": False},
        "teacher": "tiny-222", "attack": {"name": "pgd", "epsilon": "1/10", "steps": 2, "step_size": "1/20"},
        "budget": {"ratio": 0.5},
        "training": {"loss": "pgd_at", "attack": {"name": "pgd", "epsilon": "1/10", "steps": 1, "step_size": "1/10"},
                     "epochs": epochs, "batch_size": 256, "lr": 0.05, "schedule": "cosine", "val_examples": 32},
        "proxy": {"epochs": 0.1, "val_examples": 32},
    }))


@pytest.mark.slow  # 45 s here; CI runs it with the other slow cluster checks
def test_a_teacher_training_lost_with_its_node_continues_from_its_last_epoch_on_another(tmp_path, cluster):
    """The node training a teacher goes away after a few epochs: no time limit fired, the pool retried the call
    on the other node, which started from the checkpoint the run folder kept, not from epoch 0. Each node has its
    own cache, as real nodes do (nothing on the lost node's disk helps)."""
    import ray

    from rcnas.distributed.service import evaluation_service
    from rcnas.proxy.keys import teacher_key
    from rcnas.proxy.teacher import teacher_folder

    task = _long_teacher_task()
    first = cluster.add_node(num_cpus=1, resources={"trainer": 1}, env_vars={"RCNAS_CACHE": str(tmp_path / "a")})
    cluster.wait_for_nodes()
    run = tmp_path / "run"
    with evaluation_service(run, n_workers=1, name="svc-long", worker_spec={"num_cpus": 1,
                            "resources": {"trainer": 1}}, check_s=1) as client:
        files = ray.get(client.handle.run_files.remote())
        tag = f"teacher {teacher_key(task)}"
        ref = client.handle.prepare_teachers.remote([task])
        deadline = time.monotonic() + 900
        while sum("kept" in r["note"] for r in ray.get(files.history.remote(tag))) < 3:
            assert time.monotonic() < deadline, "the teacher never reported 3 epochs"
            time.sleep(0.2)
        kept_in_run = teacher_folder(task, run) / "train_state.pt"
        assert kept_in_run.is_file(), "each epoch's checkpoint is in the run folder, not only on the node"
        cluster.add_node(num_cpus=1, resources={"trainer": 1}, env_vars={"RCNAS_CACHE": str(tmp_path / "b")})
        cluster.remove_node(first)
        (stats,) = ray.get(ref, timeout=1800)
        history = ray.get(files.history.remote(tag))
        pool = client.stats()
    kept = [r for r in history if "kept" in r["note"]]
    nodes = {r["node"] for r in kept}
    assert len(nodes) == 2 and first.node_id in nodes, "trained on the first node, finished on the second"
    lost_epochs = sum(r["node"] == first.node_id for r in kept)
    # continued: every epoch kept once (at most the one in flight when the node went is done twice); restarted
    # from 0 it would have kept lost_epochs + 40
    assert 40 <= len(kept) <= 41, (len(kept), lost_epochs)
    assert pool["retried"] >= 1 and stats.robust_acc >= 0
    assert (teacher_folder(task, run) / "model.pt").is_file() and not kept_in_run.exists()
    record = json.loads((teacher_folder(task, run) / "train.json").read_text())
    assert record["kept"] == "run folder"


def test_a_trained_teacher_is_kept_in_the_run_folder_and_a_new_head_trains_none(tmp_path, ray_local):
    """A teacher trained by a run is in its folder (and so in --storage); a service on a copy of that folder, with
    every node cache gone (a new head, new workers), ships it from there instead of training it."""
    import shutil

    from rcnas.distributed.service import evaluation_service
    from rcnas.proxy.teacher import teacher_folder
    from tests.conftest import tiny_task

    task = tiny_task()
    with evaluation_service(tmp_path / "run", n_workers=1, cache_dir=tmp_path / "cache-1", name="svc-keep") as c:
        first = c.teacher_stats(task)
    kept = teacher_folder(task, tmp_path / "run")
    assert (kept / "model.pt").is_file() and json.loads((kept / "train.json").read_text())["kept"] == "run folder"
    shutil.copytree(tmp_path / "run", tmp_path / "new-head")
    shutil.rmtree(tmp_path / "cache-1")
    with evaluation_service(tmp_path / "new-head", n_workers=1, cache_dir=tmp_path / "cache-2",
                            name="svc-keep-2") as c:
        again = c.teacher_stats(task)
    record = json.loads((teacher_folder(task, tmp_path / "cache-2") / "train.json").read_text())
    assert record.get("kept") == "run folder" and record.get("received") == "object store", record
    assert (again.clean_acc, again.robust_acc) == (first.clean_acc, first.robust_acc)


def test_a_damaged_kept_teacher_is_one_line(tmp_path):
    from rcnas.distributed.service import read_kept_teacher
    from rcnas.infra.errors import ConfigError
    from rcnas.proxy.teacher import teacher_folder
    from tests.conftest import tiny_task

    task = tiny_task()
    folder = teacher_folder(task, tmp_path)
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"not a checkpoint")
    (folder / "train.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a usable teacher tiny-222.*delete .* to train it again") as info:
        read_kept_teacher(task, tmp_path)
    assert "\n" not in str(info.value)
    assert read_kept_teacher(task, tmp_path / "elsewhere") is None


def test_final_jobs_ask_for_the_experiments_resources_and_keep_their_weights_in_the_run_folder(tmp_path, cluster):
    """The final comparison's jobs ask for what the experiment's workers ask (a whole GPU where they ask a share),
    even when no node has it yet: here only a node added afterwards has the resource, and the jobs run there.
    Their weights come back to the run folder through the run's files actor."""
    import ray

    from agents.comparison import final_comparison
    from agents.config import ExperimentConfig
    from tests.conftest import tiny_task

    task = tiny_task()
    exp = ExperimentConfig.model_validate({
        "name": "final", "meta_tasks": ["a"], "target_task": "b",
        "workers": {"count": 1, "gpus": 0, "resources": {"trainer": 1}},
        "final_eval": {"epochs": 1, "attacks": ["clean", "fgsm"], "n_examples": 32}})
    assert exp.workers.spec()["resources"] == {"trainer": 1}
    done = {}

    def run() -> None:
        done["results"] = final_comparison(exp, task, task.teacher.arch, tmp_path / "final")

    import threading

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(3)
    assert "results" not in done, "no node has the resource yet: the jobs wait for one, never fall back"
    node = cluster.add_node(num_cpus=3, resources={"trainer": 3})
    worker.join(timeout=1800)
    results = done["results"]
    assert {r.name for r in results} >= {"rl-chosen", "uniform-shrink"}
    for r in results:
        assert (tmp_path / "final" / r.name / "model.pt").is_file()
    assert node.node_id in {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def test_whole_gpu_for_long_trainings():
    from rcnas.distributed.pool import PoolSettings
    from rcnas.distributed.resources import whole_gpu
    from rcnas.distributed.service import whole_gpu_settings

    assert whole_gpu({"num_gpus": 0.25, "num_cpus": 1}) == {"num_gpus": 1, "num_cpus": 1}
    spec = {"num_gpus": 2, "num_cpus": 4}
    assert whole_gpu(spec) is spec and whole_gpu(None) is None
    assert whole_gpu({"num_gpus": 0, "num_cpus": 1}) == {"num_gpus": 0, "num_cpus": 1}
    shared = PoolSettings(worker_spec={"num_gpus": 0.5, "num_cpus": 1})
    assert whole_gpu_settings(shared).worker_spec == {"num_gpus": 1, "num_cpus": 1}
    whole = PoolSettings(worker_spec={"num_gpus": 1, "num_cpus": 1})
    assert whole_gpu_settings(whole) is whole


class _Files:
    """Stands in for the RunFiles actor in a unit test of the pool's liveness rule: ``quiet_for`` as a remote call."""

    def __init__(self, quiet: list):
        self.quiet = quiet

        class _Remote:
            @staticmethod
            def remote(tag):
                async def answer():
                    return self.quiet[0]
                return answer()

        self.quiet_for = _Remote()


def test_a_long_call_has_no_time_limit_while_it_progresses_and_is_given_up_after_stall_s():
    from rcnas.distributed.pool import PoolSettings, _alive_while_progressing

    settings = PoolSettings(stall_s=0.5, check_s=0.05)

    async def slow(value, seconds):
        await asyncio.sleep(seconds)
        return value

    async def scenario():
        progressing = _Files([0.0])  # a report just now, every time it is asked
        assert await _alive_while_progressing(slow("done", 1.5), (progressing, "t"), settings) == "done"
        stalled = _Files([10.0])
        with pytest.raises(asyncio.TimeoutError):
            await _alive_while_progressing(slow("never", 30), (stalled, "t"), settings)
        silent = _Files([None])  # never reported: judged from the call's start
        with pytest.raises(asyncio.TimeoutError):
            await _alive_while_progressing(slow("never", 30), (silent, "t"), settings)

    asyncio.run(scenario())


def test_a_run_that_joined_a_cluster_is_told_what_ray_down_deletes(monkeypatch):
    """Without --storage, a run on a cluster (an address, or $RAY_ADDRESS as `ray job submit` sets it) warns; a run
    on this machine's own Ray does not (its folder is the user's)."""
    from agents.phases import on_shared_cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert on_shared_cluster("10.0.0.5:6379")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert on_shared_cluster(None)
