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

A table may come from someone else, so reading one trusts nothing in it: the gzip stream is read line by line and
stops at :data:`MAX_HEADER_BYTES` for the header line, :data:`MAX_LINE_BYTES` for any other line,
:data:`MAX_TABLE_BYTES` decompressed in all and :data:`MAX_TABLE_ROWS` rows; the header must be a JSON object with
exactly the keys :func:`write_table` writes, of their types; every row must have one field per column, accuracies
finite and in [0, 1], seconds finite and >= 0, a sub-network of the teacher's space within the table's MACs ratio
whose MACs and parameters are what the cost model counts, and no sub-network twice. Anything else is one
:class:`ConfigError` line naming the file, the line (and row) and what is wrong.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rcnas.config import AttackConfig
from rcnas.infra.errors import ConfigError, EvaluationFailed
from rcnas.proxy.keys import fidelity_key, store_fidelity, task_key, teacher_key
from rcnas.proxy.records import (
    STATUSES,
    EvalKey,
    Evaluation,
    ProxyMetrics,
    Request,
    TeacherStats,
    brief,
    json_type,
)
from rcnas.reward import compression_reward
from rcnas.space.arch import ArchSpec
from rcnas.space.space import GRID_BLOCKS, CompressionSpace, StageChoice
from rcnas.task import Task

COLUMNS = ("depths", "widths", "blocks", "macs", "params", "status", "clean")
"""fixed columns; one robust-accuracy column per attack follows, then ``seconds``"""

MAX_HEADER_BYTES = 256 * 1024
"""the ``#json`` header line at most (a real one is about 2 KB)"""
MAX_LINE_BYTES = 64 * 1024
"""any other line at most (a row is about 100 bytes)"""
MAX_TABLE_BYTES = 32 * 1024 * 1024
"""a table decompressed at most (the committed one is 0.3 MB): a small gzip file can expand a thousandfold"""
MAX_TABLE_ROWS = 100_000
"""rows at most (the committed table has 3,697)"""
MAX_COLUMNS = 32
"""attack columns at most"""
HEADER_KEYS = ("attacks", "base_channels", "code_version", "columns", "command", "fidelity_key", "n_val", "proxy",
               "ratio", "rows", "tasks", "teacher", "teacher_key", "teacher_stats")
"""what :func:`write_table`'s callers (bench/build_table.py, tests/fakes.py) put in a header, every one required"""
OPTIONAL_HEADER_KEYS = ("cpu", "torch")
""":func:`numerics`: what the figures' last digits depend on (tables written before it lack them)"""
_COLUMN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]{0,63}")
_WHOLE = re.compile(r"[0-9]{1,15}")


def every_subnet(space: CompressionSpace) -> Iterator[tuple[int, ...]]:
    """Every action sequence the space allows (each finished sub-network within the budget), depth first."""
    return space.completions()


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
        return TeacherStats.from_dict(self.header["teacher_stats"][column])

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


class _Bad(ValueError):
    """What is wrong with a table file (:func:`read_table` adds the file's name)."""


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) of a gzip'd text file, decompressed as it is read: no more than
    :data:`MAX_HEADER_BYTES` for the first line, :data:`MAX_LINE_BYTES` for any other, :data:`MAX_TABLE_BYTES`
    in all."""
    total = 0
    with gzip.open(path, "rb") as f:
        for lineno in range(1, MAX_TABLE_ROWS + 1000):  # rows, the CSV header and comment lines
            cap = MAX_HEADER_BYTES if lineno == 1 else MAX_LINE_BYTES
            raw = f.readline(cap + 1)
            if not raw:
                return
            total += len(raw)
            if total > MAX_TABLE_BYTES:
                raise _Bad(f"line {lineno}: more than {MAX_TABLE_BYTES // 2**20} MiB decompressed (MAX_TABLE_BYTES); "
                           "a table is far smaller")
            if len(raw) > cap and not raw.endswith(b"\n"):
                what = "the #json header line" if lineno == 1 else "a line"
                raise _Bad(f"line {lineno}: {what} is longer than {cap // 1024} KiB "
                           f"({'MAX_HEADER_BYTES' if lineno == 1 else 'MAX_LINE_BYTES'})")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _Bad(f"line {lineno}: not UTF-8 text") from None
            yield lineno, line.removesuffix("\n").removesuffix("\r")
        raise _Bad(f"more than {MAX_TABLE_ROWS} rows (MAX_TABLE_ROWS)")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_whole(v: Any, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v < 2**63


def _check_header(h: Any, task: Task) -> dict[str, Any]:
    """The ``#json`` header, checked key by key (raises :class:`_Bad`)."""
    if not isinstance(h, dict):
        raise _Bad(f"line 1: the #json header is a JSON {json_type(h)}, not an object")
    missing = [k for k in HEADER_KEYS if k not in h]
    unknown = sorted(set(h) - set(HEADER_KEYS) - set(OPTIONAL_HEADER_KEYS))
    if missing or unknown:
        problems = [f"lacks {missing}"] if missing else []
        problems += [f"has unknown keys {brief(unknown, 120)}"] if unknown else []
        raise _Bad("line 1: the #json header " + ", ".join(problems))

    def bad(key: str, want: str) -> _Bad:
        return _Bad(f"line 1: header {key} is {brief(h[key], 60)}, not {want}")

    for key in ("code_version", "command", "fidelity_key", "teacher", "teacher_key", *OPTIONAL_HEADER_KEYS):
        if key in h and not (isinstance(h[key], str) and len(h[key]) <= 4096):
            raise bad(key, "a string")
    if not (_is_number(h["ratio"]) and 0 < h["ratio"] <= 1):
        raise bad("ratio", "a number in (0, 1]")
    if not _is_whole(h["n_val"]):
        raise bad("n_val", "a whole number >= 0")
    if not (_is_whole(h["rows"], 1) and h["rows"] <= MAX_TABLE_ROWS):
        raise bad("rows", f"a whole number in [1, {MAX_TABLE_ROWS}] (MAX_TABLE_ROWS)")
    if not isinstance(h["proxy"], dict):
        raise bad("proxy", "an object")
    if not (isinstance(h["tasks"], list) and all(isinstance(t, str) for t in h["tasks"])):
        raise bad("tasks", "a list of task names")
    attacks = h["attacks"]
    if not (isinstance(attacks, dict) and 1 <= len(attacks) <= MAX_COLUMNS
            and all(isinstance(a, dict) for a in attacks.values())):
        raise bad("attacks", f"an object of 1 to {MAX_COLUMNS} attacks by column")
    cols = h["columns"]
    if not (isinstance(cols, list) and all(isinstance(c, str) and _COLUMN_NAME.fullmatch(c) for c in cols)
            and len(set(cols)) == len(cols) and set(cols) == set(attacks)):
        raise bad("columns", f"the attacks' columns {brief(sorted(attacks), 120)}, each once")
    if set(cols) & {*COLUMNS, "seconds"}:
        raise bad("columns", "attack columns (one is named like a fixed column)")
    stats = h["teacher_stats"]
    if not isinstance(stats, dict):
        raise bad("teacher_stats", "an object")
    if set(stats) != set(cols):
        raise _Bad(f"line 1: header teacher_stats has keys {brief(sorted(stats), 120)}, not exactly the columns "
                   f"{sorted(cols)}")
    for c in cols:
        try:
            TeacherStats.from_dict(stats[c])
        except ValueError as exc:
            raise _Bad(f"line 1: header teacher_stats[{c!r}]: {exc}") from None
    if h["teacher"] != task.teacher.name:
        raise ConfigError(f"{h['teacher']!r} is the table's teacher, not {task.teacher.name} (task {task.name}); a "
                          "table answers only tasks like the ones it was built for")
    if h["base_channels"] != list(task.teacher.base_channels):
        raise bad("base_channels", f"{list(task.teacher.base_channels)}, teacher {task.teacher.name}'s")
    return h


def _fraction(v: str, name: str) -> float:
    try:
        x = float(v)
    except ValueError:
        raise _Bad(f"{name} {brief(v)} is not a number") from None
    if not (math.isfinite(x) and 0.0 <= x <= 1.0):
        raise _Bad(f"{name} {brief(v)} is not a finite accuracy in [0, 1]")
    return x


def _whole(v: str, name: str) -> int:
    if not _WHOLE.fullmatch(v):
        raise _Bad(f"{name} {brief(v)} is not a whole number >= 0")
    return int(v)


def _row(fields: list[str], names: list[str], header: dict[str, Any], space: CompressionSpace,
         valid: list[set[StageChoice]]) -> Row:
    """One CSV row, checked (raises :class:`_Bad`)."""
    rec = dict(zip(names, fields))
    n = space.n_stages
    depths = [_whole(x, "depth") for x in rec["depths"].split("-")]
    widths = [_whole(x, "width") for x in rec["widths"].split("-")]
    blocks = rec["blocks"].split("-")
    if not len(depths) == len(widths) == len(blocks) == n:
        raise _Bad(f"depths, widths and blocks {brief(rec['depths'])}, {brief(rec['widths'])}, "
                   f"{brief(rec['blocks'])} are not {n} stages each, as teacher {space.teacher.name} has")
    for i, choice in enumerate(map(StageChoice, depths, widths, blocks)):
        if choice not in valid[i]:
            raise _Bad(f"stage {i + 1} (depth {choice.depth}, width {choice.width}, block {brief(choice.block)}) "
                       f"is outside teacher {space.teacher.name}'s space")
    arch = space.teacher.subnet(tuple(depths), tuple(widths), tuple(blocks))
    cost = space.cost(arch)
    macs, params = _whole(rec["macs"], "macs"), _whole(rec["params"], "params")
    if (macs, params) != (cost.macs, cost.params):
        raise _Bad(f"{arch.short()} has {cost.macs} MACs and {cost.params} parameters, not the row's {macs} and "
                   f"{params}")
    if macs > space.budget:
        raise _Bad(f"{arch.short()} ({macs} MACs) is over the table's budget (ratio {header['ratio']}: "
                   f"{space.budget:,.0f} MACs)")
    if rec["status"] not in STATUSES:
        raise _Bad(f"status {brief(rec['status'])} is not one of {', '.join(STATUSES)}")
    try:
        seconds = float(rec["seconds"])
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise _Bad(f"seconds {brief(rec['seconds'])} is not a finite number >= 0")
    return Row(arch, macs, params, rec["status"], _fraction(rec["clean"], "clean accuracy"),
               {c: _fraction(rec[c], f"{c} accuracy") for c in header["columns"]}, seconds)


def read_table(path: str | Path, task: Task) -> Table:
    """Read a table written by :func:`write_table`; ``task`` is any task of its teacher (to rebuild the
    sub-networks). A damaged, foreign or hostile file is one clear error (see the module's docstring for what is
    checked), read with bounded memory.

    Raises:
        ConfigError: one line naming the file, the line (and row) and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such table file" + ("" if not path.exists() else " (not a regular file)"))
    table: Table | None = None
    names: list[str] = []
    n_rows, lineno = 0, 0
    lines = _lines(path)
    try:
        for lineno, line in lines:
            if lineno == 1:
                if not line.startswith("#json "):
                    raise _Bad("line 1: no #json header line")
                try:
                    raw = json.loads(line[len("#json "):])
                except (ValueError, RecursionError) as exc:
                    raise _Bad(f"line 1: the #json header is not JSON ({brief(str(exc), 80)})") from None
                header = _check_header(raw, task)
                table = Table({**header, "source": str(path)})
                budget = float(header["ratio"]) * task.space.teacher_macs
                space = CompressionSpace(task.teacher, task.shape, budget, GRID_BLOCKS)
                valid = [set(c.values()) for c in space.choices]
                continue
            if line.startswith("#") or not line.strip():
                continue
            assert table is not None
            fields = line.split(",")
            if not names:
                names = [*COLUMNS, *table.header["columns"], "seconds"]
                if fields != names:
                    raise _Bad(f"line {lineno}: CSV header {brief(line, 200)} is not {','.join(names)}")
                continue
            n_rows += 1
            where = f"line {lineno} (row {n_rows})"
            if n_rows > table.header["rows"]:
                raise _Bad(f"{where}: more rows than the header's {table.header['rows']}")
            if len(fields) != len(names):
                raise _Bad(f"{where}: {len(fields)} fields, the CSV header has {len(names)}")
            try:
                row = _row(fields, names, table.header, space, valid)
            except _Bad as exc:
                raise _Bad(f"{where}: {exc}") from None
            key = row.arch.key()
            if key in table.rows:
                raise _Bad(f"{where}: {row.arch.short()} is in the table twice")
            table.rows[key] = row
    except _Bad as exc:
        raise ConfigError(f"{path}: not a readable rcnas table: {exc}; regenerate it with bench/build_table.py"
                          ) from None
    except ConfigError as exc:  # a table of another teacher
        raise ConfigError(f"{path}: {exc}") from None
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated, damaged, unreadable
        raise ConfigError(f"{path}: not a readable rcnas table (line {lineno + 1}: {type(exc).__name__}: "
                          f"{brief(str(exc), 120)}); regenerate it with bench/build_table.py") from None
    finally:
        lines.close()  # the gzip file, now
    if table is None or n_rows != table.header["rows"]:
        got = "nothing" if table is None else f"{n_rows} rows, its header says {table.header['rows']}"
        raise ConfigError(f"{path}: not a readable rcnas table: {got} (truncated?); regenerate it with "
                          "bench/build_table.py")
    return table


_OPEN: dict[tuple[str, str], Table] = {}


def open_table(path: str | Path, task: Task | str) -> Table:
    """:func:`read_table`, once per process and file (envs of one process share the parsed table)."""
    from rcnas.task import load_task

    task = task if isinstance(task, Task) else load_task(task)
    k = (str(Path(path).resolve()), task.teacher.name)
    if k not in _OPEN:
        _OPEN[k] = read_table(path, task)
    return _OPEN[k]


def open_tables(paths: Sequence[str | Path], tasks: Sequence[Task]) -> list[Table]:
    """Each table of ``paths`` opened with whichever of ``tasks`` has its teacher (a table rebuilds its sub-networks
    from a task of its own teacher), then every task checked answerable by one of them: refused before any work.

    Raises:
        ConfigError: one line naming the table no task fits, or the task no table answers.
    """
    by_teacher = {t.teacher.name: t for t in tasks}
    tables = []
    for path in paths:
        errors = []
        for task in by_teacher.values():
            try:
                tables.append(open_table(path, task))
                break
            except ConfigError as exc:
                errors.append(str(exc))
        else:
            raise ConfigError(f"{path}: no task given has this table's teacher (tried {', '.join(by_teacher)}): "
                              + (errors[0] if errors else "no tasks"))
    ev = TableEvaluator(tables)
    for task in tasks:
        ev.table_for(task)
    return tables


class TableEvaluator:
    """The :class:`rcnas.proxy.protocol.Evaluator` of one or more tables (of other teachers, or of the same
    sub-networks at a screening fidelity beside the proxy's): answers in microseconds from the table whose teacher
    and fidelity are the task's, never computes.

    A sub-network outside the table (or a task no table serves) is an error, never a silent live evaluation. Keeps
    every request in order (``requests``), as the service's store keeps a client's: whoever needs them (a benchmark)
    holds this evaluator and hands it to the searcher or env that asks. ``stored``: task file -> sub-network keys the
    store would already hold (a meta-training's evaluations), returned by :meth:`rows` as the service's are."""

    def __init__(self, tables: Table | Sequence[Table], client: str = "",
                 stored: Mapping[str, Sequence[str]] | None = None) -> None:
        self.tables = [tables] if isinstance(tables, Table) else list(tables)
        self.table = self.tables[0]
        self.client = client
        """the tag of its requests (the store's client): this evaluator's log holds only its own"""
        self.requests: list[Request] = []
        self.stored = {k: list(v) for k, v in (stored or {}).items()}
        self._cols: dict[int, tuple[Task, Table, str]] = {}
        self._seen: set[tuple[str, str]] = set()

    def table_for(self, task: Task) -> tuple[Table, str]:
        """The table that answers ``task`` and its column (one line saying why when none does)."""
        hit = self._cols.get(id(task))
        if hit is None or hit[0] is not task:
            keys = (teacher_key(task), fidelity_key(task.config))
            table = next((t for t in self.tables if (t.header["teacher_key"], t.header["fidelity_key"]) == keys),
                         self.table)
            hit = (task, table, table.column_for(task))  # the first table says why when none matches
            self._cols[id(task)] = hit
        return hit[1], hit[2]

    def teacher_stats(self, task: Task) -> TeacherStats:
        table, col = self.table_for(task)
        return table.teacher(col)

    def _metrics(self, task: Task, arch: ArchSpec, seed: int) -> ProxyMetrics:
        table, col = self.table_for(task)
        row = table.rows.get(arch.key())
        if row is None or row.macs > task.budget:
            raise EvaluationFailed(f"{arch.short()} is not in the table {table.header['source']} (within "
                                   f"{task.name}'s budget); a table-backed search never evaluates live")
        h = table.header
        return ProxyMetrics(
            status=row.status, reason="" if row.status == "ok" else "failed when tabulated",
            robust_acc=row.robust[col], robust_sd=0.0, clean_acc=row.clean, macs=row.macs, params=row.params,
            attack=task.config.attack.name, epsilon=task.config.attack.epsilon, steps=task.config.attack.steps,
            n_val=h["n_val"], seed=seed, repeats=task.config.proxy.repeats,
            fine_tune_epochs=task.config.proxy.epochs, inherited_blocks=0, fresh_blocks=0, seconds=row.seconds,
            device="table", node="table", code_version=h["code_version"])

    def evaluate(self, task: Task, arch: ArchSpec, seed: int = 0) -> Evaluation:
        metrics = self._metrics(task, arch, seed)
        key = EvalKey(task_key(task), arch.key(), store_fidelity(task.config), seed)
        cached = (task.name, key.arch) in self._seen  # a repeat: a store would have answered it
        self._seen.add((task.name, key.arch))
        self.requests.append(Request(task.name, key.arch, arch, metrics, cached))
        return Evaluation(key, metrics, cached=cached)

    def rows(self, task: Task) -> list[dict[str, Any]]:
        """What the store holds for ``task`` before the search (``stored``), as the service's ``rows`` returns it."""
        keys = self.stored.get(str(Path(task.source).resolve()), []) if task.source else []
        table, _ = self.table_for(task)
        return [{"arch": asdict(table.rows[k].arch), "metrics": self._metrics(task, table.rows[k].arch, 0).to_dict()}
                for k in keys if k in table.rows and table.rows[k].macs <= task.budget]


class Scorer:
    """A task's rewards from a table: the best one (for regret), every feasible one (for ranks), the top rows."""

    def __init__(self, task: Task, ev: TableEvaluator) -> None:
        self.task = task
        self.teacher = ev.teacher_stats(task)
        table, col = ev.table_for(task)
        self.ranked = sorted(((self.reward(r.robust[col], r.macs, r.status == "ok"), r)
                              for r in table.rows.values() if r.macs <= task.budget),
                             key=lambda p: p[0], reverse=True)
        """(reward, row) of every sub-network within the task's budget, best first"""
        self.all = [reward for reward, _ in self.ranked]

    def reward(self, robust: float, macs: int, ok: bool) -> float:
        return compression_reward(robust, self.teacher.robust_acc, macs, self.task.budget, self.task.config.reward, ok)

    def rank(self, reward: float) -> int:
        return 1 + sum(1 for r in self.all if r > reward + 1e-12)
