"""evaluate.py --export robustbench: the weights load into RobustBench's own class and give the same logits; the
model_info fields follow RobustBench's protocol; a network no RobustBench class holds is exported with the reason."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from rcnas.evaluation.export import export_robustbench, model_info, robustbench_kwargs
from rcnas.evaluation.final import FinalResult
from rcnas.evaluation.robustness import AttackAccuracy
from rcnas.infra.provenance import state_sha256
from rcnas.models.builder import build_model
from rcnas.space.arch import ArchSpec, InputShape, StageSpec
from tests.conftest import run_script
from tests.test_published_teachers import assert_same_logits, randomise, robustbench_module

ARCH = ArchSpec(16, (StageSpec(2, 16, "basic_block", 1, 3, "SiLU"), StageSpec(1, 32, "basic_block", 2, 3),
                     StageSpec(2, 48, "basic_block", 2, 3)),
                input_norm=((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)))


def result(attacks: list[tuple[str, str, int, float]], n: int = 100) -> FinalResult:
    return FinalResult(
        name="mine", arch=ARCH.short(), params=1000, macs=2000, dataset="cifar10", task="t", epsilon=8 / 255,
        eps_255="8/255", seed=0, n_examples=n, split="test", clean=0.8,
        attacks=tuple(AttackAccuracy(lb, kind, 8 / 255, steps, acc, n, 0, 1.0) for lb, kind, steps, acc in attacks),
        worst_case=0.4, lipschitz=3.0, train={"epochs": 1}, wall_seconds=1.0, device="cpu", node="x",
        provenance={"code_version": "0.1.0+abc", "torch": torch.__version__})


def test_exported_weights_load_into_robustbench_class_with_equal_logits(tmp_path):
    shape = InputShape(3, 32, 10)
    ours = randomise(build_model(ARCH, shape)).eval()
    measured = replace(result([("pgd20", "pgd", 20, 0.5)]), weights_sha256=state_sha256(ours.state_dict()))
    files = export_robustbench(measured, ARCH, shape, ours.state_dict(), "x: 1\n", 10_000, tmp_path)
    assert {f.name for f in files} >= {"mine.pt", "architecture.json", "model_info.json", "README.md"}
    spec = json.loads((tmp_path / "architecture.json").read_text())
    theirs = robustbench_module("robust_resnet").PreActResNet(**spec["kwargs"])
    theirs.load_state_dict(torch.load(tmp_path / "mine.pt", weights_only=True))  # strict: every tensor matches
    assert_same_logits(ours, theirs.eval())
    card = (tmp_path / "README.md").read_text()
    assert "PreActResNet(" in card and "| pgd20 | pgd | 20 | 50.00 | 100 of 10000 * |" in card and "8/255" in card


def test_model_info_follows_robustbench_protocol():
    full = model_info(result([("aa", "aa", 100, 0.45)], n=10_000), 10_000, "a")
    assert full["clean_acc"] == "80.00" and full["autoattack_acc"] == "45.00" and full["footnote"] is None
    subset = model_info(result([("aa", "aa", 100, 0.45)], n=500), 10_000, "a")
    assert subset["autoattack_acc"] is None and "500 of 10000" in subset["footnote"]
    compact = model_info(result([("aa_compact", "aa_compact", 100, 0.47)], n=10_000), 10_000, "a")
    assert compact["autoattack_acc"] is None and "no standard AutoAttack" in compact["footnote"]
    assert "aa_compact (aa_compact, 100 steps) 47.00%" in compact["footnote"]


def test_what_robustbench_cannot_hold_says_why():
    assert robustbench_kwargs(ARCH, InputShape(1, 8, 10))[1].startswith("RobustBench's networks take 3-channel")
    robust = ArchSpec(16, (StageSpec(1, 16, "robust_res_block"),) * 3)
    assert "robust-block" in robustbench_kwargs(robust, InputShape())[1]


@pytest.mark.slow
def test_evaluate_py_exports(tmp_path):
    res = run_script("evaluate.py", "--smoke-test", "--attacks", "clean,fgsm", "--out", str(tmp_path / "o"),
                     "--export", "robustbench", str(tmp_path / "rb"), "--no-ray", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    folder = tmp_path / "rb" / "tiny-444-half"
    info = json.loads((folder / "model_info.json").read_text())
    assert info["autoattack_acc"] is None and "fgsm" in info["footnote"] and info["eps"] == "51/255"
    assert "3-channel" in (folder / "README.md").read_text() and (folder / "architecture.yaml").is_file()
    bad = run_script("evaluate.py", "--smoke-test", "--export", "onnx", str(tmp_path / "x"), timeout=120)
    assert bad.returncode == 2 and "robustbench" in bad.stderr
