"""Final evaluation of one sub-network (docs/method.md, "Final evaluation"): adversarial training from scratch with
the task's recipe (or a saved checkpoint), then clean / FGSM / PGD-20 / CW-40 / AutoAttack on the test split,
params, MACs and LIPS, as one typed :class:`FinalResult`.

A pure function of its inputs, so that a Ray worker runs it unchanged (``rcnas.distributed.final_jobs``).
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from rcnas.attacks.run import EXACT_FP32, exact_fp32
from rcnas.config import AttackConfig, TrainConfig
from rcnas.data.registry import augmentation, load_splits
from rcnas.data.tensors import DataSplits
from rcnas.evaluation.robustness import AttackAccuracy, local_lipschitz, robust_accuracy
from rcnas.infra.configio import eps_label
from rcnas.infra.devices import pick_device
from rcnas.infra.errors import ConfigError
from rcnas.infra.files import inside, sha256_file
from rcnas.infra.log import say
from rcnas.infra.progress import eta
from rcnas.infra.provenance import code_version, content_key, environment, state_sha256
from rcnas.models.builder import build_model
from rcnas.models.imports import load_weights
from rcnas.space.arch import ArchSpec
from rcnas.space.cost import arch_cost
from rcnas.task import Task
from rcnas.train import CheckpointMirror, LoopOptions, adversarial_train, save_atomic
from rcnas.train.step import effective_precision
from rcnas.train.trainer import planned_steps


@dataclass(frozen=True)
class EvalJob:
    """One sub-network to evaluate, with everything needed to do it in another process."""

    name: str
    arch: ArchSpec
    task: Task
    attacks: tuple[str, ...]
    out_dir: str
    epochs: Optional[float] = None
    checkpoint: Optional[str] = None
    n_examples: Optional[int] = None
    seed: int = 0
    data_root: Optional[str] = None
    checkpoint_format: str = "rcnas"
    """how ``checkpoint`` names its tensors (``rcnas.vocab.WEIGHTS_FORMATS``): a published teacher is evaluated as
    its own file, imported"""
    weights: Optional[tuple[Any, ...]] = None
    """``(ref,)``: the weights as a state dict in Ray's object store (a teacher from the search, reaching whatever
    node runs the job), instead of a file or training"""
    weights_key: str = ""
    """what ``weights`` are (e.g. the teacher's cache key), for :meth:`key`"""
    data_parallel: int = 1
    """workers of one data-parallel training (Ray Train; ``rcnas.distributed.data_parallel``); 1: one process"""

    def recipe(self) -> TrainConfig:
        """The task's training recipe with this job's seed and, when given, its training length."""
        return self.task.config.training.model_copy(
            update={"seed": self.seed, **({"epochs": self.epochs} if self.epochs is not None else {})})

    def key(self) -> str:
        """What the result depends on: a finished result with the same key is reused instead of recomputed. The code
        version (commit) is part of it, so results computed by another commit are computed again; so is the
        checkpoint's content, so a checkpoint rewritten under the same name is evaluated again."""
        task = self.task.config.model_dump(mode="json")
        content = (sha256_file(self.checkpoint) if self.checkpoint and Path(self.checkpoint).is_file() else None)
        return content_key({"name": self.name, "arch": self.arch.key(), "task": task,
                            "attacks": self.attacks, "epochs": self.epochs, "checkpoint": self.checkpoint,
                            **({"checkpoint_sha256": content} if content else {}),
                            **({"format": self.checkpoint_format} if self.checkpoint_format != "rcnas" else {}),
                            **({"weights": self.weights_key} if self.weights else {}),
                            **({"data_parallel": self.data_parallel} if self.data_parallel > 1 else {}),
                            "n_examples": self.n_examples, "seed": self.seed, "code": code_version()})


@dataclass(frozen=True)
class FinalResult:
    """One sub-network's labelled robustness figures on the test split (written to ``results.json``)."""

    name: str
    arch: str
    params: int
    macs: int
    dataset: str
    task: str
    epsilon: float
    eps_255: str
    seed: int
    n_examples: int
    split: str
    clean: float
    attacks: tuple[AttackAccuracy, ...]
    worst_case: Optional[float]
    """pointwise worst case over the attacks run"""
    lipschitz: float
    train: dict[str, Any]
    wall_seconds: float
    device: str
    node: str
    job_key: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
    """caller's annotations (e.g. which searcher picked it), kept through results.json"""
    provenance: dict[str, Any] = field(default_factory=dict)
    """code version, library versions, node and device it was computed with"""
    weights_sha256: str = ""
    """:func:`rcnas.infra.provenance.state_sha256` of the state dict attacked (rcnas's tensor names): an export
    ships these weights or refuses (``rcnas.evaluation.export``); empty in results of older versions"""

    def accuracy(self, label: str) -> Optional[float]:
        return next((a.accuracy for a in self.attacks if a.label == label), None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FinalResult:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["attacks"] = tuple(AttackAccuracy(**a) for a in d["attacks"])
        return cls(**kw)


def training_length(n_train: int, recipe: TrainConfig) -> str:
    """What :func:`rcnas.train.adversarial_train` runs for ``recipe`` on ``n_train`` examples, in words: a fractional
    length is rounded up to whole batches, at least one (its ``total`` steps), e.g. "0.2 epochs (1 batch of 128;
    0.05 asked, rounded up to whole batches)"."""
    per_epoch, steps = planned_steps(n_train, recipe)
    epochs = steps / per_epoch
    shown = (f"{epochs:g}" if epochs.is_integer() else f"{epochs:.3g}" if epochs < 1
             else f"{epochs:.2f}".rstrip("0").rstrip("."))
    said = f"{shown} epoch{'' if epochs == 1 else 's'} ({steps:,} batch{'' if steps == 1 else 'es'} of " \
           f"{recipe.batch_size}"
    if not math.isclose(epochs, recipe.epochs, rel_tol=1e-9):
        said += f"; {recipe.epochs:g} asked, rounded up to whole batches"
    return said + ")"


def _train_or_load(job: EvalJob, model: nn.Module, data: DataSplits, out: Path, device: torch.device,
                   log: Callable[[str], None], mirror: Optional[CheckpointMirror] = None) -> dict[str, Any]:
    """Give ``model`` its weights: the job's checkpoint, or adversarial training from scratch (resumable; with
    ``mirror``, from and into the run folder on the driver's node, and the trained weights kept there)."""
    if job.weights:
        import ray  # only jobs created on Ray carry object-store weights

        model.load_state_dict(ray.get(job.weights[0]))
        return {"weights": job.weights_key, "source": "object store"}
    if job.checkpoint:
        info = load_weights(model, job.checkpoint, job.checkpoint_format, job.name)
        return {"checkpoint": job.checkpoint, "format": info["format"]}
    cfg = job.task.config
    recipe = job.recipe()
    log(f"[{job.name}] training {training_length(len(data.train), recipe)} ({recipe.loss}, eps "
        f"{eps_label(recipe.attack.epsilon)}) on {len(data.train)} examples, device {device}")
    checkpoint = out / "train_state.pt"
    if mirror is not None:
        mirror.restore(checkpoint)

    def progress(r: dict[str, float]) -> None:
        if mirror is not None:  # after the epoch's checkpoint is saved: keeping it keeps the epoch
            mirror.keep(checkpoint)
        log(f"[{job.name}] epoch {r['epoch']}/{r['epochs']}: loss {r['train_loss']:.3f} val clean "
            f"{r['val_clean']:.3f} val robust {r['val_robust']:.3f} {eta(r['epoch'], r['epochs'], r['seconds'])}"
            .rstrip())

    res = adversarial_train(
        model, data, recipe, LoopOptions(
            num_classes=job.task.shape.num_classes, **augmentation(cfg.dataset), checkpoint=checkpoint,
            progress=progress, desc=f"{job.name} training"))
    if res.diverged and res.best_epoch == 0:
        raise ConfigError(f"[{job.name}] training diverged before its first epoch ended ({res.reason}); lower "
                          "training.lr or set training.grad_clip")
    if res.diverged:
        log(f"[{job.name}] training diverged: {res.reason}; evaluating the best checkpoint kept (epoch "
            f"{res.best_epoch})")
    save_atomic(model.state_dict(), out / "model.pt")
    if mirror is not None:
        mirror.keep(out / "model.pt", f"{job.name}/model.pt")  # the weights back in the run folder, off the worker
    return {"epochs": res.epochs_run, "best_epoch": res.best_epoch, "best_val_robust": res.best_val_robust,
            "seconds": round(res.seconds, 1), "diverged": res.diverged, "loss": recipe.loss,
            "precision": effective_precision(recipe.precision, device)}


def evaluate_job(job: EvalJob, log: Callable[[str], None] = say, device: torch.device | None = None,
                 mirror: Optional[CheckpointMirror] = None) -> FinalResult:
    """Train (or load) and attack ``job``'s sub-network; saves the weights in ``out_dir/name`` (and, with
    ``mirror``, keeps its checkpoints and weights in the run folder of the driver's node)."""
    t0 = time.perf_counter()
    device = device or pick_device()
    shape, eps = job.task.shape, job.task.config.attack.epsilon
    data = load_splits(job.task.config.dataset, job.data_root)
    torch.manual_seed(job.seed)
    model = build_model(job.arch, shape).to(device)
    out = inside(Path(job.out_dir), job.name)
    out.mkdir(parents=True, exist_ok=True)
    train_info = _train_or_load(job, model, data, out, device, log, mirror)
    measured = state_sha256(model.state_dict())  # the weights attacked below: what an export must ship
    test = data.test if job.n_examples is None else data.test.head(job.n_examples)
    attacks = {label: AttackConfig.suite(label, eps) for label in job.attacks if label != "clean"}
    with exact_fp32():  # reported figures: no TF32 in the attacks' gradients
        report = robust_accuracy(model, test, attacks, num_classes=shape.num_classes, seed=job.seed,
                                 progress=lambda m: log(f"[{job.name}] {m}"), desc=job.name)
        lips = local_lipschitz(model, test.head(256), AttackConfig.suite("pgd20", eps),
                               num_classes=shape.num_classes, seed=job.seed)
    cost = arch_cost(job.arch, shape)
    return FinalResult(
        name=job.name, arch=job.arch.short(), params=cost.params, macs=cost.macs, dataset=job.task.config.dataset.name,
        task=job.task.name, epsilon=eps, eps_255=eps_label(eps), seed=job.seed, n_examples=report.n_examples,
        split="test", clean=report.clean, attacks=report.attacks, worst_case=report.worst_case, lipschitz=lips,
        train=train_info, wall_seconds=round(time.perf_counter() - t0, 1), device=str(device),
        node=platform.node(), job_key=job.key(),
        provenance={**environment(str(device)), "attack_math": EXACT_FP32}, weights_sha256=measured,
    )

