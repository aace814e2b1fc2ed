"""The compression environment: Gymnasium's checker, the budget wall as a property, rewards and final info."""

from __future__ import annotations

import glob
import math

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import envs  # noqa: F401 - registers rcnas/Compression-v0
from envs import observation
from envs.compression_env import CompressionEnv
from rcnas.config import TaskConfig
from rcnas.data.registry import DATASETS
from rcnas.reward import compression_reward
from rcnas.task import resolve_task
from tests.conftest import ROOT, tiny_task
from tests.fakes import FakeEvaluator

DIGITS_TASKS = sorted(p for p in glob.glob(str(ROOT / "configs/tasks/digits-*.yaml")))
TASK = str(ROOT / "configs/tasks/digits-pgd-e20-t444-r35.yaml")


def make_task(teacher: str, ratio: float, dataset: str = "digits", attack: str = "pgd", robust: bool = False):
    return resolve_task(TaskConfig.model_validate({
        "name": f"{teacher}-{ratio:.3f}", "dataset": {"name": dataset}, "teacher": teacher,
        "attack": {"name": attack, "epsilon": "8/255"}, "budget": {"ratio": ratio},
        "blocks": ["basic_block", "robust_res_block"] if robust else [],
    }))


def test_gymnasium_checker_passes():
    check_env(CompressionEnv(task=TASK, evaluator=FakeEvaluator()), skip_render_check=True)


def test_gymnasium_make_with_a_yaml_path():
    env = gymnasium.make("rcnas/Compression-v0", task=TASK, evaluator=FakeEvaluator())
    obs, info = env.reset(seed=0)
    assert obs["observations"].shape == (observation.SIZE,) and info["task"] == "digits-pgd-e20-t444-r35"


@settings(max_examples=40, deadline=None)
@given(teacher=st.sampled_from(["tiny-444", "tiny-332", "tiny-444-w234", "tiny-222", "WRN-A1", "RobustResNet-A2"]),
       ratio=st.floats(0.02, 1.0), robust=st.booleans(), seed=st.integers(0, 10_000))
def test_any_valid_action_sequence_ends_within_budget(teacher, ratio, robust, seed):
    dataset = "digits" if teacher.startswith("tiny") else "cifar10"
    probe = CompressionEnv(task=make_task(teacher, 1.0, dataset, robust=robust), evaluator=FakeEvaluator()).space
    low = probe.min_macs / probe.teacher_macs
    task = make_task(teacher, low + ratio * (1 - low), dataset, robust=robust)
    env = CompressionEnv(task=task, evaluator=FakeEvaluator())
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    done = False
    while not done:
        mask = obs["action_mask"].astype(bool)
        assert mask.any()
        obs, reward, done, truncated, info = env.step(int(rng.choice(np.flatnonzero(mask))))
    assert info["metrics"]["macs"] <= info["budget"] and math.isfinite(reward) and not info["invalid_action"]


@pytest.mark.parametrize("path", DIGITS_TASKS, ids=lambda p: p.split("/")[-1])
def test_random_policy_on_every_digits_task(path):
    env = CompressionEnv(task=path, evaluator=FakeEvaluator())
    for ep in range(5):
        obs, _ = env.reset(seed=ep)
        for step in range(env.space.n_stages):
            valid = np.flatnonzero(obs["action_mask"])
            obs, reward, done, _, info = env.step(int(env.np_random.choice(valid)))
            assert done == (step == env.space.n_stages - 1)
            if not done:
                assert reward == 0.0
        assert info["metrics"]["macs"] <= env.space.budget and np.isfinite(reward)


def test_final_info_and_reward_formula():
    fake = FakeEvaluator()
    env = CompressionEnv(task=TASK, evaluator=fake)
    obs, _ = env.reset(seed=1)
    done = False
    while not done:
        obs, reward, done, _, info = env.step(int(np.flatnonzero(obs["action_mask"])[-1]))
    m = info["metrics"]
    assert reward == pytest.approx(compression_reward(m["robust_acc"], 0.7, m["macs"], info["budget"],
                                                      env.task.config.reward))
    assert info["subnet"]["model"]["depth_configs"] and info["provenance"]["task_key"]
    assert info["arch"] and len(info["actions"]) == 3 and fake.calls == 1
    assert not obs["action_mask"].any()
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_invalid_action_becomes_the_cheapest_valid_one():
    env = CompressionEnv(task=make_task("tiny-444", 0.05), evaluator=FakeEvaluator())
    obs, _ = env.reset(seed=0)
    invalid = int(np.flatnonzero(obs["action_mask"] == 0)[-1])
    _, _, _, _, info = env.step(invalid)
    assert info["invalid_action"]
    assert env._actions[0] == env.space.cheapest(())


def test_meta_env_draws_tasks_and_shares_one_action_space():
    env = CompressionEnv(tasks=DIGITS_TASKS, evaluator=FakeEvaluator())
    seen = set()
    for ep in range(30):
        _, info = env.reset(seed=ep)
        seen.add(info["task"])
    assert len(seen) >= 5
    assert all(s.n_actions == env.action_space.n for s in env.spaces)
    _, info = env.reset(options={"task_index": 2})
    assert info["task"] == env.tasks[2].name


def test_observation_layout_covers_every_registered_dataset():
    assert sorted(observation.DATASET_NAMES) == DATASETS.names()


def test_a_real_episode_with_the_in_process_proxy(tmp_path):
    """No fake: a teacher is adversarially trained (1 epoch), cached, and a candidate fine-tuned and attacked."""
    from rcnas.proxy.local import LocalEvaluator

    task = tiny_task()
    ev = LocalEvaluator(store=tmp_path / "evals.sqlite", cache_dir=tmp_path / "cache")
    env = CompressionEnv(task=task, evaluator=ev)
    obs, _ = env.reset(seed=0)
    done = False
    while not done:
        obs, reward, done, _, info = env.step(int(np.flatnonzero(obs["action_mask"])[0]))
    assert info["metrics"]["status"] == "ok" and 0 <= info["metrics"]["robust_acc"] <= info["metrics"]["clean_acc"]
    assert reward >= 0 and not info["cached"]
    assert list((tmp_path / "cache" / "teachers").iterdir()), "the teacher was cached on disk"
    env.reset(seed=0)
    for a in info["actions"]:
        _, reward2, _, _, info2 = env.step(a)
    assert info2["cached"] and reward2 == reward
