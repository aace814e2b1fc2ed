"""The tabular benchmark: the proxy's extra attacks, building and reading a table, the table-backed evaluator, the
env's repeat mask, the benchmark script on a synthetic table, and the committed table against live evaluations."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from agents.config import task_path
from envs.compression_env import CompressionEnv, RepeatMask
from rcnas.config import AttackConfig, BudgetConfig, ScreeningConfig
from rcnas.infra.errors import ConfigError, EvaluationFailed
from rcnas.proxy.keys import fidelity_key, store_fidelity, task_key
from rcnas.search.screening import low_fidelity_task
from rcnas.search.searchers import run_searcher
from rcnas.search.table import (
    TableEvaluator,
    attack_column,
    every_subnet,
    numerics,
    read_table,
    table_task,
    task_for_column,
)
from rcnas.task import load_task
from tests.conftest import run_script
from tests.fakes import synthetic_table

ROOT = Path(__file__).resolve().parents[1]
TABLE_TASKS = ["digits-pgd-e20-t444-r35", "digits-fgsm-e20-t444-r50", "digits-cw-e20-t444-r30"]
COMMITTED = ROOT / "bench" / "tables" / "digits-e20-t444.csv.gz"
COMMITTED_SCREEN = ROOT / "bench" / "tables" / "digits-e20-t444-screen.csv.gz"
"""the same sub-networks at the screening fidelity (``bench/build_table.py --screening``)"""


def task(name: str):
    return load_task(task_path(name))


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("table") / "synth.csv.gz"
    synthetic_table(path, [task(t) for t in TABLE_TASKS])
    return path


def test_table_task_one_fine_tuning_every_attack():
    tt = table_task([task(t) for t in TABLE_TASKS])
    assert attack_column(tt.config.attack) == "pgd20"
    assert list(tt.config.proxy.also_attacks) == ["fgsm", "cw20"]
    assert tt.config.budget.ratio == 0.5
    first = task(TABLE_TASKS[0])
    # the first attack's draws are the live task's: same task and seed keys, a store key of its own
    assert task_key(tt) == task_key(first) and fidelity_key(tt.config) == fidelity_key(first.config)
    assert store_fidelity(tt.config) != store_fidelity(first.config)
    assert store_fidelity(first.config).endswith(".v1")  # tasks without extra attacks keep their store keys
    assert task_for_column(tt, "cw20").config.attack == task("digits-cw-e20-t444-r30").config.attack


def test_table_task_refuses_tasks_one_fine_tuning_cannot_serve():
    with pytest.raises(ConfigError, match="differ from"):
        table_task([task("digits-pgd-e20-t444-r35"), task("digits-cw-e20-t332-r35")])


def test_every_subnet_is_the_whole_space_within_budget():
    t = task("digits-cw-e20-t444-r30")
    seen = [t.space.arch(a) for a in every_subnet(t.space)]
    assert len(seen) == len({a.key() for a in seen}) == 2460
    assert all(t.space.cost(a).macs <= t.budget for a in seen)


def test_table_round_trip_and_evaluator_answers(synth):
    cw = task("digits-cw-e20-t444-r30")
    table = read_table(synth, cw)
    assert len(table.rows) == 3697 and table.columns == ["pgd20", "fgsm", "cw20"]
    ev = TableEvaluator(table)
    arch = cw.space.arch(cw.space.smallest())
    row = table.rows[arch.key()]
    got = ev.evaluate(cw, arch)
    assert got.metrics.robust_acc == pytest.approx(row.robust["cw20"], abs=1e-6) and not got.cached
    assert got.metrics.macs == row.macs and got.metrics.attack == "cw"
    assert ev.evaluate(cw, arch).cached  # a repeat is what a store would answer
    assert ev.teacher_stats(cw).robust_acc == pytest.approx(0.6)
    pgd = task("digits-pgd-e20-t444-r35")
    assert ev.evaluate(pgd, arch).metrics.robust_acc == pytest.approx(row.robust["pgd20"], abs=1e-6)
    assert [r.task_name for r in ev.requests] == [cw.name, cw.name, pgd.name]


def test_table_evaluator_never_evaluates_live(synth):
    cw = task("digits-cw-e20-t444-r30")
    ev = TableEvaluator(read_table(synth, cw))
    teacher = cw.teacher.arch
    with pytest.raises(EvaluationFailed, match="not in the table"):
        ev.evaluate(cw, teacher)  # the teacher itself is over every budget: not a row
    with pytest.raises(ConfigError, match="not this table's"):
        ev.evaluate(task("digits-cw-e20-t332-r35"), teacher)
    pgd10 = task("digits-pgd-e20-t444-r35").replace(attack=AttackConfig(name="pgd", epsilon="1/5", steps=10))
    with pytest.raises(ConfigError, match="not a column"):
        ev.teacher_stats(pgd10)
    over = task("digits-pgd-e20-t444-r35").replace(budget=BudgetConfig(ratio=0.6))
    with pytest.raises(ConfigError, match="exceeds the table's MACs ratio"):
        ev.teacher_stats(over)


def test_damaged_table_is_one_clear_error(tmp_path, synth):
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(gzip.compress(b"depths,widths\n1,2\n"))
    with pytest.raises(ConfigError, match="not a readable rcnas table"):
        read_table(bad, task(TABLE_TASKS[0]))
    bad.write_bytes(b"not gzip")
    with pytest.raises(ConfigError, match="regenerate"):
        read_table(bad, task(TABLE_TASKS[0]))


def test_searchers_run_unchanged_on_the_table(synth):
    cw = task("digits-cw-e20-t444-r30")
    ev = TableEvaluator(read_table(synth, cw))
    for name in ("random", "evolution", "compound", "uniform", "prune"):
        steps = run_searcher(name, cw, ev, 20, seed=3)
        assert 1 <= len(steps) <= 20 and len({s.arch for s in steps}) == len(steps)


def test_repeat_mask_makes_every_episode_new_until_the_space_is_exhausted(synth):
    cw = task("digits-fgsm-e20-t444-r30")
    env = CompressionEnv(task=cw, evaluator=TableEvaluator(read_table(synth, cw)), avoid_repeats=True)
    rng = np.random.default_rng(0)
    seen = set()
    total = RepeatMask(env.space).total(())
    for _ in range(total + 3):
        obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
        done = False
        while not done:
            # the policy's worst case: always the first allowed action (it would repeat forever without the mask)
            obs, _, done, _, info = env.step(int(np.flatnonzero(obs["action_mask"])[0]))
        seen.add(info["arch_key"])
    assert len(seen) == total  # every sub-network once, then repeats only when nothing new is left


def test_without_the_mask_a_greedy_policy_repeats(synth):
    cw = task("digits-fgsm-e20-t444-r30")
    env = CompressionEnv(task=cw, evaluator=TableEvaluator(read_table(synth, cw)), avoid_repeats=False)
    keys = set()
    for _ in range(5):
        obs, _ = env.reset(seed=0)
        done = False
        while not done:
            obs, _, done, _, info = env.step(int(np.flatnonzero(obs["action_mask"])[0]))
        keys.add(info["arch_key"])
    assert len(keys) == 1


def test_table_benchmark_smoke(synth, tmp_path):
    """The benchmark end to end on a synthetic table: meta-training, PPO fine-tuning and baselines, report + plot."""
    out = tmp_path / "tq"
    low = ScreeningConfig(by="low_fidelity")
    screen = tmp_path / "screen.csv.gz"
    synthetic_table(screen, [low_fidelity_task(task(t), low) for t in TABLE_TASKS], scale=0.5)
    res = run_script("bench/table_quality.py", "--table", str(synth), "--screen-table", str(screen), "--seeds", "2",
                     "--n", "3,6", "--held-out", "digits-fgsm-e20-t444-r30", "--searchers",
                     "rl,random,uniform,prune,rl>evolution@3+surrogate@0.5+handover+pace+w4,random+screen@0.5,rl>evolution@3,"
                     "ppo-scratch+w4+refresh",
                     "--meta-iterations", "2",
                     "--meta-seeds", "2", "--out", str(out), "--screen-cost", "0.3", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "| rl |" in report and "| random |" in report and "regret N=6" in report
    assert "0.3 x the proxy's for the same sub-network" in report
    assert "| prune |" in report and "| random+screen@0.5 |" in report
    assert "| rl>evolution@3+surrogate@0.5+handover+pace+w4 |" in report
    assert "| rl>evolution@3 |" in report and "| ppo-scratch+w4+refresh |" in report
    assert "Regret against evaluation seconds" in report and "2 independent meta-trainings" in report
    # screening spends on both fidelities: its searches cost more seconds per evaluation than plain random search
    costs = json.loads((out / "results.json").read_text())["costs"]
    assert min(c[-1] / len(c) for c in costs["random+screen@0.5"]) > max(c[-1] / len(c) for c in costs["random"])
    assert (out / "regret.png").stat().st_size > 1000


T332_TASKS = ["digits-pgd-e20-t332-r35", "digits-fgsm-e20-t332-r50", "digits-cw-e20-t332-r35"]


def test_table_benchmark_held_out_kind_across_two_teachers(synth, tmp_path):
    """A held-out kind meta-trains on one teacher's tasks and is measured on another's: both tables serve one run,
    each held-out task gets its own table, and the best-found share is reported."""
    other = tmp_path / "t332.csv.gz"
    synthetic_table(other, [task(t) for t in T332_TASKS])
    splits = tmp_path / "splits.yaml"
    splits.write_text(f"cross:\n  meta: [{TABLE_TASKS[0]}, {TABLE_TASKS[1]}]\n  held_out: [{T332_TASKS[0]}, "
                      f"{T332_TASKS[2]}]\n  tables: [{synth}, {other}]\n")
    out = tmp_path / "tq"
    res = run_script("bench/table_quality.py", "--splits", str(splits), "--kind", "cross", "--seeds", "2",
                     "--n", "3,5", "--searchers", "rl,random,uniform", "--meta-iterations", "2", "--meta-seeds", "1",
                     "--out", str(out), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "held-out kind cross" in report and "t332.csv.gz" in report and "synth.csv.gz" in report
    assert f"**{T332_TASKS[0]}**" in report and f"**{T332_TASKS[2]}**" in report and "best found N=5" in report
    per_task = json.loads((out / "results.json").read_text())["per_task"]
    assert len(per_task[f"{T332_TASKS[2]}/rl"]) == 2 and len(per_task[f"{T332_TASKS[0]}/uniform"][0]) == 5
    # a kind that is not in the file, and a held-out task that is a meta task: one line each, before any work
    res = run_script("bench/table_quality.py", "--splits", str(splits), "--kind", "nope", "--out", str(out))
    assert res.returncode == 2 and "known: cross" in res.stderr and "Traceback" not in res.stderr
    res = run_script("bench/table_quality.py", "--splits", str(splits), "--kind", "cross", "--held-out",
                     TABLE_TASKS[0], "--out", str(out))
    assert res.returncode == 2 and "meta-training tasks of --kind cross" in res.stderr


def test_table_benchmark_refuses_a_task_the_table_cannot_answer(synth, tmp_path):
    res = run_script("bench/table_quality.py", "--table", str(synth), "--held-out", "digits-pgd-e10-t444-r25",
                     "--out", str(tmp_path / "x"), timeout=120)
    assert res.returncode == 2 and "not this table's" in res.stderr and "Traceback" not in res.stderr
    for name, says in (("rl+surrogate+fast", "unknown flag(s) ['fast']"), ("rl+w2+w3", "more than one +wN"),
                       ("rl+surrogate@2", "keep"), ("rl+w5000", "in_flight"), ("rl+refresh", "+refresh"),
                       ("random+w4+refresh", "needs an agent")):
        res = run_script("bench/table_quality.py", "--table", str(synth), "--searchers", name,
                         "--out", str(tmp_path / "x"), timeout=120)
        assert res.returncode == 2 and says in res.stderr and "Traceback" not in res.stderr
    res = run_script("bench/table_quality.py", "--table", str(synth), "--screen-cost", "0", "--out",
                     str(tmp_path / "x"), timeout=120)
    assert res.returncode == 2 and "--screen-cost 0" in res.stderr and "Traceback" not in res.stderr


def test_the_pruning_baseline_reads_the_committed_tables_teacher_and_fits_every_budget():
    for name in ("digits-cw-e20-t444-r30", "digits-pgd-e20-t444-r25", "digits-fgsm-e20-t444-r50"):
        t = task(name)
        ev = TableEvaluator(read_table(COMMITTED, t))
        assert len(ev.teacher_stats(t).bn_scales) == 3
        steps = run_searcher("prune", t, ev, 10)
        assert len(steps) == 1 and steps[0].macs <= t.budget


def test_the_pruning_baseline_says_what_a_table_without_bn_scales_lacks(tmp_path, synth):
    lines = gzip.open(synth, "rt").read().split("\n")
    header = json.loads(lines[0][len("#json "):])
    for stats in header["teacher_stats"].values():
        del stats["bn_scales"]
    old = tmp_path / "old.csv.gz"
    with gzip.open(old, "wt") as f:
        f.write("\n".join(["#json " + json.dumps(header), *lines[1:]]))
    cw = task("digits-cw-e20-t444-r30")
    with pytest.raises(ConfigError, match="BN scales"):
        run_searcher("prune", cw, TableEvaluator(read_table(old, cw)), 5)


@pytest.mark.parametrize("path", [COMMITTED, COMMITTED_SCREEN], ids=["proxy", "screening"])
def test_committed_table_equals_live_evaluations(path):
    """A handful of rows evaluated live again equal the table: the proxy's seeds are derived from the task, the
    sub-network and the fidelity, so they must (on one thread, as the table's workers ran)."""
    import torch

    from rcnas.proxy.local import ProxyRunner

    if not path.is_file():
        pytest.skip(f"{path.name} is generated by bench/build_table.py")
    tasks = [task(t) for t in TABLE_TASKS]
    if path == COMMITTED_SCREEN:
        tasks = [low_fidelity_task(t, ScreeningConfig(by="low_fidelity")) for t in tasks]
    tt = table_task(tasks)
    table = read_table(path, tt)
    here = numerics()
    made = {k: table.header.get(k) for k in here}
    if made != here:
        pytest.skip(f"the table's figures are those of {made}; this machine is {here}, whose kernels round "
                    "differently: equal only in distribution")
    assert len(table.rows) == sum(1 for _ in every_subnet(tt.space))
    rows = sorted(table.rows.values(), key=lambda r: r.macs)[:: len(table.rows) // 3][:3]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner = ProxyRunner()
        for row in rows:
            m = runner.compute(tt, row.arch)
            assert m.macs == row.macs and m.status == row.status
            live = {"pgd20": m.robust_acc, **m.also}
            assert live == pytest.approx(row.robust, abs=1e-6) and m.clean_acc == pytest.approx(row.clean, abs=1e-6)
    finally:
        torch.set_num_threads(threads)


def test_rerank_benchmark_refuses_tasks_that_train_differently(synth, tmp_path):
    """Its full trainings are shared between tasks: a task with another recipe is refused before any work."""
    res = run_script("bench/rerank_quality.py", "--table", str(synth), "--tasks",
                     "digits-cw-e20-t444-r30,digits-pgd-e10-t444-r25", "--out", str(tmp_path / "x"), timeout=120)
    assert res.returncode == 2 and "trains or attacks differently" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x").exists()
    res = run_script("bench/rerank_quality.py", "--table", str(synth), "--top-k", "0", "--out", str(tmp_path / "y"),
                     timeout=120)
    assert res.returncode == 2 and "--top-k" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_rerank_benchmark_smoke(synth, tmp_path):
    """The live re-ranking benchmark end to end at toy size: the table's top 2, re-ranked live, both trained from
    scratch and attacked on the test split; a rerun answers from the store and the finished results."""
    out = tmp_path / "rr"
    cmd = ["bench/rerank_quality.py", "--table", str(synth), "--tasks", "digits-fgsm-e20-t444-r30", "--top-k", "2",
           "--epochs", "0.3", "--repeats", "2", "--train-seeds", "1", "--out", str(out)]
    res = run_script(*cmd, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "| digits-fgsm-e20-t444-r30 | fgsm eps 51/255 |" in report and "Re-ranked minus plain pick" in report
    assert "pruned (slimming)" in report
    again = run_script(*cmd, timeout=600)
    assert again.returncode == 0 and "reusing 3 finished result(s)" in again.stdout + again.stderr


def test_held_out_verdict_says_where_the_agent_meets_the_targets(tmp_path):
    """The verdict script on made-up curves: an agent ahead early and level late meets the targets; one that a
    baseline beats early, or that finds the best less often, does not."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("verdict", ROOT / "bench" / "held_out_verdict.py")
    verdict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verdict)
    rng = np.random.default_rng(0)

    def curves(early: float, late: float, found: int) -> list[list[float]]:
        out = []
        for k in range(30):
            end = 0.0 if k < found else late + 0.01 * rng.random()
            out.append([early + 0.01 * rng.random()] * 25 + [end] * 75)
        return out

    good = {"rl": curves(0.02, 0.01, 10), "random": curves(0.1, 0.01, 5), "uniform": [[0.2] * 100] * 30}
    v = verdict.verdict(good, "rl", [10, 25], [50, 100])
    assert v["ok"] and v["found"][:2] == (10, 30)
    behind = {**good, "evolution": curves(0.015, 0.01, 10)}  # a baseline as good early: not ahead any more
    assert not verdict.verdict(behind, "rl", [10, 25], [50, 100])["ok"]
    rarer = {**good, "random": curves(0.1, 0.01, 20)}  # a baseline finds the best in more seeds
    v = verdict.verdict(rarer, "rl", [10, 25], [50, 100])
    assert not v["ok"] and not v["found_ok"]
    run = tmp_path / "tq"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"kind": "tighter", "per_task": {f"t1/{s}": c for s, c in
                                                                                  good.items()}}))
    res = run_script("bench/held_out_verdict.py", str(run))
    assert res.returncode == 0 and "| tighter / t1 |" in res.stdout and "met |" in res.stdout
    # another searcher's run of the same kind, to N = 25 only: read with the first, judged where it was measured
    other = tmp_path / "tq2"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"kind": "tighter", "per_task": {
        "t1/rl+x": [[0.001] * 25] * 30}}))
    res = run_script("bench/held_out_verdict.py", str(run), str(other), "--agent", "rl+x", "--not-behind", "")
    assert res.returncode == 0 and "| tighter / t1 |" in res.stdout and "tighter, pooled" in res.stdout
    assert "0.001 ± 0.000" in res.stdout
    res = run_script("bench/held_out_verdict.py", str(run), str(other), "--agent", "rl+x")
    assert res.returncode == 2 and "fewer than N = 50" in res.stderr
    res = run_script("bench/held_out_verdict.py", str(tmp_path / "missing"))
    assert res.returncode == 2 and "no such file" in res.stderr and "Traceback" not in res.stderr
