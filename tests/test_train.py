"""Adversarial training: it learns, it resumes exactly, it selects on validation, it reports divergence; the loop's
state round-trips through its checkpoint; an epoch reads the device a handful of times."""

from __future__ import annotations

import pytest
import torch

from rcnas.config import TrainConfig
from rcnas.data.tensors import DataSplits
from rcnas.models.builder import build_model
from rcnas.models.teachers import get_teacher
from rcnas.space.arch import InputShape
from rcnas.train import LOSSES, adversarial_train
from rcnas.train.loop_state import Diverged, EpochResult, LoopState
from rcnas.train.trainer import SYNC_EVERY, LoopOptions, TrainingLoop, lr_at

ARCH = get_teacher("tiny-444").subnet((1, 1, 1), (2, 2, 2), ("basic_block",) * 3)
SHAPE = InputShape(1, 8, 10)


def recipe(**kw) -> TrainConfig:
    base = {"loss": "pgd_at", "attack": {"name": "pgd", "epsilon": "1/10", "steps": 2, "step_size": "1/20"},
            "epochs": 2, "batch_size": 64, "lr": 0.1, "schedule": "cosine", "val_examples": 100}
    return TrainConfig.model_validate({**base, **kw})


def small(digits, n=320) -> DataSplits:
    return DataSplits(digits.train.head(n), digits.val.head(100), digits.test.head(50))


def fresh(seed=0):
    torch.manual_seed(seed)
    return build_model(ARCH, SHAPE)


@pytest.mark.parametrize("loss", LOSSES.names())
def test_each_loss_trains_and_improves(loss, digits):
    model = fresh()
    res = adversarial_train(model, small(digits, 640), recipe(loss=loss, epochs=3), LoopOptions(num_classes=10))
    assert not res.diverged and len(res.history) == 3
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.history[-1]["val_clean"] > 0.3


def test_resume_continues_exactly_where_it_stopped(digits, tmp_path):
    data, cfg = small(digits), recipe(select_on_val=False)
    straight = fresh()
    adversarial_train(straight, data, cfg, LoopOptions(num_classes=10))

    class Killed(Exception):
        pass

    def die_after_first_epoch(row):
        if row["epoch"] == 1:
            raise Killed

    ckpt = tmp_path / "state.pt"
    with pytest.raises(Killed):
        adversarial_train(fresh(), data, cfg,
                          LoopOptions(num_classes=10, checkpoint=ckpt, progress=die_after_first_epoch))
    resumed = fresh(seed=123)  # a different init: everything must come from the checkpoint
    res = adversarial_train(resumed, data, cfg, LoopOptions(num_classes=10, checkpoint=ckpt))
    assert [r["epoch"] for r in res.history] == [1, 2]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_selection_keeps_the_best_validation_epoch(digits):
    model = fresh()
    res = adversarial_train(model, small(digits), recipe(epochs=3), LoopOptions(num_classes=10))
    best = max(res.history, key=lambda r: r["val_robust"])
    assert res.best_epoch == best["epoch"] and res.best_val_robust == best["val_robust"]


def test_non_finite_loss_is_reported_not_raised(digits):
    model = fresh()
    cfg = recipe(grad_clip=None, epochs=2).model_copy(update={"lr": 1e30})  # past the config's cap, on purpose
    res = adversarial_train(model, small(digits), cfg, LoopOptions(num_classes=10))
    assert res.diverged and "non-finite" in res.reason and res.epochs_run == 0 and not res.history


def test_an_epoch_is_a_result_or_a_diverged_value(digits):
    loop = TrainingLoop(fresh(), small(digits), recipe(epochs=1), LoopOptions(num_classes=10))
    done = loop.train_epoch()
    assert isinstance(done, EpochResult) and done.seen == 320 and loop.state.step == loop.total == 5
    assert 0 <= done.train_acc <= 1 and done.train_loss == done.loss_sum / 320
    nan = LOSSES.get("pgd_at")

    def nan_loss(model, x, y, cfg, g):
        loss, logits = nan(model, x, y, cfg, g)
        return loss * float("nan"), logits

    loop = TrainingLoop(fresh(), small(digits), recipe(epochs=1), LoopOptions(num_classes=10, objective=nan_loss))
    assert loop.train_epoch() == Diverged("non-finite loss within steps 0..5")


def same_state(a: LoopState, b: LoopState) -> bool:
    counters = (a.epoch, a.step, a.best_acc, a.best_epoch, a.history) == (b.epoch, b.step, b.best_acc, b.best_epoch,
                                                                          b.history)
    return counters and a.best.keys() == b.best.keys() and all(torch.equal(a.best[k], b.best[k]) for k in a.best)


def test_the_loop_state_round_trips_through_its_checkpoint(digits, tmp_path):
    ckpt = tmp_path / "train_state.pt"
    model = fresh()
    adversarial_train(model, small(digits), recipe(epochs=1, ema=0.9), LoopOptions(num_classes=10, checkpoint=ckpt))
    saved = torch.load(ckpt, weights_only=True)  # plain containers and tensors only
    state = LoopState.from_checkpoint(saved)
    assert (state.epoch, state.step, state.best_epoch, len(state.history)) == (1, 5, 1, 1)
    assert state.best_acc == state.history[0]["val_robust"] and state.best is not None
    assert saved["ema"] is not None and saved["model"].keys() == model.state_dict().keys()
    resumed = TrainingLoop(fresh(seed=9), small(digits), recipe(epochs=1, ema=0.9),
                           LoopOptions(num_classes=10, checkpoint=ckpt))
    assert same_state(resumed.state, state) and resumed.runner.ema is not None
    assert torch.equal(resumed.g.get_state(), saved["generator"])
    again = resumed.state.to_checkpoint(resumed.model, resumed.opt, resumed.g, resumed.runner.ema)
    assert again.keys() == saved.keys() and same_state(LoopState.from_checkpoint(again), state)
    assert all(torch.equal(a, b) for a, b in zip(again["ema"].values(), saved["ema"].values()))


def test_a_state_saved_with_another_generator_kind_resumes_from_the_seed_with_a_warning(digits, tmp_path):
    ckpt = tmp_path / "train_state.pt"
    adversarial_train(fresh(), small(digits), recipe(epochs=1), LoopOptions(num_classes=10, checkpoint=ckpt))
    saved = torch.load(ckpt, weights_only=True)
    assert saved["generator_device"] == "cpu"
    # a GPU's run continued on a CPU (a retry on another node kind): its Philox state cannot seed a CPU generator
    torch.save({**saved, "generator": torch.zeros(16, dtype=torch.uint8), "generator_device": "cuda"}, ckpt)
    with pytest.warns(UserWarning, match="made on cuda, this run makes them on cpu"):
        resumed = TrainingLoop(fresh(seed=9), small(digits), recipe(epochs=2),
                               LoopOptions(num_classes=10, checkpoint=ckpt))
    assert resumed.state.step == saved["step"] and torch.equal(resumed.g.get_state(),
                                                               torch.Generator().manual_seed(0).get_state())
    assert resumed.g.device == next(resumed.model.parameters()).device


def test_one_epoch_reads_the_device_a_handful_of_times_not_every_step(digits, monkeypatch):
    loop = TrainingLoop(fresh(), digits, recipe(batch_size=16, epochs=1), LoopOptions(num_classes=10))
    calls = {"n": 0}
    real = torch.Tensor.item

    def counting(self):
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(torch.Tensor, "item", counting)
    assert isinstance(loop.train_epoch(), EpochResult) and loop.state.step == loop.total > 60
    assert calls["n"] <= loop.total // SYNC_EVERY + 4, (calls["n"], loop.total)


def test_schedules():
    cfg = recipe(schedule="multistep", lr=0.1, milestones=[0.5, 0.75], epochs=1)
    assert [lr_at(s, 100, cfg) for s in (0, 49, 50, 75, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.001])
    cos = recipe(schedule="cosine", lr=0.1)
    assert lr_at(0, 100, cos) == pytest.approx(0.1) and lr_at(50, 100, cos) == pytest.approx(0.05)


def test_fractional_epochs_take_that_many_steps(digits):
    res = adversarial_train(fresh(), small(digits, 640), recipe(epochs=0.5, select_on_val=False),
                            LoopOptions(num_classes=10))
    assert res.epochs_run == pytest.approx(0.5)
