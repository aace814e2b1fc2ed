"""The original RC-NAS README's names: its searched RL_*g configs are here, equal to RobustResNet-A1..A4, within
their named budgets, and evaluable against the paper-evaluation tasks."""

from __future__ import annotations

import json

import pytest

from rcnas.evaluation.command import check_fits
from rcnas.space.cost import arch_cost
from rcnas.space.schema import load_subnet
from rcnas.task import load_task
from tests.conftest import ROOT, run_script

PAPER = [(ds, budget, k) for ds in ("cifar10", "cifar100") for k, budget in enumerate((5, 10, 20, 40), start=1)]


@pytest.mark.parametrize("dataset, budget, k", PAPER, ids=lambda v: str(v))
def test_rl_configs_are_the_robustresnet_family_within_their_budgets(dataset, budget, k):
    folder = ROOT / "configs/subnets" / dataset
    arch, sub = load_subnet(folder / f"RL_{budget}g.yaml")
    same, _ = load_subnet(folder / f"RobustResNet-A{k}.yaml")
    assert arch == same
    task = load_task(ROOT / f"configs/tasks/{dataset}-paper-rrna4.yaml")
    check_fits(f"RL_{budget}g.yaml", arch, sub, task)  # evaluable with the paper-evaluation task
    macs = arch_cost(arch, task.shape).macs
    assert abs(macs / (budget * 1e9) - 1) < 0.10, f"{macs / 1e9:.2f}G MACs for a {budget}G budget"


def test_profile_of_rl_5g_prints_robustresnet_a1_sizes():
    proc = run_script("evaluate.py", "configs/subnets/cifar10/RL_5g.yaml", "--profile")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["arch"] == "D14-14-7 C80-224-192 rrr"
    assert round(out["params"] / 1e6, 2) == 19.22 and round(out["macs"] / 1e9, 2) == 5.11
