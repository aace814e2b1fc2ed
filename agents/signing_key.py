"""This user's key for signing checkpoints (``agents.manifest``): 32 random bytes, kept outside every run folder
in a file only the user can read (``$RCNAS_KEY_FILE``, else ``$XDG_CONFIG_HOME/rcnas/checkpoint.key``, else
``~/.config/rcnas/checkpoint.key``), made on first use."""

from __future__ import annotations

import os
import secrets
import stat
import time
from pathlib import Path

from rcnas.infra.errors import ConfigError

KEY_ENV = "RCNAS_KEY_FILE"


def key_path() -> Path:
    """``$RCNAS_KEY_FILE``, else ``$XDG_CONFIG_HOME/rcnas/checkpoint.key`` (``~/.config`` when unset or relative)."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".config") / "rcnas" / "checkpoint.key"


def load_key() -> bytes:
    """This user's signing key, made on first use (32 random bytes, hex, in a file only the user can read).

    Raises:
        ConfigError: the key file is a symbolic link, another user's, readable or writable by others, or damaged,
            or its folder is writable by others; says how to fix it.
    """
    path = key_path()
    if not os.path.lexists(path):
        _make_key(path)
    _check_folder(path.parent)
    for _ in range(40):  # another process may have just made it and not yet written it
        key = _read_key(path)
        if key:
            return key
        time.sleep(0.05)
    raise ConfigError(f"{path}: the checkpoint key is empty or damaged; delete it to make a new one (checkpoints "
                      f"signed with the old key then need --trust-checkpoint once)")


def _make_key(path: Path) -> None:
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
    except FileExistsError:
        return  # made meanwhile by another run: read theirs
    try:
        os.write(fd, secrets.token_hex(32).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_folder(folder: Path) -> None:
    st = os.stat(folder)
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise ConfigError(f"{folder}: the folder of rcnas's checkpoint key is writable by other users (someone could "
                          f"swap the key); run: chmod 700 {folder}")
    if st.st_uid not in (os.getuid(), 0):
        raise ConfigError(f"{folder}: the folder of rcnas's checkpoint key belongs to another user; set "
                          f"{KEY_ENV} to a file in a folder of yours")


def _read_key(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        if path.is_symlink():
            raise ConfigError(f"{path}: the checkpoint key is a symbolic link, which rcnas refuses (the key must be a "
                              f"file of yours); replace the link with the file itself and chmod 600 it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: the checkpoint key is not a regular file; delete it to make a new one")
        if st.st_uid != os.getuid():
            raise ConfigError(f"{path}: the checkpoint key belongs to another user; delete it to make a new one, or "
                              f"set {KEY_ENV} to a key of yours")
        if st.st_mode & 0o077:
            raise ConfigError(f"{path}: the checkpoint key is readable or writable by other users (mode "
                              f"{stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}")
        text = os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not text:
        return b""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 32:
        raise ConfigError(f"{path}: the checkpoint key is damaged (not 64 hex digits); delete it to make a new one "
                          "(checkpoints signed with the old key then need --trust-checkpoint once)")
    return key
