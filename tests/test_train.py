"""Adversarial training: it learns, it resumes exactly, it selects on validation, it reports divergence."""

from __future__ import annotations

import pytest
import torch

from rcnas.config import TrainConfig
from rcnas.data.tensors import DataSplits
from rcnas.models.builder import build_model
from rcnas.models.teachers import get_teacher
from rcnas.space.arch import InputShape
from rcnas.train import LOSSES, adversarial_train
from rcnas.train.trainer import lr_at

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
    res = adversarial_train(model, small(digits, 640), recipe(loss=loss, epochs=3), num_classes=10)
    assert not res.diverged and len(res.history) == 3
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.history[-1]["val_clean"] > 0.3


def test_resume_continues_exactly_where_it_stopped(digits, tmp_path):
    data, cfg = small(digits), recipe(select_on_val=False)
    straight = fresh()
    adversarial_train(straight, data, cfg, num_classes=10)

    class Killed(Exception):
        pass

    def die_after_first_epoch(row):
        if row["epoch"] == 1:
            raise Killed

    ckpt = tmp_path / "state.pt"
    with pytest.raises(Killed):
        adversarial_train(fresh(), data, cfg, num_classes=10, checkpoint=ckpt, progress=die_after_first_epoch)
    resumed = fresh(seed=123)  # a different init: everything must come from the checkpoint
    res = adversarial_train(resumed, data, cfg, num_classes=10, checkpoint=ckpt)
    assert [r["epoch"] for r in res.history] == [1, 2]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


def test_selection_keeps_the_best_validation_epoch(digits):
    model = fresh()
    res = adversarial_train(model, small(digits), recipe(epochs=3), num_classes=10)
    best = max(res.history, key=lambda r: r["val_robust"])
    assert res.best_epoch == best["epoch"] and res.best_val_robust == best["val_robust"]


def test_non_finite_loss_is_reported_not_raised(digits):
    model = fresh()
    res = adversarial_train(model, small(digits), recipe(lr=1e30, grad_clip=None, epochs=2), num_classes=10)
    assert res.diverged and "non-finite" in res.reason


def test_schedules():
    cfg = recipe(schedule="multistep", lr=0.1, milestones=[0.5, 0.75], epochs=1)
    assert [lr_at(s, 100, cfg) for s in (0, 49, 50, 75, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.001])
    cos = recipe(schedule="cosine", lr=0.1)
    assert lr_at(0, 100, cos) == pytest.approx(0.1) and lr_at(50, 100, cos) == pytest.approx(0.05)


def test_fractional_epochs_take_that_many_steps(digits):
    res = adversarial_train(fresh(), small(digits, 640), recipe(epochs=0.5, select_on_val=False), num_classes=10)
    assert res.epochs_run == pytest.approx(0.5)
