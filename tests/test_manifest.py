"""Signed checkpoints (agents/manifest.py) and what --storage copies (agents/storage.py): a planted pickle, a URI
with credentials and a symbolic link in the run folder are each refused in one line."""

from __future__ import annotations

import json
import os
import stat

import pytest

from agents import manifest
from agents.manifest import (
    MANIFEST,
    LiveSigner,
    key_path,
    load_key,
    sign_tree,
    verify_copy,
    verify_from,
    verify_resume,
    verify_tree,
)
from agents.storage import check_storage, pull, push
from rcnas.infra.errors import ConfigError


@pytest.fixture(autouse=True)
def key(tmp_path, monkeypatch):
    """Every test signs with its own key in tmp_path, never the user's."""
    path = tmp_path / "config" / "rcnas" / "checkpoint.key"
    monkeypatch.setenv(manifest.KEY_ENV, str(path))
    return path


def checkpoint(folder):
    """A folder shaped like an RLlib algorithm checkpoint (pickles, nested folders, JSON)."""
    module = folder / "learner_group" / "learner" / "rl_module" / "default_policy"
    module.mkdir(parents=True)
    (module / "module_state.pkl").write_bytes(b"\x80\x04weights")
    (module / "metadata.json").write_text("{}")
    (folder / "algorithm_state.pkl").write_bytes(b"\x80\x04state")
    (folder / "rllib_checkpoint.json").write_text('{"type": "Algorithm"}')
    return folder


def test_the_key_is_made_once_0600_in_a_0700_folder(key, tmp_path, monkeypatch):
    assert not key.exists()
    k = load_key()
    assert len(k) == 32 and load_key() == k
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert key.stat().st_uid == os.getuid()
    monkeypatch.delenv(manifest.KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert key_path() == tmp_path / "xdg" / "rcnas" / "checkpoint.key"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert key_path() == tmp_path / "home" / ".config" / "rcnas" / "checkpoint.key"


def test_a_key_readable_by_others_or_a_linked_key_is_refused(key, tmp_path):
    load_key()
    key.chmod(0o640)
    with pytest.raises(ConfigError, match="readable or writable by other users.*chmod 600") as err:
        load_key()
    assert "\n" not in str(err.value)
    key.chmod(0o600)
    real = tmp_path / "elsewhere.key"
    key.rename(real)
    key.symlink_to(real)
    with pytest.raises(ConfigError, match="symbolic link"):
        load_key()
    with pytest.raises(ConfigError, match="symbolic link"):
        sign_tree(checkpoint(tmp_path / "ckpt"))
    key.unlink()
    real.rename(key)
    key.parent.chmod(0o777)
    with pytest.raises(ConfigError, match="chmod 700"):
        load_key()
    key.parent.chmod(0o700)
    key.write_text("not hex\n")
    with pytest.raises(ConfigError, match="damaged"):
        load_key()


def test_sign_then_verify_and_every_change_is_refused(tmp_path):
    ckpt = checkpoint(tmp_path / "ckpt")
    files = sign_tree(ckpt)
    assert "learner_group/learner/rl_module/default_policy/module_state.pkl" in files and MANIFEST not in files
    doc = json.loads((ckpt / MANIFEST).read_text())
    assert doc["files"] == files and len(doc["hmac"]) == 64
    verify_from(ckpt, trust=False)

    module = ckpt / "learner_group" / "learner" / "rl_module" / "default_policy"
    (module / "evil.pkl").write_bytes(b"cos\nsystem\n")  # a planted pickle
    with pytest.raises(ConfigError) as err:
        verify_from(ckpt, trust=False)
    msg = str(err.value)
    assert msg.startswith(f"--from {ckpt}: ") and "evil.pkl is not signed" in msg
    assert "pass --trust-checkpoint if you trust where it came from" in msg and "\n" not in msg
    (module / "evil.pkl").unlink()
    (module / "module_state.pkl").write_bytes(b"\x80\x04other weights")  # a changed pickle
    with pytest.raises(ConfigError, match="module_state.pkl changed"):
        verify_tree(ckpt, trust=False)
    sign_tree(ckpt)
    (ckpt / "algorithm_state.pkl").unlink()
    with pytest.raises(ConfigError, match="algorithm_state.pkl is missing"):
        verify_tree(ckpt, trust=False)
    sign_tree(ckpt)
    doc = json.loads((ckpt / MANIFEST).read_text())
    doc["files"]["rllib_checkpoint.json"] = "0" * 64  # the manifest edited to match a changed file
    (ckpt / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="does not verify with this user's key"):
        verify_tree(ckpt, trust=False)


def test_an_unsigned_or_foreign_checkpoint_is_refused_unless_trusted(tmp_path, key, monkeypatch, capsys):
    ckpt = checkpoint(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="unsigned"):
        verify_from(ckpt, trust=False)
    verify_from(ckpt, trust=True)  # the user says they trust it
    assert "without checking its signature" in capsys.readouterr().err
    sign_tree(ckpt)
    monkeypatch.setenv(manifest.KEY_ENV, str(tmp_path / "other-user" / "checkpoint.key"))
    with pytest.raises(ConfigError, match="another user or machine"):
        verify_from(ckpt, trust=False)
    verify_tree(tmp_path / "absent", trust=False)  # nothing there: nothing to restore


def test_a_symbolic_link_inside_a_checkpoint_is_never_signed_nor_accepted(tmp_path):
    ckpt = checkpoint(tmp_path / "ckpt")
    secret = tmp_path / "secret.key"
    secret.write_text("x")
    (ckpt / "link.pkl").symlink_to(secret)
    with pytest.raises(ConfigError, match="link.pkl is a symbolic link"):
        sign_tree(ckpt)
    (ckpt / "link.pkl").unlink()
    sign_tree(ckpt)
    (ckpt / "learner_group" / "more").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ConfigError, match="more is a symbolic link"):
        verify_tree(ckpt, trust=False)


def tune_experiment(folder):
    (folder / "PPO_0").mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"\x80\x04tuner")
    (folder / "experiment_state-2026.json").write_text("{}")
    checkpoint(folder / "PPO_0" / "checkpoint_000000")
    (folder / "PPO_0" / "progress.csv").write_text("a\n1\n")
    return folder


def test_resume_verifies_every_tune_experiment_here_or_at_the_storage_uri(tmp_path):
    out = tmp_path / "run"
    meta = tune_experiment(out / "tune" / "meta")
    (out / "tune" / "finetune").mkdir()  # not started: nothing Tune would restore
    with pytest.raises(ConfigError, match="--resume: .*meta: unsigned"):
        verify_resume(out, trust=False)
    sign_tree(meta)
    verify_resume(out, trust=False)
    (meta / "experiment_state-2099.json").write_text("{}")  # Tune restores the newest: a planted one
    with pytest.raises(ConfigError, match="experiment_state-2099.json is not signed"):
        verify_resume(out, trust=False)
    verify_resume(out, trust=True)

    kept = tmp_path / "kept"
    exp = tune_experiment(kept / "tune" / "meta")
    sign_tree(kept.as_uri() + "/tune/meta")  # signed through the storage filesystem
    verify_resume(tmp_path / "new-head", trust=False, storage=kept.as_uri())
    (exp / "tuner.pkl").write_bytes(b"\x80\x04planted")
    with pytest.raises(ConfigError, match="tuner.pkl changed"):
        verify_resume(tmp_path / "new-head", trust=False, storage=kept.as_uri())


def test_the_live_signer_follows_tune_but_keeps_a_registered_checkpoint_as_first_hashed(tmp_path):
    exp = tune_experiment(tmp_path / "meta")
    signer = LiveSigner(exp)
    assert signer.sign()
    # a checkpoint Tune has not registered (its trial may still be uploading it) is not signed, not even in part
    assert not any("checkpoint_000000" in rel for rel in json.loads((exp / MANIFEST).read_text())["files"])
    signer.sign(register="PPO_0/checkpoint_000000")
    verify_tree(exp, trust=False)
    (exp / "experiment_state-2026.json").write_text('{"step": 2}')  # Tune saves its state every step
    (exp / "PPO_0" / "progress.csv").write_text("a\n1\n2\n")
    signer.sign()
    verify_tree(exp, trust=False)
    rel = signer.relative(str(exp / "PPO_0" / "checkpoint_000000"))
    assert rel == "PPO_0/checkpoint_000000" and signer.relative(str(tmp_path)) is None
    signer.sign(register=rel)  # Tune registered the checkpoint: its files are written once
    (exp / rel / "algorithm_state.pkl").write_bytes(b"\x80\x04changed in the bucket")
    signer.sign(force=True)
    with pytest.raises(ConfigError, match="algorithm_state.pkl changed"):
        verify_tree(exp, trust=False)
    # a new process (a resumed run) starts from the signed list: still pinned
    LiveSigner(exp).sign(force=True)
    with pytest.raises(ConfigError, match="algorithm_state.pkl changed"):
        verify_tree(exp, trust=False)
    # Tune writing the checkpoint again (a restored trial) registers it again
    LiveSigner(exp).sign(register=rel)
    verify_tree(exp, trust=False)
    # a stale manifest copied back over the signed one (Tune's staging folder) is rewritten
    stale = (exp / MANIFEST).read_bytes()
    (exp / "PPO_0" / "result.json").write_text("{}")
    signer = LiveSigner(exp)
    signer.sign()
    (exp / MANIFEST).write_bytes(stale)
    signer.sign()
    verify_tree(exp, trust=False)


def test_a_copy_of_a_checkpoint_kept_at_a_storage_uri_is_checked_against_the_signed_list(tmp_path):
    import shutil

    exp = tune_experiment(tmp_path / "kept" / "meta")
    uri = (tmp_path / "kept" / "meta").as_uri()
    LiveSigner(uri).sign(register="PPO_0/checkpoint_000000")
    copy = tmp_path / "copy"
    shutil.copytree(exp / "PPO_0" / "checkpoint_000000", copy)
    verify_copy(copy, uri, str(exp / "PPO_0" / "checkpoint_000000"), trust=False)
    (copy / "algorithm_state.pkl").write_bytes(b"\x80\x04swapped")
    with pytest.raises(ConfigError, match="algorithm_state.pkl changed since the checkpoint was signed"):
        verify_copy(copy, uri, str(exp / "PPO_0" / "checkpoint_000000"), trust=False)
    verify_copy(copy, uri, str(exp / "PPO_0" / "checkpoint_000000"), trust=True)


@pytest.mark.parametrize("uri, secret", [
    ("s3://AKIAEXAMPLEKEY:wJalrXUtnFEMIsecret@bucket/runs/x", "wJalrXUtnFEMIsecret"),
    ("s3://AKIAEXAMPLEKEY@bucket/runs/x", "AKIAEXAMPLEKEY"),
    ("s3://bucket/runs/x?region=us-east-1&secret_key=wJalrXUtnFEMIsecret", "wJalrXUtnFEMIsecret"),
    ("s3://bucket/runs/x?session_token=FQoGZXIvYXdzEXAMPLE", "FQoGZXIvYXdzEXAMPLE"),
    ("abfs://container@account.dfs.core.windows.net/x?account_key=c2VjcmV0", "c2VjcmV0"),
    ("gs://bucket/x?credential=eyJzZWNyZXQiOjF9", "eyJzZWNyZXQiOjF9"),
])
def test_a_storage_uri_with_credentials_is_refused_without_echoing_them(uri, secret):
    with pytest.raises(ConfigError) as err:
        check_storage(uri)
    msg = str(err.value)
    assert secret not in msg and "credentials in the URI" in msg and "\n" not in msg
    assert ("credential chain" in msg or "application default credentials" in msg), msg


def test_a_storage_uri_without_credentials_is_accepted(tmp_path):
    from agents.storage import check_no_credentials

    check_storage((tmp_path / "kept").as_uri())
    for uri in ("s3://bucket/runs/x?region=us-east-1&endpoint_override=localhost:9000", "gs://bucket/x",
                "abfs://container/x?credential_kind=default"):
        check_no_credentials(uri)


def test_push_copies_regular_files_only_and_says_how_many_links_it_skipped(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "final").mkdir(parents=True)
    (out / "final" / "results.json").write_text("[]")
    (out / "summary.json").write_text("{}")
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "id_rsa").write_text("PRIVATE KEY")
    (outside / "deep" / "token").write_text("TOKEN")
    (out / "key.pem").symlink_to(outside / "id_rsa")  # a link to a file
    (out / "final" / "elsewhere").symlink_to(outside, target_is_directory=True)  # a link to a folder
    kept = tmp_path / "kept"
    push(out, kept.as_uri())
    assert (kept / "summary.json").read_text() == "{}" and (kept / "final" / "results.json").is_file()
    copied = {p.relative_to(kept).as_posix() for p in kept.rglob("*")}
    assert not any("key.pem" in p or "elsewhere" in p or "token" in p for p in copied), copied
    assert not any(p.is_symlink() for p in kept.rglob("*"))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "2 symbolic links" in err[0] and "skipped" in err[0], err
    assert "PRIVATE KEY" not in "".join(p.read_text() for p in kept.rglob("*") if p.is_file())


def test_pull_writes_regular_files_under_out_only(tmp_path):
    kept = tmp_path / "kept"
    (kept / "final").mkdir(parents=True)
    (kept / "evaluations.sqlite").write_bytes(b"")
    (kept / "final" / "results.json").write_text("[]")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("S")
    (kept / "final" / "link").symlink_to(outside / "secret")  # a link in a file:// store: never copied nor made
    (kept / "dir-link").symlink_to(outside, target_is_directory=True)
    new = tmp_path / "new-head"
    assert pull(kept.as_uri(), new)
    assert (new / "final" / "results.json").read_text() == "[]"
    assert not any(p.is_symlink() for p in new.rglob("*")) and not (new / "final" / "link").exists()
    assert not (new / "dir-link").exists()
    # a link already in the new folder is never written through
    other = tmp_path / "other-head"
    other.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (other / "final").symlink_to(target, target_is_directory=True)
    with pytest.raises(ConfigError, match="symbolic link"):
        pull(kept.as_uri(), other)
    assert not list(target.iterdir())


def test_a_folder_on_a_storage_filesystem_is_signed_and_checked_through_pyarrow(tmp_path):
    """The code path of s3:// and gs:// (pyarrow's listing and streams), over a filesystem that is not the local
    one's class."""
    import pyarrow.fs

    fs = pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem())
    tune_experiment(tmp_path / "bucket" / "meta")
    signer = LiveSigner("bucket/meta", fs=fs, every_s=10.0)
    assert signer.sign(register="PPO_0/checkpoint_000000") and not signer.sign()  # at most every every_s
    tree = manifest._Tree("bucket/meta", fs)
    assert manifest._problems(tree, load_key()) == []
    assert signer.relative("bucket/meta/PPO_0/checkpoint_000000") == "PPO_0/checkpoint_000000"
    (tmp_path / "bucket" / "meta" / "PPO_0" / "checkpoint_000000" / "planted.pkl").write_bytes(b"x")
    assert manifest._problems(tree, load_key()) == ["PPO_0/checkpoint_000000/planted.pkl is not signed (added after "
                                                    "the checkpoint was signed)"]


def test_the_tune_callback_pickles_without_the_key_or_its_state(tmp_path):
    import pickle

    from agents.callbacks import SignExperiment

    cb = SignExperiment()
    cb._signer = LiveSigner(tune_experiment(tmp_path / "meta"))
    data = pickle.dumps(cb)  # into tuner.pkl, with the run config
    assert load_key().hex().encode() not in data and load_key() not in data
    again = pickle.loads(data)
    assert again._signer is None
    with pytest.raises(TypeError):
        pickle.dumps(cb._signer)


def test_a_trusted_experiment_is_signed_as_it_is_and_verifies_from_then_on(tmp_path):
    exp = tune_experiment(tmp_path / "meta")
    LiveSigner(exp).sign(register="PPO_0/checkpoint_000000")
    (exp / "PPO_0" / "checkpoint_000000" / "algorithm_state.pkl").write_bytes(b"\x80\x04from elsewhere")
    with pytest.raises(ConfigError, match="changed"):
        manifest.verify_or_adopt(exp, trust=False)
    manifest.verify_or_adopt(exp, trust=True)
    LiveSigner(exp).sign(force=True)  # the resumed run's signer starts from the adopted hashes
    verify_tree(exp, trust=False)


def test_a_checkpoint_uploaded_but_never_registered_is_removed_at_resume_not_refused(tmp_path, capsys):
    """A run killed between a trial's checkpoint upload and the driver's signature resumes (the README's --resume
    after a lost head); a checkpoint holding anything unsigned beside signed files is still refused."""
    import shutil

    out = tmp_path / "run"
    exp = tune_experiment(out / "tune" / "meta")
    LiveSigner(exp).sign(register="PPO_0/checkpoint_000000")
    late = exp / "PPO_0" / "checkpoint_000001"
    shutil.copytree(exp / "PPO_0" / "checkpoint_000000", late)  # uploaded as the driver was killed
    verify_resume(out, trust=False)
    assert not late.exists() and "checkpoint_000001: removed" in capsys.readouterr().err
    verify_tree(exp, trust=False)
    (exp / "PPO_0" / "checkpoint_000000" / "planted.pkl").write_bytes(b"x")  # beside signed files: refused
    shutil.copytree(exp / "PPO_0" / "checkpoint_000000", late)
    with pytest.raises(ConfigError, match="planted.pkl is not signed"):
        verify_resume(out, trust=False)
    # a refused experiment is left as it was: nothing removed before everything else verified
    assert (exp / "PPO_0" / "checkpoint_000000" / "planted.pkl").exists() and late.exists()
    shutil.rmtree(late)
    (exp / "PPO_0" / "checkpoint_000000" / "planted.pkl").unlink()
    # Tune deleting a checkpoint it no longer keeps (older than the trial's newest), killed midway: missing files
    # run no code; missing from the newest, the one Tune restores, they are refused
    newer = exp / "PPO_0" / "checkpoint_000002"
    shutil.copytree(exp / "PPO_0" / "checkpoint_000000", newer)
    LiveSigner(exp).sign(register="PPO_0/checkpoint_000002")
    (exp / "PPO_0" / "checkpoint_000000" / "algorithm_state.pkl").unlink()
    verify_resume(out, trust=False)
    (newer / "algorithm_state.pkl").unlink()
    with pytest.raises(ConfigError, match="checkpoint_000002/algorithm_state.pkl is missing"):
        verify_resume(out, trust=False)
    shutil.rmtree(newer)
    LiveSigner(exp).sign(force=True)
    # a foreign manifest removes nothing
    (exp / MANIFEST).write_text(json.dumps({"version": 1, "files": {}, "hmac": "0" * 64}))
    shutil.copytree(exp / "PPO_0" / "checkpoint_000000", late)
    with pytest.raises(ConfigError, match="does not verify"):
        verify_resume(out, trust=False)
    assert late.exists()


def test_experiment_files_staged_for_upload_are_signed_before_tune_uploads_them(tmp_path):
    """Tune saves its experiment state to a staging folder and uploads it in a background thread: the versions
    staged are signed before the upload, so a kill at any point of it leaves a folder that verifies; any other
    content is still refused, and a trial's metrics logs appended after the signature do not block a resume."""
    import pyarrow.fs

    fs = pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem())
    exp = tune_experiment(tmp_path / "bucket" / "meta")
    staging = tmp_path / "staging"
    staging.mkdir()
    signer = LiveSigner("bucket/meta", fs=fs, every_s=10.0)
    signer.sign(register="PPO_0/checkpoint_000000")
    (staging / "experiment_state-2026.json").write_text('{"step": 7}')
    (staging / "PPO_0").mkdir()
    (staging / "PPO_0" / "params.pkl").write_bytes(b"\x80\x04params")
    signer.expect(staging)
    for rel in ("experiment_state-2026.json", "PPO_0/params.pkl"):  # the upload, after the signature
        (exp / rel).write_bytes((staging / rel).read_bytes())
    tree = manifest._Tree("bucket/meta", fs)
    assert manifest._problems(tree, load_key()) == []
    (exp / "PPO_0" / "result.json").write_text('{"i": 1}\n{"i": 2}\n')  # appended since: a log, never loaded
    assert manifest._problems(tree, load_key()) == []
    (exp / "experiment_state-2026.json").write_text('{"step": 8, "planted": 1}')
    assert manifest._problems(tree, load_key()) == ["experiment_state-2026.json changed since the checkpoint was "
                                                    "signed"]
    # a manifest from before staged versions existed (no "expected") verifies as it did
    files = {rel: tree.sha256(rel) for rel in tree.walk()[0]}
    (exp / MANIFEST).write_bytes(manifest._manifest_bytes(load_key(), files))
    assert "expected" not in json.loads((exp / MANIFEST).read_text())
    assert manifest._problems(tree, load_key()) == []


def test_the_tune_callback_signs_tunes_first_save_as_staged_when_it_starts(tmp_path):
    """Tune's first save of an experiment comes before the callback has a trial to find its storage by; when the
    signer starts (the step's end), what that save staged is signed, so a kill during its upload still resumes."""
    from types import SimpleNamespace

    import pyarrow.fs

    from agents.callbacks import SignExperiment

    exp = tmp_path / "bucket" / "meta"
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"\x80\x04tuner")
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "experiment_state-2026.json").write_text('{"first": true}')
    storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), experiment_fs_path=str(exp),
                              experiment_driver_staging_path=str(staging))
    SignExperiment().on_step_end(1, [SimpleNamespace(storage=storage)])
    (exp / "experiment_state-2026.json").write_text('{"first": true}')  # Tune's upload lands after the signature
    verify_tree(exp, trust=False)
