"""A data root in the user's bucket or on a shared volume: ``--data-root s3://bucket/cifar`` (or ``gs://``,
``file://``, anything pyarrow opens) becomes a folder on this node.

Each node copies the folder once into its own cache (``<cache>/data/<key>/``), so a cluster reads the dataset from
the user's bucket instead of every node downloading it from the dataset's origin at the same time. Several workers
on one node take a file lock: one copies, the others wait and reuse its copy. The copy is made in a temporary sibling
folder, its marker (``.complete.json``: the URI, redacted, and the listing it copied) written last, and the folder
renamed into place: a copy killed half-way is never taken for a whole one.

The bucket is treated as hostile: every name it lists must be a plain relative path (no ``..``, no absolute name),
is written only under the copy (``inside``) and never through a link; a symbolic link or special file in a
``file://`` source is skipped with a warning, never followed. A URI with credentials in it is refused. A listing or a
file that cannot be read is retried (2, 4, 8 s), then one line says what failed and what to check.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from rcnas.infra.errors import ConfigError, DataNotFoundError, RcnasError
from rcnas.infra.files import cache_root, inside, open_nofollow, write_atomic
from rcnas.infra.locks import file_lock
from rcnas.infra.log import say
from rcnas.infra.uris import check_no_credentials, is_uri, redact

MARKER = ".complete.json"
DELAYS = (2.0, 4.0, 8.0)
"""seconds before each retry of a listing or a file: a throttled bucket or a network blip passes within these"""
THREADS = 16
"""files fetched at once: an object store answers each request in tens of ms, so one at a time would take minutes
for Tiny-ImageNet's 120,000 files"""
FLAG = "--data-root"
HINT = "is the bucket reachable from this node and does the instance have credentials for it?"
CHUNK = 8 << 20

Listing = list[list[Any]]
"""``[[relative name, size, modification time in ns or None], ...]``, sorted by name"""
T = TypeVar("T")

_READY: dict[tuple[str, str], str] = {}
"""(URI, copy folder) -> folder, once checked in this process: a worker loads several tasks' data (and the driver
checks every task) from one root; listing the bucket again for each would only repeat the same answer"""


def local_data_root(data_root: str | Path | None, cache: str | Path | None = None,
                    delays: Sequence[float] = DELAYS, threads: int = THREADS) -> str | Path | None:
    """``data_root`` as a folder on this node: a plain path (or None) unchanged; a URI copied once per node into
    ``<cache>/data/<short sha256 of the URI>/`` (default cache: :func:`rcnas.infra.files.cache_root`, this node's),
    whose path is returned.

    A copy made before is reused when its marker's listing equals the bucket's listing now (names, sizes and
    modification times) and its files are still there with those sizes: a listing is one request per 1,000 objects
    (cheap next to reading the data), and re-reading it catches a dataset re-uploaded in place, which a marker alone
    would hide for ever. When the listing cannot be read (the node lost its network or its credentials) but a whole
    copy is here, that copy is used with a warning: the data is on the node, and failing would stop work for nothing.

    Args:
        delays: seconds before each retry of a failed listing or file; one retry per entry (tests pass zeros).
        threads: files copied at once.

    Raises:
        ConfigError: the URI carries credentials, pyarrow cannot open its scheme, or the bucket lists a name that
            would leave the copy folder.
        DataNotFoundError: the listing or a file still fails after the retries (an offline node, missing
            credentials, a missing folder): one line naming the redacted URI, the cause and what to check.
    """
    if not is_uri(data_root):
        return data_root
    uri = str(data_root)
    check_no_credentials(uri, FLAG)
    base = cache_root(cache) / "data"
    # The full URI, not its redacted form: two URIs that differ only in their query (endpoint_override, region) are
    # different sources and must not share (and keep replacing) one copy. Credentials were refused above, and a hash
    # reveals nothing of the URI anyway.
    key = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    target = base / key
    memo = (uri, os.path.abspath(target))
    if memo in _READY:
        return _READY[memo]
    base.mkdir(parents=True, exist_ok=True)
    with file_lock(base / f"{key}.lock"):
        kept = _kept_listing(target, uri)
        try:
            fs, root = _retry(lambda: _open_fs(uri), "open it", uri, delays)
            listing = _retry(lambda: _list(fs, root, uri), "list its files", uri, delays)
        except DataNotFoundError as exc:
            if kept is None:
                raise
            say(f"warning: {str(exc).removesuffix('; ' + HINT)}; using the copy this node made earlier, {target}")
        else:
            if listing != kept:
                _copy(fs, root, listing, target, uri, delays, threads)
    _READY[memo] = str(target)
    return str(target)


def _open_fs(uri: str) -> tuple[Any, str]:
    """pyarrow's filesystem for ``uri`` and the path in it. Inside the retries: opening an ``s3://`` URI already
    asks the network (the bucket's region)."""
    import pyarrow
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except pyarrow.ArrowInvalid as exc:  # an unknown scheme or a malformed URI: retrying cannot help
        raise ConfigError(f"{FLAG} {redact(uri)}: not a URI pyarrow can open ({_one_line(exc, uri)}); give a "
                          "folder, or a URI such as s3://bucket/cifar, gs://bucket/cifar or file:///shared/cifar"
                          ) from None


def _retry(action: Callable[[], T], what: str, uri: str, delays: Sequence[float]) -> T:
    """``action()``, retried after each of ``delays`` when the filesystem fails (a user error is not retried)."""
    import pyarrow

    for attempt in range(len(delays) + 1):
        try:
            return action()
        except RcnasError:
            raise
        except (OSError, pyarrow.ArrowException) as exc:
            if attempt == len(delays):
                raise DataNotFoundError(f"{FLAG} {redact(uri)}: cannot {what} after {attempt + 1} tries "
                                        f"({_one_line(exc, uri)}); {HINT}") from None
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")


def _one_line(exc: BaseException, uri: str) -> str:
    """The cause, on one line and short, with the URI in it (pyarrow echoes it) redacted."""
    text = " ".join(f"{type(exc).__name__}: {exc}".replace(uri, redact(uri)).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _check_name(rel: str, uri: str) -> str:
    """``rel`` if it is a plain relative name (the only kind ever joined to the copy folder).

    Raises:
        ConfigError: an absolute name, an empty, ``.`` or ``..`` component, a backslash or a NUL.
    """
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts) or "\\" in rel or "\x00" in rel:
        raise ConfigError(f"{FLAG} {redact(uri)}: the bucket lists {rel!r}, not a plain name inside the data "
                          "folder; refusing to copy it (remove or rename that object)")
    return rel


def _list(fs: Any, root: str, uri: str) -> Listing:
    """The regular files under ``root`` with their sizes and modification times.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no file (retried: a volume may still be mounting).
        ConfigError: a name that would leave the copy folder.
    """
    import pyarrow.fs

    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        listing = _list_local(root)
    else:
        base = root.rstrip("/")
        infos = fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True, allow_not_found=False))
        listing = []
        for info in infos:
            if info.type != pyarrow.fs.FileType.File:
                continue
            if not info.path.startswith(base + "/"):
                raise ConfigError(f"{FLAG} {redact(uri)}: the bucket lists {info.path!r}, outside {base}; refusing "
                                  "to copy it")
            listing.append([info.path[len(base) + 1:], info.size, info.mtime_ns])
    listing = sorted([_check_name(rel, uri), size, mtime] for rel, size, mtime in listing if rel != MARKER)
    if not listing:
        raise FileNotFoundError(f"no file under {root}")
    return listing


def _list_local(root: str) -> Listing:
    """A ``file://`` source read with ``lstat``, never through a link: links and special files are skipped (one
    warning line), not entered; a link planted in a shared volume must not copy what it points to."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no folder {root}")
    listing: Listing = []
    skipped: list[str] = []

    def visit(folder: str, rel: str) -> None:
        with os.scandir(folder) as entries:
            for e in sorted(entries, key=lambda e: e.name):
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    visit(e.path, rel + e.name + "/")
                elif stat.S_ISREG(st.st_mode):
                    listing.append([rel + e.name, st.st_size, st.st_mtime_ns])
                else:
                    skipped.append(rel + e.name)

    visit(root, "")
    if skipped:
        say(f"warning: {FLAG} file://{root}: {len(skipped)} symbolic link(s) or special file(s) skipped (e.g. "
            f"{skipped[0]}): only regular files are copied, never what a link points to")
    return listing


def _open_source(fs: Any, root: str, rel: str) -> Any:
    """``root/rel`` for reading. A ``file://`` source is opened one component at a time without following links
    (``O_NOFOLLOW`` relative to the folder above), so a link swapped in after the listing is refused, not read."""
    import pyarrow.fs

    if not isinstance(fs, pyarrow.fs.LocalFileSystem):
        return fs.open_input_stream(f"{root.rstrip('/')}/{rel}")
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        *folders, name = rel.split("/")
        for part in folders:
            inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        inner = os.open(name, flags, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(inner).st_mode):
        os.close(inner)
        raise OSError(f"{rel}: not a regular file")
    return os.fdopen(inner, "rb")


def _fetch(fs: Any, root: str, entry: list[Any], folder: Path) -> None:
    """Copy one listed file into ``folder`` (ours, fresh), checking its size against the listing."""
    rel, size = entry[0], entry[1]
    dest = inside(folder, rel)  # the listing was checked already; this is the one gate every written path passes
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with _open_source(fs, root, rel) as src, \
            os.fdopen(open_nofollow(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "wb") as dst:
        for chunk in iter(lambda: src.read(CHUNK), b""):
            dst.write(chunk)
            written += len(chunk)
    if size is not None and written != size:
        raise OSError(f"{rel}: {written} bytes read, {size} listed (changed or cut off mid-copy)")


def _copy(fs: Any, root: str, listing: Listing, target: Path, uri: str, delays: Sequence[float],
          threads: int) -> None:
    """Copy ``listing`` into a temporary sibling of ``target``, write the marker last, and rename it into place
    (the caller holds the node's lock for ``target``)."""
    base, key = target.parent, target.name
    for stale in base.glob(f".{key}.*"):  # left by a copy killed mid-way: nobody else copies while we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=base))
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            futures = [pool.submit(_retry, lambda e=entry: _fetch(fs, root, e, tmp), f"copy {entry[0]}", uri, delays)
                       for entry in listing]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        write_atomic(tmp / MARKER, json.dumps({"uri": redact(uri), "files": listing}))
        if os.path.lexists(target):  # an outdated or broken copy: moved aside first (a folder cannot be renamed over)
            old = tempfile.mkdtemp(prefix=f".{key}.old-", dir=base)
            os.rename(target, os.path.join(old, key))
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _kept_listing(target: Path, uri: str) -> Listing | None:
    """The listing a whole copy at ``target`` was made from, or None: no marker, another URI's, or a file missing
    or of another size (someone deleted or edited the copy)."""
    if os.path.islink(target) or not target.is_dir():
        return None
    try:
        with os.fdopen(open_nofollow(target / MARKER, os.O_RDONLY), "rb") as f:
            marker = json.loads(f.read())
        if marker.get("uri") != redact(uri):
            return None
        listing = marker["files"]
        for rel, size, _ in listing:
            st = os.lstat(inside(target, _check_name(rel, uri)))
            if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
                return None
    except (OSError, ValueError, KeyError, TypeError):  # ConfigError is a ValueError: a marker listing bad names
        return None
    return listing
