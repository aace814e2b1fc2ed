"""Per-episode and per-iteration metrics of the search, for TensorBoard and progress.csv; and the Tune callback that
keeps a running experiment signed (:class:`SignExperiment`).

RLlib aggregates ``info`` dicts nowhere, so the final step's info is turned into metrics here: the episode's
robust accuracy and MACs, and whether its evaluation was computed or answered from the store (or de-duplicated).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ray import tune
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
        from agents.scoring import best_candidate

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
        counts = getattr(algorithm, "screening_counts", lambda: None)()
        if counts is not None:  # screening: how many proposals never reached the proxy
            result["rcnas"].update(counts)


class SignExperiment(tune.Callback):
    """Tune callback (in the driver): keeps the running Tune experiment's ``rcnas_manifest.json`` signed, so that a
    run killed mid-stage resumes with a folder this user signed (``agents/manifest.py``).

    Tune saves its experiment state (``experiment_state-*.json``, searcher and callback state) inside each step of its
    loop and copies it to the experiment folder in a background thread; ``on_step_end`` comes after, on every step
    (a tenth of a second apart while a trial runs), so the folder is re-signed within a step or two of each change
    (every ``REMOTE_EVERY_S`` at a storage URI, where listing and hashing cost requests). ``on_checkpoint`` pins a
    trial checkpoint's files as Tune registered them. Pickled into ``tuner.pkl`` with the run config (a restored
    experiment brings it back): without its state, never with the key.
    """

    REMOTE_EVERY_S = 10.0

    def __init__(self) -> None:
        self._signer: Any = None
        self._staging: str | None = None
        self._warned = False

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def _start(self, trials: list[Any]) -> bool:
        if self._signer is None and trials:
            import pyarrow.fs

            from agents.manifest import MANIFEST, LiveSigner

            storage = trials[0].storage
            local = isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem)
            # a restored experiment's staging folder holds the manifest Tune copied down with its state files: Tune
            # would copy that stale one back up over the signed one
            stale = os.path.join(storage.experiment_driver_staging_path, MANIFEST)
            if os.path.lexists(stale):
                os.unlink(stale)
            self._signer = LiveSigner(storage.experiment_fs_path, storage.storage_filesystem,
                                      every_s=0.0 if local else self.REMOTE_EVERY_S)
            self._staging = storage.experiment_driver_staging_path
            # Tune's first save comes in the first step before any trial exists for this callback to find (the
            # step's on_step_begin has none): what it staged is signed now, its upload may still be running
            if os.path.isdir(self._staging):
                self._signer.expect(self._staging)
        return self._signer is not None

    def _sign(self, trials: list[Any], checkpoint: Any = None, force: bool = False) -> None:
        self._guarded(lambda: self._start(trials) and self._signer.sign(
            register=self._signer.relative(checkpoint.path) if checkpoint is not None else None, force=force))

    def get_state(self) -> None:
        """Tune asks for the callbacks' state last when it saves the experiment, just before it uploads the saved
        files: they are signed here as staged (:meth:`agents.manifest.LiveSigner.expect`), so whatever part of the
        upload a kill leaves in the experiment folder verifies. No state to save (None: Tune writes no file)."""
        if self._signer is not None and self._staging is not None:
            self._guarded(lambda: self._signer.expect(self._staging))
        return None

    def _guarded(self, work: Any) -> None:
        try:
            work()
        except FileNotFoundError:
            pass  # a file went (a checkpoint Tune no longer keeps) while it was listed: the next step signs again
        except Exception as exc:  # noqa: BLE001 - signing must not end the search; the stage's end signs again
            if not self._warned:
                self._warned = True
                print(f"warning: signing the Tune experiment failed ({exc}); it is signed again at the stage's end",
                      file=sys.stderr, flush=True)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        try:
            self._start(trials)
        except Exception:  # noqa: BLE001 - reported by the next _sign
            self._signer = None

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._sign(trials)

    def on_checkpoint(self, iteration: int, trials: list[Any], trial: Any, checkpoint: Any, **info: Any) -> None:
        self._sign(trials, checkpoint=checkpoint)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._sign(trials, force=True)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._sign(trials, force=True)
