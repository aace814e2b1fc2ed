"""Blocks, the builder, and weight inheritance."""

from __future__ import annotations

import pytest
import torch

from rcnas.models.builder import build_model, inherit_weights
from rcnas.models.teachers import TEACHERS, get_teacher
from rcnas.space.arch import InputShape
from rcnas.vocab import BLOCK_KINDS
from tests.conftest import randomise_bn_statistics

DIGITS = InputShape(1, 8, 10)


@pytest.mark.parametrize("block", BLOCK_KINDS.names())
def test_every_block_builds_a_working_network(block):
    t = get_teacher("tiny-444")
    arch = t.subnet((2, 1, 1), (4, 2, 1), (block,) * 3)
    model = build_model(arch, DIGITS)
    out = model(torch.rand(3, 1, 8, 8))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", TEACHERS.names())
def test_every_teacher_spec_is_consistent(name):
    t = get_teacher(name)
    assert t.name == name
    assert all(w >= 1 for w in t.widths)
    assert t.subnet(t.arch.depths, t.widths, t.arch.blocks) == t.arch


def _trained_like(model):
    return randomise_bn_statistics(model).eval()


@pytest.mark.parametrize("block", BLOCK_KINDS.names())
def test_subnet_equal_to_teacher_reproduces_its_logits(block):
    t = get_teacher("tiny-332")
    arch = t.subnet(t.arch.depths, t.widths, (block,) * 3)
    torch.manual_seed(0)
    teacher = _trained_like(build_model(arch, DIGITS))
    torch.manual_seed(1)
    student = build_model(arch, DIGITS).eval()
    x = torch.rand(5, 1, 8, 8)
    assert not torch.allclose(student(x), teacher(x))
    counts = inherit_weights(student, teacher)
    assert counts["fresh"] == 0
    assert torch.equal(student(x), teacher(x))


def test_smaller_subnet_carries_the_teachers_slices():
    t = get_teacher("tiny-444")
    teacher = _trained_like(build_model(t.arch, DIGITS))
    sub = build_model(t.subnet((2, 1, 3), (2, 4, 1), ("basic_block",) * 3), DIGITS)
    inherit_weights(sub, teacher)
    assert torch.equal(sub.stages[0][1].conv1.weight, teacher.stages[0][1].conv1.weight[:8, :8])
    assert torch.equal(sub.stages[2][0].conv1.weight, teacher.stages[2][0].conv1.weight[:16, :32])
    assert torch.equal(sub.stages[2][0].bn1.running_var, teacher.stages[2][0].bn1.running_var[:32])
    assert torch.equal(sub.fc.weight, teacher.fc.weight[:, :16])


def test_robust_block_inherits_per_branch_and_group():
    t = get_teacher("tiny-444")
    arch_t = t.subnet((1, 1, 1), (4, 4, 4), ("robust_res_block",) * 3)
    teacher = _trained_like(build_model(arch_t, DIGITS))
    sub = build_model(t.subnet((1, 1, 1), (2, 4, 4), ("robust_res_block",) * 3), DIGITS)
    inherit_weights(sub, teacher)
    s, tb = sub.stages[0][0], teacher.stages[0][0]
    w_s, w_t = s.width, tb.width
    # branch b of the student is the first w_s channels of the teacher's branch b, for every branch
    for b in range(s.scales):
        student = s.conv1.weight[b * w_s:(b + 1) * w_s]
        assert torch.equal(student, tb.conv1.weight[b * w_t:b * w_t + w_s, :s.conv1.in_channels])
    assert torch.isfinite(sub(torch.rand(2, 1, 8, 8))).all()


def test_switched_block_stage_starts_fresh():
    t = get_teacher("tiny-444")
    teacher = build_model(t.arch, DIGITS)
    sub = build_model(t.subnet((2, 2, 2), (2, 2, 2), ("basic_block", "robust_res_block", "basic_block")), DIGITS)
    counts = inherit_weights(sub, teacher)
    assert counts == {"inherited": 4, "fresh": 2}
