"""Adversarial training (PGD-AT, TRADES) for full training and the search's short fine-tuning."""

from rcnas.train.losses import LOSSES
from rcnas.train.trainer import LoopOptions, TrainResult, adversarial_train, save_atomic

__all__ = ["LOSSES", "LoopOptions", "TrainResult", "adversarial_train", "save_atomic"]
