"""The search-quality benchmarks' arithmetic: distinct evaluations in request order, their rewards, picks within N,
curves and confidence intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rcnas.proxy.records import Request, TeacherStats
from rcnas.reward import task_reward
from rcnas.search.quality import best_so_far, best_within, ci95, distinct, held, mean_sd, scored, text_chart
from rcnas.task import load_task
from tests.conftest import ROOT
from tests.fakes import FakeEvaluator

TASK = load_task(ROOT / "configs/tasks/digits-pgd-e20-t444-r35.yaml")


def _req(task: str, key: str, cached: bool = False) -> Request:
    arch = TASK.space.arch(TASK.space.smallest())
    return Request(task, key, arch, FakeEvaluator().evaluate(TASK, arch).metrics, cached)


def test_distinct_keeps_first_requests_of_one_task_in_order():
    log = [_req("a", "x"), _req("b", "y"), _req("a", "x", True), _req("a", "z"), _req("a", "y")]
    assert [r.arch_key for r in distinct(log, "a")] == ["x", "z", "y"]
    assert distinct(log, "c") == []


def test_scored_rewards_each_distinct_sub_network_once_in_order():
    ev, space = FakeEvaluator(), TASK.space
    rng = np.random.default_rng(0)
    archs = list(dict.fromkeys([space.arch(space.smallest()), *(space.arch(space.sample(rng)) for _ in range(3))]))
    log = []
    for a in [*archs, archs[0]]:
        m = ev.evaluate(TASK, a).metrics
        log.append(Request(TASK.name, a.key(), a, m, False))
    log.append(Request("another", archs[1].key(), archs[1], log[1].metrics, False))
    teacher = ev.teacher_stats(TASK)
    got = scored(log, TASK, teacher)
    assert [c.arch for c in got] == archs and [c.index for c in got] == list(range(len(archs)))
    assert [c.reward for c in got] == [task_reward(TASK, r.metrics, teacher) for r in log[: len(archs)]]
    assert all(c.task == TASK.name and c.budget == TASK.budget and c.teacher_robust_acc == teacher.robust_acc
               for c in got)
    assert scored(log, TASK, TeacherStats("t", 0.9, 0.5, 1.0, 1, 0.0))[0].reward != got[0].reward


def test_pick_within_n_sees_only_the_first_n():
    rows = list(zip("pqrs", [0.2, 0.5, 0.1, 0.9]))
    assert best_within(rows, 2, lambda r: r[1])[0] == "q"
    assert best_within(rows, 10, lambda r: r[1])[0] == "s"
    assert best_within([], 5, lambda r: r[1]) is None


def test_best_so_far_held_mean_sd_and_ci95():
    assert best_so_far([0.1, 0.3, 0.2, 0.5]) == [0.1, 0.3, 0.3, 0.5]
    assert held([0.1, 0.3], 4) == [0.1, 0.3, 0.3, 0.3] and held([0.1, 0.3], 2) == [0.1, 0.3] and held([], 3) == []
    assert mean_sd([1.0, 3.0]) == (2.0, math.sqrt(2))
    assert mean_sd([4.0]) == (4.0, 0.0)
    assert all(math.isnan(v) for v in mean_sd([]))
    assert ci95([4.0]) == (4.0, 0.0)
    m, h = ci95([1.0, 3.0])
    assert m == 2.0 and h == pytest.approx(12.7062, rel=1e-4)  # t(0.975, 1 dof) x sd sqrt(2) / sqrt(2 runs)


def test_text_chart_puts_the_higher_series_above():
    chart = text_chart({"low": [0.0] * 5, "high": [1.0] * 5}, height=4, width=5).splitlines()
    assert chart[0].endswith("BBBBB") and chart[3].endswith("AAAAA")
    assert "A = low" in chart[-1] and "B = high" in chart[-1]
