"""PPO (RLlib new API stack) built from an experiment config, with the stage-encoder module."""

from __future__ import annotations

from typing import Any, Optional

from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from agents.async_ppo import SAMPLER_KEY, AsyncSearchPPO
from agents.callbacks import SearchMetrics
from agents.config import ExperimentConfig
from agents.env_factory import register
from agents.rl_module import StageEncoderModule


def build_ppo_config(exp: ExperimentConfig, tasks: list[str], service: str,
                     grid: Optional[tuple[int, int]] = None, load_module_from: Optional[str] = None,
                     client: str = "", search_metrics: bool = True, prior: Optional[list[str]] = None
                     ) -> PPOConfig:
    """PPO over the compression env: ``M`` episodes (sub-networks) per policy update, sampled as ``exp.sampler``
    says (:class:`agents.async_ppo.AsyncSearchPPO` by default).

    Args:
        load_module_from: an RLModule checkpoint folder to start from (fine-tuning after meta-training).
        search_metrics: report the search's ``rcnas/*`` metrics, read from the service's store (a benchmark whose
            envs answer from a table has no service: off).
        prior: task files whose stored evaluations train the screening surrogate from the start (fine-tuning: the
            meta tasks), besides ``tasks`` themselves.
    """
    from rcnas.task import load_task

    # an episode is one step per stage: M episodes are M x (the tasks' stage count) steps, read from the teachers
    n_stages = max(load_task(t).space.n_stages for t in tasks)
    batch = exp.M * n_stages
    minibatch = (exp.ppo.minibatch_episodes or exp.M) * n_stages
    env_config: dict[str, Any] = {"tasks": tasks, "service": service, "grid": list(grid) if grid else None,
                                  "client": client, "avoid_repeats": exp.avoid_repeats}
    if exp.screening.by != "none":
        env_config["screening"] = {"config": exp.screening.model_dump(mode="json"),
                                   "prior": list(dict.fromkeys([*(prior or []), *tasks]))}
    asynchronous = exp.sampler == "async"
    if asynchronous:  # the algorithm samples itself (agents/async_ppo.py): no env runner processes
        env_config[SAMPLER_KEY] = {"in_flight": exp.in_flight, "episodes": exp.M, "ordered": exp.ordered,
                                     "policy_lag": exp.policy_lag, "lagged": exp.lagged}
    return (
        PPOConfig(algo_class=AsyncSearchPPO if asynchronous else None)
        .environment(env=register(), env_config=env_config, disable_env_checking=True)
        .env_runners(
            num_env_runners=0 if asynchronous else exp.env_runners,
            # env runners only wait on the evaluation service: a token CPU share (Tune refuses empty bundles),
            # so that with the evaluation workers' fractional CPUs nothing can wait forever for a CPU
            num_cpus_per_env_runner=0.01,
            # M * stages steps per update split over the runners; an episode may straddle two updates, which
            # PPO handles (value bootstrap on the cut)
            rollout_fragment_length="auto",
            # a step may adversarially fine-tune a network for minutes on a CPU
            sample_timeout_s=3600,
        )
        # The policy is a few thousand parameters updated on batches of M * stages steps: its learner stays on the
        # CPU in the algorithm's process, and every GPU goes to the evaluation workers (a GPU learner would also
        # wait forever for a GPU they hold). Half a CPU, so that the trial fits beside the workers on 2 cores.
        .learners(num_learners=0, num_cpus_per_learner=0.5, num_gpus_per_learner=0)
        .resources(num_cpus_for_main_process=0.5)
        .training(
            lr=exp.ppo.lr, train_batch_size_per_learner=batch, minibatch_size=minibatch,
            num_epochs=exp.ppo.num_epochs, clip_param=exp.ppo.clip_param, entropy_coeff=exp.ppo.entropy_coeff,
            vf_loss_coeff=exp.ppo.vf_loss_coeff, gamma=exp.ppo.gamma, lambda_=exp.ppo.lambda_,
        )
        .rl_module(rl_module_spec=RLModuleSpec(module_class=StageEncoderModule,
                                               model_config=exp.model.model_dump(),
                                               load_state_path=load_module_from))
        .callbacks(SearchMetrics if search_metrics else None)
        .debugging(seed=exp.seed)
    )
