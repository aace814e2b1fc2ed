"""Re-ranking: the top k by the search's cheap reward are measured again at a higher fidelity, and the pick is the
best there."""

from __future__ import annotations

from dataclasses import asdict

from agents.config import task_path
from rcnas.proxy.local import eval_key
from rcnas.proxy.records import Evaluation, ProxyMetrics, TeacherStats
from rcnas.search.candidates import score_rows
from rcnas.search.rerank import higher_fidelity, rerank
from rcnas.task import load_task


class FidelityFake:
    """Cheap proxy: robust accuracy grows with MACs. Higher fidelity (more epochs): the smaller sub-networks catch
    up and the order of the top reverses, as a noisy proxy's can."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def teacher_stats(self, task):
        return TeacherStats("t", 0.9, 0.6, 10.0, 100, 0.0)

    def evaluate(self, task, arch):
        self.asked.append(task.config.proxy.epochs)
        macs = task.space.cost(arch).macs
        share = macs / task.space.teacher_macs
        robust = 0.2 + 0.3 * share if task.config.proxy.epochs < 2 else 0.5 - 0.3 * share
        a = task.config.attack
        m = ProxyMetrics("ok", "", robust, 0.0, robust + 0.2, macs, 1000, a.name, a.epsilon, a.steps, 100, 0,
                         task.config.proxy.repeats, task.config.proxy.epochs, 0, 0, 0.0, "cpu", "x", "x")
        return Evaluation(eval_key(task, arch), m, cached=False)


def test_rerank_orders_the_top_k_by_the_higher_fidelity():
    task = load_task(task_path("digits-cw-e20-t444-r30"))
    ev = FidelityFake()
    import numpy as np

    rng = np.random.default_rng(0)
    archs = list({a.key(): a for a in (task.space.arch(task.space.sample(rng)) for _ in range(12))}.values())
    rows = [{"metrics": ev.evaluate(task, a).metrics.to_dict(), "arch": asdict(a)} for a in archs]  # as stored
    cands = score_rows(task, rows, ev.teacher_stats(task))
    ev.asked.clear()
    pairs = rerank(task, cands, ev, top_k=3, epochs=4.0, repeats=2)
    assert ev.asked == [4.0, 4.0, 4.0] and len(pairs) == 3
    by_search = sorted(cands, key=lambda c: -c.reward)[:3]
    assert {lo.arch for lo, _ in pairs} == {c.arch for c in by_search}  # the top 3 by the cheap proxy
    assert [hi.reward for _, hi in pairs] == sorted((hi.reward for _, hi in pairs), reverse=True)
    assert pairs[0][0].arch == by_search[-1].arch  # the reversed order: the cheap proxy's third is the pick
    assert pairs[0][1].metrics.repeats == 2 and higher_fidelity(task, 4.0, 2).config.proxy.epochs == 4.0
