"""One PPO training stage (meta-training or fine-tuning) as a Ray Tune experiment, or a plain loop (--no-tune)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ray import tune
from ray.rllib.algorithms.ppo import PPOConfig

from agents import manifest
from agents.async_ppo import SAMPLER_KEY
from agents.callbacks import SignExperiment
from agents.progress import ProgressLine, progress_line
from agents.storage import is_uri
from envs import observation
from rcnas.infra.errors import ConfigError, EvaluationFailed
from rcnas.infra.files import write_atomic
from rcnas.infra.log import say

MODULE_PATH = ("learner_group", "learner", "rl_module", "default_policy")
LAYOUT_FILE = "rcnas_observation_layout.json"


def module_dir(checkpoint: str | Path) -> str:
    """The policy module's folder inside an algorithm checkpoint (loadable without Ray by RLModule)."""
    return str(Path(checkpoint).joinpath(*MODULE_PATH))


def save_layout(checkpoint: str | Path) -> None:
    """Record the observation layout the checkpoint's policy was trained on, next to its weights."""
    write_atomic(Path(checkpoint) / LAYOUT_FILE, json.dumps(observation.layout(), indent=2))


def check_layout(checkpoint: str | Path) -> None:
    """Refuse a checkpoint whose policy reads a different observation (another dataset or attack vocabulary, more
    stages): its weights would load without error and act on misplaced inputs.

    Raises:
        ConfigError: no layout saved with it, or a different one; says which part differs.
    """
    path = Path(checkpoint) / LAYOUT_FILE
    if not path.is_file():
        raise ConfigError(f"{checkpoint}: no {LAYOUT_FILE} (not a meta-training checkpoint of this version of "
                          "rcnas); meta-train again or pass a checkpoint folder written by train.py")
    saved, now = json.loads(path.read_text()), observation.layout()
    diff = [k for k in now if saved.get(k) != now[k]]
    if diff:
        raise ConfigError(f"{checkpoint}: its policy was trained on another observation layout ({', '.join(diff)}: "
                          f"{[saved.get(k) for k in diff]} there, {[now[k] for k in diff]} now); meta-train again "
                          "with this version")


STATUS_COLUMNS = {"training_iteration": "iter", "rcnas/best_reward": "best reward",
                  "rcnas/best_robust_acc": "best val robust acc", "rcnas/best_macs": "best MACs",
                  "rcnas/computed": "computed", "rcnas/from_store": "from store", "rcnas/failed": "failed",
                  "time_total_s": "seconds"}
"""--verbose's Tune status table: the search's figures, not PPO's internals"""


@dataclass(frozen=True)
class StageSettings:
    """How a PPO stage runs, the same for every stage of a run."""

    no_tune: bool = False
    """plain ``algo.train()`` loops instead of a Tune experiment"""
    resume: bool = False
    """continue an interrupted Tune experiment found in the stage's folder, once its signature verifies"""
    trust: bool = False
    """restore it without checking its signature (``--trust-checkpoint``)"""
    verbose: bool = False
    """Tune's status table"""
    local: Optional[Path] = None
    """this machine's Tune folder when the experiments live at a storage URI (the next stage loads from here)"""
    log: Callable[[str], None] = say


def stage_length(config: PPOConfig, iterations: int) -> PPOConfig:
    """The async sampler told how many iterations the stage has, so that it starts no evaluation no update will
    use (``agents.async_ppo``); RLlib's own sampling needs nothing."""
    sampler = config.env_config.get(SAMPLER_KEY)
    if sampler is None:
        return config
    return config.environment(env_config={**config.env_config, SAMPLER_KEY: {**sampler, "iterations": iterations}})


def run_stage(name: str, config: PPOConfig, iterations: int, storage: Path | str,
              settings: StageSettings = StageSettings(), callbacks: Optional[list[Any]] = None) -> str:
    """Train ``iterations`` PPO iterations; returns the final checkpoint folder, signed (``agents/manifest.py``).

    Under Tune, the experiment lives in ``storage/name`` (TensorBoard events, progress.csv, checkpoints), signed while
    it runs and when it ends.
    """
    no_tune, resume, trust, verbose = settings.no_tune, settings.resume, settings.trust, settings.verbose
    local, log = settings.local, settings.log
    remote = is_uri(storage)
    if remote and local is None:
        raise ValueError("a storage URI needs a local folder for the checkpoint the next stage loads")
    manifest.load_key()  # a key file to fix is one line now, not a stage that cannot be signed
    config = stage_length(config, iterations)
    if no_tune:
        return _plain_loop(name, config, iterations, local if remote else Path(storage), log)
    # Tune's classic console output: silent at verbose 0, and its status table takes our columns (the newer engine
    # prints an experiment banner and a TensorBoard hint to a temporary folder whatever the verbosity)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    path = f"{storage}/{name}" if remote else str(Path(storage) / name)
    # what Tune would restore (or start next to: a planted experiment state would be signed with ours) is checked
    # first; an absent or empty folder passes
    manifest.verify_or_adopt(path, trust, label=f"--resume: {path}" if resume else path)
    if resume and tune.Tuner.can_restore(path):
        log(f"resuming Tune experiment {path}")
        # a restored experiment brings back the tracker callbacks it was started with (agents/trackers.py): their
        # offline settings, which live in this process's environment, are given again
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("WANDB_MODE", "offline")
        tuner = tune.Tuner.restore(path, trainable=config.algo_class, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = tune.Tuner(
            config.algo_class, param_space=config,
            run_config=tune.RunConfig(
                # a URI (s3://, gs://, file://): Tune writes there directly, so a lost head loses nothing
                storage_path=storage if remote else str(Path(storage).resolve()), name=name,
                stop={"training_iteration": iterations},
                checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, checkpoint_at_end=True,
                                                        num_to_keep=2),
                # Tune's status table (with the search's columns) only with --verbose: the progress line says what
                # matters; the config dump never (the run's config/ folder holds it)
                verbose=1 if verbose else 0,
                progress_reporter=tune.CLIReporter(metric_columns=STATUS_COLUMNS, max_report_frequency=30),
                callbacks=[ProgressLine(name, iterations, log), SignExperiment(), *(callbacks or [])],
            ),
        )
        manifest.sign_tree(path)  # tuner.pkl, written just now
    result = tuner.fit().get_best_result(metric="training_iteration", mode="max")
    if result.error:
        # an evaluation that failed on a worker is one line somewhere in the trial's nested report: surface it
        raise EvaluationFailed.find(str(result.error)) or RuntimeError(f"{name} failed: {result.error}")
    if result.checkpoint is None or (result.metrics or {}).get("training_iteration", 0) < iterations:
        raise KeyboardInterrupt  # Tune returns early on Ctrl-C: end as an interruption, with the resume hint
    ckpt = result.checkpoint.path
    if remote:  # the next stage and the report load it from this machine's disk, checked against the signed list
        # the experiment as it ends; checkpoint files keep the hashes taken when Tune registered them
        manifest.LiveSigner(path).sign(force=True)
        dest = _empty(local / name / "checkpoint")  # type: ignore[operator]
        ckpt = result.checkpoint.to_directory(str(dest))
        manifest.verify_copy(ckpt, path, result.checkpoint.path, trust)
    save_layout(ckpt)
    manifest.sign_tree(ckpt)  # the meta checkpoint handed out (summary.json, --from)
    if not remote:
        # the experiment as it ends (the checkpoint's layout and manifest inside); checkpoint files keep the hashes
        # taken when Tune registered them
        manifest.LiveSigner(path).sign(force=True)
    return ckpt


def _empty(folder: Path) -> Path:
    """``folder`` emptied (a checkpoint written or copied there holds only what it writes, nothing left from before
    to be signed with it); returns its absolute path."""
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder.resolve()


def train_iterations(algo: Any, iterations: int, name: str, log: Callable[[str], None],
                     stop: Callable[[dict[str, Any]], bool] | None = None) -> int:
    """``algo.train()`` up to ``iterations`` times, logging each; ``stop(result)`` ends it early. Returns the
    iterations run."""
    t0 = time.perf_counter()
    for i in range(iterations):
        res: dict[str, Any] = algo.train()
        log(progress_line(name, i + 1, iterations, res.get("rcnas", {}), time.perf_counter() - t0, i + 1))
        if stop is not None and stop(res):
            return i + 1
    return iterations


def _plain_loop(name: str, config: PPOConfig, iterations: int, storage: Path, log: Callable[[str], None]) -> str:
    algo = config.build_algo()
    try:
        train_iterations(algo, iterations, name, log)
        out = _empty(storage / name / "checkpoint")
        algo.save_to_path(str(out))
        save_layout(out)
        manifest.sign_tree(out)
        return str(out)
    finally:
        algo.stop()
