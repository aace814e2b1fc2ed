"""Throughput of rcnas's adversarial training step against a minimal plain-PyTorch PGD-AT loop.

Same model, data, batch size, attack (PGD-5, eps 1/5) and optimiser; the two are run alternately, several rounds,
so that noise from other load on a shared machine hits both alike. Prints images/s per round and the ratio.

    python bench/train_throughput.py [--rounds 5] [--teacher tiny-444] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from rcnas.config import DatasetConfig, TrainConfig
from rcnas.data.registry import load_splits
from rcnas.data.tensors import DataSplits
from rcnas.infra.cli import run_main
from rcnas.models.builder import build_model
from rcnas.models.teachers import get_teacher
from rcnas.space.arch import InputShape
from rcnas.train import LoopOptions, adversarial_train

EPS, ALPHA, STEPS, BATCH = 0.2, 0.05, 5, 64


def plain_pgd_at(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, lr: float) -> None:
    """The textbook loop: shuffle, PGD in eval mode, CE step in train mode, clip, SGD."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=2e-4)
    perm = torch.randperm(len(y_all))
    for i in range(0, len(perm), BATCH):
        x, y = x_all[perm[i : i + BATCH]], y_all[perm[i : i + BATCH]]
        model.eval()
        delta = (torch.rand_like(x) * 2 - 1) * EPS
        delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
        for _ in range(STEPS):
            loss = nn.functional.cross_entropy(model(x + delta), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + ALPHA * grad.sign()).clamp(-EPS, EPS)
            delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
        model.train()
        loss = nn.functional.cross_entropy(model((x + delta).detach()), y)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--teacher", default="tiny-444")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_splits(DatasetConfig(name="digits", val_fraction=0.25))
    splits = DataSplits(data.train, data.val.head(1), data.test)
    cfg = TrainConfig.model_validate({
        "loss": "pgd_at", "attack": {"name": "pgd", "epsilon": "1/5", "steps": STEPS, "step_size": "1/20"},
        "epochs": 1, "batch_size": BATCH, "lr": 0.05, "schedule": "constant", "select_on_val": False,
    })
    arch, shape = get_teacher(args.teacher).arch, InputShape(1, 8, 10)
    n = len(data.train)
    warm = build_model(arch, shape)  # first-call costs (allocator, kernels) hit neither side's figures
    adversarial_train(warm, splits, cfg, LoopOptions(num_classes=10))
    plain_pgd_at(warm, data.train.x, data.train.y, 0.05)
    ours, plain = [], []
    for r in range(args.rounds):
        torch.manual_seed(r)
        model = build_model(arch, shape)
        t0 = time.perf_counter()
        adversarial_train(model, splits, cfg, LoopOptions(num_classes=10))
        ours.append(n / (time.perf_counter() - t0))
        torch.manual_seed(r)
        model = build_model(arch, shape)
        t0 = time.perf_counter()
        plain_pgd_at(model, data.train.x, data.train.y, 0.05)
        plain.append(n / (time.perf_counter() - t0))
        print(f"round {r + 1}: rcnas {ours[-1]:7.1f} img/s   plain {plain[-1]:7.1f} img/s   "
              f"ratio {ours[-1] / plain[-1]:.3f}", flush=True)
    mo, mp = statistics.median(ours), statistics.median(plain)
    print(f"median: rcnas {mo:.1f} img/s, plain {mp:.1f} img/s, ratio {mo / mp:.3f} "
          f"({args.teacher}, digits train n={n}, PGD-{STEPS}, batch {BATCH}, {args.threads} threads)")


if __name__ == "__main__":
    run_main(main)
