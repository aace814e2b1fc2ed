"""A run folder that survives the head node: ``train.py --storage URI`` (``s3://``, ``gs://``, ``file://`` ...).

Tune writes its experiments (checkpoints every iteration, TensorBoard events, progress.csv) straight to
``URI/tune`` (Tune's own ``storage_path``, through pyarrow's filesystems). The rest of the run folder lives on the
head's disk while the run works (SQLite needs a local file) and is copied to ``URI`` after each phase: the
evaluation store (a consistent snapshot through SQLite's backup API, never the live file), the resolved configs,
the report, the searched sub-network and the final results. ``--resume`` on a new head pulls it back first.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

STORE = "evaluations.sqlite"
SKIP = {"tune", ".rcnas.lock"}
"""never copied by these functions: Tune syncs ``tune/`` itself; a lock belongs to one machine"""


def is_uri(path: str | Path | None) -> bool:
    return isinstance(path, str) and "://" in path


def _fs(uri: str) -> tuple[Any, str]:
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a bad or unsupported URI
        from rcnas.infra.errors import ConfigError

        raise ConfigError(f"--storage {uri}: not a storage URI pyarrow can open ({exc}); e.g. s3://bucket/runs/x, "
                          "gs://bucket/runs/x or file:///shared/runs/x") from None


def tune_uri(uri: str) -> str:
    """Where Tune keeps the run's experiments under the storage URI."""
    return f"{uri.rstrip('/')}/tune"


def check_storage(uri: str) -> None:
    """Open ``uri`` and write under it, before any work starts: a typo or missing credentials are one line now, not
    a failed upload after hours."""
    import pyarrow.fs

    fs, root = _fs(uri)
    try:
        fs.create_dir(root, recursive=True)
        probe = f"{root}/.rcnas-probe"
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except (OSError, pyarrow.ArrowException) as exc:
        from rcnas.infra.errors import ConfigError

        raise ConfigError(f"--storage {uri}: cannot write there ({exc}); check the URI and the credentials") from None


def push(out: Path, uri: str, include_tune: bool = False) -> None:
    """Copy the run folder (but ``tune/``, which Tune keeps there itself, unless ``include_tune``: the plain
    ``--no-tune`` loops write it here) to ``uri``; the store as a snapshot."""
    import pyarrow.fs

    fs, root = _fs(uri)
    fs.create_dir(root, recursive=True)
    local = pyarrow.fs.LocalFileSystem()
    for entry in sorted(out.iterdir()):
        if (entry.name in SKIP and not (include_tune and entry.name == "tune")) or entry.name.startswith(STORE):
            # the store (and its -wal/-shm files) goes as a snapshot below
            continue
        dest = f"{root}/{entry.name}"
        if entry.is_dir():
            fs.create_dir(dest, recursive=True)
        pyarrow.fs.copy_files(str(entry.resolve()), dest, source_filesystem=local, destination_filesystem=fs)
    if (out / STORE).is_file():
        with tempfile.TemporaryDirectory() as tmp:
            snap = Path(tmp) / STORE
            src, dst = sqlite3.connect(out / STORE), sqlite3.connect(snap)
            try:
                src.backup(dst)  # consistent even while the service writes
            finally:
                src.close()
                dst.close()
            pyarrow.fs.copy_files(str(snap), f"{root}/{STORE}", source_filesystem=local, destination_filesystem=fs)


def pull(uri: str, out: Path) -> bool:
    """Copy a run folder pushed to ``uri`` into ``out`` when ``out`` holds no store (a new head); returns whether
    anything was pulled."""
    import pyarrow.fs

    if (out / STORE).is_file():
        return False
    fs, root = _fs(uri)
    if fs.get_file_info(f"{root}/{STORE}").type != pyarrow.fs.FileType.File:
        return False
    out.mkdir(parents=True, exist_ok=True)
    local = pyarrow.fs.LocalFileSystem()
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root)):
        name = info.path.rsplit("/", 1)[-1]
        if name in SKIP:
            continue
        if info.type == pyarrow.fs.FileType.Directory:
            (out / name).mkdir(exist_ok=True)
        pyarrow.fs.copy_files(info.path, str((out / name).resolve()), source_filesystem=fs,
                              destination_filesystem=local)
    return True


def fetch_progress(stage_uri: str, local: Path) -> Path:
    """Copy every ``progress.csv`` of a Tune experiment kept at ``stage_uri`` under ``local`` (for the report's
    reward plot, which reads them); returns ``local``."""
    import pyarrow.fs

    fs, root = _fs(stage_uri)
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.path.endswith("/progress.csv"):
            dest = local / info.path[len(root):].lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            pyarrow.fs.copy_files(info.path, str(dest.resolve()), source_filesystem=fs,
                                  destination_filesystem=pyarrow.fs.LocalFileSystem())
    return local


class Keeper:
    """Pushes ``out`` to ``uri`` every ``every_s`` seconds from a background thread while a phase runs (a store
    snapshot is cheap; a lost head then loses at most ``every_s`` of evaluations, however long the phase)."""

    def __init__(self, out: Path, uri: str | None, every_s: float = 600.0, include_tune: bool = False) -> None:
        import threading

        self.out, self.uri, self.every_s, self.include_tune = out, uri, every_s, include_tune
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rcnas-storage-keeper")

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                push(self.out, self.uri, self.include_tune)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - a failed copy must not stop the search: the next one retries
                print(f"warning: copying the run folder to {self.uri} failed ({exc}); retrying in "
                      f"{self.every_s:.0f} s", flush=True)

    def __enter__(self) -> Keeper:
        if self.uri:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.uri:
            self._thread.join()
