"""Training and attack throughput of rcnas's own loop per precision / memory format / compile setting, side by side
in one run (ratios against fp32 from the same run).

Training: ``rcnas.train.adversarial_train`` itself (PGD-AT, the CIFAR recipe's attack: 10 steps of 2/255 at 8/255,
SGD, gradient clipping) on CIFAR-shaped random data; images/s counts training images (each costs 10 attack steps
plus the update). Attacks: the reported PGD-20 and CW-40 through ``rcnas.evaluation.robustness`` (always fp32).

On CUDA the network is WRN-A1 (5.08G MACs, a sub-network size the CIFAR search proposes) at batch 128; on a CPU a
tiny teacher at batch 32, so that the script is testable anywhere. Needs torch plus rcnas's small pure-Python
dependencies (pydantic, pyyaml): on a machine with only torch,

    pip install --no-index --find-links WHEELS pydantic pyyaml && PYTHONPATH=. python bench/gpu_throughput.py

    python bench/gpu_throughput.py [--arch WRN-A1] [--batch 128] [--batches 12] [--modes fp32,bf16,bf16-cl,...]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from rcnas.config import AttackConfig, TrainConfig
from rcnas.data.tensors import DataSplits, TensorData
from rcnas.evaluation.robustness import robust_accuracy
from rcnas.infra.cli import run_main
from rcnas.models.builder import build_model
from rcnas.models.teachers import get_teacher
from rcnas.space.arch import InputShape

MODES = {
    "fp32": {"precision": "fp32", "channels_last": False},
    "fp32-cl": {"precision": "fp32", "channels_last": True},
    "bf16": {"precision": "bf16", "channels_last": False},
    "bf16-cl": {"precision": "bf16", "channels_last": True},
    "bf16-compile": {"precision": "bf16", "channels_last": False, "compile": True},
    "bf16-cl-compile": {"precision": "bf16", "channels_last": True, "compile": True},
    "fp16-cl": {"precision": "fp16", "channels_last": True},
}


def synthetic(n: int, shape: InputShape, seed: int = 0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, shape.channels, shape.resolution, shape.resolution, generator=g)
    return TensorData(x, torch.randint(0, shape.num_classes, (n,), generator=g))


def recipe(mode: str, batch: int, epochs: float) -> TrainConfig:
    return TrainConfig.model_validate({
        "loss": "pgd_at", "attack": {"epsilon": "8/255", "steps": 10, "step_size": "2/255"}, "epochs": epochs,
        "batch_size": batch, "schedule": "constant", "select_on_val": False, "val_examples": 1, **MODES[mode]})


def train_rate(arch, shape: InputShape, mode: str, batch: int, batches: int, device: torch.device) -> float:
    """Images/s of adversarial training, after one warm-up pass (cuDNN autotuning, compilation)."""
    torch.manual_seed(0)
    model = build_model(arch, shape).to(device)
    data = DataSplits(synthetic(batch * batches, shape), synthetic(8, shape, 1), synthetic(8, shape, 2))
    warm = DataSplits(synthetic(batch * 2, shape, 3), data.val, data.test)
    from rcnas.train import LoopOptions, adversarial_train

    adversarial_train(model, warm, recipe(mode, batch, 1.0), LoopOptions(num_classes=shape.num_classes))
    if device.type == "cuda":
        torch.cuda.synchronize()
    res = adversarial_train(model, data, recipe(mode, batch, 1.0), LoopOptions(num_classes=shape.num_classes))
    return batch * batches / res.seconds


def attack_rate(arch, shape: InputShape, label: str, n: int, device: torch.device) -> float:
    model = build_model(arch, shape).to(device).eval()
    data = synthetic(n, shape, 4)
    cfg = AttackConfig.suite(label, 8 / 255)
    # warm-up on the same batch shapes: with cuDNN autotuning on, a new shape costs a tuning pass
    robust_accuracy(model, data, {label: cfg}, num_classes=shape.num_classes)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    robust_accuracy(model, data, {label: cfg}, num_classes=shape.num_classes)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--arch", default="WRN-A1" if cuda else "tiny-444", help="a registered teacher (its full size)")
    p.add_argument("--batch", type=int, default=128 if cuda else 32)
    p.add_argument("--batches", type=int, default=12 if cuda else 2, help="timed training batches per mode")
    p.add_argument("--modes", default="fp32,bf16,bf16-cl,bf16-cl-compile" if cuda else "fp32,bf16",
                   help=f"comma-separated: {', '.join(MODES)}")
    p.add_argument("--attack-examples", type=int, default=512 if cuda else 32)
    p.add_argument("--out", help="also write the figures as JSON here")
    a = p.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    shape = InputShape(3, 32, 10)
    arch = get_teacher(a.arch).arch
    name = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    print(f"device: {name}; torch {torch.__version__}; {a.arch} ({arch.short()}), batch {a.batch}, "
          f"PGD-AT with 10 attack steps, {a.batches} timed batches per mode")
    rows = {}
    for mode in a.modes.split(","):
        try:
            rows[mode] = train_rate(arch, shape, mode, a.batch, a.batches, device)
        except Exception as exc:  # noqa: BLE001 - one failing mode (e.g. no compiler) must not hide the others
            print(f"  {mode:16s} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        base = rows.get("fp32")
        ratio = f"  x{rows[mode] / base:.2f} vs fp32" if base else ""
        print(f"  train {mode:16s} {rows[mode]:9.1f} img/s{ratio}")
    attacks = {label: attack_rate(arch, shape, label, a.attack_examples, device) for label in ("pgd20", "cw40")}
    for label, rate in attacks.items():
        print(f"  attack {label:15s} {rate:9.1f} img/s (fp32, {a.attack_examples} examples)")
    if a.out:
        Path(a.out).write_text(json.dumps({"device": name, "torch": torch.__version__, "arch": a.arch,
                                           "batch": a.batch, "train_img_s": rows, "attack_img_s": attacks},
                                          indent=2))


if __name__ == "__main__":
    run_main(main)
