"""The search-quality benchmark end to end on the seconds-long smoke tasks (slow: meta-training, two PPO searches,
four baselines and three final trainings)."""

from __future__ import annotations

import pytest

from rcnas.proxy.store import EvaluationStore
from tests.conftest import run_script


@pytest.mark.slow
def test_search_quality_benchmark_reports_every_searcher_and_reuses_its_store(tmp_path):
    args = ["bench/search_quality.py", "--experiment", "configs/experiments/smoke.yaml", "--held-out",
            "configs/tasks/smoke/smoke-target.yaml", "--seeds", "1", "--n", "2,4", "--final-n", "2",
            "--meta-iterations", "1", "--out", str(tmp_path)]
    first = run_script(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    for searcher in ("rl", "ppo-scratch", "random", "evolution", "compound", "uniform"):
        assert f"| **{searcher}** | mean over tasks |" in report
    assert "N=2: val robust acc" in report and "| clean | pgd20 |" in report
    store = EvaluationStore(tmp_path / "evaluations.sqlite")
    stored, final = len(store), (tmp_path / "final-N2" / "results.json").read_text()
    again = run_script(*args)  # everything is in the store, the meta checkpoint and the final results
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(store) == stored and (tmp_path / "final-N2" / "results.json").read_text() == final
    assert (tmp_path / "report.md").read_text().split("\n\n", 1)[1] == report.split("\n\n", 1)[1]


@pytest.mark.slow
def test_the_gpu_pipeline_script_runs_on_a_cpu(tmp_path):
    """bench/gpu_pipeline.py, the one script a GPU session runs, kept working where there is no GPU: the search on
    CPU workers and evaluate.py's full attack suite, each figure labelled, reported attacks in exact fp32."""
    import json

    proc = run_script("bench/gpu_pipeline.py", "--out", str(tmp_path), timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_pipeline.json").read_text())
    if report["gpus"] == 0:
        (search,) = report["searches"].values()
        assert search["evaluations_computed"] >= 1 and search["evaluations_per_gpu_hour"] is None
    else:
        assert set(report["searches"]) == {"whole", "half"}
    evaluation = report["evaluate"]
    assert set(evaluation["attacks"]) == {"fgsm", "pgd20", "cw40", "aa"}
    assert evaluation["split"] == "test" and evaluation["n_examples"] == 16 and evaluation["epsilon"] == "8/255"
    assert evaluation["attack_math"] == "fp32, TF32 off"


@pytest.mark.slow
def test_the_scale_simulation_runs_both_samplers_and_reports_them(tmp_path):
    import json

    run = run_script("bench/scale_simulation.py", "--workers", "2", "--evaluations", "10", "--seeds", "1",
                     "--n", "3,5", "--time-scale", "0.002", "--out", str(tmp_path), timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["sampler"], r["ordered"]): r for r in results["utilisation"]}
    assert set(rows) == {("env_runners", False), ("async", False), ("async", True)}
    assert all(r["evaluations"] >= 4 and 0 < r["utilisation"] <= 1.0 for r in rows.values()), rows
    assert set(results["regret"]) == {"env_runners@1", "async@2"}
    assert all(len(c) == 5 and min(c) >= 0 for curves in results["regret"].values() for c in curves)
    assert "| 2 | async |" in run.stdout and "regret at N=5" in run.stdout
