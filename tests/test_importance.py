"""Importance-ordered inheritance (a function-preserving channel sort) and the network-slimming baseline."""

from __future__ import annotations

import pytest
import torch

from rcnas.config import ProxyConfig
from rcnas.models.builder import build_model, inherit_weights
from rcnas.models.importance import bn_scales, importance_ordered
from rcnas.models.teachers import TINY_BASES, TINY_ROBUST, get_teacher, make_teacher
from rcnas.proxy.keys import fidelity_key
from rcnas.proxy.records import TeacherStats
from rcnas.space.arch import InputShape
from rcnas.space.baselines import slimming_prune
from rcnas.task import load_task
from rcnas.vocab import BASIC_BLOCK, ROBUST_BLOCK
from tests.conftest import randomise_bn_statistics

DIGITS = InputShape(1, 8, 10)


def _trained_like(model, seed=0):
    """Random BN scales and shifts (a fresh network's are all 1 and 0, which no sort would move) and statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return randomise_bn_statistics(model).eval()


TEACHERS = {
    "tiny-444": get_teacher("tiny-444"),
    "tiny-332": get_teacher("tiny-332"),
    # a stage that starts without a shortcut (as wide as the stem, stride 1): its stream is the stem's
    "stem-wide": make_teacher("stem-wide", (2, 2, 2), (4, 4, 4), BASIC_BLOCK, bases=TINY_BASES, stem=16),
    # robust blocks keep their order; the basic stages around them are sorted
    "robust-middle": make_teacher("robust-middle", (2, 2, 2), (4, 4, 4), ROBUST_BLOCK, bases=TINY_BASES, stem=4,
                                  params=TINY_ROBUST),
}


@pytest.mark.parametrize("name", TEACHERS)
def test_sorting_the_channels_leaves_the_teachers_function_unchanged(name):
    spec = TEACHERS[name]
    arch = spec.arch
    if name == "robust-middle":
        arch = spec.subnet(arch.depths, spec.widths, (BASIC_BLOCK, ROBUST_BLOCK, BASIC_BLOCK))
    torch.manual_seed(0)
    teacher = _trained_like(build_model(arch, DIGITS))
    ordered = importance_ordered(teacher)
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        before, after = teacher(x), ordered(x)
    assert torch.allclose(before, after, atol=1e-4), (before - after).abs().max()
    moved = sum(not torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), ordered.state_dict().values()))
    assert moved > 0  # it did sort something
    # the teacher it was given is left as it was
    with torch.no_grad():
        assert torch.equal(teacher(x), before)


def test_a_narrower_sub_network_inherits_the_most_important_inner_channels():
    spec = TEACHERS["tiny-444"]
    teacher = _trained_like(build_model(spec.arch, DIGITS))
    student = build_model(spec.subnet((1, 1, 1), (2, 2, 2), spec.arch.blocks), DIGITS)
    inherit_weights(student, importance_ordered(teacher))
    kept = student.stages[0][0].bn2.weight.abs()
    top = teacher.stages[0][0].bn2.weight.abs().sort(descending=True).values[: len(kept)]
    assert torch.allclose(kept, top)
    # first-channel inheritance keeps whatever came first instead
    inherit_weights(student, teacher)
    assert not torch.allclose(student.stages[0][0].bn2.weight.abs(), top)


def test_bn_scales_lists_each_blocks_inner_scales_largest_first():
    spec = TEACHERS["tiny-332"]
    teacher = _trained_like(build_model(spec.arch, DIGITS))
    scales = bn_scales(teacher)
    assert [len(s) for s in scales] == list(spec.arch.depths)
    assert [len(b) for b in scales[1]] == [spec.arch.stages[1].channels] * spec.arch.depths[1]
    assert all(list(b) == sorted(b, reverse=True) and min(b) >= 0 for s in scales for b in s)
    assert scales[0][0][0] == pytest.approx(float(teacher.stages[0][0].bn2.weight.detach().abs().max()), rel=1e-3)


def _scales(spec, weak_last_blocks: bool):
    """Made-up BN scales: uniform spread per block, the last block of each stage near zero when asked."""
    out = []
    for depth, stage in zip(spec.arch.depths, spec.arch.stages):
        blocks = []
        for j in range(depth):
            top = 0.01 if weak_last_blocks and j == depth - 1 and depth > 1 else 1.0
            blocks.append(tuple(top * (1 - k / stage.channels) for k in range(stage.channels)))
        out.append(tuple(blocks))
    return tuple(out)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_slimming_prunes_to_the_budget_and_drops_the_blocks_whose_scales_vanish(ratio):
    task = load_task("configs/tasks/digits-pgd-e20-t444-r35.yaml")
    task = task.replace(budget=task.config.budget.model_copy(update={"ratio": ratio}))
    spec, space = task.teacher, task.space
    weak = slimming_prune(space, _scales(spec, weak_last_blocks=True))
    even = slimming_prune(space, _scales(spec, weak_last_blocks=False))
    for arch in (weak, even):
        assert space.cost(arch).macs <= space.budget
        assert arch.blocks == spec.arch.blocks
    # blocks whose every scale is tiny go first: depth falls where they are, width is kept instead
    assert all(d <= t - 1 for d, t in zip(weak.depths, spec.arch.depths))
    assert sum(weak.channels) >= sum(even.channels)
    with pytest.raises(ValueError, match="blocks per stage"):
        slimming_prune(space, _scales(spec, False)[:2])


def test_importance_order_is_a_fidelity_of_its_own_and_refused_with_a_sandwich_teacher():
    task = load_task("configs/tasks/digits-pgd-e20-t444-r35.yaml").config
    ordered = task.model_copy(update={"proxy": task.proxy.model_copy(update={"channel_order": "importance"})})
    plain = task.model_copy(update={"proxy": task.proxy.model_copy(update={"channel_order": "first"})})
    assert fidelity_key(plain) == fidelity_key(task)  # the default keeps every stored key
    assert fidelity_key(ordered) != fidelity_key(task)
    with pytest.raises(ValueError, match="supernet: plain"):
        ProxyConfig(channel_order="importance", supernet="sandwich")


def test_a_teacher_record_with_bad_bn_scales_is_refused_and_one_without_them_is_read():
    base = {"key": "k", "clean_acc": 0.9, "robust_acc": 0.5, "lipschitz": 1.0, "n_val": 10, "train_seconds": 1.0}
    assert TeacherStats.from_dict(base).bn_scales == ()
    assert TeacherStats.from_dict({**base, "bn_scales": [[[1.0, 0.5]]]}).bn_scales == ((((1.0, 0.5)),),)
    for bad in ([[1.0]], [[["x"]]], [[[-1.0]]], [[[float("nan")]]], "scales"):
        with pytest.raises(ValueError, match="bn_scales"):
            TeacherStats.from_dict({**base, "bn_scales": bad})


def test_the_proxy_sorts_each_teacher_once_and_only_when_asked(tmp_path):
    from rcnas.proxy.keys import teacher_key
    from rcnas.proxy.local import ProxyRunner

    task = load_task("configs/tasks/digits-pgd-e20-t444-r35.yaml")
    ordered_task = task.replace(proxy=task.config.proxy.model_copy(update={"channel_order": "importance"}))
    runner = ProxyRunner(cache_dir=tmp_path, device=torch.device("cpu"))
    teacher = _trained_like(build_model(task.teacher.arch, task.shape))
    runner._teachers[teacher_key(task)] = (teacher, 0.0)  # as if trained: this test is about what inherits from it
    assert runner.inherit_source(task) is teacher
    first = runner.inherit_source(ordered_task)
    assert first is not teacher and runner.inherit_source(ordered_task) is first
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(first(x), teacher(x), atol=1e-4)
