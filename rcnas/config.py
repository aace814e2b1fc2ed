"""Typed task-setting configs: dataset x attack x teacher x MACs budget, plus the training recipe, the proxy
fidelity and the reward weights. One YAML file per task under ``configs/tasks/`` (override files carry a delta
through ``base:``).

A leaf of schemas: it knows the closed vocabularies (``rcnas.vocab``) but no dataset, teacher or search space. Checks
that need those (a known teacher and dataset, a budget the teacher can meet) are made by ``rcnas.task.load_task``,
which resolves a config into a :class:`rcnas.task.Task`."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from rcnas.infra.configio import Count, Epsilon, Identifier, StrictModel
from rcnas.vocab import ATTACK_KINDS, BLOCK_KINDS, SUITE, WEIGHTS_FORMATS

# Upper limits of every size and count (issue: "no upper limits"). A value past one is a typo or a unit mistake
# (``1e12`` epochs, a batch of a terabyte), refused with one line naming the key and the limit before Ray starts.
# Each is far above any real CIFAR / Tiny-ImageNet run, so a genuine setting never meets it.
MAX_EPOCHS = 10_000
"""training, proxy, re-ranking and final-evaluation epochs: 100 is the paper's protocol, 400 the longest
published CIFAR recipes; 10,000 epochs of CIFAR-10 would be years of GPU time"""
MAX_BATCH_SIZE = 65_536
"""examples per step: large-batch ImageNet training peaks at 64K; a 64K batch of 64x64 RGB images is already 3 GiB
of float32 input before any activation"""
MAX_EXAMPLES = 10_000_000
"""example counts (validation, evaluation and BN-recalibration subsets): a subset never exceeds its split (100,000
images for Tiny-ImageNet, the largest dataset here); 10M leaves room for a larger one, not for 1e12"""
MAX_ATTACK_STEPS = 10_000
"""attack iterations: AutoAttack's APGD uses 100, the longest published PGD evaluations 1,000"""
MAX_REPEATS = 100
"""independent seeds averaged per score: 1 to 5 in practice; each repeat is a whole fine-tuning"""
MAX_SEED = 2**31 - 1
"""seeds are non-negative and fit a signed 32-bit int (numpy's and CUDA's generators take them as such)"""
MAX_MACS = 1e15
"""a MACs budget: the largest teachers here (WRN-70-16) are ~40 GMACs; 1 PMAC per image is no network"""
MAX_LIST = 64
"""entries of a list-valued setting (milestones, extra attacks, normalisation channels, block kinds)"""

_NUMBER = re.compile(r"^\s*[+-]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9]+)?\s*$")


def spelled_number(value: Any) -> Any:
    """A number spelled as a string read as the number: YAML 1.1 (PyYAML, ``--set``) reads ``1e12`` (no dot) and
    ``1_000`` as strings, and an int field would refuse them as unparsable instead of naming its limit.
    true/false is refused: ``M: true`` is not 1."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, str) and _NUMBER.match(value):
        f = float(value.replace("_", ""))
        return int(f) if f.is_integer() else f
    return value


Int = Annotated[int, BeforeValidator(spelled_number)]
"""an int setting that reads ``1e3`` as 1000 and refuses true/false; its bounds are the field's ``Field(ge, le)``"""
Float = Annotated[float, BeforeValidator(spelled_number)]
"""a float setting that refuses true/false; its bounds are the field's ``Field(gt/ge, le)``"""
Seed = Annotated[int, BeforeValidator(spelled_number), Field(ge=0, le=MAX_SEED)]
"""a random seed: 0 <= seed < 2**31"""


class AttackConfig(StrictModel):
    """An L-inf attack and its budget."""

    name: str = "pgd"
    """an attack kind of ``rcnas.vocab.ATTACK_KINDS``: fgsm | pgd (cross-entropy) | cw (PGD on the CW margin loss) |
    aa (AutoAttack standard) | aa_compact"""
    epsilon: Epsilon
    """perturbation bound with its unit, e.g. "8/255" """
    steps: Int = Field(20, ge=1, le=MAX_ATTACK_STEPS)
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

        def exact(value: float) -> str:  # the unit-carrying form the validator reads, equal to ``value`` bit for bit
            num, den = float(value).as_integer_ratio()
            return f"{num}/{den}"

        # validated like any config: a suite entry never skips the checks a user's attack gets
        return cls.model_validate({"name": entry.kind, "epsilon": exact(epsilon), "steps": entry.steps,
                                   "step_size": None if step is None else exact(step),
                                   "random_start": entry.random_start})


class TrainConfig(StrictModel):
    """An adversarial training recipe (the defaults are the final-evaluation protocol of docs/method.md:
    TRADES, 100 epochs, SGD 0.1, x0.1 at 75 and 90)."""

    loss: Literal["pgd_at", "trades"] = "trades"
    """pgd_at (Madry) or trades"""
    attack: AttackConfig = AttackConfig(epsilon="8/255", steps=10, step_size="2/255")  # type: ignore[arg-type]
    """the attack that makes training examples"""
    beta: Float = Field(6.0, ge=0, le=1000)
    """TRADES trade-off (1 to 6 in the literature; 1000 only bounds typos)"""
    epochs: Float = Field(100, gt=0, le=MAX_EPOCHS)
    """training length; fractions allowed (the schedule is per step); at most MAX_EPOCHS"""
    batch_size: Int = Field(128, ge=1, le=MAX_BATCH_SIZE)
    """examples per step; at most MAX_BATCH_SIZE"""
    lr: Float = Field(0.1, gt=0, le=100)
    """learning rate (0.1 for SGD from scratch; 100 only bounds typos)"""
    momentum: Float = Field(0.9, ge=0, lt=1)
    weight_decay: Float = Field(2e-4, ge=0, le=1)
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: tuple[float, ...] = Field((0.75, 0.9), max_length=MAX_LIST)
    """multistep: fractions of the epochs at which the lr is multiplied by gamma"""
    gamma: Float = Field(0.1, gt=0, le=10)
    """multistep: the lr's factor at each milestone"""
    grad_clip: Optional[Float] = Field(5.0, gt=0, le=1e6)
    """max gradient norm; null disables clipping"""
    select_on_val: bool = True
    """keep the epoch with the best validation PGD accuracy (never the test split)"""
    val_examples: Int = Field(1000, ge=1, le=MAX_EXAMPLES)
    """validation examples attacked after each epoch for checkpoint selection (at most the validation split's)"""
    seed: Seed = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """autocast dtype of the training step, its inner attack included (fp16 with loss scaling); ``auto``: bf16 on
    CUDA (the tensor cores' rate at fp32's range), fp32 on a CPU (where bf16 autocast is slower). Validation and
    every reported attack run in fp32 whatever this says"""
    channels_last: bool = True
    """NHWC memory format on CUDA (faster convolutions with tensor cores); ignored on a CPU"""
    compile: bool = False
    """``torch.compile`` the network for training; where it cannot compile, a one-line warning and eager mode"""
    ema: Optional[Float] = Field(None, gt=0, lt=1)
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
    val_fraction: Float = Field(0.1, gt=0, lt=1)
    """share of the training split held out as validation (search rewards and checkpoint selection)"""
    split_seed: Seed = 0
    """seed of the train/validation split (the test split never changes)"""
    augment: bool = True
    """random crop (+ flip where the data allows it) during training"""
    download: bool = False
    """download CIFAR when missing (needs a network)"""


class BudgetConfig(StrictModel):
    """A MACs limit for the sub-network: absolute (``macs: 5G``) or a share of the teacher's (``ratio: 0.5``)."""

    macs: Optional[Count] = Field(None, le=MAX_MACS)
    """MACs per image, e.g. 5G; at most MAX_MACS"""
    ratio: Optional[Float] = Field(None, gt=0, le=1)

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
    epochs: Float = Field(2.0, ge=0, le=MAX_EPOCHS)
    """adversarial fine-tuning epochs (fractions allowed; 0 scores the inherited weights as they are)"""
    lr: Float = Field(0.02, gt=0, le=100)
    schedule: Literal["multistep", "cosine", "constant"] = "cosine"
    data_fraction: Float = Field(1.0, gt=0, le=1)
    """share of the training split used for fine-tuning"""
    val_examples: Int = Field(300, ge=1, le=MAX_EXAMPLES)
    """fixed validation subset attacked for the reward"""
    repeats: Int = Field(1, ge=1, le=MAX_REPEATS)
    """independent seeds averaged per reward (each one a fine-tuning)"""
    supernet: Literal["plain", "sandwich"] = "plain"
    """how the teacher that weights are inherited from is trained: ``plain`` adversarial training of the full
    network, or ``sandwich`` weight sharing (full + smallest + ``sandwich_random`` random sub-networks per step)"""
    sandwich_random: Int = Field(2, ge=0, le=MAX_LIST)
    """random sub-networks per sandwich step (2 in the sandwich rule; each one more forward and backward pass)"""
    recalibrate_bn: Int = Field(0, ge=0, le=MAX_EXAMPLES)
    """training images to re-estimate BN statistics on before fine-tuning (0: keep the inherited ones, which are the
    full teacher's and do not fit a narrow slice: OFA's BN recalibration, needed when ``epochs`` is 0)"""
    channel_order: Literal["first", "importance"] = "first"
    """which teacher channels a narrower sub-network inherits: the ``first`` ones as the teacher stores them, or the
    most important ones (``importance``: the teacher's channels sorted once by their BN scales, a permutation that
    leaves its function unchanged; ``rcnas.models.importance``)"""
    also_attacks: dict[str, AttackConfig] = Field(default_factory=dict, max_length=MAX_LIST)
    """further attacks run on the same fine-tuned sub-network, by label (a tabular benchmark's columns: one
    fine-tuning, several attacks). They change neither the fine-tuning's seeds nor the task attack's value."""

    @model_validator(mode="after")
    def _trained(self) -> ProxyConfig:
        if self.channel_order == "importance" and (not self.inherit or self.supernet != "plain"):
            raise ValueError("channel_order: importance sorts a plain teacher's channels for inheritance; it needs "
                             "inherit: true and supernet: plain (a sandwich teacher is trained on its first channels)")
        if self.epochs == 0 and not self.inherit:
            raise ValueError("epochs: 0 with inherit: false would score untrained networks; set epochs > 0 or "
                             "inherit: true")
        return self


class ScreeningConfig(StrictModel):
    """Successive halving in the search loop: every proposal is scored cheaply first and only the best ``keep`` share
    of those scored so far for a task is promoted to the task's proxy (``rcnas.search.screening``)."""

    by: Literal["none", "low_fidelity", "surrogate"] = "none"
    """``low_fidelity``: the proxy with ``fidelity``'s settings (no fine-tuning by default: seconds, not minutes);
    ``surrogate``: a model trained on the store's evaluations (milliseconds); ``none``: every proposal gets the proxy"""
    keep: Float = Field(0.25, gt=0, le=1)
    """share of proposals promoted to the proxy"""
    fidelity: dict[str, Any] = Field(default_factory=lambda: {"epochs": 0})
    """the low fidelity: settings of each task's ``proxy:`` block replaced for screening"""
    min_points: Int = Field(20, ge=1, le=MAX_EXAMPLES)
    """surrogate: evaluations it needs (the store's, and this search's) before it screens anything"""
    meta: bool = True
    """screen meta-training's proposals too (the search's cost: most of its evaluations are meta-training's); off,
    meta-training gives every proposal the proxy and only fine-tuning screens (the agent the held-out benchmark
    measured: meta-trained on proxy answers, screened on the target task)"""
    handover: bool = False
    """screen the hand-over's proposals too (``handover:`` of an experiment): its local search then spends its
    evaluations on the proposals the surrogate ranks best, as fine-tuning does"""
    pace: bool = False
    """never promote more than ``keep`` of the proposals screened so far (besides ranking in the best ``keep``): the
    proxy evaluations a search spends are then at most ``keep`` x its scored proposals (rounded up), plus those
    promoted before the surrogate had ``min_points`` results to score with, whatever its policy does; off, an
    improving policy gets more promoted (its new proposals rank high against its older ones)"""
    warm: Int = Field(200, ge=0, le=MAX_EXAMPLES)
    """surrogate: random sub-networks of the task's space whose predicted rewards the first proposals are ranked
    against, as if proposed before them (without them the first proposal, and every early new best, would be
    promoted whatever its prediction)"""

    @model_validator(mode="after")
    def _fidelity(self) -> ScreeningConfig:
        try:
            ProxyConfig(**self.fidelity)
        except ValidationError as exc:
            raise ValueError(f"fidelity: {exc.errors()[0]['msg']} ({exc.errors()[0]['loc']}); it takes the settings "
                             "of a task's proxy: block") from None
        return self


class RewardConfig(StrictModel):
    """R = acc_rob(subnet) / acc_rob(teacher) * (1 + mu * (1 - MACs / budget)) (docs/method.md, "Reward")."""

    mu: Float = Field(0.1, ge=0, le=1000)
    """weight of the MACs term (0.1; 1000 only bounds typos)"""
    failure: Float = Field(0.0, ge=-1000, le=1000)
    """reward of a failed evaluation (NaN loss, exception)"""


class InputNormalization(StrictModel):
    """Per-channel standardisation a network applies to its [0, 1] input, ``(x - mean) / std``."""

    mean: list[Float] = Field(min_length=1, max_length=MAX_LIST)
    std: list[Float] = Field(min_length=1, max_length=MAX_LIST)

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

    name: Identifier
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
    blocks: tuple[str, ...] = Field((), max_length=MAX_LIST)
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
