"""An export ships exactly the weights its numbers describe, with the number of test examples beside every figure:
``evaluate.py --checkpoint other.pt --export robustbench X`` exports other.pt even when ``--out`` holds an earlier
training's model.pt; weights that differ from those measured are refused with one line; a truncated test set is
always footnoted; the card names the pyautoattack that ran; the training log says how long training really was."""

from __future__ import annotations

import json
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from rcnas.evaluation.command import evaluate, export_job
from rcnas.evaluation.export import full_test_size, model_card, model_info, to_robustbench_state
from rcnas.evaluation.final import EvalJob, FinalResult, evaluate_job, training_length
from rcnas.evaluation.robustness import AttackAccuracy
from rcnas.infra.errors import ConfigError
from rcnas.infra.provenance import environment, state_sha256
from rcnas.models.builder import build_model
from rcnas.space.schema import load_subnet
from rcnas.task import load_task
from tests.conftest import ROOT
from tests.test_export import ARCH
from tests.test_published_teachers import randomise

TASK = ROOT / "configs/tasks/digits-pgd-e20-t444-r35.yaml"
SUB = ROOT / "configs/subnets/digits/tiny-444-half.yaml"
CIFAR_TASK = ROOT / "configs/tasks/cifar10-cw-wrna4-10g.yaml"


def weights(arch, shape, seed: int, path: Path) -> dict[str, torch.Tensor]:
    """Random weights (BN statistics included) saved at ``path`` in rcnas's format; returns the state dict."""
    torch.manual_seed(seed)
    state = randomise(build_model(arch, shape), seed).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_export_ships_the_checkpoint_not_an_old_model_pt(tmp_path):
    """The issue's scenario, in-process: an earlier training left D/<name>/model.pt; evaluating --checkpoint
    other.pt into D and exporting ships other.pt's weights, and every file says how many examples were used."""
    arch, _ = load_subnet(SUB)
    shape = load_task(TASK).shape
    out, rb = tmp_path / "D", tmp_path / "X"
    old = weights(arch, shape, 1, out / "tiny-444-half" / "model.pt")
    other = weights(arch, shape, 2, tmp_path / "other.pt")
    assert not same(old, other)
    (result,) = evaluate([SUB], TASK, attacks="clean,fgsm", checkpoint=str(tmp_path / "other.pt"), n_examples=16,
                         out=out, no_ray=True, export_robustbench=rb)
    assert result.weights_sha256 == state_sha256(other) != state_sha256(old)
    folder = rb / "tiny-444-half"
    shipped = torch.load(folder / "tiny-444-half.pt", weights_only=True)  # digits: rcnas's names (1 channel)
    assert same(shipped, other) and not same(shipped, old)

    info = json.loads((folder / "model_info.json").read_text())
    assert info["n_examples"] == 16 and info["full_test_size"] == 359 and info["full_test_split"] is False
    assert info["clean_acc"] is None and info["autoattack_acc"] is None
    assert "truncated test set: 16 of the 359" in info["footnote"]
    assert [m["label"] for m in info["measured"]] == ["clean", "fgsm", "worst_case"]
    assert all(m["n_examples"] == 16 and m["full_test_split"] is False for m in info["measured"])
    assert info["evaluated_state_sha256"] == result.weights_sha256
    card = (folder / "README.md").read_text()
    assert f"pyautoattack {version('pyautoattack')}" in card and "autoattack ?" not in card
    assert str(tmp_path / "other.pt") in card and "16 of 359 *" in card and "truncated test set" in card
    assert json.loads((out / "results.json").read_text())[0]["weights_sha256"] == result.weights_sha256


def cifar_job(tmp_path: Path) -> tuple[EvalJob, FinalResult, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A 3-channel network evaluated from ``tmp_path/other.pt`` into ``tmp_path/D``, where an old model.pt lies."""
    task = load_task(CIFAR_TASK)
    old = weights(ARCH, task.shape, 1, tmp_path / "D" / "mine" / "model.pt")
    other = weights(ARCH, task.shape, 2, tmp_path / "other.pt")
    job = EvalJob("mine", ARCH, task, ("clean", "aa"), str(tmp_path / "D"), checkpoint=str(tmp_path / "other.pt"),
                  n_examples=10_000)
    result = FinalResult(
        name="mine", arch=ARCH.short(), params=1, macs=1, dataset="cifar10", task=task.name, epsilon=8 / 255,
        eps_255="8/255", seed=0, n_examples=10_000, split="test", clean=0.8,
        attacks=(AttackAccuracy("aa", "aa", 8 / 255, 100, 0.45, 10_000, 0, 1.0),), worst_case=0.45, lipschitz=1.0,
        train={"checkpoint": str(tmp_path / "other.pt")}, wall_seconds=1.0, device="cpu", node="x",
        provenance=environment("cpu"), weights_sha256=state_sha256(other))
    return job, result, old, other


def test_robustbench_export_maps_the_measured_checkpoint(tmp_path):
    job, result, old, other = cifar_job(tmp_path)
    files = export_job(job, result, 10_000, tmp_path / "X")
    shipped = torch.load(tmp_path / "X" / "mine.pt", weights_only=True)
    assert same(shipped, to_robustbench_state(other, ARCH)) and not same(shipped, to_robustbench_state(old, ARCH))
    info = json.loads((tmp_path / "X" / "model_info.json").read_text())
    assert info["autoattack_acc"] == "45.00" and info["footnote"] is None and info["full_test_split"] is True
    assert {f.name for f in files} >= {"mine.pt", "model_info.json", "README.md", "architecture.json"}


def test_other_weights_than_measured_are_refused_with_one_line(tmp_path):
    job, result, _, _ = cifar_job(tmp_path)
    weights(ARCH, job.task.shape, 3, tmp_path / "other.pt")  # rewritten after the evaluation
    with pytest.raises(ConfigError) as err:
        export_job(job, result, 10_000, tmp_path / "X")
    msg = str(err.value)
    assert "\n" not in msg and "other.pt" in msg and "not the weights mine was measured with" in msg
    assert not (tmp_path / "X").exists()  # nothing written
    with pytest.raises(ConfigError, match="records no hash"):  # a result from before the hash was recorded
        export_job(job, replace(result, weights_sha256=""), 10_000, tmp_path / "X")


def test_a_rewritten_checkpoint_is_evaluated_again(tmp_path):
    """The result cache keys on the checkpoint's content, not only its name: a rerun after the file changed
    measures the new weights instead of answering with the old numbers (which the export would then refuse)."""
    job, _, _, _ = cifar_job(tmp_path)
    before = job.key()
    weights(ARCH, job.task.shape, 3, tmp_path / "other.pt")
    assert job.key() != before


def aa_result(n: int) -> FinalResult:
    return FinalResult(
        name="m", arch="a", params=1, macs=1, dataset="cifar10", task="t", epsilon=8 / 255, eps_255="8/255", seed=0,
        n_examples=n, split="test", clean=0.8, attacks=(AttackAccuracy("aa", "aa", 8 / 255, 100, 0.45, n, 0, 1.0),),
        worst_case=0.45, lipschitz=1.0, train={}, wall_seconds=1.0, device="cpu", node="x",
        provenance={"pyautoattack": "0.2.0"}, weights_sha256="0" * 64)


def test_a_truncated_test_folder_is_always_footnoted():
    """AutoAttack on every image of a test folder that holds 1,000 of CIFAR-10's 10,000 is not RobustBench's
    protocol: no protocol numbers, a footnote, and the example count beside every figure."""
    full = full_test_size("cifar10", 1_000)
    assert full == 10_000
    info = model_info(aa_result(1_000), full, "a")
    assert info["clean_acc"] is None and info["autoattack_acc"] is None
    assert "truncated test set: 1000 of the 10000" in info["footnote"]
    assert info["n_examples"] == 1_000 and info["full_test_split"] is False
    assert all(m["n_examples"] == 1_000 and m["full_test_size"] == 10_000 for m in info["measured"])
    card = model_card(aa_result(1_000), "x: 1\n", None, "why", "m.pt", full)
    assert card.count("1000 of 10000 *") == 3 and "not RobustBench-protocol numbers" in card
    whole = model_info(aa_result(10_000), full, "a")
    assert whole["autoattack_acc"] == "45.00" and whole["footnote"] is None and whole["full_test_split"] is True
    card = model_card(aa_result(10_000), "x: 1\n", None, "why", "m.pt", full)
    assert "10000 of 10000 |" in card and " * |" not in card and "truncated" not in card


def test_card_names_the_pyautoattack_that_ran():
    card = model_card(replace(aa_result(10), provenance=environment("cpu")), "x: 1\n", None, "why", "m.pt", 10)
    assert f"pyautoattack {version('pyautoattack')}" in card and "?" not in card.split("**Code**")[1].split("\n")[0]


def test_training_log_states_the_epochs_that_run(tmp_path):
    recipe = load_task(TASK).config.training
    assert training_length(640, recipe.model_copy(update={"epochs": 0.05, "batch_size": 128})) == \
        "0.2 epochs (1 batch of 128; 0.05 asked, rounded up to whole batches)"
    assert training_length(1_079, recipe) == "15 epochs (255 batches of 64)"
    arch, _ = load_subnet(SUB)
    said: list[str] = []
    result = evaluate_job(EvalJob("t", arch, load_task(TASK), ("clean",), str(tmp_path), epochs=0.05, n_examples=16),
                          log=said.append)
    line = next(m for m in said if "training " in m)
    assert "training 0.0588 epochs (1 batch of 64; 0.05 asked" in line  # 1,079 examples: 17 batches an epoch
    assert result.train["epochs"] == pytest.approx(1 / 17)
