"""Running final-evaluation jobs into a folder: each finished result written at once to ``results.json`` /
``results.md``, finished ones reused by key, on Ray workers when there are several."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rcnas.evaluation.final import EvalJob, FinalResult, evaluate_job
from rcnas.evaluation.tables import markdown_table
from rcnas.infra.errors import ConfigError
from rcnas.infra.files import write_atomic
from rcnas.infra.log import log


def read_results(out: Path) -> list[FinalResult]:
    """The results already in ``out/results.json`` (none when there is no such file)."""
    path = out / "results.json"
    if not path.is_file():
        return []
    try:
        return [FinalResult.from_json(r) for r in json.loads(path.read_text())]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a results file of this version ({exc}); move it away or write the "
                          "results to another folder") from None


def run_jobs(jobs: list[EvalJob], out: Path, no_ray: bool = False, ray_address: str | None = None,
             log: Callable[[str], None] = log, resources: dict[str, Any] | None = None) -> list[FinalResult]:
    """Evaluate ``jobs`` (on Ray workers when there are several, each asking for ``resources`` when given),
    writing ``results.json`` / ``results.md`` under ``out`` after every finished job, so an interrupted run keeps
    what it finished.

    A job whose result is already in ``out/results.json`` with the same :meth:`EvalJob.key` is not run again (a
    rerun into the same folder answers from it); other earlier results there are kept, except those replaced by a
    job of the same name. Returns the results of ``jobs``, in their order.
    """
    # keys computed here, once: a worker process could see another code version (a file edited meanwhile)
    keys = {j.name: j.key() for j in jobs}
    if len(keys) != len(jobs):
        raise ValueError(f"job names must be unique within one folder: {[j.name for j in jobs]}")
    earlier = read_results(out)
    done = {r.job_key: r for r in earlier if r.job_key}
    todo = [j for j in jobs if keys[j.name] not in done]
    results: list[FinalResult] = [r for r in earlier if r.name not in keys]
    results += [done[keys[j.name]] for j in jobs if keys[j.name] in done]
    if len(todo) < len(jobs):
        log(f"reusing {len(jobs) - len(todo)} finished result(s) from {out / 'results.json'}")

    def keep(result: FinalResult) -> None:
        result = replace(result, job_key=keys[result.name])
        results.append(result)
        write_atomic(out / "results.json", json.dumps([r.to_json() for r in results], indent=2))
        write_atomic(out / "results.md", markdown_table(results))

    out.mkdir(parents=True, exist_ok=True)
    for job in [j for j in todo if j.data_parallel > 1]:  # one at a time: each takes several workers
        from rcnas.distributed.data_parallel import evaluate_data_parallel

        keep(evaluate_data_parallel(job, log))
    todo = [j for j in todo if j.data_parallel <= 1]
    if len(todo) > 1 and not no_ray:
        from rcnas.distributed.final_jobs import evaluate_jobs

        evaluate_jobs(todo, log, keep, ray_address, resources)
    else:
        for job in todo:
            keep(evaluate_job(job, log=log))
    by_name = {r.name: r for r in results}
    return [by_name[j.name] for j in jobs]
