"""Plain, picklable results of the proxy evaluation (they cross Ray process boundaries and go into the store)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TeacherStats:
    """The adversarially trained teacher, measured like every candidate: on the validation subset, task attack."""

    key: str
    clean_acc: float
    robust_acc: float
    lipschitz: float
    n_val: int
    train_seconds: float


@dataclass(frozen=True)
class ProxyMetrics:
    """One candidate's proxy evaluation, with its provenance."""

    status: str
    """ok | failed (deterministic, e.g. fine-tuning diverged: stored) | error (a crash that may not recur: not
    stored, asked again next time)"""
    reason: str
    robust_acc: float
    """mean over repeats, validation split, the task's attack"""
    robust_sd: float
    clean_acc: float
    macs: int
    params: int
    attack: str
    epsilon: float
    steps: int
    n_val: int
    seed: int
    repeats: int
    fine_tune_epochs: float
    inherited_blocks: int
    fresh_blocks: int
    seconds: float
    device: str
    node: str
    code_version: str
    also: dict[str, float] = field(default_factory=dict, hash=False)  # a dict: compared, not hashed
    """robust accuracy under each of the proxy's ``also_attacks`` (by label), same fine-tuned network and split"""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalKey:
    """What identifies a measurement: identical keys are answered from the store."""

    task: str
    arch: str
    fidelity: str
    seed: int


@dataclass(frozen=True)
class Evaluation:
    key: EvalKey
    metrics: ProxyMetrics
    cached: bool
    """answered from the store without computing"""
