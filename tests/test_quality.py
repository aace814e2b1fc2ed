"""The search-quality benchmark's arithmetic: distinct evaluations in request order, picks within N, curves."""

from __future__ import annotations

import math

from rcnas.search.quality import best_so_far, best_within, distinct, mean_sd, text_chart


def _req(task, key, reward):
    return {"task_name": task, "arch_key": key, "reward": reward}


def test_distinct_keeps_first_requests_of_one_task_in_order():
    log = [_req("a", "x", 1), _req("b", "y", 9), _req("a", "x", 1), _req("a", "z", 2), _req("a", "y", 0)]
    assert [r["arch_key"] for r in distinct(log, "a")] == ["x", "z", "y"]
    assert distinct(log, "c") == []


def test_pick_within_n_sees_only_the_first_n():
    rows = [_req("a", k, r) for k, r in zip("pqrs", [0.2, 0.5, 0.1, 0.9])]
    assert best_within(rows, 2, lambda r: r["reward"])["arch_key"] == "q"
    assert best_within(rows, 10, lambda r: r["reward"])["arch_key"] == "s"
    assert best_within([], 5, lambda r: r["reward"]) is None


def test_best_so_far_and_mean_sd():
    assert best_so_far([0.1, 0.3, 0.2, 0.5]) == [0.1, 0.3, 0.3, 0.5]
    assert mean_sd([1.0, 3.0]) == (2.0, math.sqrt(2))
    assert mean_sd([4.0]) == (4.0, 0.0)
    assert all(math.isnan(v) for v in mean_sd([]))


def test_text_chart_puts_the_higher_series_above():
    chart = text_chart({"low": [0.0] * 5, "high": [1.0] * 5}, height=4, width=5).splitlines()
    assert chart[0].endswith("BBBBB") and chart[3].endswith("AAAAA")
    assert "A = low" in chart[-1] and "B = high" in chart[-1]
