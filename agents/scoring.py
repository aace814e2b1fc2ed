"""The search's result on Ray: every stored evaluation of a task, read through the service client and scored."""

from __future__ import annotations

from rcnas.distributed.service import RayEvaluator
from rcnas.search.candidates import Candidate, best, score_rows
from rcnas.task import Task


def scored_rows(task: Task, service: RayEvaluator) -> list[Candidate]:
    """Every stored evaluation of ``task`` with its reward, in evaluation order."""
    return score_rows(task, service.rows(task), service.teacher_stats(task))


def best_candidate(tasks: list[Task], service: RayEvaluator) -> tuple[Candidate | None, int]:
    """The best candidate over ``tasks`` and how many evaluations are stored for them."""
    rows = [c for t in tasks for c in scored_rows(t, service)]
    top = best(rows)
    return (top[0] if top else None), len(rows)
