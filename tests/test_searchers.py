"""Baseline searchers: same budget wall, evaluation budget respected, reproducible, each does what it says."""

from __future__ import annotations

import numpy as np
import pytest

from rcnas.search.searchers import SEARCHERS, mutate, run_searcher
from rcnas.task import load_task
from tests.conftest import ROOT
from tests.fakes import FakeEvaluator

TASK = load_task(ROOT / "configs/tasks/digits-pgd-e20-t444-r35.yaml")


@pytest.mark.parametrize("name", SEARCHERS.names())
def test_every_searcher_stays_within_budget_and_evaluation_count(name):
    space = TASK.space
    fake = FakeEvaluator()
    steps = run_searcher(name, TASK, fake, n=12, seed=0)
    assert 1 <= len(steps) <= 12 and fake.calls == len(steps)
    assert len({s.arch for s in steps}) == len(steps), "distinct sub-networks only"
    assert all(s.macs <= space.budget and np.isfinite(s.reward) for s in steps)
    again = run_searcher(name, TASK, FakeEvaluator(), n=12, seed=0)
    assert [s.arch for s in again] == [s.arch for s in steps], "reproducible from its seed"


def test_random_and_evolution_spend_the_whole_budget():
    for name in ("random", "evolution"):
        assert len(run_searcher(name, TASK, FakeEvaluator(), n=20, seed=1)) == 20


def test_mutation_changes_one_stage_and_stays_valid():
    space = TASK.space
    rng = np.random.default_rng(0)
    for _ in range(200):
        parent = space.sample(rng)
        child = mutate(space, parent, rng)
        prefix: tuple[int, ...] = ()
        for a in child:
            assert space.mask(prefix)[a]
            prefix += (a,)
        first = next((i for i, (p, c) in enumerate(zip(parent, child)) if p != c), None)
        assert first is not None, "a mutation changes something"


def test_evolution_improves_on_its_initial_population_under_a_monotone_reward():
    steps = run_searcher("evolution", TASK, FakeEvaluator(), n=40, seed=0)
    assert max(s.reward for s in steps[10:]) >= max(s.reward for s in steps[:10])


def test_actions_of_inverts_arch_and_refuses_what_is_not_in_the_space():
    space = TASK.space
    rng = np.random.default_rng(0)
    for _ in range(100):
        actions = space.sample(rng)
        assert space.actions_of(space.arch(actions)) == actions
    with pytest.raises(ValueError, match="not a sub-network"):
        space.actions_of(space.teacher.arch)  # the whole teacher: over the budget


def test_a_handover_seeds_evolution_with_the_best_of_what_was_found():
    """``start`` sub-networks are asked first (counted in n, not evaluated again by the store) and evolution's first
    population is the best of them: its first child is a mutation of one of those, not of a random sub-network."""
    first = run_searcher("random", TASK, FakeEvaluator(), n=15, seed=3)
    fake = FakeEvaluator()
    steps = run_searcher("evolution", TASK, fake, n=25, seed=0, start=[s.arch for s in first])
    assert [s.arch for s in steps[:15]] == [s.arch for s in first] and len(steps) == 25
    best = sorted(first, key=lambda s: s.reward)[-10:]
    parents = {TASK.space.actions_of(s.arch) for s in best}
    children = [TASK.space.actions_of(s.arch) for s in steps[15:20]]
    # a one-stage mutation of a seeded parent (later stages kept where they still fit)
    assert any(sum(a != b for a, b in zip(c, p)) == 1 for c in children for p in parents)
    assert max(s.reward for s in steps) >= max(s.reward for s in first)
    # a handed-over list read from a store may hold another budget's sub-networks of a task with the same name:
    # they are left out, never evaluated or seeded (the whole teacher is over this task's budget)
    fake = FakeEvaluator()
    steps = run_searcher("evolution", TASK, fake, n=20, seed=0, start=[TASK.space.teacher.arch, first[0].arch])
    assert steps[0].arch == first[0].arch and TASK.space.teacher.arch not in {s.arch for s in steps}


def test_compound_scaling_follows_the_2_2_1_depth_rule():
    steps = run_searcher("compound", TASK, FakeEvaluator(), n=5, seed=0)
    for s in steps:
        d1, d2, d3 = s.arch.depths
        assert d1 == d2 and d3 <= d1


def _concurrent(hold_s: float = 0.3):
    """An evaluator counting how many evaluations run at once. Each holds ``hold_s``, long enough that a batch's
    threads all start before the first finishes even on a loaded machine."""
    from tests.test_async_sampler import Gated

    return Gated(hold_s=hold_s)


@pytest.mark.parametrize("name", ["random", "evolution"])
def test_parallel_searchers_ask_for_a_batch_at_once_and_stay_reproducible(name):
    """parallel=4: four evaluations side by side (the service's workers all busy), the budget kept exactly, the
    same trajectory from the same seed whichever evaluation finishes first; parallel=1 is the sequential search."""
    runs = []
    for _ in range(2):
        fake = _concurrent()
        steps = run_searcher(name, TASK, fake, n=22, seed=2, parallel=4)
        assert len(steps) == 22 == fake.calls and len({s.arch for s in steps}) == 22
        assert fake.most == 4
        runs.append([s.arch for s in steps])
    assert runs[0] == runs[1]
    one = _concurrent(0.0)
    sequential = run_searcher(name, TASK, one, n=22, seed=2)
    assert one.most == 1
    if name == "random":  # the same draws, only evaluated four at a time
        assert runs[0] == [s.arch for s in sequential]
    # a handed-over start, then batches: the budget counts the start too
    first = run_searcher("random", TASK, FakeEvaluator(), n=5, seed=3)
    steps = run_searcher(name, TASK, _concurrent(0.0), n=13, seed=0, start=[s.arch for s in first], parallel=3)
    assert len(steps) == 13 and [s.arch for s in steps[:5]] == [s.arch for s in first]
    with pytest.raises(ValueError, match="at least 1"):
        run_searcher(name, TASK, FakeEvaluator(), n=3, parallel=0)


def test_a_screened_batched_search_keeps_every_worker_busy():
    """Under screening a round breeds until ``parallel`` children reached the proxy: 16 proxy evaluations at
    parallel=4 run as 4 batches of 4 (drawing 4 children a round, about 0.3 x 4 of them would be promoted and the
    service's workers would mostly run one evaluation at a time)."""
    from rcnas.config import ScreeningConfig
    from rcnas.search.screening import ScreeningEvaluator

    for name in ("evolution", "random"):
        inner = _concurrent()
        screened = ScreeningEvaluator(inner, ScreeningConfig(by="surrogate", keep=0.3, min_points=3, warm=20))
        steps = run_searcher(name, TASK, screened, n=400, seed=1, parallel=4, proxy=16)
        assert inner.calls == 16 == sum(screened.reached_proxy(TASK, s.arch) for s in steps)
        assert screened.screened_out > 16 and inner.most == 4 and inner.batches == [4, 4, 4, 4]


def test_a_screened_local_search_stops_at_its_proxy_evaluations():
    """Under screening the budget that counts is the proxy's: evolution through a surrogate that promotes about a
    third stops once 12 sub-networks (the 5 handed over included) reached the proxy, or at 200 proposals."""
    from rcnas.config import ScreeningConfig
    from rcnas.search.screening import ScreeningEvaluator

    inner = FakeEvaluator()
    screened = ScreeningEvaluator(inner, ScreeningConfig(by="surrogate", keep=0.3, min_points=3, warm=20))
    first = run_searcher("random", TASK, FakeEvaluator(), n=5, seed=3)
    # the agent's proxy results: learnt from, and asked for again (the store answers) but never screened out
    fake = FakeEvaluator()
    screened.learn_from(TASK, [(s.arch, fake.evaluate(TASK, s.arch).metrics) for s in first])
    steps = run_searcher("evolution", TASK, screened, n=200, seed=0, start=[s.arch for s in first], parallel=3,
                         proxy=12)
    reached = [s for s in steps if screened.reached_proxy(TASK, s.arch)]
    assert len(reached) == 12 and inner.calls == 12 and len(steps) < 200
    assert [s.arch for s in steps[:5]] == [s.arch for s in first] and len(screened.surrogate) == 12
    assert screened.screened_out == len(steps) - 12 > 0 and screened.promoted == 7
