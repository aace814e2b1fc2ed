"""A tabular benchmark: every sub-network of one teacher within a MACs ratio, scored once by the proxy under
several attacks, in a compact file; and the evaluator that answers from it.

Why: a live proxy evaluation costs seconds, so a search benchmark can afford a few seeds, too few to separate
searchers whose results differ by a point. From a table a search costs milliseconds (NAS-Bench-101/201's idea), so
searchers can be compared over dozens of seeds and several held-out tasks.

One table serves every task that shares its teacher, training recipe and proxy fidelity, whose attack is one of its
columns and whose budget is within its MACs ratio. Its rows are the proxy's own measurements: the first attack's
column equals what a live evaluation of a task with that attack returns (same seeds), and the other columns are
measured on the same fine-tuned network (``proxy.also_attacks``), so one fine-tuning serves every attack.

File format: gzip'd CSV; the first line is ``#json `` and a JSON header (command, code version, teacher and fidelity
keys, attacks by column, the teacher's own measurement per column, proxy settings), then ``#`` comment lines, then a
CSV header and one row per sub-network.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rcnas.config import AttackConfig
from rcnas.infra.errors import ConfigError, EvaluationFailed
from rcnas.proxy.keys import fidelity_key, store_fidelity, task_key, teacher_key
from rcnas.proxy.records import EvalKey, Evaluation, ProxyMetrics, TeacherStats
from rcnas.reward import compression_reward
from rcnas.space.arch import ArchSpec
from rcnas.space.space import CompressionSpace
from rcnas.task import Task

COLUMNS = ("depths", "widths", "blocks", "macs", "params", "status", "clean")
"""fixed columns; one robust-accuracy column per attack follows, then ``seconds``"""


def every_subnet(space: CompressionSpace) -> Iterator[tuple[int, ...]]:
    """Every action sequence the space allows (each finished sub-network within the budget), depth first."""

    def walk(actions: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
        if len(actions) == space.n_stages:
            yield actions
            return
        for a in np.flatnonzero(space.mask(actions)):
            yield from walk(actions + (int(a),))

    return walk(())


def attack_column(attack: AttackConfig) -> str:
    """A column name for an attack: its kind and, for iterative ones, its steps (``pgd20``, ``fgsm``, ``cw20``)."""
    return attack.name if attack.name == "fgsm" else f"{attack.name}{attack.steps}"


def table_task(tasks: list[Task]) -> Task:
    """The one task whose proxy evaluations fill a table for ``tasks``: the first task's attack (so its column is
    exactly the live proxy's value), the others' attacks as ``also_attacks``, the largest budget ratio.

    Raises:
        ConfigError: the tasks differ in teacher, recipe or proxy fidelity (one fine-tuning cannot serve them), or
            two differing attacks would share a column name.
    """
    first = tasks[0]
    attacks: dict[str, AttackConfig] = {}
    for t in tasks:
        if teacher_key(t) != teacher_key(first) or fidelity_key(t.config) != fidelity_key(first.config):
            raise ConfigError(f"{t.name}: its teacher, training recipe or proxy settings differ from {first.name}'s; "
                              "a table serves tasks that differ only in attack and budget")
        if t.config.budget.ratio is None:
            raise ConfigError(f"{t.name}: budget given in MACs; a table is built for budgets given as a ratio")
        col = attack_column(t.config.attack)
        if col in attacks and attacks[col] != t.config.attack:
            raise ConfigError(f"{t.name}: attack {t.config.attack.model_dump()} and {attacks[col].model_dump()} "
                              f"would share the column {col!r}; build one table per attack family")
        attacks.setdefault(col, t.config.attack)
    first_col = attack_column(first.config.attack)
    also = {c: a for c, a in attacks.items() if c != first_col}
    ratio = max(t.config.budget.ratio or 0.0 for t in tasks)
    return first.replace(name=f"table-{first_col}-{'-'.join(also)}",
                         budget=first.config.budget.model_copy(update={"ratio": ratio}),
                         proxy=first.config.proxy.model_copy(update={"also_attacks": also}))


def task_for_column(table_task_: Task, column: str) -> Task:
    """The table's task with one column's attack as its own (to measure the teacher as that column's tasks do)."""
    if column == attack_column(table_task_.config.attack):
        attack = table_task_.config.attack
    else:
        attack = table_task_.config.proxy.also_attacks[column]
    return table_task_.replace(attack=attack, proxy=table_task_.config.proxy.model_copy(update={"also_attacks": {}}))


@dataclass(frozen=True)
class Row:
    arch: ArchSpec
    macs: int
    params: int
    status: str
    clean: float
    robust: dict[str, float]
    seconds: float


@dataclass
class Table:
    header: dict[str, Any]
    rows: dict[str, Row] = field(default_factory=dict)
    """by :meth:`ArchSpec.key`"""

    @property
    def columns(self) -> list[str]:
        return list(self.header["columns"])

    def teacher(self, column: str) -> TeacherStats:
        return TeacherStats(**self.header["teacher_stats"][column])

    def column_for(self, task: Task) -> str:
        """The column that answers ``task``; one line saying why when none does."""
        h = self.header
        if teacher_key(task) != h["teacher_key"] or fidelity_key(task.config) != h["fidelity_key"]:
            raise ConfigError(f"{task.name}: its teacher, recipe or proxy settings are not this table's "
                              f"({h['source']}: teacher {h['teacher']}, proxy {h['proxy']}); a table answers only "
                              "tasks like the ones it was built for")
        if task.config.budget.ratio is None or task.config.budget.ratio > h["ratio"] + 1e-12:
            raise ConfigError(f"{task.name}: budget {task.config.budget.model_dump(exclude_none=True)} exceeds the "
                              f"table's MACs ratio {h['ratio']}; use a task with ratio <= {h['ratio']}")
        for col, attack in h["attacks"].items():
            if attack == task.config.attack.model_dump(mode="json"):
                return col
        raise ConfigError(f"{task.name}: attack {task.config.attack.model_dump()} is not a column of the table "
                          f"({', '.join(self.columns)})")


def numerics() -> dict[str, str]:
    """What the last digits of this machine's CPU figures depend on, for a table's header: the CPU model and torch's
    CPU kernels, and torch's version. Figures are bit-equal only where these are."""
    import torch

    from rcnas.infra.provenance import cpu_model

    return {"cpu": f"{cpu_model()}, torch kernels {torch.backends.cpu.get_cpu_capability()}",
            "torch": torch.__version__}


def write_table(path: str | Path, header: dict[str, Any], rows: list[Row], comments: list[str]) -> None:
    """Write ``rows`` (sorted by MACs then label, so the file is stable) with ``header`` as gzip'd CSV; the columns
    follow ``header["attacks"]``'s order (the first is the one the live proxy of its task returns)."""
    cols = list(header["attacks"])
    header = {**header, "columns": cols}  # the JSON header's keys are sorted: the order is kept apart
    buf = io.StringIO()
    buf.write("#json " + json.dumps(header, sort_keys=True) + "\n")
    for c in comments:
        buf.write(f"# {c}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*COLUMNS, *cols, "seconds"])
    for r in sorted(rows, key=lambda r: (r.macs, r.arch.short())):
        w.writerow(["-".join(map(str, r.arch.depths)), "-".join(str(w_) for w_ in _widths(header, r.arch)),
                    "-".join(r.arch.blocks), r.macs, r.params, r.status, f"{r.clean:.6f}",
                    *(f"{r.robust[c]:.6f}" for c in cols), f"{r.seconds:.2f}"])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # mtime 0: the same rows give the same bytes (a rewritten table shows no diff in git)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(buf.getvalue().encode())


def _widths(header: dict[str, Any], arch: ArchSpec) -> list[int]:
    return [c // b for c, b in zip(arch.channels, header["base_channels"])]


def read_table(path: str | Path, task: Task) -> Table:
    """Read a table written by :func:`write_table`; ``task`` is any task of its teacher (to rebuild the
    sub-networks). A damaged or foreign file is one clear error."""
    path = Path(path)
    try:
        text = gzip.decompress(path.read_bytes()).decode()
        first, rest = text.split("\n", 1)
        if not first.startswith("#json "):
            raise ValueError("no #json header line")
        header = json.loads(first[len("#json "):])
        body = "\n".join(line for line in rest.splitlines() if not line.startswith("#"))
        table = Table({**header, "source": str(path)})
        for rec in csv.DictReader(io.StringIO(body)):
            arch = task.teacher.subnet(tuple(int(x) for x in rec["depths"].split("-")),
                                       tuple(int(x) for x in rec["widths"].split("-")),
                                       tuple(rec["blocks"].split("-")))
            table.rows[arch.key()] = Row(arch, int(rec["macs"]), int(rec["params"]), rec["status"],
                                         float(rec["clean"]), {c: float(rec[c]) for c in header["columns"]},
                                         float(rec["seconds"]))
    except (OSError, EOFError, ValueError, KeyError, gzip.BadGzipFile) as exc:
        raise ConfigError(f"{path}: not a readable rcnas table ({type(exc).__name__}: {exc}); regenerate it with "
                          "bench/build_table.py") from None
    return table


_OPEN: dict[tuple[str, str], Table] = {}
REQUESTS: dict[str, list[dict[str, Any]]] = {}
"""every table evaluator's requests by client, in this process: RLlib builds the env (and its evaluator) deep inside
an algorithm, so this is how a benchmark reads what a search asked for (the store's request log, for tables)"""


def requests_of(client: str, pop: bool = False) -> list[dict[str, Any]]:
    """``client``'s requests to table evaluators of this process, in order (``pop``: and forget them)."""
    return REQUESTS.pop(client, []) if pop else REQUESTS.get(client, [])


def open_table(path: str | Path, task: Task | str) -> Table:
    """:func:`read_table`, once per process and file (envs of one process share the parsed table)."""
    from rcnas.task import load_task

    task = task if isinstance(task, Task) else load_task(task)
    k = (str(Path(path).resolve()), task.teacher.name)
    if k not in _OPEN:
        _OPEN[k] = read_table(path, task)
    return _OPEN[k]


class TableEvaluator:
    """The :class:`rcnas.proxy.protocol.Evaluator` of a table: answers in microseconds, never computes.

    A sub-network outside the table (or a task the table does not serve) is an error, never a silent live
    evaluation. Keeps every request in order (``requests``; also in ``REQUESTS[client]`` when a client is named),
    as the service's store does, for the benchmark."""

    def __init__(self, table: Table, client: str = "") -> None:
        self.table = table
        self.requests: list[dict[str, Any]] = REQUESTS.setdefault(client, []) if client else []
        self._cols: dict[int, tuple[Task, str]] = {}
        self._seen: set[tuple[str, str]] = set()

    def _column(self, task: Task) -> str:
        hit = self._cols.get(id(task))
        if hit is None or hit[0] is not task:
            hit = (task, self.table.column_for(task))
            self._cols[id(task)] = hit
        return hit[1]

    def teacher_stats(self, task: Task) -> TeacherStats:
        return self.table.teacher(self._column(task))

    def evaluate(self, task: Task, arch: ArchSpec, seed: int = 0) -> Evaluation:
        col = self._column(task)
        row = self.table.rows.get(arch.key())
        if row is None or row.macs > task.budget:
            raise EvaluationFailed(f"{arch.short()} is not in the table {self.table.header['source']} (within "
                                   f"{task.name}'s budget); a table-backed search never evaluates live")
        h = self.table.header
        metrics = ProxyMetrics(
            status=row.status, reason="" if row.status == "ok" else "failed when tabulated",
            robust_acc=row.robust[col], robust_sd=0.0, clean_acc=row.clean, macs=row.macs, params=row.params,
            attack=task.config.attack.name, epsilon=task.config.attack.epsilon, steps=task.config.attack.steps,
            n_val=h["n_val"], seed=seed, repeats=task.config.proxy.repeats,
            fine_tune_epochs=task.config.proxy.epochs, inherited_blocks=0, fresh_blocks=0, seconds=row.seconds,
            device="table", node="table", code_version=h["code_version"])
        key = EvalKey(task_key(task), arch.key(), store_fidelity(task.config), seed)
        cached = (task.name, key.arch) in self._seen  # a repeat: a store would have answered it
        self._seen.add((task.name, key.arch))
        self.requests.append({"task_name": task.name, "arch_key": key.arch, "arch": arch, "metrics": metrics})
        return Evaluation(key, metrics, cached=cached)


class Scorer:
    """A task's rewards from a table: the best one (for regret), every feasible one (for ranks), the top rows."""

    def __init__(self, task: Task, ev: TableEvaluator) -> None:
        self.task = task
        self.teacher = ev.teacher_stats(task)
        col = ev.table.column_for(task)
        self.ranked = sorted(((self.reward(r.robust[col], r.macs, r.status == "ok"), r)
                              for r in ev.table.rows.values() if r.macs <= task.budget),
                             key=lambda p: p[0], reverse=True)
        """(reward, row) of every sub-network within the task's budget, best first"""
        self.all = [reward for reward, _ in self.ranked]

    def reward(self, robust: float, macs: int, ok: bool) -> float:
        return compression_reward(robust, self.teacher.robust_acc, macs, self.task.budget, self.task.config.reward, ok)

    def rank(self, reward: float) -> int:
        return 1 + sum(1 for r in self.all if r > reward + 1e-12)
