"""The evaluation store: every proxy evaluation of a run, in SQLite in the run directory.

Key = (task, sub-network, fidelity, seed) content hashes; value = the metrics with their provenance and the
sub-network itself. Inserts never overwrite (``INSERT OR IGNORE``), so a result is stored once however many
processes race to store it, and a restarted run on the same directory reuses everything.

The file carries a schema version (SQLite's ``user_version``): a file of another version, another program's
database or a damaged file is refused with one line instead of being read wrongly.

A store may come from elsewhere (``--resume`` of a folder pulled from ``--storage``, a copied run), so it is read as
data from someone else: opened with ``trusted_schema=OFF`` and ``cell_size_check=ON``; refused on opening unless its
tables are exactly this schema's, column for column, with nothing else (no trigger, view, index or other table: a
trigger would run on our own inserts); every row is checked as it is read, and a bad one refuses the whole store
with one line naming the file, the row and how to remove it (never skipped: a silently missing measurement would
be computed again under the same key, and a silently dropped request would change a benchmark's replay).
:func:`check_store` checks every row at once, before a run starts.
"""

from __future__ import annotations

import json
import shlex
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from rcnas.infra.errors import ConfigError
from rcnas.proxy.records import EvalKey, ProxyMetrics, Request, brief
from rcnas.space.arch import ArchSpec, arch_from_dict

SCHEMA_VERSION = 2
"""2: rows are read by task and fidelity key (1 read them by task name, so an edited task mixed measurements)"""
SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    task TEXT NOT NULL, arch TEXT NOT NULL, fidelity TEXT NOT NULL, seed INTEGER NOT NULL,
    task_name TEXT, arch_json TEXT NOT NULL, metrics_json TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (task, arch, fidelity, seed)
);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, client TEXT NOT NULL, task_name TEXT,
    task TEXT NOT NULL, arch TEXT NOT NULL, fidelity TEXT NOT NULL, seed INTEGER NOT NULL,
    cached INTEGER NOT NULL, created REAL NOT NULL
)
"""
MAX_VALUE_BYTES = 1 << 20
"""SQLite's length limit on this connection: one stored text of more than this (a real one is a few KB) is an
error when read, so that no single row can make a reader allocate without bound"""
MAX_ARCH_JSON = 256 * 1024
"""characters of one stored sub-network at most"""
_SHAPE: dict[tuple[str, str], str] = {}
"""the schema's objects as SQLite records them: (type, name) -> its SQL, whitespace normalised; filled once"""


def _objects(db: sqlite3.Connection) -> dict[tuple[str, str], str]:
    rows = db.execute("SELECT type, name, sql FROM sqlite_master")
    return {(t, n): " ".join((sql or "").split()) for t, n, sql in rows}


def _schema_shape() -> dict[tuple[str, str], str]:
    if not _SHAPE:
        ref = sqlite3.connect(":memory:")
        ref.executescript(SCHEMA)
        _SHAPE.update(_objects(ref))
        ref.close()
    return _SHAPE


def _columns(db: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    # table_xinfo: generated (hidden) columns too
    return [tuple(r[1:]) for r in db.execute(f"PRAGMA table_xinfo({table})")]


def _connect(path: Path) -> sqlite3.Connection:
    """A connection that treats the file as someone else's: no schema-defined code beyond the harmless, cells
    checked, no value longer than :data:`MAX_VALUE_BYTES`."""
    db = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
    db.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    db.execute("PRAGMA trusted_schema=OFF")
    db.execute("PRAGMA cell_size_check=ON")
    return db


def _check_schema(db: sqlite3.Connection) -> bool:
    """Raise ``sqlite3.DatabaseError`` saying what is wrong unless the file holds exactly this schema (or nothing);
    True when it holds nothing yet."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    objects = _objects(db)
    want = _schema_shape()
    tables = sorted(n for t, n in objects if t == "table")
    if set(tables) - {n for t, n in want if t == "table"}:
        raise sqlite3.DatabaseError(f"unknown tables {brief(tables, 200)}")
    other = sorted(objects.keys() - want.keys())
    if other:
        raise sqlite3.DatabaseError(f"unknown {other[0][0]} {brief(other[0][1])}: a store holds only its own tables "
                                    "(a trigger, view or index there is someone else's code)")
    if not objects:
        return True
    if version != SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema version {version or 1}, this rcnas reads {SCHEMA_VERSION}; its "
                                    "results are keyed otherwise")
    missing = sorted(n for k, n in want if k == "table" and (k, n) not in objects)
    if missing:
        raise sqlite3.DatabaseError(f"schema version {SCHEMA_VERSION} without its tables {missing}")
    ref = sqlite3.connect(":memory:")
    try:
        ref.executescript(SCHEMA)
        for (type_, name), sql in sorted(objects.items()):
            if type_ != "table" or sql == want[type_, name]:
                continue
            got, expected = [c[0] for c in _columns(db, name)], [c[0] for c in _columns(ref, name)]
            if got != expected:
                raise sqlite3.DatabaseError(f"schema version {SCHEMA_VERSION}, but table {name} has columns "
                                            f"{brief(got, 300)}, not {expected}")
            raise sqlite3.DatabaseError(f"schema version {SCHEMA_VERSION}, but table {name} is declared otherwise: "
                                        f"{brief(sql, 300)}")
    finally:
        ref.close()
    return False


class EvaluationStore:
    """A small thread-safe wrapper over one SQLite file (WAL mode: readers never block the writer)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if self.path.is_dir():
            raise ConfigError(f"{self.path}: a folder, not an evaluation store; move it away")
        try:
            self._db = _connect(self.path)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{self.path}: not an rcnas evaluation store ({exc}); move it away or pick another "
                              "run folder") from None
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ConfigError(f"{self.path}: not an rcnas evaluation store ({exc}); move it away or pick another "
                              "run folder") from None

    def _open(self) -> None:
        _check_schema(self._db)  # before any write: WAL mode, and our inserts, on a file that is ours
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # one transaction: another process opening the file meanwhile sees no tables or all of them, versioned
        self._db.executescript(f"BEGIN IMMEDIATE; {SCHEMA}; PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")

    def _bad_row(self, table: str, rowid: int, what: str, problem: str) -> ConfigError:
        """One line: which row of which file is wrong, and how to remove it."""
        fix = f"DELETE FROM {table} WHERE rowid={rowid}"
        return ConfigError(f"{self.path}: {table} row {rowid} ({what}): {problem}; delete that row "
                           f"(sqlite3 {shlex.quote(str(self.path))} {shlex.quote(fix)}) or move the file away")

    def _metrics(self, rowid: int, arch: Any, text: Any, table: str = "evaluations") -> ProxyMetrics:
        try:
            return ProxyMetrics.from_json(text)
        except ValueError as exc:
            raise self._bad_row(table, rowid, f"sub-network {brief(arch)}", f"metrics_json: {exc}") from None

    def _arch(self, rowid: int, arch: Any, text: Any, table: str = "evaluations") -> dict[str, Any]:
        try:
            return check_arch_json(text, arch)
        except ValueError as exc:
            raise self._bad_row(table, rowid, f"sub-network {brief(arch)}", f"arch_json: {exc}") from None

    def get(self, key: EvalKey) -> Optional[ProxyMetrics]:
        with self._lock:
            row = self._read(
                "SELECT rowid, metrics_json FROM evaluations WHERE task=? AND arch=? AND fidelity=? AND seed=?",
                (key.task, key.arch, key.fidelity, key.seed), one=True)
        return None if row is None else self._metrics(row[0], key.arch, row[1])

    def _read(self, query: str, args: tuple[Any, ...], one: bool = False) -> Any:
        """Run a read; a damaged file (or a value over :data:`MAX_VALUE_BYTES`) is one line, not a traceback."""
        try:
            cur = self._db.execute(query, args)
            return cur.fetchone() if one else cur.fetchall()
        except sqlite3.OperationalError:
            raise  # locked, out of disk: not the file's content
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{self.path}: a damaged evaluation store ({exc}); move it away or pick another run "
                              "folder") from None

    def put(self, key: EvalKey, arch: ArchSpec, metrics: ProxyMetrics, task_name: str = "") -> bool:
        """Store a result; returns False when the key was already stored (the first result wins)."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key.task, key.arch, key.fidelity, key.seed, task_name, json.dumps(asdict(arch)),
                 json.dumps(metrics.to_dict()), time.time()),
            )
        return cur.rowcount == 1

    def log_request(self, client: str, key: EvalKey, task_name: str, cached: bool) -> None:
        """Record that ``client`` asked for ``key``: several searchers can share one store (the proxy value of a
        sub-network is the same whoever asks) and still each replay their own evaluation order."""
        with self._lock:
            self._db.execute(
                "INSERT INTO requests (client, task_name, task, arch, fidelity, seed, cached, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (client, task_name, key.task, key.arch, key.fidelity, key.seed, int(cached), time.time()),
            )

    def requests(self, client: str) -> list[Request]:
        """``client``'s requests in the order made, each with the stored sub-network and metrics (every row
        checked)."""
        with self._lock:
            fetched = self._read(
                "SELECT e.rowid, r.task_name, r.arch, r.cached, e.arch_json, e.metrics_json FROM requests r "
                "JOIN evaluations e ON r.task = e.task AND r.arch = e.arch AND r.fidelity = e.fidelity "
                "AND r.seed = e.seed WHERE r.client = ? ORDER BY r.seq", (client,))
        return [Request(t or "", a, arch_from_dict(self._arch(rowid, a, aj)), self._metrics(rowid, a, m), bool(c))
                for rowid, t, a, c, aj, m in fetched]

    def __len__(self) -> int:
        with self._lock:
            return int(self._read("SELECT COUNT(*) FROM evaluations", (), one=True)[0])

    def rows(self, task: str | None = None, fidelity: str | None = None) -> Iterator[dict[str, Any]]:
        """All stored evaluations (optionally of one task key and fidelity key), oldest first, as plain dicts."""
        query = "SELECT rowid, arch, task_name, arch_json, metrics_json, created FROM evaluations"
        args: tuple[Any, ...] = ()
        if task is not None:
            query, args = query + " WHERE task=? AND fidelity=?", (task, fidelity)
        with self._lock:
            fetched = self._read(query + " ORDER BY created", args)
        # every row checked before the first is yielded: a bad row refuses the store, never half a result
        out = [{"task_name": name, "arch": self._arch(rowid, key, arch),
                "metrics": self._metrics(rowid, key, metrics).to_dict(), "created": created}
               for rowid, key, name, arch, metrics, created in fetched]
        yield from out

    def close(self) -> None:
        with self._lock:
            self._db.close()


def check_arch_json(text: Any, key: Any = None) -> dict[str, Any]:
    """A stored sub-network (``asdict`` of an :class:`ArchSpec`, as JSON), checked: an object
    :func:`arch_from_dict` reads, with whole positive depths, channels, strides and kernel sizes, whose content key
    is ``key`` when given. ValueError saying what is wrong otherwise."""
    if not isinstance(text, str) or len(text) > MAX_ARCH_JSON:
        raise ValueError(f"not JSON text of at most {MAX_ARCH_JSON} characters")
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not valid JSON ({brief(str(exc), 80)})") from None
    try:
        arch = arch_from_dict(d)
    except (TypeError, KeyError, ValueError, IndexError, AttributeError) as exc:
        raise ValueError(f"not a sub-network ({type(exc).__name__}: {brief(str(exc), 80)})") from None

    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 20

    if not (whole(arch.stem_channels) and whole(arch.stem_stride) and 1 <= len(arch.stages) <= 64
            and all(whole(s.depth) and whole(s.channels) and whole(s.stride) and whole(s.kernel_size)
                    and isinstance(s.block, str) for s in arch.stages)):
        raise ValueError("not a sub-network (stem, stages or their depths, channels, strides, kernel sizes)")
    if key is not None and arch.key() != key:
        raise ValueError(f"a sub-network whose key is {arch.key()}, not the row's {brief(key)}")
    return d


def check_store(path: str | Path) -> int:
    """Check a run's evaluation store before a run uses it (before Ray starts, so a bad file is one line from the
    driver): its schema as :class:`EvaluationStore` checks it on opening, SQLite's ``quick_check``, the type of
    every key column, and every row's sub-network and metrics. Reads row by row (memory stays bounded) and
    writes nothing. Returns the number of stored evaluations; 0 when there is no file yet.

    Raises:
        ConfigError: one line naming the file, and the row and how to remove it when one row is bad.
    """
    path = Path(path)
    if not path.exists():
        return 0
    if not path.is_file():
        raise ConfigError(f"{path}: not a file, so not an evaluation store; move it away")
    store = EvaluationStore.__new__(EvaluationStore)
    store.path, store._lock = path, threading.Lock()
    try:
        store._db = _connect(path)
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path}: not an rcnas evaluation store ({exc}); move it away or pick another run "
                          "folder") from None
    try:
        try:
            if _check_schema(store._db):
                return 0
            problems = [r[0] for r in store._db.execute("PRAGMA quick_check(3)")]
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path}: not an rcnas evaluation store ({exc}); move it away or pick another run "
                              "folder") from None
        if problems != ["ok"]:
            raise ConfigError(f"{path}: a damaged evaluation store ({brief('; '.join(map(str, problems)), 300)}); "
                              "move it away or pick another run folder")
        typed = {
            "evaluations": "typeof(task) != 'text' OR typeof(arch) != 'text' OR typeof(fidelity) != 'text' "
                           "OR typeof(seed) != 'integer' OR typeof(task_name) NOT IN ('text', 'null') "
                           "OR typeof(arch_json) != 'text' OR typeof(metrics_json) != 'text' "
                           "OR typeof(created) NOT IN ('real', 'integer')",
            "requests": "typeof(client) != 'text' OR typeof(task_name) NOT IN ('text', 'null') "
                        "OR typeof(task) != 'text' OR typeof(arch) != 'text' OR typeof(fidelity) != 'text' "
                        "OR typeof(seed) != 'integer' OR cached NOT IN (0, 1) OR typeof(cached) != 'integer' "
                        "OR typeof(created) NOT IN ('real', 'integer')",
        }
        for table, where in typed.items():
            bad = store._read(f"SELECT rowid FROM {table} WHERE {where} LIMIT 1", (), one=True)
            if bad is not None:
                raise store._bad_row(table, bad[0], "its keys", "a column holds a value of the wrong type")
        n = 0
        try:
            cur = store._db.execute("SELECT rowid, arch, arch_json, metrics_json FROM evaluations")
            for rowid, arch, arch_json, metrics_json in cur:  # one row at a time
                store._arch(rowid, arch, arch_json)
                store._metrics(rowid, arch, metrics_json)
                n += 1
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{path}: a damaged evaluation store ({exc}); move it away or pick another run "
                              "folder") from None
        return n
    finally:
        store._db.close()
