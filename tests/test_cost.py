"""The closed-form MACs/params count against torchprofile, and the teachers' sizes against docs/method.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchprofile import profile_macs

from rcnas.models.builder import build_model
from rcnas.models.teachers import TEACHERS, get_teacher
from rcnas.space.arch import InputShape
from rcnas.space.cost import arch_cost
from rcnas.space.space import CompressionSpace

CIFAR = InputShape(3, 32, 10)
DIGITS = InputShape(1, 8, 10)

# docs/method.md's teacher table: params (M) and MACs (G) at 32x32, 10 classes, from torchprofile.
TABLE = {
    "WRN-A1": (18.71, 5.08), "WRN-A2": (38.32, 10.84), "WRN-A3": (75.30, 20.23), "WRN-A4": (147.29, 40.40),
    "RobustResNet-A1": (19.22, 5.11), "RobustResNet-A2": (39.03, 10.78), "RobustResNet-A3": (75.86, 19.88),
    "RobustResNet-A4": (147.26, 39.37), "WRN-28-10": (36.48, 5.25), "WRN-34-12": (66.46, 9.59),
    "WRN-46-14": (128.39, 18.59), "WRN-70-16": (266.80, 38.77),
}


def measured(arch, shape):
    model = build_model(arch, shape).eval()
    params = sum(p.numel() for p in model.parameters())
    macs = profile_macs(model, torch.rand(1, shape.channels, shape.resolution, shape.resolution))
    return params, macs


@pytest.mark.parametrize("name", sorted(TABLE))
def test_teacher_sizes_match_method_table(name):
    params_m, macs_g = TABLE[name]
    cost = arch_cost(get_teacher(name).arch, CIFAR)
    assert cost.params / 1e6 == pytest.approx(params_m, rel=0.01)
    assert cost.macs / 1e9 == pytest.approx(macs_g, rel=0.01)


@pytest.mark.parametrize("name", ["WRN-A1", "RobustResNet-A1", "WRN-28-10"])
def test_closed_form_equals_torchprofile_on_teachers(name):
    arch = get_teacher(name).arch
    cost = arch_cost(arch, CIFAR)
    assert (cost.params, cost.macs) == measured(arch, CIFAR)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TEACHERS.names() if not n.startswith("tiny")])
def test_closed_form_equals_torchprofile_all_teachers(name):
    arch = get_teacher(name).arch
    cost = arch_cost(arch, CIFAR)
    assert (cost.params, cost.macs) == measured(arch, CIFAR)


@pytest.mark.parametrize("teacher", ["tiny-444", "tiny-332", "RobustResNet-A1"])
def test_closed_form_equals_torchprofile_on_random_subnets(teacher):
    t = get_teacher(teacher)
    shape = DIGITS if teacher.startswith("tiny") else InputShape(3, 16, 100)
    space = CompressionSpace(t, shape, 1e18, blocks=("basic_block", "robust_res_block"))
    rng = np.random.default_rng(0)
    for _ in range(4):
        arch = space.arch(space.sample(rng))
        cost = arch_cost(arch, shape)
        assert (cost.params, cost.macs) == measured(arch, shape), arch
