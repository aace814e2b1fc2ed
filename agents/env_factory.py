"""The one place that wires the Ray evaluation service into the (Ray-free) environment for RLlib."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.tune.registry import register_env

from envs.compression_env import CompressionEnv
from rcnas.distributed.service import RayEvaluator

ENV_NAME = "rcnas-compression"


def make_env(env_config: Mapping[str, Any]) -> CompressionEnv:
    """``env_config``: ``tasks`` (YAML paths; one per episode is drawn), ``grid``, ``service`` (the evaluation
    service's actor name, looked up in whichever process RLlib builds the env), ``client`` (the tag under which the
    service logs this run's requests), ``avoid_repeats``. (Table-backed benchmarks give the env class its evaluator
    directly: ``agents.quality_runs.TableRuns``.)"""
    cfg = dict(env_config)
    evaluator = RayEvaluator(cfg["service"], client=cfg.get("client", ""))
    return CompressionEnv(tasks=cfg["tasks"], grid=cfg.get("grid"), evaluator=evaluator,
                          avoid_repeats=cfg.get("avoid_repeats", False))


def register() -> str:
    register_env(ENV_NAME, make_env)
    return ENV_NAME
