"""File locks: one run per run folder, one trainer per cached teacher."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rcnas.infra.errors import ConfigError
from rcnas.infra.files import open_nofollow


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing), waiting for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(open_nofollow(path, os.O_RDWR | os.O_CREAT), "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def run_folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder`` for one run. The lock is the kernel's (released when the process dies, however it dies),
    so a killed run never leaves a stale lock behind.

    Raises:
        ConfigError: another live process holds the folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".rcnas.lock"
    # no-follow: a link planted under the lock's name would otherwise have its target truncated and rewritten
    with os.fdopen(open_nofollow(path, os.O_RDWR | os.O_CREAT), "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(200).strip() or "another process"
            raise ConfigError(f"{folder} is in use by another run ({holder}); wait for it to end or pick another "
                              "--out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
