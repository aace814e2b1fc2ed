"""Adversarial training (PGD-AT, TRADES) for full training and the search's short fine-tuning."""

from rcnas.train.losses import LOSSES
from rcnas.train.trainer import TrainResult, adversarial_train, save_atomic

__all__ = ["LOSSES", "TrainResult", "adversarial_train", "save_atomic"]
