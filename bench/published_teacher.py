"""What starting from a published teacher costs: import a WideResNet-28-10-sized RobustBench checkpoint, measure the
teacher's statistics (the search's first step), and run evaluate.py's AutoAttack on it.

The checkpoint is RobustBench's own ``WideResNet(28, 10)`` class with random weights (no network here), saved as its
state dict; the data is a synthetic CIFAR-10 folder in torchvision's format. Each phase runs in a fresh process so
that its wall time and peak resident memory are its own. Robust accuracies of a random network mean nothing: only
the costs are the point (AutoAttack's time depends on how many points survive, so it is a lower bound for a
robust teacher; the clean accuracy is printed beside it).

    python bench/published_teacher.py [--n-stats 1000] [--n-aa 100] [--depth 28] [--widen 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rcnas.infra.cli import run_main

ROOT = Path(__file__).resolve().parents[1]


def child(code: str, env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``code`` in a fresh interpreter: (wall seconds, peak RSS in GiB of that process, its stdout)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"phase failed:\n{r.stderr[-3000:]}")
    peak = float(r.stdout.strip().splitlines()[-1])
    return wall, peak, r.stdout


PEAK = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-stats", type=int, default=1000, help="validation images for the teacher's statistics")
    p.add_argument("--n-aa", type=int, default=100, help="test images for evaluate.py's AutoAttack")
    p.add_argument("--depth", type=int, default=28)
    p.add_argument("--widen", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rcnas-published-"))
    env = {**os.environ, "RCNAS_CACHE": str(work / "cache"), "OMP_NUM_THREADS": str(a.threads)}

    # setup (not timed): data, checkpoint, task
    per_class = max(a.n_stats // 10 * 25 // 10, 40)  # val_fraction 0.04 of the training pool >= n_stats
    child(f"""
import torch
from pathlib import Path
from rcnas.data.synthetic import write_cifar10
from rcnas.models.reference import robustbench_module, randomise
write_cifar10(Path({str(work / 'data')!r}), train_per_class={per_class * 10}, test_per_class={max(a.n_aa // 10, 10)})
net = randomise(robustbench_module("wide_resnet").WideResNet(depth={a.depth}, widen_factor={a.widen}))
torch.save(net.state_dict(), {str(work / 'wrn.pt')!r})
{PEAK}""", env)
    size_mb = (work / "wrn.pt").stat().st_size / 2**20
    teacher = work / "teacher.yaml"
    n = (a.depth - 4) // 6
    teacher.write_text(yaml.safe_dump({"model": {
        "channel_configs": [16, 16 * a.widen, 32 * a.widen, 64 * a.widen], "depth_configs": [n, n, n],
        "stride_config": [1, 2, 2], "block_types": ["basic_block"] * 3, "activations": ["ReLU"] * 3,
        "normalizations": ["BatchNorm"] * 3, "kernel_size_configs": [3, 3, 3]}}))
    base = yaml.safe_load((ROOT / "configs/tasks/_cifar_base.yaml").read_text())
    task = {**base, "name": "bench-published", "teacher": str(teacher),
            "teacher_weights": {"path": str(work / "wrn.pt"), "format": "wideresnet"}, "budget": {"ratio": 0.5},
            "proxy": {**base["proxy"], "val_examples": a.n_stats}}
    (work / "task.yaml").write_text(yaml.safe_dump(task))
    set_threads = f"import torch; torch.set_num_threads({a.threads})"

    print(f"WideResNet-{a.depth}-{a.widen} (RobustBench class, random weights), checkpoint {size_mb:.0f} MiB, "
          f"{a.threads} threads, {os.cpu_count()} CPUs", flush=True)
    imp_wall, imp_peak, _ = child(f"""
{set_threads}
from rcnas.proxy.local import ProxyRunner
from rcnas.task import load_task
from pathlib import Path
task = load_task({str(work / 'task.yaml')!r})
ProxyRunner(Path({str(work / 'cache')!r}), data_root={str(work / 'data')!r}, log=lambda m: None).teacher(task)
{PEAK}""", env)

    print(f"import (resolve task + sha256 + strict load + cache write): {imp_wall:7.1f} s   peak RSS "
          f"{imp_peak:.2f} GiB", flush=True)
    stats_wall, stats_peak, out = child(f"""
{set_threads}
import json
from dataclasses import asdict
from rcnas.proxy.local import ProxyRunner
from rcnas.task import load_task
from pathlib import Path
task = load_task({str(work / 'task.yaml')!r})
runner = ProxyRunner(Path({str(work / 'cache')!r}), data_root={str(work / 'data')!r}, log=lambda m: None)
print(json.dumps(asdict(runner.teacher_stats(task))))
{PEAK}""", env)
    stats = json.loads(out.strip().splitlines()[-2])
    print(f"teacher statistics ({stats['n_val']} val images, task attack + LIPS): {stats_wall:7.1f} s   peak RSS "
          f"{stats_peak:.2f} GiB   (clean {stats['clean_acc']:.3f}, robust {stats['robust_acc']:.3f})", flush=True)

    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "evaluate.py", "--teacher", "--task", str(work / "task.yaml"), "--data-root",
                        str(work / "data"), "--no-ray", "--attacks", "clean,aa", "--n-examples", str(a.n_aa),
                        "--out", str(work / "eval")], cwd=ROOT, capture_output=True, text=True, env=env)
    aa_wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"evaluate.py failed:\n{r.stderr[-3000:]}")
    aa_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # the largest child so far
    (row,) = json.loads((work / "eval" / "results.json").read_text())

    print(f"evaluate.py --teacher, aa (standard) on {row['n_examples']} test images: {aa_wall:7.1f} s   peak RSS "
          f"<= {aa_peak:.2f} GiB   (clean {row['clean']:.3f}: only correctly classified points are attacked)")


if __name__ == "__main__":
    run_main(main)
