"""The whole pipeline on this machine's accelerator in one command: train.py at smoke scale on synthetic CIFAR-10 with
its evaluation workers on whole GPUs, then on half GPUs (two per GPU, memory capped to the share), then evaluate.py
with the full attack suite on the sub-network the search chose; GPU utilisation sampled every second meanwhile
(nvidia-smi), and evaluations per GPU-hour printed. On a machine without a GPU the same steps run on CPU workers
(once), so that CI keeps the script working.

    python bench/gpu_pipeline.py [--out DIR] [--workers N]      # prints one JSON object, also written to DIR

The figures are what one GPU gives this smoke-scale search (tiny networks: utilisation is bounded by the driver and
the service, not the step); BENCHMARKS.md records them with the device's name.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rcnas.infra.cli import run_main

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "configs/experiments/cifar10-smoke.yaml"
TARGET = "configs/tasks/smoke-cifar10/smoke-c10-target.yaml"


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def sample_gpus(path: Path) -> subprocess.Popen | None:
    """``nvidia-smi`` writing one line per GPU every second (time, utilisation %, memory MiB) to ``path``."""
    if shutil.which("nvidia-smi") is None:
        return None
    handle = path.open("w")
    return subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,index,utilization.gpu,memory.used",
                             "--format=csv,noheader,nounits", "-lms", "1000"], stdout=handle,
                            stderr=subprocess.DEVNULL)


def utilisation(path: Path) -> dict[str, float]:
    """Mean and peak utilisation (%) and peak memory (MiB) over the samples in ``path``."""
    if not path.is_file():
        return {}
    util, mem = [], []
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[2].isdigit():
            util.append(float(parts[2]))
            mem.append(float(parts[3]))
    if not util:
        return {}
    return {"samples": len(util), "util_mean_pct": round(sum(util) / len(util), 1), "util_max_pct": max(util),
            "mem_max_mib": max(mem)}


def run(command: list[str], log: Path) -> float:
    """Run one of the README's commands (python script + flags) here; its wall seconds. Fails loudly."""
    t0 = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run([sys.executable, *command], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); its output: {log}\n"
                         + log.read_text()[-3000:])
    return time.perf_counter() - t0


def search(name: str, data: Path, out: Path, workers: int, gpus: float | None) -> dict:
    """train.py on the smoke CIFAR-10 experiment with ``workers`` workers of ``gpus`` GPU each (None: CPUs)."""
    run_dir = out / name
    sets = ["--set", f"workers.count={workers}"]
    if gpus is not None:
        sets += ["--set", f"workers.gpus={gpus}"]
    samples = out / f"{name}.nvidia-smi.csv"
    sampler = sample_gpus(samples)
    try:
        wall = run(["train.py", "--experiment", EXPERIMENT, "--data-root", str(data), "--out", str(run_dir),
                    *sets], out / f"{name}.log")
    finally:
        if sampler is not None:
            sampler.terminate()
            sampler.wait()
    summary = json.loads((run_dir / "summary.json").read_text())
    # every proxy evaluation the search computed (meta-training's tasks too), from the service's last counters
    found = re.findall(r"'computed': (\d+)", (out / f"{name}.log").read_text())
    computed = int(found[-1]) if found else summary["evaluated"]
    held = workers * (gpus or 0)
    hours = summary["search_seconds"] / 3600
    return {"workers": workers, "gpus_per_worker": gpus, "wall_s": round(wall, 1),
            "search_s": round(summary["search_seconds"], 1), "evaluations_computed": computed,
            "evaluations_per_gpu_hour": round(computed / (hours * held), 1) if held else None,
            "chosen": summary["chosen"], "yaml": str(run_dir / summary["yaml"]), **utilisation(samples)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="where the runs, logs and gpu_pipeline.json go (default: a temporary folder)")
    p.add_argument("--workers", type=int, default=2, help="evaluation workers per whole GPU (default 2)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="rcnas-gpu-pipeline-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from rcnas.data.synthetic import write_cifar10

    data = out / "cifar"
    if not (data / "cifar-10-batches-py").is_dir():
        write_cifar10(data)
    n_gpus = gpu_count()
    report: dict = {"device": _device_name(), "gpus": n_gpus, "searches": {}}
    if n_gpus:
        report["searches"]["whole"] = search("whole", data, out, n_gpus, 1.0)
        report["searches"]["half"] = search("half", data, out, 2 * n_gpus, 0.5)
        chosen = report["searches"]["half"]["yaml"]
    else:
        report["searches"]["cpu"] = search("cpu", data, out, args.workers, None)
        chosen = report["searches"]["cpu"]["yaml"]
    wall = run(["evaluate.py", chosen, "--task", TARGET, "--data-root", str(data), "--epochs", "0.3",
                "--n-examples", "16", "--attacks", "clean,fgsm,pgd20,cw40,aa", "--out", str(out / "eval")],
               out / "evaluate.log")
    (result,) = json.loads((out / "eval" / "results.json").read_text())
    report["evaluate"] = {"wall_s": round(wall, 1), "device": result["device"], "clean": result["clean"],
                          "attacks": {a["label"]: a["accuracy"] for a in result["attacks"]},
                          "epsilon": result["eps_255"], "n_examples": result["n_examples"],
                          "split": result["split"], "seed": result["seed"],
                          "attack_math": result["provenance"].get("attack_math"),
                          "precision": result["train"].get("precision")}
    (out / "gpu_pipeline.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    run_main(main)
