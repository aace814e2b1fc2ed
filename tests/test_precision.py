"""Training precision, memory format, compile and host syncs (issue: fast on a GPU), checked on a CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rcnas.attacks import AttackContext, run_attack
from rcnas.config import AttackConfig, DatasetConfig, TrainConfig
from rcnas.data.registry import load_splits
from rcnas.models.builder import build_model
from rcnas.models.teachers import get_teacher
from rcnas.space.arch import InputShape
from rcnas.train import LoopOptions, adversarial_train

SHAPE = InputShape(1, 8, 10)


def digits():
    return load_splits(DatasetConfig(name="digits"))


def recipe(**kw) -> TrainConfig:
    base = {"loss": "pgd_at", "attack": {"epsilon": "1/5", "steps": 3, "step_size": "1/15"}, "epochs": 3,
            "batch_size": 64, "lr": 0.05, "schedule": "constant", "val_examples": 64}
    return TrainConfig.model_validate({**base, **kw})


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(get_teacher("tiny-222").arch, SHAPE)


def test_bf16_training_on_a_cpu_learns_and_keeps_fp32_weights():
    net = model()
    res = adversarial_train(net, digits(), recipe(precision="bf16", epochs=2), LoopOptions(num_classes=10))
    losses = [h["train_loss"] for h in res.history]
    assert not res.diverged and losses[-1] < losses[0] * 0.8, losses
    assert all(p.dtype == torch.float32 for p in net.parameters())  # autocast, not a half-precision copy
    assert res.history[-1]["val_clean"] > 0.5


@pytest.mark.slow
def test_fp16_with_loss_scaling_trains_on_a_cpu():
    # fp16 is emulated (slowly) on a CPU: one epoch, after which validation accuracy is far above chance (0.1)
    res = adversarial_train(model(), digits(), recipe(precision="fp16", epochs=1), LoopOptions(num_classes=10))
    assert not res.diverged and res.history[-1]["val_clean"] > 0.5, res.history


def test_precision_changes_the_computation_and_fp32_is_deterministic():
    data = digits()
    runs = {}
    for precision in ("fp32", "fp32", "bf16"):
        net = model()
        adversarial_train(net, data, recipe(precision=precision, epochs=0.3, select_on_val=False),
                          LoopOptions(num_classes=10))
        runs.setdefault(precision, []).append(torch.cat([p.detach().flatten() for p in net.parameters()]))
    assert torch.equal(runs["fp32"][0], runs["fp32"][1])
    assert not torch.equal(runs["fp32"][0], runs["bf16"][0])


def test_channels_last_is_for_cuda_only():
    net = model()
    adversarial_train(net, digits(), recipe(epochs=0.1, channels_last=True, select_on_val=False),
                      LoopOptions(num_classes=10))
    assert all(p.is_contiguous() for p in net.parameters())


def test_a_diverging_run_is_still_stopped_and_said_so():
    # past the lr cap on purpose (a config refuses it): the loop itself must still stop a diverging run
    cfg = recipe(grad_clip=None, epochs=2).model_copy(update={"lr": 1e6})
    res = adversarial_train(model(), digits(), cfg, LoopOptions(num_classes=10))
    assert res.diverged and "non-finite loss" in res.reason


def test_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    class Broken(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", lambda m: Broken(m))
    net = model()
    with pytest.warns(UserWarning, match="torch.compile failed .*no compiler here.*training eagerly"):
        res = adversarial_train(net, digits(), recipe(epochs=0.2, compile=True), LoopOptions(num_classes=10))
    assert not res.diverged and res.history

    def unavailable(m):
        raise RuntimeError("Python too new")

    monkeypatch.setattr(torch, "compile", unavailable)
    with pytest.warns(UserWarning, match="torch.compile unavailable"):
        adversarial_train(model(), digits(), recipe(epochs=0.1, compile=True), LoopOptions(num_classes=10))


def test_reported_attacks_run_in_fp32_whatever_the_caller_does():
    net = model().eval()
    data = digits().val.head(32)
    x = data.x.float() / 255 if data.x.dtype == torch.uint8 else data.x
    cfg = AttackConfig.model_validate({"name": "pgd", "epsilon": "1/5", "steps": 5, "step_size": "1/20"})

    def attack():
        return run_attack(net, x, data.y, cfg, AttackContext(10, 0, torch.Generator().manual_seed(0)))

    plain = attack()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = attack()
    assert torch.equal(plain, inside)  # autocast is switched off inside the attack
    with pytest.raises(ValueError, match="attacks run in fp32"):
        run_attack(net.to(torch.bfloat16), x, data.y, cfg, AttackContext(10))


def test_the_new_recipe_settings_leave_existing_teacher_keys_alone():
    from rcnas.proxy.keys import recipe_dump

    assert recipe_dump(TrainConfig()) == {k: v for k, v in TrainConfig().model_dump().items()
                                          if k not in ("precision", "channels_last", "compile", "ema")}
    assert recipe_dump(TrainConfig(precision="bf16"))["precision"] == "bf16"
    # auto (the default: bf16 on CUDA, fp32 on a CPU) keeps the keys results had before; an explicit fp32 is a
    # recipe of its own (on CUDA it differs from auto's bf16, so it never shares their results)
    assert TrainConfig().precision == "auto"
    assert recipe_dump(TrainConfig(precision="fp32"))["precision"] == "fp32"


def test_auto_precision_is_bf16_on_cuda_and_fp32_on_a_cpu(monkeypatch):
    from rcnas.train.step import StepRunner, effective_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert effective_precision("auto", torch.device("cuda")) == "bf16"
    # a GPU that only emulates bf16 (T4, V100) trains in fp32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert effective_precision("auto", torch.device("cuda")) == "fp32"
    monkeypatch.undo()
    assert effective_precision("auto", torch.device("cpu")) == "fp32"
    assert effective_precision("fp16", torch.device("cpu")) == "fp16"
    runner = StepRunner.setup(model(), TrainConfig(), torch.device("cpu"))
    with runner.autocast():
        assert not torch.is_autocast_enabled("cpu")  # auto on a CPU: no autocast at all, as fp32 was


def test_reported_attacks_switch_tf32_off_and_restore_it():
    from rcnas.attacks.run import exact_fp32

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with exact_fp32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.slow
def test_the_gpu_throughput_benchmark_runs_on_a_cpu(tmp_path):
    import json

    from tests.conftest import run_script

    r = run_script("bench/gpu_throughput.py", "--batches", "1", "--batch", "8", "--modes", "fp32,bf16",
                   "--attack-examples", "8",
                   "--out", str(tmp_path / "t.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train bf16" in r.stdout and "x1.00 vs fp32" in r.stdout and "attack cw40" in r.stdout
    figures = json.loads((tmp_path / "t.json").read_text())
    assert set(figures["train_img_s"]) == {"fp32", "bf16"} and all(v > 0 for v in figures["train_img_s"].values())


def test_ema_weights_are_the_moving_average_and_are_what_is_validated_and_kept():
    decay, snapshots = 0.5, []
    net = model()
    real_sgd = torch.optim.SGD

    class Recording(real_sgd):  # the weights after every optimiser step, to average by hand
        def step(self, closure=None):
            out = super().step(closure)
            snapshots.append({k: v.detach().clone() for k, v in net.named_parameters()})
            return out

    import rcnas.train.trainer as trainer

    trainer.torch.optim.SGD = Recording
    try:
        res = adversarial_train(net, digits(), recipe(ema=decay, epochs=0.2, select_on_val=False),
                                LoopOptions(num_classes=10))
    finally:
        trainer.torch.optim.SGD = real_sgd
    expected = dict(snapshots[0])  # the average starts at the first step's weights
    for snap in snapshots[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * snap[k] for k in expected}
    kept = dict(net.named_parameters())
    assert len(snapshots) > 3 and all(torch.allclose(kept[k], expected[k], atol=1e-6) for k in expected)
    assert not all(torch.equal(kept[k], snapshots[-1][k]) for k in expected)  # not simply the last weights
    assert res.history[-1]["val_clean"] >= 0


def test_a_resumed_run_keeps_its_average(tmp_path):
    data = digits()
    whole = model()
    adversarial_train(whole, data, recipe(ema=0.9, epochs=2, select_on_val=False), LoopOptions(num_classes=10))
    parts = model()
    ck = tmp_path / "state.pt"
    first = recipe(ema=0.9, epochs=2, select_on_val=False)
    adversarial_train(parts, data, first.model_copy(update={"epochs": 1}), LoopOptions(num_classes=10, checkpoint=ck))
    # the 1-epoch run's schedule differs only in its length; the constant schedule makes both runs' steps equal
    adversarial_train(parts, data, first, LoopOptions(num_classes=10, checkpoint=ck))
    for (k, a), b in zip(whole.state_dict().items(), parts.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
