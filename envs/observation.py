"""The observation layout, shared by the environment (which writes it) and the agent's encoder (which reads it).

A flat float vector: ``MAX_STAGES`` blocks of ``STAGE_FEATURES`` (the paper's per-stage raw vector
[stem stride, D_i, W_i, robust flag] normalised by the teacher, plus decided/current flags and the stage's share of
the budget), then ``GLOBAL_FEATURES`` (step, MACs used and remaining vs budget, the teacher's LIPS and robust
accuracy, and the task descriptor: dataset, attack, epsilon, attack steps, budget ratio). The same size for every
task, so one policy meta-trains across them.
"""

from __future__ import annotations

import math

import numpy as np

from rcnas.config import ATTACK_NAMES, TaskConfig
from rcnas.proxy.records import TeacherStats
from rcnas.space.space import CompressionSpace

MAX_STAGES = 4
STAGE_FEATURES = 7
DATASET_NAMES = ("cifar10", "cifar100", "digits", "tiny-imagenet")
GLOBAL_FEATURES = 5 + len(DATASET_NAMES) + len(ATTACK_NAMES) + 3
SIZE = MAX_STAGES * STAGE_FEATURES + GLOBAL_FEATURES
BOUND = 10.0
"""every feature is scaled to lie well inside [-BOUND, BOUND]"""


def task_descriptor(task: TaskConfig, space: CompressionSpace) -> np.ndarray:
    ds = np.zeros(len(DATASET_NAMES), np.float32)
    ds[DATASET_NAMES.index(task.dataset.name)] = 1
    atk = np.zeros(len(ATTACK_NAMES), np.float32)
    atk[ATTACK_NAMES.index(task.attack.name)] = 1
    scalars = [task.attack.epsilon * 255 / 16, task.attack.steps / 100, space.budget / space.teacher_macs]
    return np.concatenate([ds, atk, np.asarray(scalars, np.float32)])


def encode(space: CompressionSpace, actions: tuple[int, ...], teacher: TeacherStats,
           descriptor: np.ndarray) -> np.ndarray:
    """The observation after ``actions`` (one per decided stage)."""
    t = space.teacher
    stages = np.zeros((MAX_STAGES, STAGE_FEATURES), np.float32)
    used, c_in = space.prefix(())
    for i, stage in enumerate(t.arch.stages):
        if i < len(actions):
            ch = space.choices[i][actions[i]]
            depth, width, robust = ch.depth, ch.width, ch.block == "robust_res_block"
            before = used
            used, c_in = space.prefix(actions[: i + 1])
            share = (used - before) / space.budget
        else:
            depth, width, robust, share = stage.depth, t.widths[i], stage.block == "robust_res_block", 0.0
        stages[i] = [stage.stride / 2, depth / stage.depth, width / t.widths[i], float(robust),
                     float(i < len(actions)), float(i == len(actions)), share]
    used_total, _ = space.prefix(actions)
    glob = np.asarray([len(actions) / space.n_stages, used_total / space.budget, 1 - used_total / space.budget,
                       math.log1p(teacher.lipschitz) / 5, teacher.robust_acc], np.float32)
    return np.clip(np.concatenate([stages.ravel(), glob, descriptor]), -BOUND, BOUND).astype(np.float32)
