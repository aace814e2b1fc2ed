"""Attacks: every one stays in the eps ball and the image range; PGD breaks an undefended model; the worst case
is never above any single attack."""

from __future__ import annotations

import pytest
import torch

from rcnas.attacks import AttackContext, run_attack
from rcnas.config import AttackConfig
from rcnas.evaluation.checks import ModelCheckError, check_model
from rcnas.evaluation.robustness import local_lipschitz, robust_accuracy
from rcnas.vocab import ATTACK_KINDS

suite_attack = AttackConfig.suite

EPS = 0.1


def config(name: str, eps: float = EPS) -> AttackConfig:
    return AttackConfig.model_validate({"name": name, "epsilon": "1/10", "steps": 10}).model_copy(
        update={"epsilon": eps})


@pytest.mark.parametrize("name", ATTACK_KINDS.names())
def test_every_attack_respects_the_budget_and_range(name, standard_digits_model, digits):
    x, y = digits.test.x[:24], digits.test.y[:24]
    x_adv = run_attack(standard_digits_model, x, y, config(name), AttackContext(num_classes=10, seed=0,
                                                                                generator=torch.Generator()))
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_breaks_an_undefended_model(standard_digits_model, digits):
    data = digits.test.head(200)
    rep = robust_accuracy(standard_digits_model, data, {"pgd20": suite_attack("pgd20", 0.3)}, num_classes=10)
    assert rep.clean > 0.9
    assert rep.attacks[0].accuracy < 0.05


def test_worst_case_never_exceeds_any_attack(standard_digits_model, digits):
    data = digits.test.head(150)
    attacks = {k: suite_attack(k, 0.05) for k in ("fgsm", "pgd20", "cw40")}
    rep = robust_accuracy(standard_digits_model, data, attacks, num_classes=10)
    accs = [a.accuracy for a in rep.attacks]
    assert all(a <= rep.clean for a in accs)
    assert rep.worst_case <= min(accs)
    assert 0 < min(accs) < rep.clean, "eps chosen so the numbers are informative"
    labels = {a.label: (a.attack, a.steps, a.n_examples) for a in rep.attacks}
    assert labels == {"fgsm": ("fgsm", 1, 150), "pgd20": ("pgd", 20, 150), "cw40": ("cw", 40, 150)}


def test_autoattack_standard_breaks_an_undefended_model(standard_digits_model, digits):
    data = digits.test.head(32)
    rep = robust_accuracy(standard_digits_model, data, {"aa": suite_attack("aa", 0.3)}, num_classes=10)
    assert rep.clean > 0.9 and rep.attacks[0].accuracy <= 0.05


def test_pgd_is_reproducible_from_its_seed(standard_digits_model, digits):
    x, y = digits.test.x[:16], digits.test.y[:16]
    run = lambda s: run_attack(standard_digits_model, x, y, config("pgd"),  # noqa: E731
                               AttackContext(10, generator=torch.Generator().manual_seed(s)))
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))


def test_preflight_checks_refuse_train_mode_randomness_and_probabilities(standard_digits_model, digits):
    x = digits.test.x[:8]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(ModelCheckError, match="train mode"):
        check_model(model.train(), x)
    with pytest.raises(ModelCheckError, match="probabilities"):
        check_model(torch.nn.Sequential(model, torch.nn.Softmax(1)).eval(), x)
    with pytest.raises(ModelCheckError, match="differ"):
        check_model(_Noisy(model).eval(), x)
    check_model(standard_digits_model, x)


class _Noisy(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) + torch.randn(len(x), 10)


def test_lipschitz_grows_with_the_models_scale(standard_digits_model, digits):
    data, attack = digits.val.head(64), suite_attack("pgd20", 0.1)
    base = local_lipschitz(standard_digits_model, data, attack, num_classes=10)
    scaled = local_lipschitz(torch.nn.Sequential(standard_digits_model, _Scale(0.1)).eval(), data, attack,
                             num_classes=10)
    assert base > 0
    assert scaled < 0.5 * base  # logits 10x closer together: the attack's points differ a little, not 5x


class _Scale(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return self.k * x
