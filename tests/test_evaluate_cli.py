"""evaluate.py as a user runs it: the smoke run's table, --profile, and one clear line (exit 2) per mistake."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT, run_script

TASK = "configs/tasks/digits-pgd-e20-t444-r35.yaml"
SUB = "configs/subnets/digits/tiny-444-half.yaml"


def test_smoke_run_writes_a_consistent_table(tmp_path):
    proc = run_script("evaluate.py", "--smoke-test", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    (r,) = results
    accs = {a["label"]: a["accuracy"] for a in r["attacks"]}
    assert set(accs) == {"fgsm", "pgd20", "cw40", "aa_compact"}
    assert all(a <= r["clean"] for a in accs.values())
    assert r["worst_case"] <= min(accs.values())
    assert r["eps_255"] == "51/255" and r["n_examples"] == 64 and r["split"] == "test" and r["seed"] == 0
    assert r["macs"] == 712976 and r["params"] == 94422
    assert r["provenance"]["device"] == r["device"] and r["provenance"]["pyautoattack"] == "0.2.0"
    assert "pgd20 (20 steps)" in proc.stdout and "51/255" in proc.stdout
    assert (tmp_path / "results.md").read_text().count("|") > 10
    assert (tmp_path / "tiny-444-half" / "model.pt").is_file()


def test_checkpoint_is_evaluated_without_training(tmp_path):
    first = run_script("evaluate.py", "--smoke-test", "--out", str(tmp_path / "a"), "--attacks", "clean,pgd20")
    assert first.returncode == 0, first.stderr
    ckpt = tmp_path / "a" / "tiny-444-half" / "model.pt"
    again = run_script("evaluate.py", SUB, "--task", TASK, "--checkpoint", str(ckpt), "--n-examples", "64",
                       "--attacks", "clean,pgd20", "--out", str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr
    a = json.loads((tmp_path / "a/results.json").read_text())[0]
    b = json.loads((tmp_path / "b/results.json").read_text())[0]
    assert "training" not in again.stderr
    assert a["clean"] == b["clean"]
    assert [x["accuracy"] for x in a["attacks"]] == [x["accuracy"] for x in b["attacks"]]


def test_profile_prints_params_and_macs(tmp_path):
    proc = run_script("evaluate.py", "configs/subnets/cifar10/WRN-A1.yaml", "--profile")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["params"] == pytest.approx(18.71e6, rel=0.01) and out["macs"] == pytest.approx(5.08e9, rel=0.01)


def _one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_bad_inputs_each_get_one_line_and_exit_2(tmp_path):
    _one_line_error(run_script("evaluate.py", "nope.yaml", "--task", TASK), "nope.yaml", "no such config file")
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / TASK).read_text().replace("base: _digits_base.yaml",
                                                     f"base: {ROOT / 'configs/tasks/_digits_base.yaml'}")
                   + "colour: red\n")
    _one_line_error(run_script("evaluate.py", SUB, "--task", str(bad)), "colour", "unknown key")
    eps = tmp_path / "eps.yaml"
    eps.write_text(bad.read_text().replace("colour: red\n", "").replace('epsilon: "1/5"', "epsilon: 0.2"))
    _one_line_error(run_script("evaluate.py", SUB, "--task", str(eps)), "no explicit unit")
    big = "configs/subnets/cifar10/WRN-A1.yaml"
    _one_line_error(run_script("evaluate.py", big, "--task", TASK), "larger than teacher tiny-444")
    low = tmp_path / "low.yaml"
    low.write_text(bad.read_text().replace("colour: red\n", "").replace("budget: {ratio: 0.35}", "budget: {macs: 10}"))
    _one_line_error(run_script("evaluate.py", SUB, "--task", str(low)), "below the smallest sub-network")
    _one_line_error(run_script("evaluate.py", SUB, "--task", TASK, "--attacks", "pgd,square"), "--attacks")
    cifar = "configs/tasks/cifar10-cw-wrna4-10g.yaml"
    _one_line_error(run_script("evaluate.py", "configs/subnets/cifar10/WRN-A1.yaml", "--task", cifar,
                               "--data-root", str(tmp_path)), "cifar10", "not found", str(tmp_path))


@pytest.mark.slow
@pytest.mark.ray
def test_several_configs_run_in_parallel_on_ray_workers(tmp_path):
    proc = run_script("evaluate.py", SUB, "configs/subnets/digits/tiny-444-deep-narrow.yaml", "--task", TASK,
                      "--epochs", "0.3", "--n-examples", "32", "--attacks", "clean,pgd20", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(r["name"] for r in results) == ["tiny-444-deep-narrow", "tiny-444-half"]
    assert len({r["node"] for r in results}) == 1 and all(r["device"] == "cpu" for r in results)
    assert "done: tiny-444-half" in proc.stderr and "done: tiny-444-deep-narrow" in proc.stderr
    assert "(pid=" in proc.stderr or "pid=" in proc.stderr + proc.stdout, "work ran in Ray worker processes"


def test_run_jobs_keeps_earlier_results_and_reuses_finished_jobs(tmp_path):
    from rcnas.evaluation.final import EvalJob
    from rcnas.evaluation.jobs import run_jobs
    from rcnas.models.teachers import get_teacher
    from rcnas.task import load_task

    arch = get_teacher("tiny-444").subnet((1, 1, 1), (1, 1, 1), ("basic_block",) * 3)
    task = load_task(ROOT / TASK)
    run_jobs([EvalJob("earlier", arch, task, ("clean",), str(tmp_path), epochs=0.05, n_examples=16)],
             tmp_path, no_ray=True)
    job = EvalJob("new", arch, task, ("clean",), str(tmp_path), epochs=0.05, n_examples=16)
    results = run_jobs([job], tmp_path, no_ray=True)
    assert [r.name for r in results] == ["new"]
    assert [r["name"] for r in json.loads((tmp_path / "results.json").read_text())] == ["earlier", "new"]
    said: list[str] = []
    again = run_jobs([job], tmp_path, no_ray=True, log=said.append)  # a rerun answers from results.json
    assert again == results and any("reusing 1 finished result" in m for m in said)
    changed = EvalJob("new", arch, task, ("clean",), str(tmp_path), epochs=0.05, n_examples=8)
    assert run_jobs([changed], tmp_path, no_ray=True)[0].n_examples == 8  # other settings: computed again


def test_final_jobs_start_with_the_most_macs():
    from rcnas.distributed.final_jobs import longest_first
    from rcnas.evaluation.final import EvalJob
    from rcnas.models.teachers import get_teacher
    from rcnas.task import load_task

    teacher = get_teacher("tiny-444")
    task = load_task(ROOT / TASK)
    small = teacher.subnet((1, 1, 1), (1, 1, 1), ("basic_block",) * 3)
    mid = teacher.subnet((2, 2, 2), (2, 2, 2), ("basic_block",) * 3)
    jobs = [EvalJob(name, arch, task, ("clean",), "unused") for name, arch in
            [("small", small), ("teacher", teacher.arch), ("mid", mid)]]
    assert [j.name for j in longest_first(jobs)] == ["teacher", "mid", "small"]
