"""The agent: the stage-encoder module, fine-tuning from meta-trained weights, and train.py end to end."""

from __future__ import annotations

import json

import pytest
import torch

from envs import observation
from envs.compression_env import CompressionEnv
from tests.conftest import ROOT, run_script
from tests.fakes import FakeEvaluator

TASK = str(ROOT / "configs/tasks/digits-pgd-e20-t444-r35.yaml")


def module_for(env):
    from agents.rl_module import StageEncoderModule

    return StageEncoderModule(observation_space=env.observation_space, action_space=env.action_space,
                              model_config={"embed": 8, "lstm": 8, "hidden": 16, "task_embed": 4})


def test_module_masks_invalid_actions_and_uses_the_current_stage_head():
    from ray.rllib.core.columns import Columns

    env = CompressionEnv(task=TASK, evaluator=FakeEvaluator())
    module = module_for(env)
    obs, _ = env.reset(seed=0)
    batch = {Columns.OBS: {k: torch.as_tensor(v)[None] for k, v in obs.items()}}
    logits = module.forward_exploration(batch)[Columns.ACTION_DIST_INPUTS][0]
    mask = torch.as_tensor(obs["action_mask"]).bool()
    assert (logits[~mask] < -1e30).all() and (logits[mask] > -1e3).all()
    values = module.compute_values(batch)
    assert values.shape == (1,)
    # a different current stage selects a different head: moving the flag changes the logits
    obs2 = obs["observations"].copy()
    obs2[observation.STAGE_FEATURES * 0 + 5], obs2[observation.STAGE_FEATURES * 1 + 5] = 0.0, 1.0
    with torch.no_grad():
        module.heads[1].weight.add_(1.0)
    batch2 = {Columns.OBS: {"observations": torch.as_tensor(obs2)[None],
                            "action_mask": torch.as_tensor(obs["action_mask"])[None]}}
    logits2 = module.forward_exploration(batch2)[Columns.ACTION_DIST_INPUTS][0]
    assert not torch.allclose(logits2[mask], logits[mask])


@pytest.mark.ray
@pytest.mark.parametrize("sampler", ["async", "env_runners"])
def test_finetuning_starts_from_the_meta_trained_weights(ray_local, tmp_path, sampler):

    from agents.config import load_experiment, with_changes
    from rcnas.distributed.service import evaluation_service

    exp, metas, target = load_experiment(ROOT / "configs/experiments/smoke.yaml")
    exp = with_changes(exp, "test", sampler=sampler)
    metas, target = [str((ROOT / m).resolve()) for m in metas], str((ROOT / target).resolve())
    with evaluation_service(tmp_path, n_workers=1, cache_dir=tmp_path / "cache", name="svc-agent") as client:
        client.stats()
        _check_fine_tuning_starts_from(exp, metas, target, tmp_path)


def _check_fine_tuning_starts_from(exp, metas, target, tmp_path):
    from ray.rllib.core.rl_module.rl_module import RLModule

    from agents.ppo import build_ppo_config
    from agents.stages import StageSettings, module_dir, run_stage

    meta = run_stage("meta", build_ppo_config(exp, metas, "svc-agent", grid=(2, 4)), 1, tmp_path,
                     StageSettings(no_tune=True))
    saved = RLModule.from_checkpoint(module_dir(meta)).state_dict()
    fresh = build_ppo_config(exp, [target], "svc-agent", grid=(2, 4)).build_algo()
    tuned = build_ppo_config(exp, [target], "svc-agent", grid=(2, 4), load_module_from=module_dir(meta)).build_algo()
    try:
        learner = tuned.learner_group.get_state(components="learner/rl_module/default_policy")
        learner = learner["learner"]["rl_module"]["default_policy"]
        local = tuned.get_module().state_dict()
        # the async sampler decides episodes with the local runner's module; RLlib's env runners (sampler:
        # env_runners) with their own
        runners = tuned.env_runner_group.foreach_env_runner(lambda r: r.module.state_dict(), local_env_runner=False)
        assert len(runners) == (exp.env_runners if exp.sampler == "env_runners" else 0)
        for name, value in saved.items():
            assert torch.equal(torch.as_tensor(learner[name]), value.cpu()), f"learner {name}"
            assert torch.equal(local[name].cpu(), value.cpu()), f"local env runner {name}"
            for runner in runners:
                assert torch.equal(torch.as_tensor(runner[name]), value.cpu()), f"remote env runner {name}"
        assert any(not torch.equal(fresh.get_module().state_dict()[n].cpu(), v.cpu()) for n, v in saved.items())
    finally:
        fresh.stop()
        tuned.stop()


@pytest.mark.ray
def test_train_smoke_writes_every_output(tmp_path):
    kept = tmp_path / "kept"  # --storage: a URI that outlives the head (file:// here; s3:// or gs:// on a cluster)
    cache = {"RCNAS_CACHE": str(tmp_path / "cache")}  # the nodes' own cache, lost with the head below
    proc = run_script("train.py", "--smoke-test", "--out", str(tmp_path / "run"), "--storage", kept.as_uri(),
                      "--set", "trackers.mlflow={}", "--set", "trackers.wandb={}", env=cache, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    from rcnas.space.schema import load_subnet

    # paths in summary.json are relative to the run folder: a moved or shared folder keeps working
    assert summary["yaml"].startswith("DIGITS/RL_") and summary["yaml"].endswith(".yaml")
    arch, sub = load_subnet(run / summary["yaml"])
    assert summary["macs"] <= summary["budget"] and sub.rcnas.task == "smoke-target"
    # provenance: code and library versions in the summary and the searched file; the configs as resolved
    assert summary["provenance"]["code_version"].startswith("0.1.0") and summary["provenance"]["torch"]
    assert sub.rcnas.provenance["ray"] == summary["provenance"]["ray"]
    assert (run / "config" / "experiment.yaml").is_file() and (run / "config" / "tasks" / "smoke-target.yaml").is_file()
    for name in ("report.md", "reward.png", "candidates.png", "topology.png", "final/results.json",
                 "final/comparison.txt", "evaluations.sqlite"):
        assert (run / name).is_file(), name
    # Tune wrote its experiments to the storage URI; the run folder was copied there too
    for name in ("summary.json", "report.md", "final/results.json", "evaluations.sqlite", "config/experiment.yaml"):
        assert (kept / name).is_file(), name
    assert not (kept / ".rcnas.lock").exists()
    events = list((kept / "tune" / "meta").rglob("events.out.tfevents*"))
    assert events, "TensorBoard events for meta-training"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert any("episode_return_mean" in t for t in tags) and any("rcnas/best_reward" in t for t in tags), tags[:20]
    assert list((run / "tune" / "finetune").rglob("progress.csv"))
    progress = next((run / "tune" / "finetune").rglob("progress.csv")).read_text()
    assert "rcnas/best_reward" in progress and "rcnas/computed" in progress
    # smoke.yaml screens fine-tuning with a surrogate: the registered env wraps the service in the screening
    assert "rcnas/screened_out" in progress and "rcnas/promoted" in progress
    results = json.loads((run / "final" / "results.json").read_text())
    assert {r["name"] for r in results} == {"rl-chosen", "uniform-shrink", "slimming-pruned", "teacher-tiny-222"}
    assert "rl-chosen" in proc.stdout
    # the console says how the search goes, one line per iteration, without Tune's config dump or library noise
    console = proc.stdout + proc.stderr
    assert "[meta] iteration 1/1 | best reward" in console and "[finetune] iteration 1/1 |" in console
    assert "handing over to evolution: 2 more evaluations" in console  # smoke.yaml's handover ran
    # paced at keep 0.5: twice 2 / 0.5 proposals at most
    assert "(of at most 8 proposals screened by the surrogate)" in console and "proposals screened out |" in console
    for noise in ("Configuration for experiment", "Trial status", "DeprecationWarning", "Install gputil",
                  "Traceback", "Token authentication is enabled", "Using blocking ray.get inside async actor"):
        assert noise not in console, noise
    # Ray's native note on restartable actors is dropped from the workers' output; the driver's own core worker
    # prints it once for the actor Tune's W&B callback creates (W&B is on here), straight to its stderr
    assert not [ln for ln in console.splitlines() if "core_worker.cc" in ln and "_WandbLoggingActor" not in ln]
    assert f"tensorboard --logdir {kept.as_uri()}/tune" in console

    # the trackers, offline: MLflow's file store in the run folder, W&B offline runs, one per PPO stage
    assert len(list((run / "mlflow").rglob("metrics/rcnas/best_reward"))) == 2
    assert len(list((run / "wandb").rglob("offline-run-*"))) == 2

    # the head is lost: a new one resumes from the storage URI alone, computing nothing again
    import shutil

    shutil.rmtree(run)
    shutil.rmtree(tmp_path / "cache")
    assert list((kept / "teachers").glob("*/model.pt")), "the trained teachers are kept in the run's storage"
    again = run_script("train.py", "--smoke-test", "--out", str(run), "--storage", kept.as_uri(), "--resume",
                       "--set", "trackers.mlflow={}", "--set", "trackers.wandb={}", env=cache, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pulled from" in again.stderr and "'computed': 0" in again.stderr
    # no teacher trained again: the new node cache got each one from the run folder pulled back from storage
    records = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "teachers").glob("*/train.json")]
    assert records and all(r.get("kept") == "run folder" for r in records), records
    assert json.loads((run / "summary.json").read_text())["chosen"] == summary["chosen"]
    # the same command on the finished run: its table again, nothing computed, no Ray, no second Tune trial
    trials = sorted(p.name for p in (kept / "tune" / "meta").iterdir() if p.is_dir())
    third = run_script("train.py", "--smoke-test", "--out", str(run), "--storage", kept.as_uri(), "--resume",
                       "--set", "trackers.mlflow={}", "--set", "trackers.wandb={}", timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "finished: nothing is computed again" in third.stderr and "Started a local Ray" not in third.stderr
    assert third.stdout.split("sub-network", 1)[1] == again.stdout.split("sub-network", 1)[1]
    assert sorted(p.name for p in (kept / "tune" / "meta").iterdir() if p.is_dir()) == trials



@pytest.mark.slow
def test_downstream_run_fine_tunes_from_a_saved_meta_checkpoint(tmp_path):
    """The original README's downstream run: fine-tune only (--from), on a task given with --task and --M."""
    first = run_script("train.py", "--smoke-test", "--no-final-eval", "--out", str(tmp_path / "run"), timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    meta = str(tmp_path / "run" / summary["meta_checkpoint"])
    down = run_script("train.py", "--experiment", "configs/experiments/smoke.yaml", "--task",
                      "configs/tasks/smoke/smoke-target.yaml", "--M", "2", "--from", meta,
                      "--out", str(tmp_path / "down"), "--no-final-eval", timeout=900)
    assert down.returncode == 0, down.stderr[-3000:]
    assert "meta-training" not in down.stderr and (tmp_path / "down" / "report.md").is_file()


def test_bad_experiment_inputs_are_one_line(tmp_path):
    bad = run_script("train.py", "--task", "configs/tasks/nope.yaml", "--out", str(tmp_path))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "nope.yaml" in bad.stderr
    exp = tmp_path / "exp.yaml"
    exp.write_text("name: x\nmeta_tasks: [digits-pgd-e20-t444-r35]\ntarget_task: digits-pgd-e20-t444-r35\n")
    held = run_script("train.py", "--experiment", str(exp), "--out", str(tmp_path))
    assert held.returncode == 2 and "hold it out" in held.stderr
    missing = run_script("train.py", "--experiment", "configs/experiments/smoke.yaml", "--from", str(tmp_path),
                         "--out", str(tmp_path / "o"), "--no-final-eval")
    assert missing.returncode == 2 and "not an algorithm checkpoint" in missing.stderr


@pytest.mark.slow
def test_resume_continues_a_killed_run_and_keeps_its_evaluations(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from rcnas.proxy.store import EvaluationStore

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", "--smoke-test", "--out", str(run)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ))
    db = run / "evaluations.sqlite"
    deadline = time.time() + 600
    while time.time() < deadline and not (db.is_file() and len(EvaluationStore(db)) >= 1):
        time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: driver, Ray, workers
    proc.wait()
    before = {json.dumps(r["metrics"], sort_keys=True) for r in EvaluationStore(db).rows()}
    assert before, "the first run stored at least one evaluation before it was killed"
    again = run_script("train.py", "--smoke-test", "--out", str(run), "--resume", timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    after = {json.dumps(r["metrics"], sort_keys=True) for r in EvaluationStore(db).rows()}
    assert before <= after, "nothing stored before the kill is lost"
    assert (run / "summary.json").is_file()


@pytest.mark.slow
@pytest.mark.ray
def test_baseline_searchers_run_through_train_py(tmp_path):
    evo = run_script("train.py", "--smoke-test", "--searcher", "evolution", "--n", "3", "--no-final-eval",
                     "--out", str(tmp_path / "evo"), timeout=900)
    assert evo.returncode == 0, evo.stderr[-3000:]
    summary = json.loads((tmp_path / "evo" / "summary.json").read_text())
    assert summary["searcher"] == "evolution" and summary["evaluated"] == 3 and summary["meta_checkpoint"] is None
    assert (tmp_path / "evo" / "reward.png").is_file() and not (tmp_path / "evo" / "tune").exists()


@pytest.mark.slow  # 35 s; the rl searcher's fine-tuning stage (the same code path) runs in the default suite
def test_ppo_from_scratch_runs_through_train_py(tmp_path):
    ppo = run_script("train.py", "--smoke-test", "--searcher", "ppo-scratch", "--no-final-eval",
                     "--out", str(tmp_path / "ppo"), timeout=900)
    assert ppo.returncode == 0, ppo.stderr[-3000:]
    assert not (tmp_path / "ppo" / "tune" / "meta").exists() and (tmp_path / "ppo" / "tune" / "finetune").is_dir()
