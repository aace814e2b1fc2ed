"""Result files written whole or not at all, and where rcnas caches what it computes once."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "RCNAS_CACHE"


def cache_root(override: str | Path | None = None) -> Path:
    """The cache folder: ``override`` (a flag), else ``$RCNAS_CACHE``, else ``./runs/cache``. It holds trained
    teachers and their statistics and decoded datasets; share it between nodes to compute each once."""
    return Path(override or os.environ.get(CACHE_ENV) or "runs/cache")


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file swapped in by rename: a run killed mid-write leaves the
    previous file (or none), never a truncated one that every later run would trip over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB chunks (checkpoints are hundreds of MB)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
