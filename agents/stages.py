"""One PPO training stage (meta-training or fine-tuning) as a Ray Tune experiment, or a plain loop (--no-tune)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune
from ray.rllib.algorithms.ppo import PPO, PPOConfig

MODULE_PATH = ("learner_group", "learner", "rl_module", "default_policy")
METRIC = "env_runners/episode_return_mean"


def module_dir(checkpoint: str | Path) -> str:
    """The policy module's folder inside an algorithm checkpoint (loadable without Ray by RLModule)."""
    return str(Path(checkpoint).joinpath(*MODULE_PATH))


def run_stage(name: str, config: PPOConfig, iterations: int, storage: Path, *, no_tune: bool = False,
              resume: bool = False, log: Callable[[str], None] = print) -> str:
    """Train ``iterations`` PPO iterations; returns the final checkpoint folder.

    Under Tune, the experiment lives in ``storage/name`` (TensorBoard events, progress.csv, checkpoints);
    ``resume`` continues an interrupted experiment found there.
    """
    if no_tune:
        return _plain_loop(name, config, iterations, storage, log)
    path = storage / name
    if resume and tune.Tuner.can_restore(str(path)):
        log(f"resuming Tune experiment {path}")
        tuner = tune.Tuner.restore(str(path), trainable=PPO, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            PPO, param_space=config,
            run_config=tune.RunConfig(
                storage_path=str(storage.resolve()), name=name, stop={"training_iteration": iterations},
                checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, checkpoint_at_end=True,
                                                        num_to_keep=2),
                verbose=1,
            ),
        )
    result = tuner.fit().get_best_result(metric="training_iteration", mode="max")
    if result.error:
        raise RuntimeError(f"{name} failed: {result.error}")
    return result.checkpoint.path


def _plain_loop(name: str, config: PPOConfig, iterations: int, storage: Path, log: Callable[[str], None]) -> str:
    algo = config.build_algo()
    try:
        for i in range(iterations):
            res: dict[str, Any] = algo.train()
            log(f"[{name}] iteration {i + 1}/{iterations}: return {res['env_runners'].get('episode_return_mean')}"
                f" {res.get('rcnas', {})}")
        out = (storage / name / "checkpoint").resolve()
        algo.save_to_path(str(out))
        return str(out)
    finally:
        algo.stop()


