"""One network trained on several workers (GPUs of one or several nodes, or CPU processes) through Ray Train.

``TorchTrainer`` places the workers and sets up their process group (NCCL on GPUs, gloo on CPUs); each worker runs
the ordinary training loop on its part of every global batch (``rcnas.train.data_parallel``), and rank 0 hands the
trained weights back as a Ray Train checkpoint. Used for large networks in evaluate.py's final training
(``--data-parallel N``); the search's many small evaluations stay one worker each.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray
import torch

from rcnas.data.registry import augmentation, load_splits
from rcnas.evaluation.final import EvalJob
from rcnas.infra.log import say
from rcnas.models.builder import build_model
from rcnas.train import LoopOptions, adversarial_train, save_atomic


def _worker_loop(config: dict[str, Any]) -> None:
    """One worker: the same seeded start and batches everywhere, its shard of each batch, gradients averaged."""
    import ray.train
    import ray.train.torch

    from rcnas.train.data_parallel import Shard, global_batchnorm, plain_batchnorm, same_start

    job: EvalJob = config["job"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    data = load_splits(job.task.config.dataset, job.data_root)
    torch.manual_seed(job.seed)
    model = global_batchnorm(build_model(job.arch, job.task.shape).to(device))
    same_start(model)
    log = say if rank == 0 else (lambda m: None)
    res = adversarial_train(
        model, data, job.recipe(),
        LoopOptions(num_classes=job.task.shape.num_classes, **augmentation(job.task.config.dataset),
                    shard=Shard(rank, world),
                    progress=lambda r: log(f"[{job.name}] epoch {r['epoch']}/{r['epochs']} on {world} workers: loss "
                                           f"(worker 0's share) {r['train_loss']:.3f} val robust "
                                           f"{r['val_robust']:.3f}")))
    info = {"epochs": res.epochs_run, "best_epoch": res.best_epoch, "best_val_robust": res.best_val_robust,
            "seconds": round(res.seconds, 1), "diverged": res.diverged, "data_parallel": world}
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            save_atomic(plain_batchnorm(model).cpu().state_dict(), Path(tmp) / "model.pt")
            ray.train.report(info, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(info)


def train_data_parallel(job: EvalJob, workers: int, storage: str | Path) -> tuple[dict[str, torch.Tensor],
                                                                                  dict[str, Any]]:
    """Train ``job``'s network on ``workers`` Ray Train workers (a GPU each when the cluster has GPUs); returns its
    state dict and what the training did."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rcnas.distributed.resources import cluster_gpus, ensure_ray

    ensure_ray()
    gpu = cluster_gpus() >= workers
    trainer = TorchTrainer(
        _worker_loop, train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu),
        run_config=RunConfig(storage_path=str(Path(storage).resolve()), name=f"{job.name}-data-parallel"),
    )
    result = trainer.fit()
    assert result.checkpoint is not None
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "model.pt", map_location="cpu", weights_only=True)
    return state, dict(result.metrics or {})


def evaluate_data_parallel(job: EvalJob, log: Any) -> Any:
    """``job`` trained on ``job.data_parallel`` workers, then attacked here like any other job (its weights through
    the object store); the result records the data-parallel training."""
    from dataclasses import replace

    from rcnas.evaluation.final import evaluate_job

    log(f"[{job.name}] training on {job.data_parallel} data-parallel workers (Ray Train)")
    state, info = train_data_parallel(job, job.data_parallel, Path(job.out_dir) / job.name / "ray-train")
    save_atomic(state, Path(job.out_dir) / job.name / "model.pt")
    result = evaluate_job(replace(job, weights=(ray.put(state),), weights_key="data-parallel training"), log=log)
    keep = ("epochs", "best_epoch", "best_val_robust", "seconds", "diverged", "data_parallel")
    return replace(result, train={k: info[k] for k in keep if k in info})
