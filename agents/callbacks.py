"""Per-episode and per-iteration metrics of the search, for TensorBoard and progress.csv.

RLlib aggregates ``info`` dicts nowhere, so the final step's info is turned into metrics here: the episode's
robust accuracy and MACs, and whether its evaluation was computed or answered from the store (or de-duplicated).
"""

from __future__ import annotations

from typing import Any

from ray.rllib.callbacks.callbacks import RLlibCallback

from rcnas.distributed.service import RayEvaluator
from rcnas.task import Task, load_task


class SearchMetrics(RLlibCallback):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tasks: list[Task] | None = None

    def on_algorithm_init(self, *, algorithm: Any, metrics_logger: Any = None, **kwargs: Any) -> None:
        """Fine-tuning: the learner has loaded the meta-trained module (``RLModuleSpec.load_state_path``); push
        those weights to every env runner, the local one included (RLlib leaves it at its fresh init), so that the
        very first episodes already sample from the meta-trained policy."""
        algorithm.env_runner_group.sync_weights(from_worker_or_learner_group=algorithm.learner_group,
                                                inference_only=True)

    def on_episode_end(self, *, episode: Any, metrics_logger: Any = None, **kwargs: Any) -> None:
        info = episode.get_infos(-1)
        if not info or "metrics" not in info or metrics_logger is None:
            return
        m = info["metrics"]
        reward = float(sum(episode.get_rewards()))
        metrics_logger.log_value("rcnas/robust_acc", m["robust_acc"], reduce="mean", window=50)
        metrics_logger.log_value("rcnas/macs", m["macs"], reduce="mean", window=50)
        metrics_logger.log_value("rcnas/best_reward", reward, reduce="max")
        metrics_logger.log_value("rcnas/evals_from_store", int(info["cached"]), reduce="sum")
        metrics_logger.log_value("rcnas/evals_computed", int(not info["cached"]), reduce="sum")
        metrics_logger.log_value("rcnas/evals_failed", int(m["status"] != "ok"), reduce="sum")

    def on_train_result(self, *, algorithm: Any, result: dict, metrics_logger: Any = None, **kwargs: Any) -> None:
        """Best-so-far figures over every evaluation the run has stored for its tasks (the store is the truth:
        it survives restarts, and it includes evaluations answered for other env runners)."""
        from agents.summary import best_candidate

        cfg = algorithm.config.env_config
        if self._tasks is None:  # resolved once per run, not re-read every iteration
            self._tasks = [load_task(p) for p in cfg["tasks"]]
        service = RayEvaluator(cfg["service"])
        top, stored = best_candidate(self._tasks, service)
        if top is not None:
            result["rcnas"] = {"best_reward": top.reward, "best_robust_acc": top.robust_acc, "best_macs": top.macs,
                               "evaluations_stored": stored}
        stats = service.stats()
        result.setdefault("rcnas", {}).update({k: stats[k] for k in ("computed", "from_store", "deduplicated",
                                                                       "failed", "retried")})
