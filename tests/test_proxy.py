"""The proxy evaluation: deterministic per (task, sub-network), failures recorded not raised, the store."""

from __future__ import annotations

import pytest

from rcnas.models.teachers import get_teacher
from rcnas.proxy.local import LocalEvaluator, eval_key
from rcnas.proxy.store import EvaluationStore
from rcnas.reward import compression_reward
from tests.conftest import tiny_task

ARCH = get_teacher("tiny-222").subnet((1, 2, 1), (2, 3, 2), ("basic_block",) * 3)


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    base = tmp_path_factory.mktemp("proxy")
    return LocalEvaluator(store=base / "evals.sqlite", cache_dir=base / "cache")


def test_same_candidate_same_score_in_a_fresh_evaluator(evaluator, tmp_path):
    task = tiny_task()
    first = evaluator.evaluate(task, ARCH)
    other = LocalEvaluator(cache_dir=evaluator.runner.cache)  # no store: computes again
    again = other.evaluate(task, ARCH)
    assert not again.cached and again.metrics.robust_acc == first.metrics.robust_acc
    assert again.metrics.clean_acc == first.metrics.clean_acc


def test_zero_epochs_scores_the_inherited_weights(evaluator):
    task = tiny_task()
    zero = task.replace(proxy=task.config.proxy.model_copy(update={"epochs": 0}))
    m = evaluator.evaluate(zero, ARCH).metrics
    assert m.ok and m.inherited_blocks == 4 and m.fine_tune_epochs == 0


def test_a_diverging_candidate_is_a_recorded_failure(evaluator):
    task = tiny_task()
    bad = task.replace(proxy=task.config.proxy.model_copy(update={"lr": 1e30}),
                       training=task.config.training.model_copy(update={"grad_clip": None}))
    result = evaluator.evaluate(bad, ARCH)
    assert result.metrics.status == "failed" and "diverged" in result.metrics.reason
    assert compression_reward(0.5, 0.5, 1, 2, bad.config.reward, ok=result.metrics.ok) == bad.config.reward.failure
    stored = evaluator.store.get(eval_key(bad, ARCH))
    assert stored is not None and stored.reason == result.metrics.reason, "failures are stored with their reason"


def test_store_keeps_the_first_result_and_survives_reopening(tmp_path):
    task = tiny_task()
    ev = LocalEvaluator(store=tmp_path / "s.sqlite", cache_dir=tmp_path / "cache")
    first = ev.evaluate(task, ARCH)
    assert not first.cached
    assert not ev.store.put(first.key, ARCH, first.metrics, task.name), "a second put of a key is ignored"
    ev.store.close()
    reopened = LocalEvaluator(store=tmp_path / "s.sqlite", cache_dir=tmp_path / "cache")
    again = reopened.evaluate(task, ARCH)
    assert again.cached and again.metrics == first.metrics and len(EvaluationStore(tmp_path / "s.sqlite")) == 1


def test_request_log_replays_each_clients_order_over_a_shared_store(tmp_path):
    task = tiny_task()
    ev = LocalEvaluator(store=tmp_path / "s.sqlite", cache_dir=tmp_path / "cache")
    a = ARCH
    b = get_teacher("tiny-222").subnet((1, 1, 1), (1, 1, 1), ("basic_block",) * 3)
    ra, rb = ev.evaluate(task, a), ev.evaluate(task, b)
    ev.store.log_request("random", ra.key, task.name, ra.cached)
    ev.store.log_request("random", rb.key, task.name, rb.cached)
    ev.store.log_request("evolution", rb.key, task.name, True)
    log = ev.store.requests("random")
    assert [r.arch_key for r in log] == [a.key(), b.key()]
    assert log[0].metrics == ra.metrics
    assert [r.arch_key for r in ev.store.requests("evolution")] == [b.key()]
    assert ev.store.requests("nobody") == []
