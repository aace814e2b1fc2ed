"""Typed task-setting configs: dataset x attack x teacher x MACs budget, plus the training recipe, the proxy
fidelity and the reward weights. One YAML file per task under ``configs/tasks/`` (override files carry a delta
through ``base:``).

A leaf of schemas: it knows the closed vocabularies (``rcnas.vocab``) but no dataset, teacher or search space. Checks
that need those (a known teacher and dataset, a budget the teacher can meet) are made by ``rcnas.task.load_task``,
which resolves a config into a :class:`rcnas.task.Task`."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from rcnas.infra.configio import Count, Epsilon, StrictModel
from rcnas.vocab import ATTACK_KINDS, BLOCK_KINDS, SUITE, WEIGHTS_FORMATS


class AttackConfig(StrictModel):
    """An L-inf attack and its budget."""

    name: str = "pgd"
    """an attack kind of ``rcnas.vocab.ATTACK_KINDS``: fgsm | pgd (cross-entropy) | cw (PGD on the CW margin loss) |
    aa (AutoAttack standard) | aa_compact"""
    epsilon: Epsilon
    """perturbation bound with its unit, e.g. "8/255" """
    steps: int = Field(20, ge=1, le=10_000)
    """iterations (pgd, cw)"""
    step_size: Optional[Epsilon] = None
    """per-step size; default epsilon / 4 (training) or the suite's epsilon / 10"""
    random_start: bool = True
    """start from a uniform point in the epsilon ball (pgd, cw)"""

    @field_validator("name")
    @classmethod
    def _known_attack(cls, v: str) -> str:
        ATTACK_KINDS.get(v)  # raises with the known names
        return v

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else self.epsilon / 4

    @classmethod
    def suite(cls, label: str, epsilon: float) -> AttackConfig:
        """The evaluation protocol's attack ``label`` (``rcnas.vocab.SUITE``) at ``epsilon``; not for "clean"."""
        entry = SUITE.get(label)
        if entry.kind is None:
            raise ValueError(f"{label!r} is not an attack")
        step = None if entry.step_fraction is None else epsilon * entry.step_fraction
        return cls.model_validate({"epsilon": "1/1"}).model_copy(update={
            "name": entry.kind, "epsilon": epsilon, "steps": entry.steps, "step_size": step,
            "random_start": entry.random_start})


class TrainConfig(StrictModel):
    """An adversarial training recipe (the defaults are the final-evaluation protocol of docs/method.md:
    TRADES, 100 epochs, SGD 0.1, x0.1 at 75 and 90)."""

    loss: Literal["pgd_at", "trades"] = "trades"
    """pgd_at (Madry) or trades"""
    attack: AttackConfig = AttackConfig(epsilon="8/255", steps=10, step_size="2/255")  # type: ignore[arg-type]
    """the attack that makes training examples"""
    beta: float = Field(6.0, ge=0)
    """TRADES trade-off"""
    epochs: float = Field(100, gt=0)
    """training length; fractions allowed (the schedule is per step)"""
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(2e-4, ge=0)
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: tuple[float, ...] = (0.75, 0.9)
    """multistep: fractions of the epochs at which the lr is multiplied by gamma"""
    gamma: float = Field(0.1, gt=0)
    grad_clip: Optional[float] = Field(5.0, gt=0)
    """max gradient norm; null disables clipping"""
    select_on_val: bool = True
    """keep the epoch with the best validation PGD accuracy (never the test split)"""
    val_examples: int = Field(1000, ge=1)
    """validation examples attacked after each epoch for checkpoint selection"""
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """autocast dtype of the training step, its inner attack included (fp16 with loss scaling); validation and every
    reported attack run in fp32 whatever this says"""
    channels_last: bool = True
    """NHWC memory format on CUDA (faster convolutions with tensor cores); ignored on a CPU"""
    compile: bool = False
    """``torch.compile`` the network for training; where it cannot compile, a one-line warning and eager mode"""
    ema: Optional[float] = Field(None, gt=0, lt=1)
    """decay of an exponential moving average of the weights and BN statistics (e.g. 0.999): when set, validation,
    checkpoint selection and the weights kept are the average's"""

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < m <= 1 for m in v) or list(v) != sorted(v):
            raise ValueError("milestones are increasing fractions of the epochs in (0, 1], e.g. [0.75, 0.9]")
        return v


class DatasetConfig(StrictModel):
    name: str
    """a registered dataset: digits | cifar10 | cifar100 | tiny-imagenet"""
    val_fraction: float = Field(0.1, gt=0, lt=1)
    """share of the training split held out as validation (search rewards and checkpoint selection)"""
    split_seed: int = 0
    """seed of the train/validation split (the test split never changes)"""
    augment: bool = True
    """random crop (+ flip where the data allows it) during training"""
    download: bool = False
    """download CIFAR when missing (needs a network)"""


class BudgetConfig(StrictModel):
    """A MACs limit for the sub-network: absolute (``macs: 5G``) or a share of the teacher's (``ratio: 0.5``)."""

    macs: Optional[Count] = None
    ratio: Optional[float] = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _one(self) -> BudgetConfig:
        if (self.macs is None) == (self.ratio is None):
            raise ValueError("give exactly one of macs (e.g. 5G) or ratio (a share of the teacher's MACs)")
        return self


class ProxyConfig(StrictModel):
    """Fidelity of the cheap evaluation that turns a sub-network into a reward (docs/method.md, "Scoring a
    candidate")."""

    inherit: bool = True
    """start from the adversarially trained teacher's weights (else from scratch)"""
    epochs: float = Field(2.0, ge=0)
    """adversarial fine-tuning epochs (fractions allowed; 0 scores the inherited weights as they are)"""
    lr: float = Field(0.02, gt=0)
    schedule: Literal["multistep", "cosine", "constant"] = "cosine"
    data_fraction: float = Field(1.0, gt=0, le=1)
    """share of the training split used for fine-tuning"""
    val_examples: int = Field(300, ge=1)
    """fixed validation subset attacked for the reward"""
    repeats: int = Field(1, ge=1)
    """independent seeds averaged per reward"""
    supernet: Literal["plain", "sandwich"] = "plain"
    """how the teacher that weights are inherited from is trained: ``plain`` adversarial training of the full
    network, or ``sandwich`` weight sharing (full + smallest + ``sandwich_random`` random sub-networks per step)"""
    sandwich_random: int = Field(2, ge=0)
    recalibrate_bn: int = Field(0, ge=0)
    """training images to re-estimate BN statistics on before fine-tuning (0: keep the inherited ones, which are the
    full teacher's and do not fit a narrow slice: OFA's BN recalibration, needed when ``epochs`` is 0)"""
    also_attacks: dict[str, AttackConfig] = {}
    """further attacks run on the same fine-tuned sub-network, by label (a tabular benchmark's columns: one
    fine-tuning, several attacks). They change neither the fine-tuning's seeds nor the task attack's value."""

    @model_validator(mode="after")
    def _trained(self) -> ProxyConfig:
        if self.epochs == 0 and not self.inherit:
            raise ValueError("epochs: 0 with inherit: false would score untrained networks; set epochs > 0 or "
                             "inherit: true")
        return self


class RewardConfig(StrictModel):
    """R = acc_rob(subnet) / acc_rob(teacher) * (1 + mu * (1 - MACs / budget)) (docs/method.md, "Reward")."""

    mu: float = Field(0.1, ge=0)
    failure: float = 0.0
    """reward of a failed evaluation (NaN loss, exception)"""


class InputNormalization(StrictModel):
    """Per-channel standardisation a network applies to its [0, 1] input, ``(x - mean) / std``."""

    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> InputNormalization:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} channels, std {len(self.std)}")
        if min(self.std) <= 0:
            raise ValueError("std: every entry must be > 0")
        return self


class TeacherWeights(StrictModel):
    """Trained weights for the task's teacher: the teacher is loaded from them, never trained."""

    path: str
    """a weights file (a state dict saved with ``torch.save``, possibly under ``state_dict``/``model`` and with
    DataParallel's ``module.`` prefix); relative paths are relative to the task file"""
    format: str = "rcnas"
    """the state dict's naming and wiring: one of ``rcnas.vocab.WEIGHTS_FORMATS`` (rcnas, wideresnet,
    dm-wideresnet, robustresnet)"""
    sha256: Optional[str] = None
    """the file's content hash; filled in when the task is resolved, and checked when given"""
    input_normalization: Optional[InputNormalization] = None
    """the mean/std the network standardises its input with, when the teacher's architecture does not say it
    (required by dm-wideresnet: those files do not store it)"""

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        WEIGHTS_FORMATS.get(v)  # raises with the known names
        return v


class TaskConfig(StrictModel):
    """One task setting."""

    name: str
    dataset: DatasetConfig
    teacher: str
    """a registered teacher (``rcnas.models.teachers``), or a sub-network YAML file declaring its architecture
    (``.yaml``/``.yml``, relative to the task file); checked when the task is resolved"""
    teacher_weights: Optional[TeacherWeights] = None
    """load the teacher from these weights instead of adversarially training it with ``training``"""
    attack: AttackConfig
    """the attack under which sub-networks are scored"""
    budget: BudgetConfig
    training: TrainConfig = TrainConfig()
    """recipe for the teacher and for final training from scratch"""
    proxy: ProxyConfig = ProxyConfig()
    reward: RewardConfig = RewardConfig()
    blocks: tuple[str, ...] = ()
    """block types a stage may take; empty: the teacher's own (switching blocks is an option, not a given)"""

    @field_validator("blocks")
    @classmethod
    def _known_blocks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for b in v:
            BLOCK_KINDS.get(b)  # raises with the known names
        return v


def is_file_reference(name: str) -> bool:
    """Whether a ``teacher:`` value names a YAML file rather than a registered teacher."""
    return name.lower().endswith((".yaml", ".yml"))
