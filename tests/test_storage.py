"""train.py --storage: the run folder copied to a URI (file:// here) and pulled back by a new head."""

from __future__ import annotations

import sqlite3

import pytest

from agents.config import task_path
from agents.storage import check_storage, pull, push
from rcnas.infra.errors import ConfigError
from rcnas.proxy.store import EvaluationStore
from rcnas.task import load_task
from tests.conftest import run_script
from tests.fakes import FakeEvaluator


def test_push_then_pull_restores_the_run_folder_with_a_consistent_store(tmp_path):
    out = tmp_path / "run"
    store = EvaluationStore(out / "evaluations.sqlite")  # open, in WAL mode, as the service holds it
    task = load_task(task_path("digits-cw-e20-t444-r30"))
    arch = task.space.arch(task.space.smallest())
    e = FakeEvaluator().evaluate(task, arch)
    store.put(e.key, arch, e.metrics, task.name)  # a write that may still sit in the -wal file
    (out / "final").mkdir()
    (out / "final" / "results.json").write_text("[]")
    (out / "summary.json").write_text("{}")
    (out / ".rcnas.lock").write_text("")
    (out / "tune").mkdir()
    (out / "tune" / "big").write_text("Tune keeps this at the URI itself")
    uri = (tmp_path / "kept").as_uri()
    check_storage(uri)
    push(out, uri)
    kept = tmp_path / "kept"
    assert (kept / "final" / "results.json").is_file() and (kept / "summary.json").is_file()
    assert not (kept / "tune").exists() and not (kept / ".rcnas.lock").exists()
    assert not list(kept.glob("evaluations.sqlite-*"))  # a snapshot, not the live file with its WAL
    assert sqlite3.connect(kept / "evaluations.sqlite").execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == 1
    new = tmp_path / "new-head"
    assert pull(uri, new) and (new / "final" / "results.json").is_file()
    assert EvaluationStore(new / "evaluations.sqlite").get(e.key) == e.metrics
    assert not pull(uri, new)  # a folder with a store is never overwritten


def test_bad_storage_is_one_line_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="not a storage URI"):
        check_storage("nosuchscheme://bucket/x")
    res = run_script("train.py", "--smoke-test", "--out", str(tmp_path / "o"), "--storage", str(tmp_path / "p"),
                     timeout=120)
    assert res.returncode == 2 and "not a URI" in res.stderr and "Traceback" not in res.stderr


def test_keeper_copies_while_a_phase_runs(tmp_path):
    import time

    from agents.storage import Keeper

    out = tmp_path / "run"
    out.mkdir()
    (out / "report.md").write_text("x")
    kept = tmp_path / "kept"
    with Keeper(out, kept.as_uri(), every_s=0.05):
        deadline = time.time() + 10
        while not (kept / "report.md").is_file() and time.time() < deadline:
            time.sleep(0.05)
        assert (kept / "report.md").is_file()
    with Keeper(out, None):  # no storage: nothing runs
        pass
