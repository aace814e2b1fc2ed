"""The search space: sub-network specs, the budget wall, and the hashable genotype."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcnas.infra.errors import ConfigError
from rcnas.models.teachers import get_teacher
from rcnas.space.arch import InputShape
from rcnas.space.cost import arch_cost
from rcnas.space.space import CompressionSpace, StageChoice

TEACHERS = ["tiny-444", "tiny-332", "tiny-444-w234", "WRN-A1", "RobustResNet-A2", "WRN-34-10"]
SHAPES = [InputShape(1, 8, 10), InputShape(3, 32, 10), InputShape(3, 32, 100), InputShape(3, 64, 200)]


@settings(max_examples=60, deadline=None)
@given(
    teacher=st.sampled_from(TEACHERS),
    shape=st.sampled_from(SHAPES),
    ratio=st.floats(0.0, 1.0),
    robust=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_every_valid_action_sequence_ends_within_budget(teacher, shape, ratio, robust, seed):
    t = get_teacher(teacher)
    blocks = ("basic_block", "robust_res_block") if robust else ()
    probe = CompressionSpace(t, shape, 1.0, blocks)
    budget = probe.min_macs + ratio * (probe.teacher_macs - probe.min_macs)
    space = CompressionSpace(t, shape, budget, blocks)
    rng = np.random.default_rng(seed)
    actions: tuple[int, ...] = ()
    for _ in range(space.n_stages):
        mask = space.mask(actions)
        assert mask.any(), "a state reached through valid actions must have a valid action"
        actions += (int(rng.choice(np.flatnonzero(mask))),)
    assert arch_cost(space.arch(actions), shape).macs <= budget


def test_full_budget_allows_the_teacher_and_tight_budget_only_small():
    t = get_teacher("tiny-444")
    shape = InputShape(1, 8, 10)
    full = CompressionSpace(t, shape, arch_cost(t.arch, shape).macs)
    teacher_actions = tuple(full.index(i, c) for i, c in enumerate(
        [StageChoice(s.depth, w, s.block) for s, w in zip(t.arch.stages, t.widths)]))
    assert full.arch(teacher_actions) == t.arch
    tight = CompressionSpace(t, shape, full.min_macs)
    assert tight.mask(()).sum() == 1


def test_arch_key_is_stable_and_distinguishes():
    t = get_teacher("tiny-444")
    a = t.subnet((1, 2, 3), (4, 3, 2), ("basic_block",) * 3)
    b = t.subnet((1, 2, 3), (4, 3, 2), ("basic_block",) * 3)
    c = t.subnet((1, 2, 3), (4, 3, 1), ("basic_block",) * 3)
    assert a == b and hash(a) == hash(b) and a.key() == b.key()
    assert a.key() != c.key()
    # the same value in a fresh interpreter: keys name stored evaluations across processes and runs
    import subprocess
    import sys

    code = ("from rcnas.models.teachers import get_teacher; t = get_teacher('tiny-444'); "
            "print(t.subnet((1, 2, 3), (4, 3, 2), ('basic_block',) * 3).key())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == a.key()


def test_budget_below_smallest_subnet_is_a_config_error():
    from rcnas.config import TaskConfig
    from rcnas.task import resolve_task

    task = TaskConfig.model_validate({
        "name": "t", "dataset": {"name": "digits"}, "teacher": "tiny-444",
        "attack": {"epsilon": "1/5"}, "budget": {"macs": 1000},
    })
    with pytest.raises(ConfigError, match="below the smallest sub-network"):
        resolve_task(task)


def test_contains_reports_the_offending_stage():
    t = get_teacher("tiny-332")
    big = get_teacher("tiny-444").arch
    assert "stage 1" in t.contains(big)
    assert t.contains(t.subnet((1, 1, 1), (1, 1, 1), ("robust_res_block",) * 3)) is None
