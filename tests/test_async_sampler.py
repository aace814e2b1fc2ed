"""The async sampler (agents/async_ppo.py): evaluations side by side, episodes back as they finish, a straggler
holding up nobody, the policy lag counted; reproducible with one evaluation in flight. No Ray: the env's evaluator
is a stand-in here (the default suite's train.py runs go through the real service)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from agents.async_ppo import EpisodeSampler
from agents.rl_module import StageEncoderModule
from envs.compression_env import CompressionEnv
from rcnas.infra.errors import EvaluationFailed
from tests.conftest import ROOT
from tests.fakes import FakeEvaluator

TASK = str(ROOT / "configs/tasks/digits-pgd-e20-t444-r35.yaml")


class Gated(FakeEvaluator):
    """Holds each evaluation until released (or ``slow`` seconds for the architectures ``slow_if`` picks), counting
    how many run at once."""

    def __init__(self, hold_s: float = 0.0, slow_if=None, slow_s: float = 0.0) -> None:
        super().__init__()
        self.hold_s, self.slow_if, self.slow_s = hold_s, slow_if, slow_s
        self.running = self.most = 0
        self.batches: list[int] = []
        """how many evaluations ran together, per stretch of time in which some ran"""
        self._lock = threading.Lock()

    def evaluate(self, task, arch):
        with self._lock:
            if self.running == 0:
                self.batches.append(0)
            self.batches[-1] += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.slow_s if self.slow_if and self.slow_if(arch) else self.hold_s)
            return super().evaluate(task, arch)
        finally:
            with self._lock:
                self.running -= 1


def module_for(env: CompressionEnv):
    import torch

    torch.manual_seed(0)  # the same initial policy in every run
    return RLModuleSpec(module_class=StageEncoderModule, observation_space=env.observation_space,
                        action_space=env.action_space, model_config={}).build()


def test_one_in_flight_gives_complete_episodes_reproducible_from_the_seed():
    runs = []
    for _ in range(2):
        env = CompressionEnv(task=TASK, evaluator=FakeEvaluator(), avoid_repeats=True)
        sampler = EpisodeSampler(env, in_flight=1, seed=7)
        got = sampler.collect(module_for(env), 4)
        runs.append([list(s.episode.get_actions()) for s in got])
        for s in got:
            ep = s.episode
            rewards = ep.get_rewards()
            assert ep.is_terminated and len(ep) == env.space.n_stages and s.lag == 0
            assert all(r == 0.0 for r in rewards[:-1]) and rewards[-1] != 0.0
            logits = ep.get_extra_model_outputs(Columns.ACTION_DIST_INPUTS)
            logp = ep.get_extra_model_outputs(Columns.ACTION_LOGP)
            for t, a in enumerate(ep.get_actions()):
                lp = logits[t] - np.log(np.exp(logits[t] - logits[t].max()).sum()) - logits[t].max()
                assert np.isclose(logp[t], lp[a], atol=1e-5)  # the probability it was sampled with
            assert ep.get_infos(-1)["metrics"]["status"] == "ok"
        assert sampler.running == 0
    assert runs[0] == runs[1]


def test_evaluations_run_side_by_side_and_a_straggler_holds_up_no_one():
    """in_flight 3: three evaluations at once; the one slow evaluation (the first episode's) is still running
    when six others have come back, and the episodes decided after an update report their lag."""
    first: list = []

    def slow_if(arch):
        if not first:
            first.append(arch.key())
        return arch.key() == first[0]

    evaluator = Gated(hold_s=0.05, slow_if=slow_if, slow_s=30.0)
    env = CompressionEnv(task=TASK, evaluator=evaluator, avoid_repeats=True)
    sampler = EpisodeSampler(env, in_flight=3, seed=0)
    module = module_for(env)
    t0 = time.monotonic()
    got = sampler.collect(module, 3)
    sampler.version += 1  # an update
    got += sampler.collect(module, 3)
    assert time.monotonic() - t0 < 25, "the straggler held the others up"
    assert evaluator.most == 3 and sampler.running >= 1  # the straggler, still running
    assert all(s.episode.get_infos(-1)["arch_key"] != first[0] for s in got)
    assert max(s.lag for s in got) == 1 and min(s.lag for s in got) == 0


def test_a_failed_evaluation_is_raised_by_collect():
    class Failing(FakeEvaluator):
        def evaluate(self, task, arch):
            raise EvaluationFailed("the worker ran out of memory")

    env = CompressionEnv(task=TASK, evaluator=Failing())
    for in_flight in (1, 2):
        with pytest.raises(EvaluationFailed, match="out of memory"):
            EpisodeSampler(env, in_flight=in_flight, seed=0).collect(module_for(env), 1)
    with pytest.raises(ValueError, match="at least 1"):
        EpisodeSampler(env, in_flight=0, seed=0)


def test_the_last_updates_start_no_evaluation_nobody_reads():
    evaluator = Gated(hold_s=0.02)
    env = CompressionEnv(task=TASK, evaluator=evaluator, avoid_repeats=True)
    sampler = EpisodeSampler(env, in_flight=4, seed=0)
    module = module_for(env)
    assert len(sampler.collect(module, 2, needed=5)) == 2  # 5 still needed: 4 in flight
    assert len(sampler.collect(module, 2, needed=3)) == 2
    assert len(sampler.collect(module, 1, needed=1)) == 1
    assert evaluator.calls == 5 and sampler.running == 0
    with pytest.raises(ValueError, match="only 1"):
        sampler.collect(module, 2, needed=1)


def test_ordered_gives_the_same_search_whichever_evaluation_finishes_first():
    """Three in flight, taken in the order decided: two runs whose evaluations finish in different orders decide
    the same sub-networks with the same policy versions."""
    runs = []
    for slow_key in ("first", "third"):
        marks: list = []

        def slow_if(arch, slow_key=slow_key, marks=marks):
            marks.append(arch.key())
            return len(marks) == (1 if slow_key == "first" else 3)

        env = CompressionEnv(task=TASK, evaluator=Gated(hold_s=0.01, slow_if=slow_if, slow_s=0.3),
                             avoid_repeats=True)
        sampler = EpisodeSampler(env, in_flight=3, seed=3, ordered=True)
        module = module_for(env)
        got = []
        for _ in range(3):
            got += sampler.collect(module, 2)
            sampler.version += 1
        runs.append([(list(s.episode.get_actions()), s.lag) for s in got])
    assert runs[0] == runs[1]


def test_updates_grow_past_m_only_to_bound_the_policy_lag():
    from agents.async_ppo import episodes_per_update

    assert episodes_per_update(5, 8, 4) == 5  # 8 workers: M
    assert episodes_per_update(5, 32, 4) == 8  # 32 workers
    assert episodes_per_update(5, 128, 4) == 32  # 128 workers: 4 updates behind at most, not 26
    assert episodes_per_update(5, 128, None) == 5


def test_the_experiment_picks_the_sampler():
    from ray.rllib.algorithms.ppo import PPO

    from agents.async_ppo import SAMPLER_KEY, AsyncSearchPPO
    from agents.config import load_experiment, with_changes
    from agents.ppo import build_ppo_config
    from agents.stages import stage_length

    exp, metas, _ = load_experiment(ROOT / "configs/experiments/digits.yaml")
    config = build_ppo_config(exp, metas, "svc")
    assert config.algo_class is AsyncSearchPPO and config.num_env_runners == 0
    assert config.env_config[SAMPLER_KEY] == {"in_flight": None, "episodes": 5, "ordered": True, "policy_lag": 4,
                                               "lagged": "as_sampled"}
    assert stage_length(config, 6).env_config[SAMPLER_KEY]["iterations"] == 6
    # digits screens fine-tuning (and the hand-over) but not meta-training (screening.meta: false)
    from agents.config import meta_stage

    assert config.env_config["screening"]["config"]["keep"] == 0.1
    assert "screening" not in build_ppo_config(meta_stage(exp), metas, "svc").env_config
    cifar, _, _ = load_experiment(ROOT / "configs/experiments/cifar10.yaml")
    assert meta_stage(cifar) is cifar  # screened for cost
    rllib = build_ppo_config(with_changes(exp, "test", sampler="env_runners", env_runners=3), metas, "svc")
    assert rllib.algo_class is PPO and rllib.num_env_runners == 3 and SAMPLER_KEY not in rllib.env_config
    assert stage_length(rllib, 6) is rllib
    cluster, cmetas, _ = load_experiment(ROOT / "configs/experiments/cifar10.yaml")
    assert cluster.sampler == "async" and not cluster.ordered  # every GPU busy; the CPU demos stay reproducible


def test_refresh_takes_a_lagged_episodes_probabilities_from_the_current_policy():
    import torch

    env = CompressionEnv(task=TASK, evaluator=Gated(hold_s=0.01), avoid_repeats=True)
    sampler = EpisodeSampler(env, in_flight=4, seed=0, refresh=True)
    module = module_for(env)
    sampler.collect(module, 2)
    sampler.version += 1
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05)  # an update
    got = sampler.collect(module, 4)
    lagged = [s for s in got if s.lag]
    assert lagged
    for s in lagged:
        ep = s.episode
        obs = ep.get_observations(slice(0, len(ep)))
        with torch.no_grad():
            logits = module.forward_exploration({Columns.OBS: {k: torch.as_tensor(v) for k, v in obs.items()}})[
                Columns.ACTION_DIST_INPUTS]
        want = torch.log_softmax(logits, -1).gather(1, torch.as_tensor(ep.get_actions(slice(0, len(ep))))[:, None])
        assert np.allclose(ep.get_extra_model_outputs(Columns.ACTION_LOGP), want[:, 0].numpy(), atol=1e-5)


def _ordered_rounds(sampler, module, rounds):
    got = []
    for _ in range(rounds):
        got += sampler.collect(module, 2)
        sampler.version += 1
    return [(list(s.episode.get_actions()), s.episode.get_infos(-1)["task"], s.lag) for s in got]


def test_a_search_resumed_from_the_sampler_state_decides_what_it_would_have_decided():
    """Ordered, three in flight, two tasks (the env's task draws and repeat masks matter): a search stopped after
    two updates, its state pickled as a checkpoint pickles it and restored into a fresh env and sampler, decides the
    same sub-networks with the same lags as one never stopped; the evaluations running at the stop are asked again."""
    import pickle

    tasks = [TASK, str(ROOT / "configs/tasks/digits-fgsm-e20-t444-r50.yaml")]

    def fresh(evaluator):
        env = CompressionEnv(tasks=tasks, evaluator=evaluator, avoid_repeats=True)
        return EpisodeSampler(env, in_flight=3, seed=5, ordered=True), module_for(env)

    straight, module = fresh(Gated(hold_s=0.01))
    whole = _ordered_rounds(straight, module, 5)
    first, module = fresh(Gated(hold_s=0.01))
    head = _ordered_rounds(first, module, 2)
    state = pickle.loads(pickle.dumps(first.state()))
    assert len(state["pending"]) == first.running > 0
    again = Gated(hold_s=0.01)
    resumed, module = fresh(again)
    resumed.restore(state)
    assert resumed.running == first.running
    tail = _ordered_rounds(resumed, module, 3)
    assert head + tail == whole
    with pytest.raises(RuntimeError, match="already sampled"):
        resumed.restore(state)
    wrong, _ = fresh(FakeEvaluator())
    wrong._seed = 6
    with pytest.raises(ValueError, match="seed 5"):
        wrong.restore(state)


@pytest.mark.ray
def test_the_algorithm_checkpoint_carries_the_sampler_state(ray_local, tmp_path):
    """AsyncSearchPPO answered from the digits table: after an update its checkpoint holds the sampler's state, and
    an algorithm restored from it continues the same search (the same next sub-networks as the one that went on)."""
    from agents.async_ppo import SAMPLER_STATE
    from agents.config import load_experiment, with_changes
    from agents.quality_runs import TableRuns
    from rcnas.search.table import open_table
    from rcnas.task import load_task

    exp, metas, _ = load_experiment(ROOT / "configs/experiments/digits.yaml")
    exp = with_changes(exp, "test", in_flight=3)
    table = open_table(str(ROOT / "bench/tables/digits-e20-t444.csv.gz"), load_task(metas[0]))
    algos = []
    try:
        for client in ("a", "b"):
            algos.append(TableRuns(table, (4, 4)).config(exp, metas, client).build_algo())
        going, restored = algos
        going.train()
        path = going.save_to_path(str(tmp_path / "ckpt"))
        assert SAMPLER_STATE in going.get_state()
        restored.restore_from_path(path)
        learned: list[list] = [[], []]
        for a, seen in zip(algos, learned):
            update = a.learner_group.update

            def spy(*args, update=update, seen=seen, **kwargs):
                seen += [(s.get_infos(-1)["arch_key"], tuple(s.get_extra_model_outputs(Columns.ACTION_LOGP)))
                         for s in kwargs["episodes"]]
                return update(*args, **kwargs)

            a.learner_group.update = spy
            a.train()
        # the same episodes learned from, in the same order, sampled with the same probabilities
        assert learned[0] == learned[1] and len(learned[0]) == exp.M
        assert going._sampler._started == restored._sampler._started
    finally:
        for a in algos:
            a.stop()


def test_ordered_screened_search_is_the_same_whichever_evaluation_finishes_first(tmp_path):
    """The surrogate screens in the sampler's thread in the order decided and learns when an episode is completed:
    with three evaluations in flight finishing in different orders, the same sub-networks are promoted and the same
    episodes come back."""
    from rcnas.config import ScreeningConfig
    from rcnas.search.screening import ScreeningEvaluator
    from rcnas.search.table import read_table
    from rcnas.task import load_task
    from tests.fakes import synthetic_table
    from tests.test_screening import _Jittered

    t = load_task(TASK)
    synthetic_table(tmp_path / "t.csv.gz", [t])
    runs = []
    for jitter in (1, 2):
        inner = _Jittered(read_table(tmp_path / "t.csv.gz", t), jitter)
        ev = ScreeningEvaluator(inner, ScreeningConfig(by="surrogate", keep=0.3, min_points=4, warm=20))
        env = CompressionEnv(task=t, evaluator=ev, avoid_repeats=True)
        sampler = EpisodeSampler(env, in_flight=3, seed=2, ordered=True)
        got = _ordered_rounds(sampler, module_for(env), 6)
        runs.append((got, sorted(r.arch_key for r in inner.requests), ev.promoted))
        assert 0 < ev.promoted < 12
    assert runs[0] == runs[1]
