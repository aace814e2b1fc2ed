"""Weight-sharing (sandwich-rule) training: shared sub-networks compute what inherited copies compute, their
gradients reach only their slice of the supernet, and sandwich training trains the slices."""

from __future__ import annotations

import pytest
import torch

from rcnas.config import TrainConfig
from rcnas.models.builder import build_model, inherit_weights, recalibrate_bn
from rcnas.models.teachers import get_teacher
from rcnas.space.arch import InputShape
from rcnas.train import LOSSES, LoopOptions, adversarial_train
from rcnas.train.sandwich import SharedSubnet, sandwich_objective
from rcnas.vocab import BLOCK_KINDS
from tests.conftest import randomise_bn_statistics, tiny_task

DIGITS = InputShape(1, 8, 10)


@pytest.mark.parametrize("block", BLOCK_KINDS.names())
def test_shared_subnet_computes_what_an_inherited_copy_computes(block):
    t = get_teacher("tiny-444")
    supernet = randomise_bn_statistics(build_model(t.subnet(t.arch.depths, t.widths, (block,) * 3), DIGITS)).eval()
    arch = t.subnet((2, 1, 3), (2, 4, 2), (block,) * 3)
    copy = build_model(arch, DIGITS).eval()
    inherit_weights(copy, supernet)
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(SharedSubnet(supernet, arch).eval()(x), copy(x))


def test_gradients_of_a_shared_subnet_reach_only_its_slice():
    t = get_teacher("tiny-444")
    supernet = build_model(t.arch, DIGITS)
    view = SharedSubnet(supernet, t.subnet((1, 1, 1), (2, 2, 2), ("basic_block",) * 3))
    view(torch.rand(4, 1, 8, 8)).sum().backward()
    w = supernet.stages[1][0].conv1.weight.grad  # stage 2: 8 -> 16 channels of the teacher's 16 -> 32
    assert w[:16, :8].abs().sum() > 0
    assert w[16:].abs().sum() == 0 and w[:, 8:].abs().sum() == 0
    assert supernet.stages[1][1].conv1.weight.grad is None  # a block the sub-network does not have


def test_shared_subnet_in_train_mode_leaves_the_supernets_statistics_alone():
    supernet = build_model(get_teacher("tiny-444").arch, DIGITS)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    SharedSubnet(supernet, get_teacher("tiny-444").subnet((1, 1, 1), (2, 2, 2), ("basic_block",) * 3)).train()(
        torch.rand(8, 1, 8, 8) * 3)
    assert all(torch.equal(before[k], v) for k, v in supernet.state_dict().items())


def _train(digits, sandwich: bool, seed: int = 0):
    t = get_teacher("tiny-444")
    torch.manual_seed(seed)
    model = build_model(t.arch, DIGITS)
    cfg = TrainConfig(loss="pgd_at", epochs=2, batch_size=64, lr=0.05, schedule="cosine", select_on_val=False,
                      attack={"name": "pgd", "epsilon": "1/10", "steps": 2, "step_size": "1/20"}, seed=seed)
    objective = sandwich_objective(model, t, LOSSES.get("pgd_at"), n_random=1) if sandwich else None
    adversarial_train(model, digits, cfg, LoopOptions(num_classes=10, objective=objective))
    return model


@torch.no_grad()
def _slice_accuracy(supernet, arch, data):
    # batch statistics: the slice's own, as the proxy's fine-tune would recalibrate them
    view = SharedSubnet(supernet, arch).train()
    return (view(data.x.float() / 255 if data.x.dtype == torch.uint8 else data.x).argmax(1) == data.y).float().mean()


@pytest.mark.slow
def test_sandwich_training_trains_the_smallest_slice_and_is_reproducible(digits):
    plain, sandwich = _train(digits, False), _train(digits, True)
    arch = get_teacher("tiny-444").subnet((1, 1, 1), (1, 1, 1), ("basic_block",) * 3)
    acc_plain, acc_sandwich = _slice_accuracy(plain, arch, digits.val), _slice_accuracy(sandwich, arch, digits.val)
    assert acc_sandwich > acc_plain + 0.2, (acc_plain, acc_sandwich)
    again = _train(digits, True)
    assert all(torch.equal(a, b) for a, b in zip(sandwich.state_dict().values(), again.state_dict().values()))


def test_recalibrated_statistics_are_the_slices_own():
    model = build_model(get_teacher("tiny-444").arch, DIGITS)
    x = torch.rand(300, 1, 8, 8) * 2 + 1
    recalibrate_bn(model, x, batch_size=60)  # equal batches: the average of batch means is the mean
    first = model.stages[0][0].bn1
    with torch.no_grad():
        torch.testing.assert_close(first.running_mean, model.stem(x).mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert first.momentum == 0.1 and not model.training


def test_a_sandwich_teacher_is_cached_apart_and_plain_teachers_keep_their_key():

    from rcnas.infra.provenance import content_key
    from rcnas.proxy.keys import teacher_key

    task = tiny_task()
    cfg = task.config
    # the recipe as it was before the GPU settings (precision, channels_last, compile, ema) existed: at their
    # defaults they are left out, so teachers cached before them keep their keys
    later = ("precision", "channels_last", "compile", "ema")
    before = {k: v for k, v in cfg.training.model_dump().items() if k not in later}
    plain = {"dataset": cfg.dataset.model_dump(), "teacher": cfg.teacher, "training": before}
    assert teacher_key(task) == content_key(plain)
    sandwich = task.replace(proxy=cfg.proxy.model_copy(update={"supernet": "sandwich"}))
    assert teacher_key(sandwich) != teacher_key(task)
