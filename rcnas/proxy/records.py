"""Plain, picklable results of the proxy evaluation (they cross Ray process boundaries and go into the store)."""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from rcnas.space.arch import ArchSpec

STATUSES = ("ok", "failed", "error")
"""every :attr:`ProxyMetrics.status` there is"""
MAX_METRICS_JSON = 64 * 1024
"""characters of one stored metrics record at most (a real one is under 2 KB): a longer one is refused unread"""
MAX_ALSO = 64
"""extra attacks of one record at most"""


def _number(d: dict[str, Any], name: str, lo: float = 0.0, hi: float = math.inf) -> float:
    v = d[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{name} is {brief(v)}, not a finite number in [{lo:g}, {hi:g}]")
    return float(v)


def _integer(d: dict[str, Any], name: str, lo: int = 0) -> int:
    v = d[name]
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or v.bit_length() > 63:
        raise ValueError(f"{name} is {brief(v)}, not a whole number >= {lo}")
    return v


def _text(d: dict[str, Any], name: str, choices: tuple[str, ...] = (), max_len: int = 4096) -> str:
    v = d[name]
    if not isinstance(v, str) or len(v) > max_len or (choices and v not in choices):
        want = f"one of {', '.join(choices)}" if choices else f"a string of at most {max_len} characters"
        raise ValueError(f"{name} is {brief(v)}, not {want}")
    return v


def brief(v: Any, n: int = 40) -> str:
    """A value for a one-line message: printable, never long (files from others can hold anything)."""
    text = repr(v)
    return text if len(text) <= n else text[: n - 3] + "..."


def json_type(v: Any) -> str:
    """What JSON calls ``v``'s type."""
    names = {dict: "object", list: "array", str: "string", type(None): "null", bool: "boolean", int: "number",
             float: "number"}
    return names.get(type(v), type(v).__name__)


def _exact_keys(d: Any, required: Collection[str], optional: Collection[str] = ()) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ValueError(f"a JSON {json_type(d)}, not an object")
    missing, unknown = sorted(set(required) - d.keys()), sorted(d.keys() - set(required) - set(optional))
    if missing or unknown:
        raise ValueError(", ".join(([f"missing keys {missing}"] if missing else [])
                                   + ([f"unknown keys {brief(unknown, 80)}"] if unknown else [])))
    return d


@dataclass(frozen=True)
class TeacherStats:
    """The adversarially trained teacher, measured like every candidate: on the validation subset, task attack."""

    key: str
    clean_acc: float
    robust_acc: float
    lipschitz: float
    n_val: int
    train_seconds: float
    bn_scales: tuple[tuple[tuple[float, ...], ...], ...] = ()
    """per stage, per block, the |gamma| of the block's inner BN layers, largest first
    (``rcnas.models.importance.bn_scales``): what the pruning baseline thresholds. Empty where a record predates it."""

    @classmethod
    def from_dict(cls, d: Any) -> TeacherStats:
        """A record as stored (a table's header): exactly these keys (``bn_scales`` optional), finite accuracies in
        [0, 1]; ValueError saying what is wrong otherwise."""
        d = _exact_keys(d, {f.name for f in fields(cls)} - {"bn_scales"}, {"bn_scales"})
        return cls(key=_text(d, "key", max_len=256), clean_acc=_number(d, "clean_acc", 0, 1),
                   robust_acc=_number(d, "robust_acc", 0, 1), lipschitz=_number(d, "lipschitz"),
                   n_val=_integer(d, "n_val"), train_seconds=_number(d, "train_seconds"),
                   bn_scales=_scales(d.get("bn_scales", [])))


MAX_BN_SCALES = 1_000_000
"""BN scales in one record at most (WRN-70-16 has about 120,000)"""


def _scales(v: Any) -> tuple[tuple[tuple[float, ...], ...], ...]:
    """``bn_scales`` as stored: stages of blocks of finite numbers >= 0 (ValueError otherwise)."""
    def bad() -> ValueError:
        return ValueError(f"bn_scales is {brief(v)}, not a list of stages of blocks of numbers >= 0 "
                          f"(at most {MAX_BN_SCALES:,} in all)")

    if not isinstance(v, list) or not all(isinstance(s, list) and all(isinstance(b, list) for b in s) for s in v):
        raise bad()
    if sum(len(b) for s in v for b in s) > MAX_BN_SCALES:
        raise bad()
    for s in v:
        for b in s:
            if not all(not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x) and x >= 0
                       for x in b):
                raise bad()
    return tuple(tuple(tuple(float(x) for x in b) for b in s) for s in v)


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

    @classmethod
    def from_dict(cls, d: Any) -> ProxyMetrics:
        """A record as :meth:`to_dict` wrote it (``also`` may be missing: records older than it lack it), checked:
        exactly these keys, accuracies finite and in [0, 1], counts whole and >= 0, a known status. ValueError
        saying what is wrong otherwise (a record is data from a file, possibly another's)."""
        d = _exact_keys(d, {f.name for f in fields(cls)} - {"also"}, {"also"})
        also = d.get("also", {})
        if not isinstance(also, dict) or len(also) > MAX_ALSO:
            raise ValueError(f"also is {brief(also)}, not an object of at most {MAX_ALSO} accuracies")
        for label, v in also.items():
            if len(label) > 64:
                raise ValueError(f"also has a label {brief(label)} longer than 64 characters")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0 <= v <= 1):
                raise ValueError(f"also[{brief(label)}] is {brief(v)}, not a finite accuracy in [0, 1]")
        return cls(
            status=_text(d, "status", STATUSES), reason=_text(d, "reason", max_len=MAX_METRICS_JSON),
            robust_acc=_number(d, "robust_acc", 0, 1), robust_sd=_number(d, "robust_sd", 0, 1),
            clean_acc=_number(d, "clean_acc", 0, 1), macs=_integer(d, "macs"), params=_integer(d, "params"),
            attack=_text(d, "attack", max_len=64), epsilon=_number(d, "epsilon"), steps=_integer(d, "steps"),
            n_val=_integer(d, "n_val"), seed=_integer(d, "seed"), repeats=_integer(d, "repeats"),
            fine_tune_epochs=_number(d, "fine_tune_epochs"), inherited_blocks=_integer(d, "inherited_blocks"),
            fresh_blocks=_integer(d, "fresh_blocks"), seconds=_number(d, "seconds"),
            device=_text(d, "device", max_len=256), node=_text(d, "node", max_len=256),
            code_version=_text(d, "code_version", max_len=256), also={k: float(v) for k, v in also.items()})

    @classmethod
    def from_json(cls, text: Any) -> ProxyMetrics:
        """:meth:`from_dict` of a stored JSON text (at most :data:`MAX_METRICS_JSON` characters)."""
        if not isinstance(text, str):
            raise ValueError(f"a {type(text).__name__}, not JSON text")
        if len(text) > MAX_METRICS_JSON:
            raise ValueError(f"{len(text)} characters, more than the {MAX_METRICS_JSON} a record can have")
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not valid JSON ({brief(str(exc), 80)})") from None
        return cls.from_dict(d)


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


@dataclass(frozen=True)
class Request:
    """One evaluation a searcher asked for, in the order asked: what the store's request log
    (:meth:`rcnas.proxy.store.EvaluationStore.requests`) and a table's evaluator
    (:class:`rcnas.search.table.TableEvaluator`) both return, so that a benchmark scores either alike."""

    task_name: str
    arch_key: str
    """:meth:`ArchSpec.key` of ``arch``"""
    arch: ArchSpec
    metrics: ProxyMetrics
    cached: bool
    """answered without computing (a repeat: the store, or the table's log, had it already)"""
