"""Attacks behind one interface: FGSM, PGD, CW-inf (ours) and AutoAttack (pyautoattack); the kinds are listed in
``rcnas.vocab.ATTACK_KINDS``."""

from rcnas.attacks.run import AttackContext, attack_fn, run_attack

__all__ = ["AttackContext", "attack_fn", "run_attack"]
