"""The one place that wires the Ray evaluation service into the (Ray-free) environment for RLlib."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.tune.registry import register_env

from envs.compression_env import CompressionEnv
from rcnas.distributed.service import RayEvaluator

ENV_NAME = "rcnas-compression"


def make_env(env_config: Mapping[str, Any]) -> CompressionEnv:
    """``env_config``: ``service`` (the evaluation service's actor name, looked up in whichever process RLlib
    builds the env), ``client`` (the tag under which the service logs this run's requests), and the env's own keys
    (``tasks``: YAML paths, one per episode drawn; ``grid``, ``avoid_repeats``, ``screening``). (Table-backed
    benchmarks give the env class its evaluator directly: ``agents.quality_runs.TableRuns``.)"""
    cfg = dict(env_config)
    evaluator = RayEvaluator(cfg["service"], client=cfg.get("client", ""))
    # the env reads the rest of its settings (screening among them) from the config itself
    return CompressionEnv({k: v for k, v in cfg.items() if k not in ("service", "client")}, evaluator=evaluator)


def register() -> str:
    register_env(ENV_NAME, make_env)
    return ENV_NAME
