"""The PPO searchers of the search-quality benchmarks (``bench/``): the ``rl`` searcher's one-off meta-training and
the fine-tuning of one search, its cost counted in distinct evaluations, answered by the evaluation service
(:class:`LiveRuns`) or by a tabular benchmark in this process (:class:`TableRuns`).

Both read a search's requests as :class:`rcnas.proxy.records.Request` records (the store's request log, or the
table evaluator's), so the benchmarks score them with one function (:func:`rcnas.search.quality.scored`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Protocol

from ray.rllib.algorithms.ppo import PPOConfig

from agents.config import ExperimentConfig, meta_stage
from agents.ppo import build_ppo_config
from agents.stages import StageSettings, module_dir, run_stage, train_iterations
from envs.compression_env import CompressionEnv
from rcnas.distributed.service import RayEvaluator
from rcnas.proxy.records import Request
from rcnas.search.quality import distinct
from rcnas.search.table import Table, TableEvaluator
from rcnas.task import load_task


class Runs(Protocol):
    """Where a benchmark's PPO searches are answered, and how their requests are read back."""

    def config(self, exp: ExperimentConfig, tasks: list[str], client: str,
               load_module_from: Optional[str] = None) -> PPOConfig:
        """PPO over ``tasks`` (YAML paths), its requests logged under ``client``."""
        ...

    def requests(self, client: str) -> list[Request]:
        """``client``'s requests so far, in order."""
        ...


class LiveRuns:
    """PPO searches answered by the evaluation service named ``service``: each search is a client of its store."""

    def __init__(self, service: str, grid: tuple[int, int]) -> None:
        self.service, self.grid = service, grid

    def config(self, exp: ExperimentConfig, tasks: list[str], client: str,
               load_module_from: Optional[str] = None) -> PPOConfig:
        return build_ppo_config(exp, tasks, self.service, grid=self.grid, client=client,
                                load_module_from=load_module_from)

    def requests(self, client: str) -> list[Request]:
        return RayEvaluator(self.service).requests(client)


class SharedTableEvaluator(TableEvaluator):
    """A :class:`TableEvaluator` handed to RLlib's env in ``env_config``: RLlib deep-copies its config before it
    builds the env, and a copy's requests would never be read, so a copy is this evaluator itself. (A checkpoint of
    the algorithm pickles it, table included: about 1 MB for a table of 4,000 rows.)"""

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedTableEvaluator:
        return self


class TableRuns:
    """PPO searches answered from ``tables`` in this process (the algorithm's env lives in it: the async sampler, or
    RLlib's with ``env_runners`` 0).

    Each client has one evaluator, handed to the env RLlib builds for that client's search (in its ``env_config``)
    and to a baseline searcher of that client: its request log is the search's. ``stored``: what the store would
    hold before the search starts (task file -> sub-network keys, e.g. the meta-training's evaluations), which a
    screening surrogate reads as the service's store would be read."""

    def __init__(self, tables: Table | list[Table], grid: tuple[int, int],
                 stored: dict[str, list[str]] | None = None) -> None:
        self.tables, self.grid = tables if isinstance(tables, list) else [tables], grid
        self.stored = stored or {}
        self._evaluators: dict[str, SharedTableEvaluator] = {}

    def evaluator(self, client: str) -> SharedTableEvaluator:
        """``client``'s evaluator (made on first use)."""
        if client not in self._evaluators:
            self._evaluators[client] = SharedTableEvaluator(self.tables, client=client, stored=self.stored)
        return self._evaluators[client]

    def config(self, exp: ExperimentConfig, tasks: list[str], client: str,
               load_module_from: Optional[str] = None) -> PPOConfig:
        if exp.sampler == "env_runners" and exp.env_runners:
            raise ValueError("a table-backed search runs its env in this process: env_runners must be 0")
        # no service, so no search metrics read from its store
        config = build_ppo_config(exp, tasks, "", grid=self.grid, client=client, search_metrics=False,
                                  load_module_from=load_module_from, prior=list(self.stored))
        # the env class itself (not the registered factory, which opens the table anew): it takes its evaluator from
        # env_config
        return config.environment(env=CompressionEnv,
                                  env_config={**config.env_config, "evaluator": self.evaluator(client)})

    def requests(self, client: str) -> list[Request]:
        return list(self.evaluator(client).requests)


def meta_train(runs: Runs, exp: ExperimentConfig, metas: list[str], out: Path, name: str,
               client: str) -> dict[str, Any]:
    """The ``rl`` searcher's one-off cost: ``exp.meta_iterations`` of PPO on the meta tasks ``metas``, its checkpoint
    under ``out/name``, its figures in ``out/name.json`` (checkpoint, seconds, iterations, episodes, distinct
    evaluations, and which sub-networks of which task file it evaluated: what a store would hold after it); read from
    there when a previous run finished it."""
    record = out / f"{name}.json"
    if record.is_file():
        return json.loads(record.read_text())
    t0 = time.perf_counter()
    ckpt = run_stage(name, runs.config(meta_stage(exp), metas, client), exp.meta_iterations, out,
                     StageSettings(no_tune=True, log=lambda m: None))
    log = runs.requests(client)
    files = {load_task(m).name: str(Path(m).resolve()) for m in metas}
    stored: dict[str, list[str]] = {}
    for r in distinct(log, None):
        stored.setdefault(files[r.task_name], []).append(r.arch_key)
    info = {"checkpoint": ckpt, "seconds": time.perf_counter() - t0, "iterations": exp.meta_iterations,
            "episodes": len(log), "distinct": sum(len(v) for v in stored.values()), "stored": stored}
    record.write_text(json.dumps(info, indent=2))
    return info


def fine_tune(runs: Runs, exp: ExperimentConfig, target: str, client: str, n: int, meta_checkpoint: Optional[str],
              patience: int = 5) -> None:
    """One PPO search of the task ``target`` (a YAML path), from the meta-trained policy (``meta_checkpoint``) or
    from scratch (None), until it has made ``n`` distinct evaluations, or ``patience`` iterations in a row brought no
    new sub-network (the policy has converged: it repeats itself, and repeats cost nothing and add nothing), or
    ``4 n / M`` iterations. Its requests are ``runs.requests(client)``."""
    task_name = load_task(target).name
    config = runs.config(exp, [target], client, module_dir(meta_checkpoint) if meta_checkpoint else None)
    # screening promotes about one proposal in 1 / keep: as many more episodes before the search counts as stalled
    stretch = 1.0 if exp.screening.by == "none" else 1.0 / exp.screening.keep
    train_until_distinct(config, n, exp.M, lambda: len(distinct(runs.requests(client), task_name)), client,
                         math.ceil(patience * stretch), stretch)


def train_until_distinct(config: PPOConfig, n: int, M: int, distinct: Callable[[], int], name: str,
                         patience: int = 5, stretch: float = 1.0) -> None:
    """PPO until ``distinct()`` (the search's distinct evaluations so far) reaches ``n``, or ``patience`` iterations in
    a row bring no new sub-network (the policy has converged: it repeats itself, and repeats add nothing), or
    ``4 n / M`` iterations (times ``stretch``: the episodes per evaluation, more than one under screening). The
    benchmarks' budget rule: cost is counted in distinct evaluations."""
    progress = {"made": 0, "idle": 0}

    def enough(_: dict[str, Any]) -> bool:
        now = distinct()
        progress["idle"] = 0 if now > progress["made"] else progress["idle"] + 1
        progress["made"] = now
        return now >= n or progress["idle"] >= patience

    algo = config.build_algo()
    try:
        train_iterations(algo, math.ceil(4 * n * stretch / M), name, lambda m: None, stop=enough)
    finally:
        algo.stop()
