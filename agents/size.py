"""The size of a search run, in one line printed before it starts: how many evaluations it may make, how many
processes it starts, and a rough memory estimate.

Pure arithmetic on the configs (no Ray, no torch, no data loaded): the figures are an estimate, not a measurement.
The number of evaluations is what PPO asks for (``M`` episodes per iteration, one evaluation each); the store
answers a repeat without a new one, so a run usually makes fewer. The memory model is deliberately coarse: a
process's baseline, the datasets each evaluation worker holds, and the activations of the largest batch (a training
step or an attack) through the task's teacher, which bounds every sub-network.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from agents.config import ExperimentConfig
    from rcnas.task import Task

GIB = 2**30

PROCESS_GIB = 0.5
"""resident memory of one Python process with torch (and Ray's worker runtime) before any data: measured 0.4 to
0.7 GiB for an evaluation worker or an env runner"""
SAVED_FLOATS_PER_OUTPUT = {False: 4, True: 7}
"""fp32 values autograd keeps per output value of a block, for a plain (False) and a robust (True) block: measured
with ``torch.autograd.graph.saved_tensors_hooks`` on the shipped teachers (WRN-A2, WRN-A4, WRN-70-16: 4.0;
RobustResNet-A2: 7.0; the same in training and in an attack, which differentiates through the network too)"""
TEACHER_EVAL_BATCH = 256
"""the teacher's validation attack runs in batches of up to 256 (``rcnas.proxy.teacher``, the evaluation default)"""
CANDIDATE_EVAL_BATCH = 512
"""a candidate's validation attack runs in one batch of up to 512 (``rcnas.proxy.candidate``)"""
N_STAGES = 3
"""PPO's batch is ``M * 3`` steps (``agents.ppo.build_ppo_config``): M episodes of a three-stage teacher"""


@dataclass(frozen=True)
class _Data:
    train: int
    test: int
    bytes_per_value: int
    """how the images are held in memory: uint8 (CIFAR, Tiny-ImageNet) or float32 (digits)"""


DATASET_SIZES = {
    "digits": _Data(1_438, 359, 4),
    "cifar10": _Data(50_000, 10_000, 1),
    "cifar100": _Data(50_000, 10_000, 1),
    "tiny-imagenet": _Data(100_000, 10_000, 1),
}
"""examples of the training pool and the test split of each registered dataset (``rcnas.data.sources``); an
unknown one counts as CIFAR-sized"""
_DEFAULT = _Data(50_000, 10_000, 1)


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _gib(n_bytes: float) -> str:
    gib = n_bytes / GIB
    return "<0.01" if gib < 0.01 else f"{gib:.2g}" if gib < 10 else f"{gib:,.0f}"


def activation_bytes(task: Task) -> float:
    """Bytes one example's forward pass through the task's teacher keeps for its backward pass (fp32), from the
    architecture's block output sizes: the teacher bounds every sub-network of the task."""
    from rcnas.space.cost import conv_out, stage_out_channels
    from rcnas.vocab import BLOCK_KINDS

    arch = task.teacher.arch
    size = conv_out(task.shape.resolution, 3, arch.stem_stride)
    values = 4.0 * arch.stem_channels * size * size
    for stage in arch.stages:
        size = conv_out(size, stage.kernel_size, stage.stride)
        robust = bool(BLOCK_KINDS.get(stage.block).robust)
        values += SAVED_FLOATS_PER_OUTPUT[robust] * stage.depth * stage_out_channels(stage) * size * size
    return 4.0 * values


def run_size(exp: ExperimentConfig, tasks: Sequence[Task], *, target: Optional[Task] = None,
             searcher: str = "rl", n: int = 25, meta: bool = True, final_eval: bool = True,
             auto_workers: Optional[int] = None) -> str:
    """One line: the run's evaluations, processes and estimated memory.

    Args:
        tasks: the resolved tasks, the target first and then the meta-training tasks (as
            ``agents.pipeline.run_search`` builds them).
        target: the target task when it is not ``tasks[0]``.
        searcher: ``rl`` (meta-train then fine-tune), ``ppo-scratch`` (fine-tune only) or a baseline searcher,
            which spends ``n`` evaluations.
        meta: whether meta-training runs (False when starting from a meta checkpoint).
        final_eval: whether the final comparison runs (``--no-final-eval`` says no; so does
            ``final_eval.enabled``).
        auto_workers: the worker count when ``workers.count`` is unset (default: this machine's CPUs, the service's
            own default without GPUs).
    """
    from rcnas.proxy.keys import teacher_key
    from rcnas.space.cost import arch_cost

    if not tasks:
        raise ValueError("run_size needs at least the target task")
    target = target if target is not None else tasks[0]
    metas = [t for t in tasks if t is not target]
    meta = meta and searcher == "rl" and bool(metas)
    used = [target, *metas] if meta else [target]  # the tasks the workers score (and whose teachers they train)

    # evaluations: one per episode, M episodes per PPO iteration
    parts: list[str] = []
    evals = 0
    if searcher == "rl" or searcher == "ppo-scratch":
        if meta:
            meta_evals = exp.meta_iterations * exp.M
            promoted = _promoted(exp, meta_evals, prior=False) if exp.screening.meta else meta_evals
            evals += promoted
            parts.append(f"meta-training {_n(exp.meta_iterations, 'iteration')} x M={exp.M} = {meta_evals:,}"
                         f"{' proposals' if promoted != meta_evals else ''} over {_n(len(metas), 'task')}"
                         + _screened_note(exp, meta_evals, promoted))
        ft_evals = exp.finetune_iterations * exp.M
        promoted = _promoted(exp, ft_evals, prior=meta)
        evals += promoted
        parts.append(f"fine-tuning {_n(exp.finetune_iterations, 'iteration')} x M={exp.M} = {ft_evals:,}"
                     f"{' proposals' if promoted != ft_evals else ''}" + _screened_note(exp, ft_evals, promoted))
        if exp.handover.evaluations:
            evals += exp.handover.evaluations
            parts.append(f"hand-over to {exp.handover.to}: {exp.handover.evaluations:,}")
    else:
        evals += n
        parts.append(f"searcher {searcher}: {n:,}")
    rr = exp.rerank
    if rr.top_k:
        evals += rr.top_k
        parts.append(f"re-ranking {rr.top_k} x {_n(rr.repeats, 'seed')} at {rr.epochs:g} epochs")
    seeds = max(t.config.proxy.repeats for t in used)
    epochs = max(t.config.proxy.epochs for t in used)
    each = f"each {_n(seeds, 'seed')} x {epochs:g} proxy epochs"

    # trainings from scratch: each distinct teacher once (unless imported), then the final comparison
    teachers = {teacher_key(t) for t in used if t.config.teacher_weights is None}
    teacher_epochs = max((t.config.training.epochs for t in used if t.config.teacher_weights is None), default=0)
    trainings = _n(len(teachers), "teacher training")
    if teachers:
        trainings += f" (up to {teacher_epochs:g} epochs)"
    fe = exp.final_eval
    data = DATASET_SIZES.get(target.config.dataset.name, _DEFAULT)
    if fe.enabled and final_eval:
        fe_epochs = fe.epochs if fe.epochs is not None else target.config.training.epochs
        n_test = min(fe.n_examples or data.test, data.test)
        trainings += (f", final comparison up to 3 trainings x {fe_epochs:g} epochs + {_n(len(fe.attacks), 'attack')}"
                      f" on {n_test:,} test examples")

    # processes
    auto = exp.workers.count is None
    workers = exp.workers.count or auto_workers or os.cpu_count() or 1
    agent = searcher in ("rl", "ppo-scratch")
    # the async sampler runs in the algorithm's process (its learner's): no env runner processes
    runners = exp.env_runners if agent and exp.sampler == "env_runners" else 0
    learner = 1 if agent else 0
    procs = workers + runners + learner + 2  # + the evaluation service's actor + the driver
    in_flight = exp.in_flight or workers + exp.M  # agents.async_ppo's default
    proc_text = (f"{_n(workers, 'evaluation worker')}{' (auto: one per GPU, else per CPU)' if auto else ''}"
                 + ((f" + {_n(runners, 'env runner')}" if runners else "") + " + 1 learner" if agent else "")
                 + f" + service + driver = {procs:,} processes"
                 + (f", {_n(in_flight, 'evaluation')} in flight" if agent and exp.sampler == "async" else ""))

    # memory: every worker holds the datasets of the tasks it scores and trains one batch at a time
    datasets = {t.config.dataset.name for t in used}
    data_bytes = 0.0
    for name in datasets:
        d = DATASET_SIZES.get(name, _DEFAULT)
        shape = next(t.shape for t in used if t.config.dataset.name == name)
        data_bytes += (d.train + d.test) * shape.channels * shape.resolution ** 2 * d.bytes_per_value
    batch_bytes, heaviest = 0.0, target
    for t in used:
        pixels = t.shape.channels * t.shape.resolution ** 2
        act = activation_bytes(t) + 4 * pixels * 4  # + x, x_adv and their gradients
        # a candidate is within the budget: its activations scaled by its share of the teacher's MACs
        share = min(1.0, t.budget / t.teacher_macs) if t.teacher_macs else 1.0
        passes = 2 if t.config.training.loss == "trades" else 1  # TRADES differentiates a clean and an adversarial pass
        train = t.config.training.batch_size * passes * act  # the teacher's own training, and the final comparison's
        teacher_attack = min(TEACHER_EVAL_BATCH, t.config.proxy.val_examples) * act
        candidate_attack = min(CANDIDATE_EVAL_BATCH, t.config.proxy.val_examples) * act * share
        recalibration = min(t.config.proxy.recalibrate_bn, DATASET_SIZES.get(
            t.config.dataset.name, _DEFAULT).train) * pixels * 4
        weights = 12 * arch_cost(t.teacher.arch, t.shape).params  # fp32 weights, gradients, SGD momentum
        need = max(train, teacher_attack, candidate_attack) + recalibration + weights
        if need > batch_bytes:
            batch_bytes, heaviest = need, t
    on_gpu = bool(exp.workers.gpus)
    per_worker = PROCESS_GIB * GIB + data_bytes + (0 if on_gpu else batch_bytes)
    pm = exp.model
    policy_params = (8 * pm.lstm * (pm.embed + pm.lstm + 2) + (2 * pm.lstm + pm.task_embed) * pm.hidden
                     + 3 * pm.hidden ** 2 + 64 * pm.hidden)
    learner_bytes = PROCESS_GIB * GIB + 16 * policy_params  # fp32 weights, grads and Adam's two moments
    host = workers * per_worker + runners * PROCESS_GIB * GIB + learner * learner_bytes + 2 * PROCESS_GIB * GIB
    mem = (f"~{_gib(host)} GiB memory estimated ({workers:,} workers x ({PROCESS_GIB:g} GiB process + "
           f"{_gib(data_bytes)} GiB data" + ("" if on_gpu else f" + {_gib(batch_bytes)} GiB for a batch")
           + f") + {runners + learner + 2} other processes x ~{PROCESS_GIB:g} GiB"
           + (f"; + ~{_gib(batch_bytes)} GiB of GPU memory per worker for a batch of {heaviest.teacher.name}"
              if on_gpu else "")
           + ")")
    return (f"run size: about {evals:,} evaluations ({'; '.join(parts)}; {each}), {trainings}; {proc_text}; {mem}")


def _promoted(exp: ExperimentConfig, proposals: int, prior: bool) -> int:
    """About how many of ``proposals`` reach the proxy under ``exp.screening`` (all of them without): the ``keep``
    share, after the first ``min_points`` a surrogate with no stored evaluations to start from (``prior``) promotes
    while it learns. Paced (``screening.pace``), a bound (give or take the evaluations in flight while the surrogate
    learns); unpaced, a floor: a proposal is promoted when it ranks among the best ``keep`` of those seen so far, so a
    policy whose proposals keep improving has more promoted (the digits run: 41 of 100 over 20 iterations)."""
    sc = exp.screening
    if sc.by == "none":
        return proposals
    first = min(sc.min_points, proposals) if sc.by == "surrogate" and not prior else 0
    return first + math.ceil(sc.keep * (proposals - first))


def _screened_note(exp: ExperimentConfig, proposals: int, promoted: int) -> str:
    if promoted == proposals:
        return ""
    what = "surrogate" if exp.screening.by == "surrogate" else "low fidelity, each one evaluated cheaply"
    if exp.screening.pace:  # paced: a bound, whatever the policy does
        return f", screened ({what}, paced): at most ~{promoted:,} to the proxy"
    return f", screened ({what}): at least ~{promoted:,} to the proxy, more while the policy improves"
