"""Shared fixtures: small real data (scikit-learn's digits) and tiny models; no network, no GPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from rcnas.proxy.fixtures import tiny_task  # noqa: F401 - the tests' tiny task, shared with bench

ROOT = Path(__file__).resolve().parents[1]
# Ray's token authentication stays on in tests too; its token goes to a throwaway home, not the user's ~/.ray
os.environ["HOME"] = os.environ.get("RCNAS_TEST_HOME") or __import__("tempfile").mkdtemp(prefix="rcnas-test-home-")
os.environ["RCNAS_TEST_HOME"] = os.environ["HOME"]
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    from rcnas.config import DatasetConfig
    from rcnas.data.registry import load_splits

    return load_splits(DatasetConfig(name="digits", val_fraction=0.25))


@pytest.fixture(scope="session")
def standard_digits_model(digits):
    """A tiny CNN trained without any adversarial examples: accurate on clean digits, not robust."""
    from rcnas.data.tensors import batches

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(16 * 64, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        for x, y in batches(digits.train, 64, shuffle=True, generator=g):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


HANG_GUARD_S = 3600
"""the least time a subprocess of a test gets: a guard against hangs, not a speed check. CI machines run at load
averages several times their cores (a 5-minute command took 25), so no test may fail for being slow"""


def run_script(*args: str, timeout: int = 600, env: dict | None = None):
    """Run a repo entry point in a subprocess, the way a user does. ``timeout`` says how long it takes on an idle
    machine; the guard is never less than :data:`HANG_GUARD_S`."""
    import subprocess

    limit = max(timeout * 4, HANG_GUARD_S)
    try:
        return subprocess.run(
            [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=limit,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-3000:]
        pytest.fail(f"{' '.join(args)} did not end within {limit} s (about {timeout} s on an idle machine): a hang, "
                    f"not a slow machine; its stderr ended with:\n{tail.decode() if isinstance(tail, bytes) else tail}")


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for one test module (module scope: the multi-node test needs its own cluster)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # address="local": our own instance, never one named in the machine's shared temporary folder
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="rcnas-tests")
    yield ray
    ray.shutdown()


@pytest.fixture
def cluster():
    """A simulated cluster: a head with no CPU for workers (only the driver and the service live there); every
    worker runs on a node the test adds."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def randomise_bn_statistics(model):
    """Random BN running statistics, so that a wrongly sliced or copied statistic would change a model's outputs."""
    import torch

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "running_var" in name:
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
            elif "running_mean" in name:
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
    return model


def search_then_evaluate(experiment: str, target_task: str, data_root, tmp_path, env: dict) -> tuple[dict, list, dict]:
    """A dataset path end to end, as a user runs it: train.py on ``experiment`` with ``--data-root``, then
    evaluate.py on the sub-network it chose. Returns (summary.json, final/results.json, evaluate.py's result)."""
    import json

    run = tmp_path / "run"
    proc = run_script("train.py", "--experiment", experiment, "--data-root", str(data_root), "--out", str(run),
                      env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["macs"] <= summary["budget"]
    proc = run_script("evaluate.py", str(run / summary["yaml"]), "--task", target_task, "--data-root",
                      str(data_root),
                      "--epochs", "0.3", "--n-examples", "16", "--attacks", "clean,pgd20", "--no-ray",
                      "--out", str(tmp_path / "eval"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads((tmp_path / "eval" / "results.json").read_text())
    return summary, json.loads((run / "final" / "results.json").read_text()), result
