"""The bad-input and fault drill: every user mistake is one `error:` line with exit code 2 before any work starts
(nothing written, no code run from a file), and faults (damaged files, crashed or diverged trainings) lose nothing
and hang nothing."""

from __future__ import annotations

import json
import pickle
import sqlite3

import pytest
import torch
import yaml

from rcnas.infra.errors import ConfigError
from rcnas.task import load_task
from tests.conftest import ROOT, run_script, tiny_task
from tests.test_config import GOOD, write

TASK = "configs/tasks/digits-cw-e20-t444-r30.yaml"
SUB = "configs/subnets/digits/tiny-444-half.yaml"


@pytest.mark.parametrize("change, fragment", [
    (('"1/5"', '"0/1"'), "outside (0, 1]"),
    (('"1/5"', '"2/1"'), "outside (0, 1]"),
    (("{ratio: 0.5}", "{macs: .nan}"), "not a positive count"),
    (("{ratio: 0.5}", "{macs: .inf}"), "not a positive count"),
    (("{ratio: 0.5}", "{macs: -5}"), "not a positive count"),
    (("{ratio: 0.5}", "{ratio: 0.5}\ntraining: {lr: .inf}"), "training.lr"),
    (("{ratio: 0.5}", "{ratio: 0.5}\nreward: {failure: .nan}"), "reward.failure"),
    (('epsilon: "1/5"}', 'epsilon: "1/5", steps: 1000000000}'), "attack.steps"),
    (("name: t\n", "name: t\nname: u\n"), "duplicate key 'name'"),
    (("dataset: {name: digits}", "dataset: {name: digits, val_fraction: 1.5}"), "dataset.val_fraction"),
])
def test_bad_task_values_are_one_config_error(tmp_path, change, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        load_task(write(tmp_path, GOOD.replace(*change)))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_bad_files_are_one_config_error(tmp_path):
    p = tmp_path / "latin.yaml"
    p.write_bytes(GOOD.replace("name: t", "name: caf\xe9").encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_task(p)
    chain = tmp_path / "c0.yaml"
    chain.write_text("base: c1.yaml\n")
    for i in range(1, 12):
        (tmp_path / f"c{i}.yaml").write_text(f"base: c{i + 1}.yaml\n")
    with pytest.raises(ConfigError, match="levels of 'base:'"):
        load_task(chain)
    with pytest.raises(ConfigError, match=r"base: /etc/passwd is not a .yaml file"):
        load_task(write(tmp_path, "base: /etc/passwd\n" + GOOD))


def test_a_training_split_emptied_by_the_validation_fraction_is_refused():
    from rcnas.config import DatasetConfig
    from rcnas.data.registry import load_splits

    with pytest.raises(ConfigError, match="leaves no training examples"):
        load_splits(DatasetConfig(name="digits", val_fraction=0.9999))


@pytest.mark.parametrize("text, fragment", [
    ("finetune_iterations: 0", "finetune_iterations"),
    ("meta_iterations: 0", "meta_iterations"),
    ("final_eval: {attacks: [clean, pgd7]}", "unknown evaluation attack 'pgd7'"),
    ("final_eval: {n_examples: 0}", "final_eval.n_examples"),
    ("final_eval: {epochs: -3}", "final_eval.epochs"),
    ("target_task: {tasks}/./digits-pgd-e20-t444-r25.yaml", "also a meta-training task"),  # a meta task, respelled
])
def test_bad_experiment_values_are_one_config_error(tmp_path, text, fragment):
    from agents.config import load_experiment

    tasks = tmp_path / "tasks"  # task names resolve in the tasks folder beside the experiment's folder
    tasks.mkdir()
    for t in (ROOT / "configs/tasks").glob("*.yaml"):
        (tasks / t.name).write_text(t.read_text())
    (tmp_path / "experiments").mkdir()
    exp = yaml.safe_load((ROOT / "configs/experiments/digits.yaml").read_text())
    exp.update(yaml.safe_load(text.replace("{tasks}", str(tasks))))
    p = write(tmp_path / "experiments", yaml.safe_dump(exp), "exp.yaml")
    with pytest.raises(ConfigError) as err:
        load_experiment(p)
    assert fragment in str(err.value)


def test_a_robust_block_too_narrow_is_refused_when_loaded(tmp_path):
    from rcnas.space.schema import load_subnet

    text = (ROOT / "configs/subnets/cifar10/RobustResNet-A1.yaml").read_text()
    narrow = text.replace("channel_configs: [16, 80, 224, 192]", "channel_configs: [16, 4, 224, 192]")
    with pytest.raises(ConfigError, match="stage 1: robust_res_block with 4 planes is too narrow"):
        load_subnet(write(tmp_path, narrow, "narrow.yaml"))


def _one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-3000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for f in fragments:
        assert f in lines[0], lines[0]


def _evil_pickle(path, marker):
    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))  # would create ``marker`` if unpickled

    path.write_bytes(pickle.dumps({"stem.weight": Evil()}))


@pytest.mark.slow
def test_evaluate_cli_drill(tmp_path):
    out = tmp_path / "out"
    cases = [
        (["--epochs", "-3"], "--epochs -3"),
        (["--epochs", "nan"], "--epochs nan"),
        (["--n-examples", "0"], "--n-examples 0"),
        (["--n-examples", "100000"], "test split has 359"),
        (["--checkpoint", str(tmp_path / "missing.pt")], "no such file"),
        (["--attacks", "clean,square", "--profile"], "--attacks"),
    ]
    for extra, fragment in cases:
        _one_line_error(run_script("evaluate.py", SUB, "--task", TASK, "--out", str(out), *extra), fragment)
    assert not out.exists(), "nothing written for a refused command"
    a_file = write(tmp_path, "x", "file.txt")
    _one_line_error(run_script("evaluate.py", SUB, "--task", TASK, "--out", str(a_file)), "a file, not a folder")
    truncated = tmp_path / "trunc.pt"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    _one_line_error(run_script("evaluate.py", SUB, "--task", TASK, "--checkpoint", str(truncated)), "loads safely")
    other = tmp_path / "other.pt"
    from rcnas.models.builder import build_model
    from rcnas.models.teachers import get_teacher

    torch.save(build_model(get_teacher("tiny-222").arch, load_task(ROOT / TASK).shape).state_dict(), other)
    _one_line_error(run_script("evaluate.py", SUB, "--task", TASK, "--checkpoint", str(other)),
                    "has shape (10, 64), the sub-network")
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    _evil_pickle(evil, marker)
    _one_line_error(run_script("evaluate.py", SUB, "--task", TASK, "--checkpoint", str(evil)), "loads safely")
    assert not marker.exists(), "a pickle given as a checkpoint must never run"


@pytest.mark.slow
def test_train_cli_drill(tmp_path):
    empty = tmp_path / "empty"
    _one_line_error(run_script("train.py", "--resume", "--out", str(empty)), "holds no run to resume")
    _one_line_error(run_script("train.py", "--out", str(write(tmp_path, "x", "f.txt"))), "a file, not a folder")
    _one_line_error(run_script("train.py", "--task", "configs/tasks/cifar10-cw-wrna4-10g.yaml", "--data-root",
                               str(tmp_path), "--out", str(tmp_path / "run")), "cifar10", "not found")
    assert not (tmp_path / "run" / "evaluations.sqlite").exists(), "refused before Ray or the store started"


def test_a_folder_in_use_is_refused():
    import tempfile
    from pathlib import Path

    from rcnas.infra.locks import run_folder_lock

    folder = Path(tempfile.mkdtemp())
    with run_folder_lock(folder):
        with pytest.raises(ConfigError, match="in use by another run"):
            with run_folder_lock(folder):
                pass
    with run_folder_lock(folder):  # released: free again
        pass


def test_interrupt_says_how_to_resume(capsys):
    from rcnas.infra import cli

    def main():
        cli.RESUME_HINT.append("python train.py --resume --out runs/x")
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as code:
        cli.run_main(main)
    assert code.value.code == 130
    assert capsys.readouterr().err.strip() == ("interrupted: results already written are kept; resume with: "
                                               "python train.py --resume --out runs/x")


# -- faults --------------------------------------------------------------------------------------------------------
def test_damaged_foreign_or_older_stores_are_refused(tmp_path):
    from rcnas.proxy.store import EvaluationStore

    junk = write(tmp_path, "not a database at all " * 100, "junk.sqlite")
    with pytest.raises(ConfigError, match="not an rcnas evaluation store"):
        EvaluationStore(junk)
    foreign = tmp_path / "foreign.sqlite"
    sqlite3.connect(foreign).execute("CREATE TABLE people (name TEXT)").connection.commit()
    with pytest.raises(ConfigError, match="unknown tables"):
        EvaluationStore(foreign)
    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.execute("CREATE TABLE evaluations (task TEXT)")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="schema version 1"):
        EvaluationStore(old)
    fresh = EvaluationStore(tmp_path / "new.sqlite")
    fresh.close()
    EvaluationStore(tmp_path / "new.sqlite").close()  # its own files open again


def test_a_crashed_evaluation_is_not_stored(tmp_path):
    from dataclasses import replace

    from rcnas.proxy.local import LocalEvaluator
    from tests.fakes import FakeEvaluator

    task = tiny_task()
    arch = task.teacher.subnet((1, 1, 1), (1, 1, 1), ("basic_block",) * 3)
    crashed = replace(FakeEvaluator().evaluate(task, arch).metrics, status="error", reason="MemoryError")
    evaluator = LocalEvaluator(tmp_path / "store.sqlite")
    calls = []
    evaluator.runner.compute = lambda *a: calls.append(a) or crashed  # stands in for a crash, in a unit test
    assert not evaluator.evaluate(task, arch).metrics.ok and not evaluator.evaluate(task, arch).cached
    assert len(calls) == 2 and len(evaluator.store) == 0, "asked again, never stored"


def test_a_teacher_cache_killed_between_its_files_still_loads(tmp_path):
    from rcnas.data.registry import load_splits
    from rcnas.proxy.keys import teacher_key
    from rcnas.proxy.teacher import load_or_train_teacher

    task = tiny_task()
    data = load_splits(task.config.dataset)
    model, _ = load_or_train_teacher(task, data, tmp_path, torch.device("cpu"), log=lambda m: None)
    folder = tmp_path / "teachers" / teacher_key(task)
    (folder / "train.json").unlink()
    again, seconds = load_or_train_teacher(task, data, tmp_path, torch.device("cpu"), log=lambda m: None)
    assert seconds == 0.0 and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                     again.state_dict().values()))
    (folder / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not a usable checkpoint"):
        load_or_train_teacher(task, data, tmp_path, torch.device("cpu"), log=lambda m: None)


def test_training_that_diverges_keeps_its_best_epoch(digits):
    from rcnas.config import TrainConfig
    from rcnas.models.builder import build_model
    from rcnas.models.teachers import get_teacher
    from rcnas.space.arch import InputShape
    from rcnas.train import LOSSES, LoopOptions, adversarial_train

    cfg = TrainConfig.model_validate({"loss": "pgd_at", "epochs": 3, "batch_size": 256, "val_examples": 64,
                                      "attack": {"epsilon": "1/10", "steps": 1}})
    steps_per_epoch = -(-len(digits.train) // 256)
    calls = {"n": 0}

    def nan_in_epoch_two(model, x, y, c, g):  # the recipe's loss, then NaN once the second epoch is under way
        loss, logits = LOSSES.get("pgd_at")(model, x, y, c, g)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > steps_per_epoch + 1 else loss), logits

    torch.manual_seed(0)
    model = build_model(get_teacher("tiny-222").arch, InputShape(1, 8, 10))
    res = adversarial_train(model, digits, cfg, LoopOptions(num_classes=10, objective=nan_in_epoch_two))
    assert res.diverged and res.best_epoch == 1
    assert all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())


@pytest.mark.ray
def test_a_worker_side_failure_is_one_line_and_the_worker_is_not_lost(ray_local, tmp_path):
    from rcnas.config import TaskConfig
    from rcnas.distributed.service import RayEvaluator, evaluation_service
    from rcnas.infra.errors import EvaluationFailed
    from rcnas.task import resolve_task

    with evaluation_service(tmp_path / "run", n_workers=1, cache_dir=tmp_path / "cache", name="svc-drill",
                            data_root=str(tmp_path / "no-data")) as svc:
        client = RayEvaluator(svc.name, timeout_s=1200)
        cifar = resolve_task(TaskConfig.model_validate({
            "name": "cifar-missing", "dataset": {"name": "cifar10"}, "teacher": "tiny-222",
            "attack": {"epsilon": "8/255"}, "budget": {"ratio": 0.5}}))
        with pytest.raises(EvaluationFailed) as err:
            client.teacher_stats(cifar)
        message = str(err.value)
        assert "\n" not in message and "cifar10" in message and "not found" in message
        assert "teacher tiny-222" in message
        assert err.value.exit_code == 2, "a missing dataset is the user's to fix"
        digits = tiny_task()  # the single worker went back to the pool: the next evaluation runs
        arch = digits.teacher.subnet((1, 1, 1), (1, 1, 1), ("basic_block",) * 3)
        assert client.evaluate(digits, arch).metrics.ok
        assert client.stats()["workers"] == 1


def test_a_rerun_reuses_a_results_file_and_a_damaged_one_is_refused(tmp_path):
    from rcnas.evaluation.jobs import read_results

    assert read_results(tmp_path) == []
    (tmp_path / "results.json").write_text(json.dumps([{"name": "x"}]))
    with pytest.raises(ConfigError, match="not a results file"):
        read_results(tmp_path)


@pytest.mark.ray
def test_a_worker_that_never_answers_ends_in_one_line_not_a_hang(ray_local, tmp_path):
    from rcnas.distributed.service import RayEvaluator, evaluation_service
    from rcnas.infra.errors import EvaluationFailed

    # a worker asking for more CPUs than the machine has is never placed: it never joins the pool, and the wait
    # for a free worker ends in one line that says what the pool asks for and what the cluster has
    with evaluation_service(tmp_path / "run", n_workers=1, cache_dir=tmp_path / "cache", name="svc-stuck",
                            cpus_per_worker=64, call_timeout_s=2, max_retries=1, wait_s=3) as svc:
        task = tiny_task()
        with pytest.raises(EvaluationFailed, match=r"no evaluation worker became free in 3 s \(1 workers asking "
                                                   r"for .*'num_cpus': 64.*cluster resources"):
            RayEvaluator(svc.name, timeout_s=120).teacher_stats(task)
