"""Attacks behind one interface: FGSM, PGD, CW-inf (ours) and AutoAttack (pyautoattack)."""

from rcnas.attacks.registry import ATTACKS, SUITE, SUITE_CHOICES, AttackContext, run_attack, suite_attack

__all__ = ["ATTACKS", "SUITE", "SUITE_CHOICES", "AttackContext", "run_attack", "suite_attack"]
