"""Typed experiment configs (``configs/experiments/``): the meta-training task set, the held-out target task, PPO
and encoder settings, and the final evaluation of the chosen sub-network."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from rcnas.infra.configio import StrictModel, load_config
from rcnas.infra.errors import ConfigError
from rcnas.vocab import SUITE


class PPOSettings(StrictModel):
    lr: float = Field(3e-4, gt=0)
    num_epochs: int = Field(8, ge=1)
    """SGD passes over each batch"""
    minibatch_episodes: Optional[int] = Field(None, ge=1)
    """episodes per minibatch (default: the whole batch)"""
    clip_param: float = Field(0.2, gt=0)
    entropy_coeff: float = Field(0.01, ge=0)
    vf_loss_coeff: float = Field(0.5, ge=0)
    gamma: float = Field(1.0, gt=0, le=1)
    """episodes are one step per stage with the reward at the end: no discounting by default"""
    lambda_: float = Field(0.95, ge=0, le=1)


class ModelSettings(StrictModel):
    embed: int = Field(32, ge=1)
    lstm: int = Field(32, ge=1)
    hidden: int = Field(64, ge=1)
    task_embed: int = Field(16, ge=1)


class FinalEvalSettings(StrictModel):
    """evaluate.py on the chosen sub-network, next to the teacher and a uniformly shrunk one of the same budget."""

    enabled: bool = True
    epochs: Optional[float] = Field(None, gt=0)
    """training length; default: the target task's recipe"""
    attacks: list[str] = ["clean", "fgsm", "pgd20", "cw40", "aa_compact"]
    """labels of the evaluation suite (rcnas.vocab.SUITE)"""
    n_examples: Optional[int] = Field(None, ge=1)

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, v: list[str]) -> list[str]:
        for label in v:
            SUITE.get(label)  # raises with the known labels
        if not v:
            raise ValueError("no attacks: give at least one label, e.g. [clean, pgd20]")
        return v


class WorkerSettings(StrictModel):
    """The evaluation workers: how many, and what each asks Ray for."""

    count: Optional[int] = Field(None, ge=1)
    """workers in the pool (default: one per GPU the cluster has when the run starts, else one per CPU)"""
    gpus: Optional[float] = Field(None, ge=0)
    """GPUs per worker. Unset: a GPU each when the cluster has GPUs when the run starts, else CPUs only. Set: asked
    for as given, whether or not such nodes exist yet (an autoscaler launches them; the pool grows as they join)"""
    cpus: float = Field(1.0, gt=0)
    """CPUs per worker when ``gpus`` is set"""
    resources: dict[str, float] = Field(default_factory=dict)
    """custom Ray resources per worker when ``gpus`` is set (e.g. ``{"accelerator_type:A10G": 0.001}``)"""

    def spec(self) -> Optional[dict]:
        """Ray's resource request of one worker, or None for the automatic choice."""
        if self.gpus is None:
            return None
        return {"num_gpus": self.gpus, "num_cpus": self.cpus, **({"resources": self.resources} if self.resources
                                                                 else {})}


class MlflowSettings(StrictModel):
    tracking_uri: Optional[str] = None
    """MLflow's tracking URI; default: a local file store in the run folder (``<out>/mlflow``: ``mlflow ui
    --backend-store-uri <out>/mlflow``, which listens on 127.0.0.1)"""
    experiment_name: Optional[str] = None
    """default: ``rcnas-<experiment name>``"""


class WandbSettings(StrictModel):
    project: str = "rcnas"
    entity: Optional[str] = None
    mode: Literal["offline", "online"] = "offline"
    """offline by default: nothing leaves the machine until you ``wandb sync <out>/wandb/offline-run-*``"""


class TrackerSettings(StrictModel):
    """Experiment trackers that receive every Tune result (PPO's and the search's ``rcnas/*`` metrics); none by
    default."""

    mlflow: Optional[MlflowSettings] = None
    wandb: Optional[WandbSettings] = None


class RerankSettings(StrictModel):
    """Re-rank the best ``top_k`` candidates at a higher proxy fidelity before choosing (0: off, the pick is the
    best proxy score)."""

    top_k: int = Field(0, ge=0)
    epochs: float = Field(4.0, gt=0)
    """the proxy's fine-tuning epochs for the re-ranking (the task's proxy uses fewer)"""
    repeats: int = Field(2, ge=1)
    """independent seeds averaged per re-ranked candidate"""


class ExperimentConfig(StrictModel):
    name: str
    meta_tasks: list[str]
    """task names (``configs/tasks/<name>.yaml``) or YAML paths: the meta-training set"""
    target_task: str
    """the held-out task to fine-tune on (never in meta_tasks)"""
    M: int = Field(5, ge=1)
    """sub-networks sampled per policy update (the original README's --M)"""
    meta_iterations: int = Field(10, ge=1)
    finetune_iterations: int = Field(6, ge=1)
    env_runners: int = Field(2, ge=0)
    """parallel env runners (each waits on one evaluation at a time; they hold no CPU reservation)"""
    workers: WorkerSettings = WorkerSettings()
    """the evaluation workers (``workers: {count: 8, gpus: 1}`` on a GPU cluster)"""
    seed: int = 0
    avoid_repeats: bool = True
    """each env runner never finishes a sub-network it already finished for the same task while unfinished ones
    remain (the action mask hides them): a repeat is answered by the store and adds nothing, so without this a
    converging policy stops searching (measured on the tabular benchmark, BENCHMARKS.md)"""
    rerank: RerankSettings = RerankSettings()
    """``rerank: {top_k: 5, epochs: 4, repeats: 2}``: the pick survives a more faithful measurement"""
    trackers: TrackerSettings = TrackerSettings()
    """``trackers: {mlflow: {}}`` and/or ``{wandb: {project: x}}`` (or ``--set trackers.mlflow={}``)"""
    ppo: PPOSettings = PPOSettings()
    model: ModelSettings = ModelSettings()
    final_eval: FinalEvalSettings = FinalEvalSettings()

    @model_validator(mode="after")
    def _held_out(self) -> ExperimentConfig:
        if self.target_task in self.meta_tasks:
            raise ValueError(f"target_task {self.target_task!r} is also a meta-training task: hold it out")
        if not self.meta_tasks:
            raise ValueError("meta_tasks is empty")
        return self


def task_path(ref: str, experiment_file: Path | None = None) -> str:
    """A task reference as a YAML path: a path ending in .yaml, else a name under ``configs/tasks``."""
    if ref.endswith((".yaml", ".yml")):
        return ref
    tasks_dir = experiment_file.resolve().parent.parent / "tasks" if experiment_file else Path("configs/tasks")
    path = tasks_dir / f"{ref}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in tasks_dir.glob("[!_]*.yaml")))
        raise ConfigError(f"unknown task {ref!r} (no {path}); known: {known}")
    return str(path)


def load_experiment(path: str | Path) -> tuple[ExperimentConfig, list[str], str]:
    """The experiment and its resolved meta-task and target-task paths (every task validated)."""
    from rcnas.task import load_task

    exp = load_config(path, ExperimentConfig)
    metas = [task_path(t, Path(path)) for t in exp.meta_tasks]
    target = task_path(exp.target_task, Path(path))
    # compared as files, not as spellings: ./configs/tasks/x.yaml and x are the same held-out task
    if any(Path(m).resolve() == Path(target).resolve() for m in metas):
        raise ConfigError(f"{path}: target_task {exp.target_task!r} is also a meta-training task: hold it out")
    for p in [*metas, target]:
        load_task(p)
    return exp, metas, target
