"""Typed experiment configs (``configs/experiments/``): the meta-training task set, the held-out target task, PPO
and encoder settings, and the final evaluation of the chosen sub-network."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, field_validator, model_validator

from rcnas.config import MAX_EPOCHS, MAX_EXAMPLES, MAX_REPEATS, Float, Int, ScreeningConfig, Seed
from rcnas.infra.configio import Identifier, StrictModel, load_config
from rcnas.infra.errors import ConfigError
from rcnas.vocab import SUITE

# Upper limits of the experiment's sizes and counts (the task's are in rcnas.config): far above any real run, so
# that a typo (``M=1e9``, ``env_runners=100000``) is one line naming the key and the limit before Ray starts, not
# 100,000 processes or a terabyte allocation after it did.
MAX_M = 100_000
"""sub-networks per policy update: 5 in the paper; each one is an evaluation (a fine-tuning) per iteration"""
MAX_ITERATIONS = 100_000
"""PPO iterations of a stage: 200 meta + 40 fine-tuning on the CIFAR cluster; tabular benchmarks run thousands"""
MAX_EVALUATIONS = 10_000_000
"""(meta_iterations + finetune_iterations) x M: 1,200 on the CIFAR cluster; 10M evaluations would be over a
hundred days at one second each"""
MAX_ENV_RUNNERS = 1024
"""env runners (processes, one Ray actor each) each wait on one evaluation: more than the evaluation workers
only queue"""
MAX_WORKERS = 4096
"""evaluation workers (processes, a GPU each on a cluster): 8 on the CIFAR cluster; 4096 GPUs is a supercomputer"""
MAX_GPUS_PER_WORKER = 64.0
"""one worker's GPUs: a node holds 8 or 16"""
MAX_CPUS_PER_WORKER = 1024.0
"""one worker's CPUs: the largest nodes have a few hundred"""
MAX_MODEL_WIDTH = 4096
"""the policy's layer widths (32 to 64 by default): a 4096-wide bidirectional LSTM is already 268M parameters"""
MAX_PPO_EPOCHS = 1000
"""SGD passes over each batch (8 to 10 by default)"""
MAX_TOP_K = 1000
"""re-ranked candidates: each is ``repeats`` fine-tunings at a higher fidelity (5 is typical)"""
MAX_TASKS = 1000
"""meta-training tasks: every one is resolved (and its teacher trained or loaded) before the run"""
MAX_ATTACK_LABELS = 32
"""labels of the final evaluation suite (the suite itself has a handful)"""


class PPOSettings(StrictModel):
    lr: Float = Field(3e-4, gt=0, le=1)
    """Adam's step size (3e-4 to 1e-3; 1 only bounds typos)"""
    num_epochs: Int = Field(8, ge=1, le=MAX_PPO_EPOCHS)
    """SGD passes over each batch; at most MAX_PPO_EPOCHS"""
    minibatch_episodes: Optional[Int] = Field(None, ge=1, le=MAX_M)
    """episodes per minibatch (default: the whole batch)"""
    clip_param: Float = Field(0.2, gt=0, le=10)
    entropy_coeff: Float = Field(0.01, ge=0, le=100)
    vf_loss_coeff: Float = Field(0.5, ge=0, le=1000)
    gamma: Float = Field(1.0, gt=0, le=1)
    """episodes are one step per stage with the reward at the end: no discounting by default"""
    lambda_: Float = Field(0.95, ge=0, le=1)


class ModelSettings(StrictModel):
    """Widths of the policy network (the stage encoder); each at most MAX_MODEL_WIDTH."""

    embed: Int = Field(32, ge=1, le=MAX_MODEL_WIDTH)
    lstm: Int = Field(32, ge=1, le=MAX_MODEL_WIDTH)
    hidden: Int = Field(64, ge=1, le=MAX_MODEL_WIDTH)
    task_embed: Int = Field(16, ge=1, le=MAX_MODEL_WIDTH)


class FinalEvalSettings(StrictModel):
    """evaluate.py on the chosen sub-network, next to the teacher and a uniformly shrunk one of the same budget."""

    enabled: bool = True
    epochs: Optional[Float] = Field(None, gt=0, le=MAX_EPOCHS)
    """training length; default: the target task's recipe"""
    attacks: list[str] = Field(["clean", "fgsm", "pgd20", "cw40", "aa_compact"], max_length=MAX_ATTACK_LABELS)
    """labels of the evaluation suite (rcnas.vocab.SUITE)"""
    n_examples: Optional[Int] = Field(None, ge=1, le=MAX_EXAMPLES)
    """test examples attacked (default: the whole test split)"""

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

    count: Optional[Int] = Field(None, ge=1, le=MAX_WORKERS)
    """workers in the pool (default: one per GPU the cluster has when the run starts, else one per CPU)"""
    gpus: Optional[Float] = Field(None, ge=0, le=MAX_GPUS_PER_WORKER)
    """GPUs per worker. Unset: a GPU each when the cluster has GPUs when the run starts, else CPUs only. Set: asked
    for as given, whether or not such nodes exist yet (an autoscaler launches them; the pool grows as they join)"""
    cpus: Float = Field(1.0, gt=0, le=MAX_CPUS_PER_WORKER)
    """CPUs per worker when ``gpus`` is set"""
    resources: dict[str, Annotated[Float, Field(ge=0, le=1e9)]] = Field(default_factory=dict, max_length=64)
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

    top_k: Int = Field(0, ge=0, le=MAX_TOP_K)
    epochs: Float = Field(4.0, gt=0, le=MAX_EPOCHS)
    """the proxy's fine-tuning epochs for the re-ranking (the task's proxy uses fewer)"""
    repeats: Int = Field(2, ge=1, le=MAX_REPEATS)
    """independent seeds averaged per re-ranked candidate"""


class HandoverSettings(StrictModel):
    """After fine-tuning, a local search continues from the best sub-networks the agent evaluated on the target task
    (a hybrid that hands over late): measured on the tabular benchmark, the fine-tuned policy stops improving once
    it has found its region (on budgets looser than its meta tasks' its regret went only from 0.061 to 0.052 between
    N = 50 and 100, while PPO from scratch reached 0.022); handing over to evolution after 25 evaluations reached
    0.022 too. Evolution breeds as many children per round as the service has workers, evaluated side by side."""

    to: Literal["evolution"] = "evolution"
    """the local search: regularized evolution whose first population is the agent's best sub-networks"""
    evaluations: Int = Field(0, ge=0, le=MAX_EVALUATIONS)
    """distinct evaluations it spends after fine-tuning (0: no handover, the pick is the agent's)"""


class ExperimentConfig(StrictModel):
    name: Identifier
    meta_tasks: list[str] = Field(max_length=MAX_TASKS)
    """task names (``configs/tasks/<name>.yaml``) or YAML paths: the meta-training set"""
    target_task: str
    """the held-out task to fine-tune on (never in meta_tasks)"""
    M: Int = Field(5, ge=1, le=MAX_M)
    """sub-networks sampled per policy update (the original README's --M)"""
    meta_iterations: Int = Field(10, ge=1, le=MAX_ITERATIONS)
    finetune_iterations: Int = Field(6, ge=1, le=MAX_ITERATIONS)
    sampler: Literal["async", "env_runners"] = "async"
    """how the search's PPO gets its episodes. ``async``: the policy decides a sub-network, its evaluation runs
    while the policy decides the next, ``in_flight`` at a time, and PPO updates every M complete episodes (every
    evaluation worker busy; ``agents/async_ppo.py``). ``env_runners``: RLlib's env runners, each waiting on one
    evaluation, an iteration on its slowest (the search before the async sampler)"""
    in_flight: Optional[Int] = Field(None, ge=1, le=MAX_WORKERS)
    """evaluations the async sampler keeps running or queued (default: one per evaluation worker, plus M queued at
    the service, so that a worker finishing while the policy updates finds work waiting); each one more is one more
    episode decided without the latest results"""
    policy_lag: Int = Field(4, ge=1, le=MAX_ITERATIONS)
    """the async sampler's bound on how many policy updates old the policy that decided an episode may be: with more
    evaluations in flight than ``policy_lag`` x M, each update takes in_flight / policy_lag episodes instead of M
    (128 workers: updates of 34 episodes, not 26 updates behind)"""
    lagged: Literal["as_sampled", "refresh"] = "as_sampled"
    """how PPO treats an episode decided by an older policy: ``as_sampled``, against the probabilities it was
    sampled with (PPO's clipped ratio, the textbook choice); ``refresh``, as if the current policy had decided it"""
    ordered: bool = False
    """the async sampler takes episodes in the order it decided them, not as their evaluations finish: a search
    reproducible from its seed (which policy decides which sub-network no longer depends on timing), at the price of
    workers waiting behind a slow evaluation. Off by default (every worker busy); the CPU experiments turn it on"""
    env_runners: Int = Field(2, ge=0, le=MAX_ENV_RUNNERS)
    """with ``sampler: env_runners``: parallel env runners (each waits on one evaluation at a time; they hold no CPU
    reservation)"""
    workers: WorkerSettings = WorkerSettings()
    """the evaluation workers (``workers: {count: 8, gpus: 1}`` on a GPU cluster)"""
    seed: Seed = 0
    avoid_repeats: bool = True
    """each env runner never finishes a sub-network it already finished for the same task while unfinished ones
    remain (the action mask hides them): a repeat is answered by the store and adds nothing, so without this a
    converging policy stops searching (measured on the tabular benchmark, BENCHMARKS.md)"""
    screening: ScreeningConfig = ScreeningConfig()
    """``screening: {by: surrogate, keep: 0.25}`` or ``{by: low_fidelity, fidelity: {epochs: 0}}``: every proposal
    scored cheaply first, the best share promoted to the proxy (successive halving; ``rcnas.search.screening``)"""
    handover: HandoverSettings = HandoverSettings()
    """``handover: {to: evolution, evaluations: 20}``: after fine-tuning, evolution from the agent's best sub-networks
    spends that many more evaluations on the target task"""
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
        total = (self.meta_iterations + self.finetune_iterations) * self.M
        if total > MAX_EVALUATIONS:
            raise ValueError(f"(meta_iterations + finetune_iterations) x M = {total:,} evaluations is more than "
                             f"{MAX_EVALUATIONS:,}; lower M or the iterations")
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


def with_changes(exp: ExperimentConfig, where: str, **changes: object) -> ExperimentConfig:
    """``exp`` with top-level ``changes``, validated like the file was (a flag or a benchmark setting gets every
    check a YAML value gets; pydantic's ``model_copy`` would skip them).

    Raises:
        ConfigError: one line naming ``where`` and the key.
    """
    from rcnas.infra.configio import validate

    return validate(ExperimentConfig, {**exp.model_dump(mode="json"), **changes}, where)


def meta_stage(exp: ExperimentConfig) -> ExperimentConfig:
    """The experiment as meta-training runs it: without screening when ``screening.meta`` is off."""
    if exp.screening.by == "none" or exp.screening.meta:
        return exp
    return exp.model_copy(update={"screening": exp.screening.model_copy(update={"by": "none"})})
