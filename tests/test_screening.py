"""Screening (successive halving in the search loop) and the surrogate trained on stored evaluations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import kendalltau

from rcnas.config import ScreeningConfig
from rcnas.search.screening import SCREEN_SUFFIX, Promoter, ScreeningEvaluator, low_fidelity_task
from rcnas.search.searchers import run_searcher
from rcnas.search.surrogate import Point, Surrogate, features
from rcnas.search.table import TableEvaluator, read_table
from rcnas.task import load_task
from tests.conftest import ROOT
from tests.fakes import synthetic_table

TABLE_TASKS = ["digits-pgd-e20-t444-r35", "digits-fgsm-e20-t444-r50", "digits-cw-e20-t444-r30"]
COMMITTED = ROOT / "bench" / "tables" / "digits-e20-t444.csv.gz"


def task(name: str):
    return load_task(ROOT / "configs" / "tasks" / f"{name}.yaml")


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """The synthetic table, and the same sub-networks at the screening fidelity (accuracies halved: the same order)."""
    folder = tmp_path_factory.mktemp("screen")
    tasks = [task(t) for t in TABLE_TASKS]
    synthetic_table(folder / "proxy.csv.gz", tasks)
    low = ScreeningConfig(by="low_fidelity")
    synthetic_table(folder / "low.csv.gz", [low_fidelity_task(t, low) for t in tasks], scale=0.5)
    return folder / "proxy.csv.gz", folder / "low.csv.gz"


def test_the_promoter_keeps_the_best_share_of_what_it_has_seen():
    p = Promoter(0.25)
    decisions = [p(s) for s in (0.5, 0.4, 0.6, 0.1, 0.2, 0.3, 0.2, 0.9)]
    # the first is promoted, then a score must rank within the best ceil(n / 4) so far
    assert decisions == [True, False, True, False, False, False, False, True]
    every = Promoter(1.0)
    assert all(every(s) for s in np.random.default_rng(0).random(20))
    # reference scores count as seen: even the first proposal must beat most of them
    warm = Promoter(0.1, reference=[i / 100 for i in range(100)])
    assert [warm(s) for s in (0.05, 0.5, 0.85, 0.99)] == [False, False, False, True]


def test_a_paced_promoter_never_promotes_more_than_its_share():
    """Ever-improving scores (a policy that keeps getting better): the rank rule alone promotes every one; paced,
    at most ceil(keep x proposals) at any point, still the best-ranked ones."""
    rising = [i / 100 for i in range(100)]
    plain, paced = Promoter(0.1), Promoter(0.1, pace=True)
    assert all(plain(s) for s in rising)
    decisions = [paced(s) for s in rising]
    for n in range(1, 101):
        assert sum(decisions[:n]) <= math.ceil(0.1 * n)
    assert sum(decisions) == 10 and decisions[0]
    # a score that does not rank high enough is not promoted, whatever share is left
    low = Promoter(0.5, pace=True)
    assert [low(s) for s in (0.9, 0.1, 0.05, 0.95)] == [True, False, False, True]


def test_low_fidelity_screening_promotes_a_share_and_logs_both_fidelities(tables):
    proxy, low = tables
    cw = task("digits-cw-e20-t444-r30")
    inner = TableEvaluator([read_table(proxy, cw), read_table(low, cw)], client="t")
    ev = ScreeningEvaluator(inner, ScreeningConfig(by="low_fidelity", keep=0.25))
    steps = run_searcher("random", cw, ev, 40, seed=1)
    assert len(steps) == 40
    promoted = [r for r in inner.requests if r.task_name == cw.name]
    screened = [r for r in inner.requests if r.task_name == cw.name + SCREEN_SUFFIX]
    assert len(screened) == 40 and ev.promoted == len(promoted) and ev.promoted + ev.screened_out == 40
    assert 5 <= len(promoted) <= 20  # about a quarter, more early on (the first, and every new best, is promoted)
    # a screened-out proposal's reward is its low-fidelity score, a promoted one's the proxy's
    by_arch = {s.arch.key(): s for s in steps}
    low_only = {r.arch_key for r in screened} - {r.arch_key for r in promoted}
    some = next(iter(low_only))
    low_row = next(r for r in screened if r.arch_key == some)
    assert by_arch[some].robust_acc == pytest.approx(low_row.metrics.robust_acc)
    assert "screened out" in low_row.metrics.reason or low_row.metrics.reason == ""
    for r in promoted:
        assert by_arch[r.arch_key].robust_acc == pytest.approx(r.metrics.robust_acc)


def test_a_repeat_is_answered_as_before_and_never_screened_again(tables):
    proxy, low = tables
    cw = task("digits-cw-e20-t444-r30")
    inner = TableEvaluator([read_table(proxy, cw), read_table(low, cw)])
    ev = ScreeningEvaluator(inner, ScreeningConfig(by="low_fidelity", keep=0.5))
    arch = cw.space.arch(cw.space.sample(np.random.default_rng(0)))
    first = ev.evaluate(cw, arch)
    again = ev.evaluate(cw, arch)
    assert again.cached and again.metrics == first.metrics and ev.promoted + ev.screened_out == 1


def test_the_surrogate_screens_with_the_stores_rows_from_the_start(tables):
    proxy, _ = tables
    cw, pgd = task("digits-cw-e20-t444-r30"), task("digits-pgd-e20-t444-r35")
    table = read_table(proxy, cw)
    stored = {str(pgd.source): [k for k in list(table.rows)[::7]]}
    inner = TableEvaluator(table, stored=stored)
    ev = ScreeningEvaluator(inner, ScreeningConfig(by="surrogate", keep=0.2), prior=[pgd])
    assert len(ev.surrogate) == len(inner.rows(pgd)) > 100
    steps = run_searcher("random", cw, ev, 60, seed=2)
    assert len(steps) == 60
    assert ev.promoted == len(inner.requests) < 30  # the others never reached the table (no cost)
    screened = [s for s in steps if s.arch.key() not in {r.arch_key for r in inner.requests}]
    assert screened and all(not s.cached for s in screened)


def test_a_surrogate_without_points_promotes_everything_until_it_has_enough(tables):
    proxy, _ = tables
    cw = task("digits-cw-e20-t444-r30")
    inner = TableEvaluator(read_table(proxy, cw))
    ev = ScreeningEvaluator(inner, ScreeningConfig(by="surrogate", keep=0.1, min_points=8))
    run_searcher("random", cw, ev, 30, seed=0)
    assert len(inner.requests) >= 8 and ev.promoted == len(inner.requests) and ev.screened_out > 0
    assert ev.promoted < 30


def test_the_surrogate_ranks_a_held_out_attack_it_never_saw_on_the_committed_table():
    """Trained on 150 PGD and FGSM rows, it ranks the CW column of the rest (a real held-out check, not a fit)."""
    cw = task("digits-cw-e20-t444-r30")
    table = read_table(COMMITTED, cw)
    rows = list(table.rows.values())
    rng = np.random.default_rng(0)
    train = set(rng.choice(len(rows), 150, replace=False).tolist())
    s = Surrogate()
    for col, name in (("pgd20", "digits-pgd-e20-t444-r35"), ("fgsm", "digits-fgsm-e20-t444-r50")):
        t, teacher = task(name), table.teacher(col).robust_acc
        s.add([Point(t, rows[i].arch, rows[i].robust[col] / teacher) for i in sorted(train)])
    test = [r for i, r in enumerate(rows) if i not in train and r.macs <= cw.budget]
    pred = s.predict(cw, [r.arch for r in test])
    tau = kendalltau(pred, [r.robust["cw20"] for r in test])[0]
    assert tau > 0.6, tau


def test_features_are_shares_of_the_teacher_and_the_attack():
    cw = task("digits-cw-e20-t444-r30")
    full = features(cw, cw.teacher.arch)
    assert full[:2] == [1.0, 1.0]
    small = features(cw, cw.space.arch(cw.space.sample(np.random.default_rng(0))))
    assert len(small) == len(full) and all(math.isfinite(x) for x in small)
    pgd = task("digits-pgd-e20-t444-r35")
    assert features(pgd, cw.teacher.arch) != full  # the attack is part of the encoding


def test_screening_settings_are_checked_where_they_are_written():
    with pytest.raises(ValueError, match="fidelity"):
        ScreeningConfig(by="low_fidelity", fidelity={"epochs": -1})
    with pytest.raises(ValueError):
        ScreeningConfig(keep=0)


def test_the_env_screens_when_its_config_says_so(tables):
    from envs.compression_env import CompressionEnv

    proxy, low = tables
    cw = task("digits-cw-e20-t444-r30")
    inner = TableEvaluator([read_table(proxy, cw), read_table(low, cw)])
    env = CompressionEnv({"task": cw, "evaluator": inner,
                          "screening": {"config": {"by": "low_fidelity", "keep": 0.5}, "prior": []}})
    assert isinstance(env.evaluator, ScreeningEvaluator)
    rng = np.random.default_rng(0)
    for _ in range(6):
        obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
        done = False
        while not done:
            mask = obs["action_mask"]
            obs, reward, done, _, info = env.step(int(rng.choice(np.flatnonzero(mask))))
    assert {r.task_name for r in inner.requests} == {cw.name, cw.name + SCREEN_SUFFIX}


class _Jittered(TableEvaluator):
    """The table, each answer after a random little wait (another seed, another finishing order)."""

    def __init__(self, table, jitter_seed: int, **kw) -> None:
        import random
        import threading

        super().__init__(table, **kw)
        self._rng, self._lock = random.Random(jitter_seed), threading.Lock()

    def evaluate(self, task, arch, seed: int = 0):
        import time

        with self._lock:
            wait = self._rng.uniform(0, 0.03)
        time.sleep(wait)
        return super().evaluate(task, arch, seed)


def test_a_batched_screened_search_promotes_the_same_whichever_evaluation_finishes_first(tables):
    """Evolution breeding 4 children a round through a surrogate: the children are screened one after the other and
    the surrogate learns from the results in the order bred, so two runs whose evaluations finish in different
    orders promote and find the same sub-networks."""
    proxy, _ = tables
    cw = task("digits-cw-e20-t444-r30")
    runs = []
    for jitter in (1, 2):
        inner = _Jittered(read_table(proxy, cw), jitter)
        ev = ScreeningEvaluator(inner, ScreeningConfig(by="surrogate", keep=0.3, min_points=4, warm=20))
        steps = run_searcher("evolution", cw, ev, 40, seed=5, parallel=4)
        runs.append(([(s.arch.key(), s.reward) for s in steps], sorted(r.arch_key for r in inner.requests)))
        assert ev.promoted == len(inner.requests) and ev.screened_out > 0
    assert runs[0] == runs[1]


def test_screening_keeps_the_services_worker_count_and_promotes_a_known_result_unscreened(tables):
    """The async sampler sizes its evaluations in flight from the evaluator's ``stats()``: wrapped in the screening,
    the service's workers still count (without it a screened search ran one evaluation at a time). A sub-network
    the store already holds for a prior task is asked for again (the store answers), never screened out."""
    from agents.async_ppo import parallelism

    proxy, _ = tables
    cw, pgd = task("digits-cw-e20-t444-r30"), task("digits-pgd-e20-t444-r35")
    table = read_table(proxy, cw)

    class Service(TableEvaluator):
        def stats(self):
            return {"workers": 8}

    stored = {str(pgd.source): list(table.rows)[:40]}
    inner = Service(table, stored=stored)
    ev = ScreeningEvaluator(inner, ScreeningConfig(by="surrogate", keep=0.01), prior=[pgd])
    assert parallelism(ev) == 8 and parallelism(ScreeningEvaluator(TableEvaluator(table), ScreeningConfig())) == 0
    for key in stored[str(pgd.source)][:10]:
        arch = table.rows[key].arch
        if arch_fits(pgd, arch):
            assert ev.screen(pgd, arch) is None
    assert ev.screened_out == 0


def arch_fits(t, arch) -> bool:
    return t.space.cost(arch).macs <= t.budget
