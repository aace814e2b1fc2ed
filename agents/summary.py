"""The search's result: the best sub-networks by reward among every stored evaluation of a task."""

from __future__ import annotations

from typing import Any

import ray

from rcnas.config import load_task
from rcnas.distributed.service import NAMESPACE, RayEvaluator
from rcnas.reward import compression_reward
from rcnas.space.arch import ArchSpec, RobustBlockParams, StageSpec
from rcnas.space.space import CompressionSpace


def arch_from_dict(d: dict[str, Any]) -> ArchSpec:
    return ArchSpec(d["stem_channels"], tuple(StageSpec(**s) for s in d["stages"]),
                    RobustBlockParams(**d["block_params"]), d["stem_stride"])


def scored_rows(task_path: str, service: str) -> list[dict[str, Any]]:
    """Every stored evaluation of the task with its reward, in evaluation order."""
    task = load_task(task_path)
    space = CompressionSpace.for_task(task)
    teacher = RayEvaluator(service).teacher_stats(task)
    rows = ray.get(ray.get_actor(service, namespace=NAMESPACE).rows.remote(task.name))
    out = []
    for i, r in enumerate(rows):
        m = r["metrics"]
        out.append({"index": i, "task": task.name, "arch": arch_from_dict(r["arch"]), "metrics": m,
                    "robust_acc": m["robust_acc"], "macs": m["macs"], "budget": space.budget,
                    "teacher_robust_acc": teacher.robust_acc,
                    "reward": compression_reward(m["robust_acc"], teacher.robust_acc, m["macs"], space.budget,
                                                 task.reward, ok=m["status"] == "ok")})
    return out


def best_candidates(task_paths: list[str], service: str, top: int = 1) -> list[dict[str, Any]]:
    rows = [r for p in task_paths for r in scored_rows(p, service)]
    best = sorted(rows, key=lambda r: -r["reward"])[:top]
    return [{**b, "stored": len(rows)} for b in best]
