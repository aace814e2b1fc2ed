"""The dual-level search, top to bottom (docs/method.md, "Agent"): meta-train one policy across many task
settings, fine-tune it on a held-out task, take the best sub-network the run evaluated there, report it, and
evaluate it for real.

Read it like a training loop: each numbered phase is one call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from agents.async_ppo import parallelism
from agents.config import ExperimentConfig, meta_stage
from agents.manifest import verify_from
from agents.ppo import build_ppo_config
from agents.rerun import relative_paths
from agents.scoring import scored_rows
from agents.search_report import write_report
from agents.stages import StageSettings, check_layout, module_dir, run_stage
from agents.storage import Keeper, tune_uri
from agents.trackers import tracker_callbacks
from rcnas.distributed.resources import ensure_ray
from rcnas.distributed.service import RayEvaluator, evaluation_service
from rcnas.infra.files import inside, write_atomic
from rcnas.infra.log import say
from rcnas.infra.provenance import content_key, environment
from rcnas.search.quality import distinct
from rcnas.search.screening import ScreeningEvaluator, proposals_for
from rcnas.search.searchers import SEARCHERS, in_space, run_searcher
from rcnas.space.arch import ArchSpec
from rcnas.space.baselines import slimming_prune
from rcnas.task import Task, load_task, shared_grid


@dataclass(frozen=True)
class SearchOptions:
    out: Path
    no_tune: bool = False
    resume: bool = False
    from_checkpoint: Optional[str] = None
    """skip meta-training: fine-tune from this meta checkpoint (the downstream run)"""
    ray_address: Optional[str] = None
    searcher: str = "rl"
    """one of ``rcnas.search.searchers.searcher_names()``: rl (meta-train + fine-tune), ppo-scratch (PPO on the
    target only), or a baseline of ``SEARCHERS``"""
    n: int = 25
    """evaluations a baseline searcher may spend"""
    data_root: Optional[str] = None
    """the dataset folder, handed to every evaluation worker (workers do not inherit the driver's environment)"""
    verbose: bool = False
    """Tune's status tables and the libraries' known-harmless warnings (hidden by default)"""
    storage: Optional[str] = None
    """a URI (s3://, gs://, file://) that keeps the run: Tune's experiments directly, the rest of the run folder
    after each phase (``agents/storage.py``)"""
    trust_checkpoint: bool = False
    """restore a ``--from`` checkpoint or ``--resume`` Tune experiment that this user's key did not sign (or that
    changed since): ``agents/manifest.py``"""


def save_resolved_configs(out: Path, exp: ExperimentConfig, tasks: list[Any]) -> None:
    """The experiment and every task as this run resolved them (bases merged, defaults filled, teacher weights
    hashed) under ``out/config/``: what the run used, whatever happens to the files it was started from."""
    import yaml

    folder = inside(out, "config")
    write_atomic(folder / "experiment.yaml", yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False))
    for t in tasks:
        write_atomic(inside(folder, f"tasks/{t.name}.yaml"), yaml.safe_dump(
            {"source": _shareable(t.source), **t.config.model_dump(mode="json")}, sort_keys=False))


def _shareable(source: str) -> str:
    """A task file's path as the run records it: relative to the working directory where it lies under it (the
    project's configs), so that a run folder shared with others does not name the folders of this machine."""
    if not source:
        return source
    path = Path(source).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else path.name


def _stage_folder(storage: Path | str, name: str, local_tune: Path) -> Path:
    """A stage's Tune experiment on this disk (a copy of its progress files when Tune keeps it at a URI)."""
    if isinstance(storage, Path):
        return storage / name
    from agents.storage import fetch_progress

    return fetch_progress(f"{storage}/{name}", local_tune / name)


def _keep(out: Path, opts: SearchOptions, log: Callable[[str], None]) -> None:
    """Copy the run folder to ``--storage`` (when given) at the end of a phase."""
    if opts.storage:
        from agents.storage import push

        push(out, opts.storage, include_tune=opts.no_tune)
        log(f"run folder copied to {opts.storage}")


@dataclass(frozen=True)
class SearchOutcome:
    summary: dict[str, Any]
    """what summary.json holds"""
    teacher_weights: Any
    """the target task's teacher in the object store, owned by this process: the final comparison's teacher"""
    pruned: Optional[ArchSpec] = None
    """the target's teacher pruned to its budget by network slimming (the baseline a robustness user tries first):
    a row of the final comparison"""


@dataclass(frozen=True)
class _Run:
    """What every phase of one search shares."""

    exp: ExperimentConfig
    metas: list[str]
    target: str
    task: Any
    opts: SearchOptions
    service: str
    """the evaluation service's name (env runners reach it by name)"""
    grid: tuple[int, int]
    storage: Path | str
    """where Tune keeps the stages' experiments: ``out/tune`` or ``<storage URI>/tune``"""
    log: Callable[[str], None]

    @property
    def out(self) -> Path:
        return self.opts.out.resolve()

    def stage(self, name: str, config: Any, iterations: int) -> str:
        """One PPO stage under this run's settings (Tune or plain loops, resume, trust, trackers)."""
        o = self.opts
        settings = StageSettings(no_tune=o.no_tune, resume=o.resume, trust=o.trust_checkpoint, verbose=o.verbose,
                                 local=self.out / "tune", log=self.log)
        return run_stage(name, config, iterations, self.storage, settings, tracker_callbacks(self.exp, self.out, name))


def run_phases(exp: ExperimentConfig, tasks: list[Task], opts: SearchOptions,
               log: Callable[[str], None] = say) -> SearchOutcome:
    """The search's phases on the resolved ``tasks`` (the target first, then the meta-training tasks)."""
    t0 = time.perf_counter()
    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ensure_ray(opts.ray_address, verbose=opts.verbose)
    if not opts.storage and on_shared_cluster(opts.ray_address):
        log(f"warning: no --storage: the run folder {out} exists only on this node's disk; `ray down` (or losing "
            "this node) deletes it, its teachers and its checkpoints with the container; pass --storage "
            "s3://bucket/prefix to keep them")
    # one service per run folder: two runs whose folders share a base name never share a service or a store
    service_name = f"rcnas-eval-{out.name}-{content_key(str(out))[:8]}"
    # the env runners load the tasks from their files, by absolute path: Tune runs trials in their own folders
    task, meta_tasks = tasks[0], tasks[1:]
    target, metas = str(Path(task.source).resolve()), [str(Path(t.source).resolve()) for t in meta_tasks]
    save_resolved_configs(out, exp, [*meta_tasks, task])
    # one action space for meta-training and fine-tuning: the grid holding every task's teacher
    action_grid = shared_grid([*meta_tasks, task])
    storage: Path | str = tune_uri(opts.storage) if opts.storage else out / "tune"
    run = _Run(exp, metas, target, task, opts, service_name, (action_grid.max_depth, action_grid.max_width),
               storage, log)
    # 1. the evaluation service for the length of the search: workers pinned to GPUs (or fractional CPUs), the
    # run's store in out/
    with evaluation_service(out, n_workers=exp.workers.count, name=service_name, data_root=opts.data_root,
                            worker_spec=exp.workers.spec()) as client:
        client.stats()
        with Keeper(out, opts.storage, include_tune=opts.no_tune):  # copies the run folder every 10 min meanwhile
            # every teacher ready (its checkpoints in the run folder as it trains) before the first policy
            # iteration samples: an iteration waiting hours on a teacher would pass RLlib's sample timeout
            client.prepare_teachers(tasks)
            phases = _search(run)
        # 4. the result: the best sub-network evaluated on the target task, its report and plots
        space = task.on_grid(action_grid)
        rows = scored_rows(task, client)
        if not rows:
            raise RuntimeError("no sub-network of the target task was evaluated: raise finetune_iterations")
        reranked = None
        if exp.rerank.top_k:
            from rcnas.search.rerank import rerank

            r = exp.rerank
            log(f"re-ranking the top {r.top_k} at {r.epochs:g} fine-tuning epochs x {r.repeats} seeds")
            reranked = rerank(task, rows, RayEvaluator(service_name, client="rerank"), r.top_k, r.epochs, r.repeats)
        chosen, yaml_path = write_report(out, task, space, rows, phases.experiments, reranked)
        summary = {
            "experiment": exp.name, "searcher": opts.searcher, "target": task.name, "chosen": chosen.arch.short(),
            "yaml": str(yaml_path), "reward": chosen.reward, "val_robust_acc": chosen.robust_acc,
            "macs": chosen.macs, "budget": space.budget, "meta_checkpoint": phases.meta_checkpoint,
            "finetune_checkpoint": phases.finetune_checkpoint, "evaluated": len(rows),
            "search_seconds": time.perf_counter() - t0,
            "provenance": environment(),
            **({"rerank": [{"arch": lo.arch.short(), "search_reward": lo.reward, "rerank_reward": hi.reward,
                            "rerank_robust_acc": hi.robust_acc} for lo, hi in reranked]} if reranked else {})}
        write_atomic(out / "summary.json", json.dumps(relative_paths(out, summary), indent=2))
        _keep(out, opts, log)
        log(f"evaluation service: {client.stats()}")
        teacher = client.teacher_weights(task)  # before the service goes: it owns the teachers it shipped
        scales = client.teacher_stats(task).bn_scales
    return SearchOutcome(summary, teacher, slimming_prune(task.space, scales) if scales else None)


def on_shared_cluster(address: str | None) -> bool:
    """This run joined a cluster (an address, or $RAY_ADDRESS as ``ray job submit`` sets it) or sees other nodes:
    its run folder is then one node's disk among several, not the user's own machine."""
    import os

    import ray

    if address or os.environ.get("RAY_ADDRESS"):
        return True
    return sum(1 for node in ray.nodes() if node.get("Alive")) > 1


@dataclass(frozen=True)
class Phases:
    """What the search's phases leave behind."""

    meta_checkpoint: Optional[str] = None
    """the meta-trained policy (None: no meta-training ran)"""
    finetune_checkpoint: Optional[str] = None
    experiments: dict[str, Path] = field(default_factory=dict)
    """each PPO stage's Tune experiment folder on this disk, by stage name (for the report's reward plot)"""


def _search(run: _Run) -> Phases:
    """Phases 2 and 3 (a baseline searcher, or meta-training then fine-tuning); returns the meta and fine-tuning
    checkpoints (None where a phase did not run) and the Tune experiments' folders."""
    exp, opts, task, log = run.exp, run.opts, run.task, run.log
    meta_ckpt: Optional[str] = None
    experiments: dict[str, Path] = {}
    if opts.searcher in SEARCHERS:
        # 2'. a baseline searcher on the same service, store and budget wall
        log(f"searcher {opts.searcher}: {opts.n} evaluations on {task.name}")
        ev = RayEvaluator(run.service, client=opts.searcher)
        run_searcher(opts.searcher, task, ev, opts.n, exp.seed, parallel=parallelism(ev))
        return Phases()
    # 2. meta-training across the task set (skipped by the downstream run, which starts from a checkpoint, and by
    # the PPO-from-scratch baseline)
    if opts.from_checkpoint:
        verify_from(opts.from_checkpoint, opts.trust_checkpoint)  # its pickles are loaded: signed by this user?
        check_layout(opts.from_checkpoint)
        meta_ckpt = opts.from_checkpoint
    elif opts.searcher == "rl":
        log(f"meta-training on {len(run.metas)} tasks, {exp.meta_iterations} iterations of M={exp.M}")
        meta_ckpt = run.stage("meta", build_ppo_config(meta_stage(exp), run.metas, run.service, grid=run.grid,
                                                       client="rl-meta"), exp.meta_iterations)
        log(f"meta checkpoint: {meta_ckpt}")
        experiments["meta"] = _stage_folder(run.storage, "meta", run.out / "tune")
        _keep(run.out, opts, log)
    # 3. fine-tuning on the held-out task, starting from the meta-trained policy (or from scratch)
    log(f"fine-tuning on {task.name}, {exp.finetune_iterations} iterations"
        + ("" if meta_ckpt else " (no meta-training: PPO from scratch)"))
    ft_config = build_ppo_config(exp, [run.target], run.service, grid=run.grid,
                                 load_module_from=module_dir(meta_ckpt) if meta_ckpt else None,
                                 client=f"{opts.searcher}-finetune", prior=run.metas)
    ft_ckpt = run.stage("finetune", ft_config, exp.finetune_iterations)
    experiments["finetune"] = _stage_folder(run.storage, "finetune", run.out / "tune")
    if exp.handover.evaluations:
        _handover(run, f"{opts.searcher}-finetune")
    return Phases(meta_ckpt, ft_ckpt, experiments)


def _handover(run: _Run, agent_client: str) -> None:
    """3'. The local search of ``exp.handover``, seeded with the sub-networks the agent evaluated on the target task
    (from the store's request log: a resumed run hands over the same ones, and its repeats are lookups). It asks for
    as many sub-networks at once as the service has workers (evolution breeds that many children per round)."""
    exp, task, sc = run.exp, run.task, run.exp.screening
    ev = RayEvaluator(run.service, client=f"{run.opts.searcher}-handover")
    # the fine-tuning client's requests for this task (a run re-started in the same folder adds its own to an
    # earlier run's); run_searcher keeps those within this task's budget
    agent = distinct(ev.requests(agent_client), task.name)
    found = in_space(task.space, [r.arch for r in agent])
    searched: Any = ev
    proposals = exp.handover.evaluations
    screened = sc.by != "none" and sc.handover
    if screened:
        # the surrogate learns from the meta tasks' stored evaluations and the agent's on this task (not the store's
        # whole record of this task: a resumed run's would hold the first hand-over's own, and it would screen
        # otherwise); about one proposal in 1 / keep reaches the proxy, so the local search proposes that many more
        screening = ScreeningEvaluator(ev, sc, prior=[load_task(m) for m in run.metas])
        kept = set(found)
        screening.learn_from(task, [(r.arch, r.metrics) for r in agent if r.arch in kept])
        searched, proposals = screening, proposals_for(exp.handover.evaluations, sc)
    run.log(f"handing over to {exp.handover.to}: {exp.handover.evaluations} more evaluations on {task.name}"
            + (f" (of at most {proposals} proposals screened by the {sc.by.replace('_', ' ')})"
               if screened else "")
            + f", starting from the best of the agent's {len(found)}")
    # screened: it stops once the hand-over's evaluations reached the proxy (the proposals only cap it)
    run_searcher(exp.handover.to, task, searched, len(found) + proposals, exp.seed, start=found,
                 parallel=parallelism(ev), proxy=len(found) + exp.handover.evaluations if screened else None)
