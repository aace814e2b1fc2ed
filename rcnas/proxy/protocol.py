"""What the environment and the baseline searchers need from whoever scores sub-networks.

Implementations: :class:`rcnas.proxy.local.LocalEvaluator` (in-process) and
``rcnas.distributed.service.RayEvaluator`` (a shared pool of Ray actors with a persistent store).
"""

from __future__ import annotations

from typing import Protocol

from rcnas.proxy.records import Evaluation, TeacherStats
from rcnas.space.arch import ArchSpec
from rcnas.task import Task


class Evaluator(Protocol):
    def teacher_stats(self, task: Task) -> TeacherStats:
        """The task's adversarially trained teacher, measured like candidates (for the observation and reward)."""
        ...

    def evaluate(self, task: Task, arch: ArchSpec) -> Evaluation:
        """The proxy evaluation of ``arch`` on ``task`` (from the store when already measured)."""
        ...
