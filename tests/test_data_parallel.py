"""Data-parallel training (Ray Train, gloo on CPU): two workers on shards of each global batch train the same
network as one process on the whole batch, up to floating-point noise."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

from agents.config import task_path
from rcnas.data.registry import load_splits
from rcnas.evaluation.final import EvalJob
from rcnas.models.builder import build_model
from rcnas.space.schema import load_subnet
from rcnas.task import load_task
from rcnas.train import LoopOptions, adversarial_train
from rcnas.train.data_parallel import GlobalBatchNorm2d, Shard


@pytest.fixture
def group_of_one():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_global_batchnorm_alone_is_batchnorm(group_of_one):
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(5)
    ours = GlobalBatchNorm2d(5)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 5, 4, 4, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    a, b = ref(x), ours(x2)
    (a * torch.arange(a.numel()).view_as(a)).sum().backward()
    (b * torch.arange(b.numel()).view_as(b)).sum().backward()
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(x.grad, x2.grad, atol=1e-4)
    assert torch.allclose(ref.weight.grad, ours.weight.grad, atol=1e-4)
    assert torch.allclose(ref.running_mean, ours.running_mean, atol=1e-6)
    assert torch.allclose(ref.running_var, ours.running_var, atol=1e-5)
    ref.eval(), ours.eval()
    assert torch.allclose(ref(x), ours(x), atol=1e-5)


def test_shards_split_every_batch():
    x, y = torch.arange(10).view(10, 1), torch.arange(10)
    parts = [Shard(r, 3).take(x, y)[1].tolist() for r in range(3)]
    assert sum(parts, []) == list(range(10)) and [len(p) for p in parts] == [4, 3, 3]


def test_two_workers_train_what_one_process_trains(tmp_path):
    import ray

    from rcnas.distributed.data_parallel import train_data_parallel

    task = load_task(task_path("digits-pgd-e20-t444-r35"))
    cfg = task.config.training
    # no random start in the training attack: each worker would draw noise for its own shard only (statistically the
    # same training, not the same numbers)
    recipe = cfg.model_copy(update={"attack": cfg.attack.model_copy(update={"random_start": False}),
                                    "select_on_val": False, "batch_size": 64, "val_examples": 64})
    task = task.replace(training=recipe)
    arch, _ = load_subnet("configs/subnets/digits/tiny-444-half.yaml")
    job = EvalJob("dp", arch, task, ("clean",), str(tmp_path), epochs=0.2, seed=3)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        state, info = train_data_parallel(job, 2, tmp_path / "ray-train")
    finally:
        ray.shutdown()
    torch.manual_seed(job.seed)
    one = build_model(arch, task.shape)
    adversarial_train(one, load_splits(task.config.dataset), job.recipe(),
                      LoopOptions(num_classes=task.shape.num_classes))
    ref = one.state_dict()
    assert state.keys() == ref.keys() and info["data_parallel"] == 2
    worst = max((state[k].float() - ref[k].float()).abs().max().item() for k in ref)
    moved = max((state[k].float() - build_model(arch, task.shape).state_dict()[k].float()).abs().max().item()
                for k in ref if k.endswith("weight"))
    assert worst < 1e-4 < moved, (worst, moved)


@pytest.mark.slow
def test_evaluate_py_data_parallel(tmp_path):
    import json

    from tests.conftest import run_script

    res = run_script("evaluate.py", "configs/subnets/digits/tiny-444-half.yaml", "--task",
                     "configs/tasks/digits-pgd-e20-t444-r35.yaml", "--epochs", "0.2", "--attacks", "clean,fgsm",
                     "--n-examples", "32", "--data-parallel", "2", "--out", str(tmp_path), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (r,) = json.loads((tmp_path / "results.json").read_text())
    assert r["train"]["data_parallel"] == 2 and r["n_examples"] == 32
    assert (tmp_path / "tiny-444-half" / "model.pt").is_file()
    bad = run_script("evaluate.py", "--smoke-test", "--data-parallel", "0", timeout=120)
    assert bad.returncode == 2 and "--data-parallel 0" in bad.stderr
