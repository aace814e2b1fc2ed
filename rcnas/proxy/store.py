"""The evaluation store: every proxy evaluation of a run, in SQLite in the run directory.

Key = (task, sub-network, fidelity, seed) content hashes; value = the metrics with their provenance and the
sub-network itself. Inserts never overwrite (``INSERT OR IGNORE``), so a result is stored once however many
processes race to store it, and a restarted run on the same directory reuses everything.

The file carries a schema version (SQLite's ``user_version``): a file of another version, another program's
database or a damaged file is refused with one line instead of being read wrongly.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from rcnas.infra.errors import ConfigError
from rcnas.proxy.records import EvalKey, ProxyMetrics
from rcnas.space.arch import ArchSpec

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


class EvaluationStore:
    """A small thread-safe wrapper over one SQLite file (WAL mode: readers never block the writer)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        if self.path.is_dir():
            raise ConfigError(f"{self.path}: a folder, not an evaluation store; move it away")
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise ConfigError(f"{self.path}: not an rcnas evaluation store ({exc}); move it away or pick another "
                              "run folder") from None

    def _open(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables - {"evaluations", "requests", "sqlite_sequence"}:
            raise sqlite3.DatabaseError(f"unknown tables {sorted(tables)}")
        if tables and version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version or 1}, this rcnas reads {SCHEMA_VERSION}; its "
                                        "results are keyed otherwise")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def get(self, key: EvalKey) -> Optional[ProxyMetrics]:
        with self._lock:
            row = self._db.execute(
                "SELECT metrics_json FROM evaluations WHERE task=? AND arch=? AND fidelity=? AND seed=?",
                (key.task, key.arch, key.fidelity, key.seed),
            ).fetchone()
        return None if row is None else ProxyMetrics(**json.loads(row[0]))

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

    def requests(self, client: str) -> list[dict[str, Any]]:
        """``client``'s requests in the order made, each with the stored metrics."""
        with self._lock:
            fetched = self._db.execute(
                "SELECT r.task_name, r.arch, r.cached, e.arch_json, e.metrics_json FROM requests r JOIN evaluations e "
                "ON r.task = e.task AND r.arch = e.arch AND r.fidelity = e.fidelity AND r.seed = e.seed "
                "WHERE r.client = ? ORDER BY r.seq", (client,),
            ).fetchall()
        return [{"task_name": t, "arch_key": a, "cached": bool(c), "arch": json.loads(aj), "metrics": json.loads(m)}
                for t, a, c, aj, m in fetched]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0])

    def rows(self, task: str | None = None, fidelity: str | None = None) -> Iterator[dict[str, Any]]:
        """All stored evaluations (optionally of one task key and fidelity key), oldest first, as plain dicts."""
        query = "SELECT task_name, arch_json, metrics_json, created FROM evaluations"
        args: tuple[Any, ...] = ()
        if task is not None:
            query, args = query + " WHERE task=? AND fidelity=?", (task, fidelity)
        with self._lock:
            fetched = self._db.execute(query + " ORDER BY created", args).fetchall()
        for name, arch, metrics, created in fetched:
            yield {"task_name": name, "arch": json.loads(arch), "metrics": json.loads(metrics), "created": created}

    def close(self) -> None:
        with self._lock:
            self._db.close()
