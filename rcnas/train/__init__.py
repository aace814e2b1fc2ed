"""Adversarial training (PGD-AT, TRADES) for full training and the search's short fine-tuning."""

from rcnas.train.loop_state import CheckpointMirror
from rcnas.train.losses import LOSSES
from rcnas.train.trainer import LoopOptions, TrainResult, adversarial_train, save_atomic

__all__ = ["CheckpointMirror", "LOSSES", "LoopOptions", "TrainResult", "adversarial_train", "save_atomic"]
