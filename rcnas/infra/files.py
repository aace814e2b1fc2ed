"""Result files written whole or not at all, never through a link someone else planted, and where rcnas caches what
it computes once."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from rcnas.infra.errors import ConfigError

CACHE_ENV = "RCNAS_CACHE"


def cache_root(override: str | Path | None = None) -> Path:
    """The cache folder: ``override`` (a flag), else ``$RCNAS_CACHE``, else ``./runs/cache``. It holds trained
    teachers and their statistics and decoded datasets; share it between nodes to compute each once."""
    return Path(override or os.environ.get(CACHE_ENV) or "runs/cache")


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` (relative to ``root`` unless absolute) after checking that it stays under ``root`` and that no
    existing component between them is a symbolic link: the one gate for every path a run builds from a name.

    Raises:
        ConfigError: the path leaves ``root`` (``..``, an absolute name) or passes through a link.
    """
    root = Path(root)
    full = root / path
    rel = os.path.relpath(os.path.normpath(os.path.abspath(full)), os.path.normpath(os.path.abspath(root)))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        raise ConfigError(f"{path}: outside the run folder {root}; names must be plain (letters, digits, . _ -)")
    node = Path(os.path.abspath(root))
    for part in Path(rel).parts:
        node = node / part
        if node.is_symlink():
            raise ConfigError(f"{node}: a symbolic link inside the run folder, which rcnas did not make; remove it "
                              "(rcnas never writes through a link it did not create)")
    return full


def _write_via_temp(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """The one atomic-write recipe: an unguessable temporary file created exclusively (``mkstemp``: ``O_EXCL``, mode
    0600) in the target's folder, written through its own descriptor, then renamed over ``path``. A rename replaces a
    link planted at ``path`` instead of writing through it, and nobody can plant the temporary name beforehand."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: a run killed mid-write leaves the previous file (or none),
    never a truncated one that every later run would trip over; a planted link at ``path`` is replaced, not
    followed."""
    _write_via_temp(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def write_atomic_with(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """As :func:`write_atomic`, for writers that take a binary file (``torch.save``, ``numpy.savez``)."""
    _write_via_temp(Path(path), write)


def open_nofollow(path: str | Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` (``O_NOFOLLOW``) with one line instead of following it.

    Raises:
        ConfigError: ``path`` is a link.
    """
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if Path(path).is_symlink():
            raise ConfigError(f"{path}: a symbolic link, which rcnas did not make; remove it (rcnas never writes "
                              "through a link)") from None
        raise exc


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB chunks (checkpoints are hundreds of MB)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
