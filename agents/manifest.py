"""Signed checkpoints: ``--from`` and ``--resume`` load pickles (RLlib's module and algorithm state, Tune's
``tuner.pkl`` and experiment state), so a file planted in a run folder or under a ``--storage`` prefix would run code
on the head. rcnas signs what it writes and refuses to restore what it did not sign.

The signature is ``rcnas_manifest.json`` in the signed folder: the sha256 of every regular file under it (relative
paths) and an HMAC-SHA256 of that list with a key of this user, kept outside every run folder
(``$XDG_CONFIG_HOME/rcnas/checkpoint.key``, ``~/.config/rcnas/checkpoint.key`` by default, or ``$RCNAS_KEY_FILE``;
mode 0600 in a 0700 folder, made on first use). A folder verifies when its manifest's HMAC checks out with this key
and every file there is listed with the same hash (nothing added, changed or missing, no symbolic link). Whoever can
write to a bucket can change files but cannot sign them.

What is signed, when (``agents/stages.py``):
    - the meta checkpoint a stage hands out (printed, in summary.json, what ``--from`` takes), when the stage ends;
      the plain ``--no-tune`` loop's checkpoint too;
    - each Tune experiment folder (``<out>/tune/<stage>`` or ``<storage>/tune/<stage>``), right after Tune writes
      ``tuner.pkl``, after every step of Tune's loop while it runs (:class:`LiveSigner`, from the Tune callback
      ``agents.callbacks.SignExperiment``: Tune saves its experiment state inside the step, before the callbacks'
      ``on_step_end``), at each trial checkpoint, and when the stage ends.

A run killed at any moment (a lost or preempted head) resumes without ``--trust-checkpoint``:
    - Tune saves its experiment files to a staging folder on the driver and uploads them in a background thread:
      the versions staged are signed before the upload starts (``expected`` in the manifest, kept ten minutes), so
      the folder verifies whichever part of the upload a kill leaves;
    - a trial uploads its checkpoint before the driver registers it, and the driver signs a checkpoint's files only
      once Tune registered it (never half of one mid-upload): a checkpoint none of whose files is signed (named by
      no signed experiment state) is removed at ``--resume``, with a warning line, after everything else verified;
    - files missing from a trial checkpoint older than the trial's newest (Tune deleting one it no longer keeps)
      and a trial's metrics logs (``result.json``, ``progress.csv``, TensorBoard events, appended while they are
      uploaded) never block a resume: neither runs code, nor is restored.
Anything else unsigned or changed is refused, naming the file; ``--trust-checkpoint`` resumes anyway (it re-signs
what it resumes). Files inside a trial checkpoint are written once: the driver keeps the first hash it took after Tune
registered the checkpoint, so a checkpoint changed in the bucket while the run goes on is not signed again. What
signing cannot cover: a writer who replaces files between the check and Tune's own read (at ``--resume``, a trial
restored later from the bucket), or during a live run between Tune's write and the driver's next signature; and a
folder this user signed earlier, put back whole (it is this user's own content).

The key is per user and machine: a run resumed on another head, or a checkpoint used there with ``--from``, needs
the same key file copied there (mode 0600), or ``--trust-checkpoint`` once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import posixpath
import sys
import time
from pathlib import Path
from typing import Any, Optional

from agents.signing_key import KEY_ENV, key_path, load_key  # noqa: F401 - re-exported
from agents.storage import is_uri, open_local, open_remote, walk_local
from rcnas.infra.errors import ConfigError

MANIFEST = "rcnas_manifest.json"
TRUST_HINT = "pass --trust-checkpoint if you trust where it came from"
VERSION = 1
EXPECT_KEEP_S = 600.0
"""how long a staged version of an experiment file (:meth:`LiveSigner.expect`) stays signed: Tune's upload of it may
still be running, or waiting for the upload before it"""
RACY_S = 2.0
"""a file modified less than this before it was hashed is hashed again next time, whatever its size and time say"""
_TMP_PREFIX = f".{MANIFEST}."  # write_atomic's temporary names for the manifest (a killed write may leave one)


# -- a folder here or under a storage URI, read without following links ----------------------------------------


class _Tree:
    def __init__(self, folder: str | Path, fs: Any = None) -> None:
        import pyarrow.fs

        if fs is None and is_uri(str(folder)):
            from agents.storage import _fs

            fs, path = _fs(str(folder))
        elif fs is None:
            path = os.path.realpath(folder)  # the folder named may be a link; nothing under it may
        else:
            path = str(folder)
        self.fs = None if fs is None or isinstance(fs, pyarrow.fs.LocalFileSystem) else fs
        self.path = path.rstrip("/") or "/"
        self.name = str(folder)

    def exists(self) -> bool:
        if self.fs is None:
            return os.path.lexists(self.path)
        import pyarrow.fs

        return self.fs.get_file_info(self.path).type != pyarrow.fs.FileType.NotFound

    def walk(self) -> tuple[dict[str, tuple[int, ...]], list[str]]:
        """{relative path: (size, mtime_ns, ...)} of every file but the manifest, and the links met (not entered)."""
        if self.fs is None:
            if not os.path.isdir(self.path):
                return {}, []
            files, _, links = walk_local(Path(self.path))
            out: dict[str, tuple[int, ...]] = {}
            for rel in files:
                if _own(rel):
                    continue
                st = os.lstat(os.path.join(self.path, rel))
                out[rel] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            return out, links
        import pyarrow.fs

        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.path, recursive=True, allow_not_found=True))
        out = {}
        for i in infos:
            rel = i.path[len(self.path):].lstrip("/")
            if i.type == pyarrow.fs.FileType.File and not _own(rel):
                out[rel] = (i.size or 0, i.mtime_ns or 0)
        return out, []

    def sha256(self, rel: str) -> str:
        digest = hashlib.sha256()
        with self._open(rel) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def _open(self, rel: str) -> Any:
        return open_local(os.path.join(self.path, rel)) if self.fs is None else open_remote(self.fs, self.path, rel)

    def read_manifest(self) -> Optional[bytes]:
        if self.fs is None:
            path = os.path.join(self.path, MANIFEST)
            if not os.path.lexists(path):
                return None
            with open_local(path) as f:
                return f.read(64 << 20)
        import pyarrow.fs

        path = f"{self.path}/{MANIFEST}"
        if self.fs.get_file_info(path).type != pyarrow.fs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return f.read(64 << 20)

    def write_manifest(self, data: bytes) -> None:
        if self.fs is None:
            from rcnas.infra.files import write_atomic_with

            write_atomic_with(Path(self.path) / MANIFEST, lambda handle: handle.write(data))
        else:
            with self.fs.open_output_stream(f"{self.path}/{MANIFEST}") as f:  # one PUT: whole or not at all
                f.write(data)

    def remove_folder(self, rel: str) -> None:
        """Delete ``rel`` and everything under it, links included and never followed (a link is removed, not its
        target)."""
        if self.fs is None:
            import shutil

            path = os.path.join(self.path, rel)
            parent = os.path.dirname(path)
            if os.path.realpath(parent) != parent:  # self.path is resolved: a link was put on the way since
                raise ConfigError(f"{self.name}/{rel}: a folder on its path is a link (since it was listed); "
                                  "nothing removed")
            if os.path.islink(path):
                os.unlink(path)
            elif os.path.isdir(path):
                shutil.rmtree(path)  # rmtree unlinks the links it meets (it refuses a link as its root: not here)
        else:
            self.fs.delete_dir(f"{self.path}/{rel}")

    def subfolders(self) -> list[str]:
        if self.fs is None:
            if not os.path.isdir(self.path):
                return []
            return sorted(e.name for e in os.scandir(self.path) if e.is_dir())
        import pyarrow.fs

        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.path, recursive=False, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory)

    def child(self, name: str) -> _Tree:
        t = _Tree.__new__(_Tree)
        t.fs, t.path = self.fs, f"{self.path.rstrip('/')}/{name}"
        t.name = f"{self.name.rstrip('/')}/{name}"
        return t

    def relative(self, fs_path: str) -> Optional[str]:
        """``fs_path`` (a path on this tree's filesystem) relative to the tree; None when outside it or the tree."""
        path = os.path.realpath(fs_path) if self.fs is None else str(fs_path).rstrip("/")
        rel = posixpath.relpath(path, self.path)
        return None if rel == "." or rel == ".." or rel.startswith("../") else rel

    def has_file(self, rel: str) -> bool:
        if self.fs is None:
            return os.path.lexists(os.path.join(self.path, rel))
        import pyarrow.fs

        return self.fs.get_file_info(f"{self.path}/{rel}").type == pyarrow.fs.FileType.File


def _own(rel: str) -> bool:
    """The manifest itself and a temporary file of a manifest write that was killed (never read by anyone)."""
    return rel == MANIFEST or (rel.startswith(_TMP_PREFIX) and rel.endswith(".tmp") and "/" not in rel)


def _mac(key: bytes, files: dict[str, str], expected: Optional[dict[str, list[str]]] = None) -> str:
    if not expected:  # the first format, unchanged: manifests signed before ``expected`` existed still verify
        body = json.dumps(files, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        return hmac.new(key, b"rcnas-manifest-v1\n" + body, hashlib.sha256).hexdigest()
    body = json.dumps({"expected": expected, "files": files}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode()
    return hmac.new(key, b"rcnas-manifest-v2\n" + body, hashlib.sha256).hexdigest()


def _manifest_bytes(key: bytes, files: dict[str, str], expected: Optional[dict[str, list[str]]] = None) -> bytes:
    doc: dict[str, Any] = {"version": VERSION, "files": dict(sorted(files.items()))}
    if expected:
        doc["expected"] = {rel: sorted(v) for rel, v in sorted(expected.items())}
    doc["hmac"] = _mac(key, files, doc.get("expected"))
    return json.dumps(doc, indent=1).encode()


class _Signed:
    """A manifest whose HMAC checked out: ``files`` (what was there when it was signed) and ``expected`` (versions of
    Tune's experiment files hashed in the driver's staging folder before Tune uploads them: see
    :meth:`LiveSigner.expect`)."""

    def __init__(self, files: dict[str, str], expected: dict[str, list[str]]) -> None:
        self.files, self.expected = files, expected

    def accepts(self, rel: str, digest: str) -> bool:
        return self.files.get(rel) == digest or digest in self.expected.get(rel, ())

    def knows(self, rel: str) -> bool:
        return rel in self.files or rel in self.expected


def _signed_files(raw: bytes, key: bytes) -> tuple[Optional[_Signed], str]:
    """The manifest's lists when its HMAC checks out with ``key``; else None and why not."""
    try:
        doc = json.loads(raw)
        files, mac, expected = doc["files"], doc["hmac"], doc.get("expected", {})
        ok = isinstance(files, dict) and isinstance(mac, str) and isinstance(expected, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()) and all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(h, str) for h in v)
            for k, v in expected.items())
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        return None, f"its {MANIFEST} is damaged"
    if not hmac.compare_digest(mac, _mac(key, files, expected)):
        return None, (f"its {MANIFEST} does not verify with this user's key ({key_path()}): signed by another user "
                      "or machine, or edited")
    return _Signed(files, expected), ""


def _is_log(rel: str) -> bool:
    """A trial's metrics logs (``<trial>/result.json``, ``progress.csv``, TensorBoard events): appended by the driver
    after every result, uploaded by Tune's syncer while the driver goes on appending, and never loaded as code (Tune's
    restore reads its experiment state, not these): a newer version than the one signed does not block a resume."""
    parts = rel.split("/")
    return len(parts) == 2 and (parts[1] in ("result.json", "progress.csv")
                                or parts[1].startswith("events.out.tfevents."))


def _differences(tree: Any, present: dict[str, Any], links: list[str], signed: _Signed) -> list[str]:
    """What keeps a folder's files (``present``, read from ``tree``) from matching the ``signed`` lists: links,
    unsigned, missing or changed files, pickles first. Files missing from a trial checkpoint older than the trial's
    newest are not counted: Tune deletes checkpoints it no longer keeps (a run killed mid-delete leaves part of one),
    and a missing file runs no code; from the newest (the one restored) they are."""
    found = [f"{rel} is a symbolic link or special file (rcnas writes none)" for rel in links]
    newest = _newest_checkpoints(signed.files)
    for rel in sorted(set(present) | set(signed.files), key=_pickle_first):
        if rel not in present:
            folder = _checkpoint_folder(rel)
            if folder is None or folder in newest:  # Tune deletes only checkpoints older than a trial's newest
                found.append(f"{rel} is missing (signed, no longer there)")
        elif _is_log(rel):
            continue
        elif not signed.knows(rel):
            found.append(f"{rel} is not signed (added after the checkpoint was signed)")
        elif not signed.accepts(rel, tree.sha256(rel)):
            found.append(f"{rel} changed since the checkpoint was signed")
    return found


def _newest_checkpoints(files: dict[str, str]) -> set[str]:
    """Each trial's newest signed checkpoint folder (the one Tune restores): files missing there are refused."""
    newest: dict[str, str] = {}
    for rel in files:
        folder = _checkpoint_folder(rel)
        if folder is not None:
            trial, _, name = folder.rpartition("/")
            newest[trial] = max(newest.get(trial, ""), name)
    return {f"{trial}/{name}" if trial else name for trial, name in newest.items()}


def _pickle_first(rel: str) -> tuple[bool, str]:
    name = rel.rsplit("/", 1)[-1]
    return (not (name.endswith(".pkl") or name.startswith(("module_state", "experiment_state", "tuner"))), rel)


def _problems(tree: _Tree, key: bytes, ignore: frozenset[str] = frozenset()) -> list[str]:
    present, links = tree.walk()
    if ignore:  # checkpoints about to be removed (drop_unregistered_checkpoints): their files do not count
        present = {rel: v for rel, v in present.items() if _checkpoint_folder(rel) not in ignore}
    raw = tree.read_manifest()
    if raw is None:
        if not present and not links:
            return []  # nothing there to restore
        return [f"unsigned (no {MANIFEST}: not written by rcnas for this user, or by a version before signing)"]
    signed, why = _signed_files(raw, key)
    if signed is None:
        return [why]
    return _differences(tree, present, links, signed)


# -- signing and verifying -------------------------------------------------------------------------------------


def sign_tree(folder: str | Path) -> dict[str, str]:
    """Write ``folder/rcnas_manifest.json``: every regular file under ``folder`` (a path or a storage URI) with its
    sha256, and their HMAC with this user's key. Returns the file list.

    Raises:
        ConfigError: a symbolic link (or special file) under ``folder``: rcnas signs regular files only.
    """
    tree = _Tree(folder)
    key = load_key()
    present, links = tree.walk()
    if links:
        raise ConfigError(f"{folder}: {links[0]} is a symbolic link or special file; rcnas signs regular files only: "
                          "remove it")
    files = {rel: tree.sha256(rel) for rel in present}
    tree.write_manifest(_manifest_bytes(key, files))
    return files


_TRUSTED: set[str] = set()


def verify_tree(folder: str | Path, trust: bool, label: Optional[str] = None,
                ignore: frozenset[str] = frozenset()) -> None:
    """Refuse ``folder`` (a path or a storage URI) unless this user signed it as it is now: its manifest's HMAC
    checks out with this user's key and every file there is listed with the same hash, none missing. A folder that
    does not exist or holds no file passes (nothing to restore). ``trust`` skips the check with one warning line.

    Raises:
        ConfigError: one line naming the first file missing, unsigned or changed (pickles first), and the flag.
    """
    label = label or str(folder)
    tree = _Tree(folder)
    if trust:
        if tree.exists() and tree.path not in _TRUSTED:  # one warning per folder, however many checks
            _TRUSTED.add(tree.path)
            print(f"warning: {label}: restored without checking its signature (--trust-checkpoint)", file=sys.stderr,
                  flush=True)
        return
    found = _problems(tree, load_key(), ignore)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ConfigError(f"{label}: {found[0]}{more}; {TRUST_HINT}")


def verify_or_adopt(folder: str | Path, trust: bool, label: Optional[str] = None) -> None:
    """:func:`verify_tree`, and with ``trust`` the folder is signed as it is now: a trusted experiment that a run
    continues is this user's from then on (its later signatures start from these hashes)."""
    verify_tree(folder, trust, label)
    if trust and _Tree(folder).exists():
        sign_tree(folder)


def verify_from(path: str | Path, trust: bool) -> None:
    """``--from``: the meta checkpoint must be one this user's runs signed (or be trusted)."""
    verify_tree(path, trust, label=f"--from {path}")


def tune_experiments(root: str | Path) -> list[str]:
    """The Tune experiments under a run's ``tune`` folder (a path or a URI): those ``--resume`` would restore
    (``tuner.pkl`` there, Tune's own test)."""
    tree = _Tree(root)
    return [tree.child(name).name for name in tree.subfolders() if tree.child(name).has_file("tuner.pkl")]


def verify_resume(out: str | Path, trust: bool, storage: Optional[str] = None) -> None:
    """``--resume``: every Tune experiment the run would restore (``<out>/tune/<stage>``, or
    ``<storage>/tune/<stage>`` with ``--storage``) must be signed by this user as it is now (or be trusted)."""
    from agents.storage import tune_uri

    root: str | Path = tune_uri(storage) if storage else Path(out) / "tune"
    for folder in tune_experiments(root):
        orphans = frozenset() if trust else frozenset(unregistered_checkpoints(folder))
        # everything else verifies before anything is removed: a refused folder is left as it was
        verify_tree(folder, trust, label=f"--resume: {folder}", ignore=orphans)
        if orphans:
            drop_unregistered_checkpoints(folder, orphans)


def unregistered_checkpoints(folder: str | Path) -> list[str]:
    """The trial checkpoints of a signed Tune experiment (a path or a URI) none of whose files is signed (none
    when the manifest does not verify with this user's key: verify_tree says why); a checkpoint holding a link is
    not one (verify_tree refuses it)."""
    tree = _Tree(folder)
    raw = tree.read_manifest() if tree.exists() else None
    signed = _signed_files(raw, load_key())[0] if raw is not None else None
    if signed is None:
        return []
    present, links = tree.walk()
    known = {_checkpoint_folder(rel) for rel in signed.files} | {_checkpoint_folder(rel) for rel in signed.expected}
    found = {_checkpoint_folder(rel) for rel in present} - known - {None}
    held = {_checkpoint_folder(rel) for rel in links}
    return sorted(str(f) for f in found - held)


def drop_unregistered_checkpoints(folder: str | Path, orphans: frozenset[str]) -> list[str]:
    """Remove from a signed Tune experiment (a path or a URI) the trial checkpoints none of whose files is signed
    (``orphans``, from :func:`unregistered_checkpoints`, once the rest verified).

    A trial uploads its checkpoint before the driver hears of it; a run killed in between leaves a checkpoint that
    Tune never registered. The driver signs a checkpoint when Tune registers it, before any experiment state naming
    it is saved, so the signed experiment state cannot name such a checkpoint: the resumed trial starts from its last
    registered one and would write this one again over what is there (files it did not write would then be signed
    with it). Nothing is removed unless the manifest verifies with this user's key. Returns what was removed.
    """
    tree = _Tree(folder)
    removed = sorted(orphans)
    for rel in removed:
        tree.remove_folder(rel)
        print(f"warning: {tree.name}/{rel}: removed, a checkpoint the killed run uploaded but never registered "
              "(unsigned); the trial resumes from its last signed checkpoint", file=sys.stderr, flush=True)
    return removed


def verify_copy(copy: str | Path, experiment: str | Path, checkpoint_fs_path: str, trust: bool) -> None:
    """A checkpoint downloaded from a Tune experiment kept at a storage URI: each file of the local ``copy`` must
    have the hash the experiment's signed manifest lists for it (``checkpoint_fs_path``: the checkpoint's path on the
    storage filesystem), and none may be missing."""
    if trust:
        return
    tree = _Tree(experiment)
    prefix = tree.relative(checkpoint_fs_path) or "."
    label = f"{experiment}/{prefix}"
    raw = tree.read_manifest()
    if raw is None:
        raise ConfigError(f"{label}: unsigned (no {MANIFEST} in {experiment}); {TRUST_HINT}")
    signed, why = _signed_files(raw, load_key())
    if signed is None:
        raise ConfigError(f"{label}: {why}; {TRUST_HINT}")
    # checkpoint files are pinned as Tune registered them: the staging versions (``expected``) never apply here
    mine = {k[len(prefix) + 1:]: v for k, v in signed.files.items() if k.startswith(prefix + "/")}
    local = _Tree(copy)
    present, links = local.walk()
    present.pop(MANIFEST, None)
    found = _differences(local, present, links, _Signed(mine, {}))
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ConfigError(f"{label} (copied to {copy}): {found[0]}{more}; {TRUST_HINT}")


def _checkpoint_folder(rel: str) -> Optional[str]:
    """``PPO_x/checkpoint_000001`` for a file inside a Tune trial checkpoint (written once), else None."""
    parts = rel.split("/")
    for i, part in enumerate(parts[:-1]):
        if part.startswith("checkpoint_"):
            return "/".join(parts[: i + 1])
    return None


class LiveSigner:
    """Keeps ``rcnas_manifest.json`` of a folder that Tune keeps changing signed (the Tune experiment while it runs).

    Each :meth:`sign` lists the folder and hashes only what changed since (size, times and inode; a file modified
    within ``RACY_S`` of its hashing is hashed again); it rewrites the manifest when the list changed or someone
    (Tune's restore copies the old manifest to its staging folder, and back) overwrote it. Files of a trial checkpoint
    that Tune registered (:meth:`sign` with ``register``, or signed before this process started) keep the first hash
    taken: checkpoints are written once, so a later change is not signed. Never pickled: it holds the key.
    """

    def __init__(self, folder: str | Path, fs: Any = None, every_s: float = 0.0) -> None:
        self.tree = _Tree(folder, fs)
        self.every_s = every_s
        self._key = load_key()
        self._cache: dict[str, tuple[tuple[int, ...], str, bool]] = {}
        self._pinned: dict[str, str] = {}
        self._registered: set[str] = set()
        self._written: Optional[bytes] = None
        self._last = float("-inf")
        self._expected: dict[str, dict[str, float]] = {}
        raw = self.tree.read_manifest() if self.tree.exists() else None
        signed = _signed_files(raw, self._key)[0] if raw is not None else None
        for rel, digest in (signed.files if signed else {}).items():
            folder_rel = _checkpoint_folder(rel)
            if folder_rel is not None:
                self._registered.add(folder_rel)
                self._pinned[rel] = digest

    def relative(self, fs_path: str) -> Optional[str]:
        """``fs_path`` (a path on this folder's filesystem) relative to the folder; None when outside it."""
        return self.tree.relative(fs_path)

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a LiveSigner holds the signing key and is never pickled")

    def expect(self, staging: str | Path) -> None:
        """Sign the versions of Tune's experiment files that Tune is about to upload: every file now in the driver's
        ``staging`` folder (experiment state, searcher state, trial parameters and logs), hashed there, is accepted
        at its path for ``EXPECT_KEEP_S`` beside what the folder holds. Tune copies that folder to the experiment in
        a background thread after saving it, so a run killed mid-upload or before the next :meth:`sign` still
        resumes. Called from inside Tune's save (the callbacks' state is its last part), before the upload starts."""
        tree = _Tree(staging)
        files, _, _ = walk_local(Path(tree.path))
        now = time.monotonic()
        for rel in files:
            if _own(rel) or rel.rsplit("/", 1)[-1] == MANIFEST:
                continue
            try:
                digest = tree.sha256(rel)
            except FileNotFoundError:
                continue  # replaced while listed (Tune writes its state atomically): the next save has it
            self._expected.setdefault(rel, {})[digest] = now
        self.sign(force=True)

    def sign(self, register: Optional[str] = None, force: bool = False) -> bool:
        """Re-sign now (at most every ``every_s`` unless ``force`` or ``register``: a checkpoint folder, relative,
        that Tune just registered: its files are hashed again and pinned). Returns whether it signed."""
        now = time.monotonic()
        if not force and register is None and now - self._last < self.every_s:
            return False
        if register is not None:
            self._registered.add(register)
            for rel in [r for r in self._pinned if r.startswith(register + "/")]:
                del self._pinned[rel]
                self._cache.pop(rel, None)
        present, links = self.tree.walk()
        if links:
            raise ConfigError(f"{self.tree.name}: {links[0]} is a symbolic link or special file, which rcnas does not "
                              "sign; remove it")
        files: dict[str, str] = {}
        wall = time.time()
        for rel, stamp in present.items():
            folder_rel = _checkpoint_folder(rel)
            if folder_rel is not None and folder_rel not in self._registered:
                # a checkpoint the trial may still be uploading: signed when Tune registers it (a kill before
                # that leaves it wholly unsigned, and --resume removes it), never half
                continue
            digest = self._pinned.get(rel)
            if digest is None:
                cached = self._cache.get(rel)
                if cached is not None and cached[0] == stamp and cached[2]:
                    digest = cached[1]
                else:
                    digest = self.tree.sha256(rel)
                    self._cache[rel] = (stamp, digest, wall - stamp[1] / 1e9 > RACY_S)
                if folder_rel is not None:
                    self._pinned[rel] = digest
            files[rel] = digest
        for gone in set(self._cache) - set(present):
            del self._cache[gone]
        for gone in set(self._pinned) - set(present):
            del self._pinned[gone]
        horizon = now - EXPECT_KEEP_S
        self._expected = {rel: kept for rel, seen in self._expected.items()
                          if (kept := {h: t for h, t in seen.items() if t >= horizon})}
        data = _manifest_bytes(self._key, files, {rel: list(seen) for rel, seen in self._expected.items()})
        if data != self._written or self.tree.read_manifest() != data:
            self.tree.write_manifest(data)
            self._written = data
        self._last = time.monotonic()
        return True
