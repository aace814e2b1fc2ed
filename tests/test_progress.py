"""Progress: bars only on a terminal, ETAs in plain lines, AutoAttack's sub-attacks reported as they finish."""

from __future__ import annotations

from rcnas.config import AttackConfig
from rcnas.evaluation.robustness import robust_accuracy
from rcnas.infra.progress import Progress, eta


def test_bars_only_on_a_terminal():
    with Progress(10, "x") as p:  # pytest captures stderr: not a terminal, so plain lines, no bar
        assert p.bar is None
        p.update(3)
    with Progress(10, "x", enabled=True) as p:
        p.update(4)
        assert p.bar.n == 4
    assert p.bar is None


def test_eta_from_the_rate_so_far():
    assert eta(1, 4, 30.0) == "ETA 1m30s"
    assert eta(0, 4, 30.0) == "" and eta(4, 4, 30.0) == ""


def test_autoattack_reports_each_sub_attack(digits, standard_digits_model):
    lines: list[str] = []
    report = robust_accuracy(standard_digits_model, digits.test.head(24),
                             {"aa_compact": AttackConfig.suite("aa_compact", 0.1)}, num_classes=10,
                             progress=lines.append)
    assert any(m.startswith("aa_compact: running apgd-ce") for m in lines), lines
    assert any(m.startswith("aa_compact: robust accuracy after APGD-T") for m in lines), lines
    assert lines[-1].startswith("aa_compact: ") and report.attacks[0].label == "aa_compact"
