"""A run folder that survives the head node: ``train.py --storage URI`` (``s3://``, ``gs://``, ``file://`` ...).

Tune writes its experiments (checkpoints every iteration, TensorBoard events, progress.csv) straight to
``URI/tune`` (Tune's own ``storage_path``, through pyarrow's filesystems). The rest of the run folder lives on the
head's disk while the run works (SQLite needs a local file) and is copied to ``URI`` after each phase: the
evaluation store (a consistent snapshot through SQLite's backup API, never the live file), the resolved configs,
the report, the searched sub-network and the final results. ``--resume`` on a new head pulls it back first.

Only regular files travel: a symbolic link in the run folder (to a key file, to a folder elsewhere) is skipped with a
warning, never followed, and a pull writes regular files under the run folder only. A URI carrying credentials
(``s3://KEY:SECRET@bucket``) is refused: Tune would record it in its state files and logs; the provider's own
credential chain supplies them instead.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

# moved to rcnas (which opens --data-root URIs and never imports agents); re-exported for agents' callers
from rcnas.infra.uris import check_no_credentials, is_uri, redact  # noqa: F401

STORE = "evaluations.sqlite"
SKIP = {"tune", ".rcnas.lock"}
"""never copied by these functions: Tune syncs ``tune/`` itself; a lock belongs to one machine"""


def _fs(uri: str) -> tuple[Any, str]:
    import pyarrow.fs

    check_no_credentials(uri)
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


CHUNK = 8 << 20


_WARNED: dict[str, int] = {}


def _skipped_links_warning(n: int, where: str, first: str) -> None:
    """One line, once per folder and count (the Keeper pushes every 10 minutes; W&B's folder holds links)."""
    if n and _WARNED.get(where) != n:
        _WARNED[where] = n
        print(f"warning: --storage: {n} symbolic link{'s' if n > 1 else ''} or special file{'s' if n > 1 else ''} "
              f"in {where} skipped (e.g. {first}): only regular files are copied, never what a link points to",
              file=sys.stderr, flush=True)


def walk_local(root: Path, skip_top: Any = None) -> tuple[list[str], list[str], list[str]]:
    """The regular files and folders under ``root`` (relative, ``/``-separated, sorted), read with ``lstat`` and
    never through a link: symbolic links (to files or folders) and special files are returned apart, not entered.
    ``skip_top(name)`` leaves out entries of ``root`` itself. Returns (files, folders, skipped)."""
    files: list[str] = []
    folders: list[str] = []
    skipped: list[str] = []

    def visit(folder: str, rel: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except FileNotFoundError:
            if not rel:
                raise
            return  # removed while the walk ran (a checkpoint Tune no longer keeps)
        for e in entries:
            if not rel and skip_top is not None and skip_top(e.name):
                continue
            try:
                mode = e.stat(follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue  # a temporary file renamed away meanwhile
            name = rel + e.name
            if stat.S_ISDIR(mode):
                folders.append(name)
                visit(e.path, name + "/")
            elif stat.S_ISREG(mode):
                files.append(name)
            else:
                skipped.append(name)

    visit(str(root), "")
    return files, folders, skipped


def open_local(path: str | Path) -> Any:
    """A regular file opened for reading without following a link at ``path`` (binary file object).

    Raises:
        ConfigError: ``path`` is a link or not a regular file.
    """
    from rcnas.infra.errors import ConfigError

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if os.path.islink(path):
            raise ConfigError(f"{path}: a symbolic link, which rcnas never follows; remove it") from None
        raise exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"{path}: not a regular file")
    return os.fdopen(fd, "rb")


def _copy_stream(src: Any, dst: Any) -> None:
    for chunk in iter(lambda: src.read(CHUNK), b""):
        dst.write(chunk)


def push(out: Path, uri: str, include_tune: bool = False) -> None:
    """Copy the run folder (but ``tune/``, which Tune keeps there itself, unless ``include_tune``: the plain
    ``--no-tune`` loops write it here) to ``uri``; the store as a snapshot. Regular files only: a symbolic link
    (to a key file, to a folder) is skipped, never followed, with one warning line saying how many were."""
    fs, root = _fs(uri)
    fs.create_dir(root, recursive=True)

    def skip(name: str) -> bool:
        # the store (and its -wal/-shm files) goes as a snapshot below
        return (name in SKIP and not (include_tune and name == "tune")) or name.startswith(STORE)

    files, folders, skipped = walk_local(out, skip)
    for rel in folders:
        fs.create_dir(f"{root}/{rel}", recursive=True)
    for rel in files:
        try:
            with open_local(out / rel) as src, fs.open_output_stream(f"{root}/{rel}") as dst:
                _copy_stream(src, dst)
        except FileNotFoundError:
            continue  # removed since the walk (a temporary file renamed into place): the next copy has it
    store = out / STORE
    if store.is_symlink() or (store.exists() and not store.is_file()):
        skipped.append(STORE)
    elif store.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            snap = Path(tmp) / STORE
            src, dst = sqlite3.connect(out / STORE), sqlite3.connect(snap)
            try:
                src.backup(dst)  # consistent even while the service writes
            finally:
                src.close()
                dst.close()
            with open_local(snap) as f, fs.open_output_stream(f"{root}/{STORE}") as g:
                _copy_stream(f, g)
    _skipped_links_warning(len(skipped), str(out), skipped[0] if skipped else "")


def remote_files(fs: Any, root: str) -> list[str]:
    """The files under ``root`` on a storage filesystem (relative, ``/``-separated, sorted); for a ``file://``
    storage, regular files only, never through a link (``walk_local``)."""
    import pyarrow.fs

    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        if not os.path.isdir(root):
            return []
        files, _, skipped = walk_local(Path(root))
        _skipped_links_warning(len(skipped), root, skipped[0] if skipped else "")
        return files
    base = root.rstrip("/")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(i.path[len(base):].lstrip("/") for i in infos if i.type == pyarrow.fs.FileType.File)


def open_remote(fs: Any, root: str, rel: str) -> Any:
    import pyarrow.fs

    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        return open_local(os.path.join(root, rel))
    return fs.open_input_stream(f"{root.rstrip('/')}/{rel}")


def _download(fs: Any, root: str, rel: str, out: Path, uri: str) -> Path:
    """Copy ``root/rel`` to ``out/rel``: a plain relative name, written only under ``out`` and never through a link
    (a link found on the way is refused; the file is written to a temporary name and renamed into place)."""
    from rcnas.infra.errors import ConfigError
    from rcnas.infra.files import inside, write_atomic_with

    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in rel or "\x00" in rel:
        raise ConfigError(f"--storage {uri}: {rel!r} is not a plain name inside the run folder; refusing to copy it")
    dest = inside(out, rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.parent.resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"--storage {uri}: {rel} would be written outside {out}; refusing to copy it")
    with open_remote(fs, root, rel) as src:
        write_atomic_with(dest, lambda handle: _copy_stream(src, handle))
    return dest


def pull(uri: str, out: Path) -> bool:
    """Copy a run folder pushed to ``uri`` into ``out`` when ``out`` holds no store (a new head); returns whether
    anything was pulled. Regular files only, each written under ``out`` (never through or as a link)."""
    import pyarrow.fs

    if os.path.lexists(out / STORE):
        return False
    fs, root = _fs(uri)
    if fs.get_file_info(f"{root}/{STORE}").type != pyarrow.fs.FileType.File:
        return False
    out.mkdir(parents=True, exist_ok=True)
    for rel in remote_files(fs, root):
        if rel.split("/", 1)[0] not in SKIP:
            _download(fs, root, rel, out, uri)
    return True


def fetch_progress(stage_uri: str, local: Path) -> Path:
    """Copy every ``progress.csv`` of a Tune experiment kept at ``stage_uri`` under ``local`` (for the report's
    reward plot, which reads them); returns ``local``."""
    fs, root = _fs(stage_uri)
    local.mkdir(parents=True, exist_ok=True)
    for rel in remote_files(fs, root):
        if rel == "progress.csv" or rel.endswith("/progress.csv"):
            _download(fs, root, rel, local, stage_uri)
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
