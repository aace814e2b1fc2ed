"""The observation layout, shared by the environment (which writes it) and the agent's encoder (which reads it).

A flat float vector: ``MAX_STAGES`` blocks of ``STAGE_FEATURES`` (the paper's per-stage raw vector
[stem stride, D_i, W_i, robust flag] normalised by the teacher, plus decided/current flags and the stage's share of
the budget), then the global features (step, MACs used and remaining vs budget, the teacher's LIPS and robust
accuracy) and the task descriptor (one-hot dataset and attack kind, in their registries' order, then epsilon,
attack steps and budget ratio). The same size for every task, so one policy meta-trains across them.

The size follows the vocabularies: a new dataset or attack kind changes it. :func:`layout` describes it; the agent
saves it with every meta-training checkpoint and refuses to fine-tune from a checkpoint whose layout differs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rcnas.data.registry import DATASETS
from rcnas.proxy.records import TeacherStats
from rcnas.space.space import CompressionSpace
from rcnas.task import Task
from rcnas.vocab import ATTACK_KINDS, BLOCK_KINDS

MAX_STAGES = 4
STAGE_FIELDS = ("stem_stride", "depth", "width", "robust", "decided", "current", "budget_share")
"""a stage's features, in the order :func:`encode` writes them"""
STAGE_FEATURES = len(STAGE_FIELDS)
CURRENT = STAGE_FIELDS.index("current")
"""the position of the "this stage is being decided" flag, which the agent's module reads"""
STEP_FEATURES = ("step", "macs_used", "macs_left", "teacher_lips", "teacher_robust_acc")
TASK_SCALARS = ("epsilon_x255_over_16", "attack_steps_over_100", "budget_ratio")
DATASET_NAMES = tuple(DATASETS.ordered())
ATTACK_NAMES = tuple(ATTACK_KINDS.ordered())
GLOBAL_FEATURES = len(STEP_FEATURES) + len(DATASET_NAMES) + len(ATTACK_NAMES) + len(TASK_SCALARS)
SIZE = MAX_STAGES * STAGE_FEATURES + GLOBAL_FEATURES
BOUND = 10.0
"""every feature is scaled to lie well inside [-BOUND, BOUND]"""


def layout() -> dict[str, Any]:
    """What each position of the observation means (JSON-ready): equal layouts, interchangeable policies."""
    return {"max_stages": MAX_STAGES, "stage_features": STAGE_FEATURES, "step_features": list(STEP_FEATURES),
            "datasets": list(DATASET_NAMES), "attacks": list(ATTACK_NAMES), "task_scalars": list(TASK_SCALARS),
            "size": SIZE}


def task_descriptor(task: Task, space: CompressionSpace) -> np.ndarray:
    cfg = task.config
    ds = np.zeros(len(DATASET_NAMES), np.float32)
    ds[DATASET_NAMES.index(cfg.dataset.name)] = 1
    atk = np.zeros(len(ATTACK_NAMES), np.float32)
    atk[ATTACK_NAMES.index(cfg.attack.name)] = 1
    scalars = [cfg.attack.epsilon * 255 / 16, cfg.attack.steps / 100, space.budget / space.teacher_macs]
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
            depth, width, robust = ch.depth, ch.width, BLOCK_KINDS.get(ch.block).robust
            before = used
            used, c_in = space.prefix(actions[: i + 1])
            share = (used - before) / space.budget
        else:
            depth, width, robust, share = stage.depth, t.widths[i], BLOCK_KINDS.get(stage.block).robust, 0.0
        stages[i] = [stage.stride / 2, depth / stage.depth, width / t.widths[i], float(robust),
                     float(i < len(actions)), float(i == len(actions)), share]
    used_total, _ = space.prefix(actions)
    glob = np.asarray([len(actions) / space.n_stages, used_total / space.budget, 1 - used_total / space.budget,
                       math.log1p(teacher.lipschitz) / 5, teacher.robust_acc], np.float32)
    return np.clip(np.concatenate([stages.ravel(), glob, descriptor]), -BOUND, BOUND).astype(np.float32)
