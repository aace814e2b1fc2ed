"""Attacks as tests: files and folders planted by someone else on a shared machine, in a shared cache or in a run
folder handed over. Each plants what an attacker would and checks that nothing is written outside the run folder,
nothing is written through a link, nothing is joined or run, and a user mistake is one line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rcnas.infra.errors import ConfigError
from tests.conftest import ROOT

SMOKE = ROOT / "configs" / "experiments" / "smoke.yaml"


def _experiment(tmp_path: Path, **changes) -> Path:
    """The smoke experiment with ``changes``, its task references made absolute so it can live anywhere."""
    data = yaml.safe_load(SMOKE.read_text())
    data = {**data, **changes}
    tasks = ROOT / "configs" / "tasks" / "smoke"
    data["meta_tasks"] = [str(tasks / f"{Path(t).stem}.yaml") for t in data["meta_tasks"]]
    if not Path(data["target_task"]).is_absolute():
        data["target_task"] = str(tasks / f"{Path(data['target_task']).stem}.yaml")
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# -- names are names -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../somewhere/x", "/tmp/abs", "a/b", ".hidden", "..", "x" * 200, "a b"])
def test_a_task_name_that_is_a_path_is_refused(tmp_path, name):
    from rcnas.task import load_task

    text = (ROOT / "configs" / "tasks" / "smoke" / "smoke-target.yaml").read_text()
    task = tmp_path / "t.yaml"
    task.write_text(f"base: {ROOT / 'configs' / 'tasks' / 'smoke' / '_base.yaml'}\n"
                    + "\n".join(ln for ln in text.splitlines() if not ln.startswith(("base:", "name:")))
                    + f"\nname: {yaml.safe_dump(name).splitlines()[0]}\n")
    with pytest.raises(ConfigError, match="not a plain name") as err:
        load_task(task)
    assert "\n" not in str(err.value)


def test_an_experiment_named_as_a_path_writes_nothing_anywhere(tmp_path):
    """The run folder defaulted from ``name:`` and every file under it: refused before anything is written."""
    os.chdir(tmp_path)  # where runs/<name> would be created
    try:
        from agents.pipeline import run_search

        victim = tmp_path / "victim"
        with pytest.raises(ConfigError, match="not a plain name"):
            run_search(_experiment(tmp_path, name=f"../../{victim.relative_to('/')}"), final_eval=False)
        assert not victim.exists() and not (tmp_path / "runs").exists()
    finally:
        os.chdir(ROOT)


def test_inside_refuses_escapes_and_links(tmp_path):
    from rcnas.infra.files import inside

    run = tmp_path / "run"
    run.mkdir()
    assert inside(run, "config/tasks/x.yaml") == run / "config/tasks/x.yaml"
    for bad in ("../x", "/etc/passwd", "config/../../x"):
        with pytest.raises(ConfigError, match="outside the run folder"):
            inside(run, bad)
    (run / "config").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ConfigError, match="symbolic link"):
        inside(run, "config/tasks/x.yaml")


# -- no write through a planted link -------------------------------------------------------------------------------
def test_atomic_writes_replace_planted_links_and_never_follow_them(tmp_path):
    from rcnas.infra.files import write_atomic
    from rcnas.train import save_atomic

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "cache"
    folder.mkdir()
    # the old fixed temporary names, and the targets themselves, planted as links to the victim
    for name in ("model.pt.tmp", "train_state.pt.tmp", f".summary.json.{os.getpid()}.tmp", "summary.json",
                 "model.pt"):
        (folder / name).symlink_to(victim)
    save_atomic({"w": torch.zeros(3)}, folder / "model.pt")
    write_atomic(folder / "summary.json", "{}")
    assert victim.read_text() == "precious"
    assert not (folder / "model.pt").is_symlink() and not (folder / "summary.json").is_symlink()
    assert torch.load(folder / "model.pt", weights_only=True)["w"].shape == (3,)
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]
    assert not leftovers, leftovers


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path):
    from rcnas.infra.files import write_atomic_with

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic_with(tmp_path / "x.bin", broken)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("lock", ["run", "cache"])
def test_locks_never_open_a_planted_link(tmp_path, lock):
    from rcnas.infra.locks import file_lock, run_folder_lock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    target = run / ".rcnas.lock" if lock == "run" else run / "teacher.lock"
    target.symlink_to(victim)
    with pytest.raises(ConfigError, match="symbolic link"):
        with run_folder_lock(run) if lock == "run" else file_lock(target):
            pass
    assert victim.read_text() == "precious"


# -- our own Ray, a private token ----------------------------------------------------------------------------------
@pytest.mark.ray
def test_a_planted_cluster_address_is_never_joined(tmp_path):
    """Another local user writes ``$TMPDIR/ray/ray_current_cluster``: without ``--ray-address`` rcnas starts a Ray
    of its own instead of joining theirs."""
    import tempfile

    tmpdir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    (tmpdir / "ray").mkdir(parents=True)
    (tmpdir / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")  # "their" cluster: nothing listens there
    code = ("import ray\nfrom rcnas.distributed.resources import ensure_ray\nensure_ray(num_cpus=1)\n"
            "print('joined', ray.get_runtime_context().gcs_address)\nray.shutdown()\n")
    env = {**os.environ, "TMPDIR": str(tmpdir), "RAY_ADDRESS": "", "HOME": str(tmp_path / "home")}
    env.pop("RAY_ADDRESS")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "joined" in proc.stdout and "127.0.0.1:1\n" not in proc.stdout.split("joined", 1)[1]
    token = tmp_path / "home" / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700


def test_the_token_file_is_made_private(tmp_path, monkeypatch, capsys):
    from rcnas.distributed.resources import private_token

    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    token = tmp_path / ".ray" / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    old = os.umask(0o022)
    try:
        private_token()  # created
        assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
        assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
        token.chmod(0o644)
        token.parent.chmod(0o755)
        private_token()  # narrowed, with a note
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
        assert "now 0600" in capsys.readouterr().err
        token.unlink()
        token.symlink_to(tmp_path / "theirs")
        with pytest.raises(ConfigError, match="link or belongs to another user"):
            private_token()
    finally:
        os.umask(old)


def test_an_unreachable_ray_address_is_one_line_at_once():
    from agents.pipeline import check_ray_address

    with pytest.raises(ConfigError, match="nothing answers there"):
        check_ray_address("127.0.0.1:1", timeout_s=5)
    with pytest.raises(ConfigError, match="give host:port"):
        check_ray_address("nonsense")


# -- order: the lock first; every teacher checked before Ray -------------------------------------------------------
def test_a_refused_second_run_changes_nothing_in_the_live_folder(tmp_path):
    from agents.pipeline import run_search
    from rcnas.infra.locks import run_folder_lock

    run = tmp_path / "run"
    with run_folder_lock(run):  # the live run
        with pytest.raises(ConfigError, match="in use by another run"):
            run_search(SMOKE, out=run, overrides={"training.epochs": 2}, final_eval=False)
    assert sorted(p.name for p in run.iterdir()) == [".rcnas.lock"], "the overridden configs were written"


def test_a_teacher_file_that_is_not_the_teacher_is_refused_before_ray(tmp_path):
    import ray

    from agents.pipeline import run_search

    text_file = tmp_path / "teacher.pt"
    text_file.write_text("this is not a checkpoint\n")
    base = ROOT / "configs" / "tasks" / "smoke" / "smoke-target.yaml"
    task = tmp_path / "published.yaml"
    task.write_text(f"base: {base}\nname: published-target\nteacher_weights: {{path: {text_file}, format: rcnas}}\n")
    exp = _experiment(tmp_path, target_task=str(task))
    with pytest.raises(ConfigError, match="teacher_weights") as err:
        run_search(exp, out=tmp_path / "run", final_eval=False)
    assert "\n" not in str(err.value) and not ray.is_initialized()
    assert not (tmp_path / "run").exists()


def test_a_planted_training_state_is_one_line(tmp_path):
    from rcnas.train.loop_state import resume as _resume

    state = tmp_path / "train_state.pt"
    state.write_text("not a tensor file")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="not a training state") as err:
        _resume(state, model, torch.optim.SGD(model.parameters(), lr=0.1), torch.Generator(), torch.device("cpu"))
    assert "\n" not in str(err.value)


# -- a run folder that is relocatable, a rerun that neither repeats nor mixes ---------------------------------------
def test_summary_paths_are_relative_to_the_run_folder(tmp_path):
    from agents.rerun import absolute_paths, relative_paths

    run = tmp_path / "run"
    summary = {"yaml": str(run / "DIGITS" / "RL_1M.yaml"), "meta_checkpoint": "s3://b/x/tune/meta/c",
               "finetune_checkpoint": str(tmp_path / "elsewhere"), "reward": 1.0}
    rel = relative_paths(run, summary)
    assert rel["yaml"] == "DIGITS/RL_1M.yaml" and rel["meta_checkpoint"] == summary["meta_checkpoint"]
    assert absolute_paths(run, rel) == {**summary, "yaml": str(run.resolve() / "DIGITS" / "RL_1M.yaml")}


def test_a_rerun_with_other_settings_sets_the_earlier_search_aside(tmp_path):
    from agents import rerun

    run = tmp_path / "run"
    (run / "tune" / "meta").mkdir(parents=True)
    (run / "summary.json").write_text('{"chosen": "x"}')
    (run / "evaluations.sqlite").write_text("kept")
    (run / "final" / "rl-chosen").mkdir(parents=True)  # another pick's final training: not this run's to resume
    rerun.mark(run, "fp-a", finished=True)
    assert rerun.finished_summary(run, "fp-a", need_final=False) == {"chosen": "x"}
    assert rerun.finished_summary(run, "fp-a", need_final=True) is None  # no final comparison yet
    assert rerun.finished_summary(run, "fp-b", need_final=False) is None
    with pytest.raises(ConfigError, match="started with other settings"):
        rerun.check_resume(run, "fp-b")
    moved = rerun.set_aside(run)
    assert moved is not None and (moved / "tune" / "meta").is_dir() and (moved / "summary.json").is_file()
    assert not (run / "tune").exists() and (run / "evaluations.sqlite").read_text() == "kept"
    assert (moved / "final" / "rl-chosen").is_dir() and not (run / "final").exists()


def test_only_known_harmless_worker_lines_are_dropped():
    from rcnas.infra.quiet import harmless_dropped

    lines = ["Exception ignored in atexit callback: <function _start_and_connect_service.<locals>.teardown_atexit>",
             "Traceback (most recent call last):", '  File "x.py", line 1, in f', "ConnectionResetError: lost",
             "[E core_worker.cc:2465: Actor with class name: 'SingleAgentEnvRunner' and ID: 'ab' has constructor "
             "arguments in the object store and max_restarts > 0. If the arguments ...",
             "Exception ignored in: <function LearnerGroup.__del__ at 0x7f>", "Traceback (most recent call last):",
             '  File "learner_group.py", line 711, in __del__', "    def __del__(self):", "SystemExit: 1",
             "epoch 1/1: loss 2.1",
             "Traceback (most recent call last):", '  File "y.py", line 2, in g', "ValueError: a real error"]
    assert harmless_dropped(lines) == lines[10:]


def test_a_planted_pickle_in_a_signed_checkpoint_is_refused_before_ray(tmp_path, monkeypatch):
    """``--from`` a meta checkpoint someone changed after this user signed it: refused before anything loads it."""
    import json
    import pickle

    import ray

    from agents.manifest import sign_tree
    from agents.pipeline import run_search
    from agents.stages import LAYOUT_FILE, module_dir
    from envs import observation

    monkeypatch.setenv("RCNAS_KEY_FILE", str(tmp_path / "key" / "checkpoint.key"))
    ckpt = tmp_path / "meta"
    Path(module_dir(ckpt)).mkdir(parents=True)
    (Path(module_dir(ckpt)) / "module_state.pkl").write_bytes(pickle.dumps({"w": [0.0]}))
    (ckpt / LAYOUT_FILE).write_text(json.dumps(observation.layout()))
    sign_tree(ckpt)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (Path(module_dir(ckpt)) / "module_state.pkl").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ConfigError, match="trust-checkpoint") as err:
        run_search(SMOKE, out=tmp_path / "run", from_checkpoint=str(ckpt), final_eval=False)
    assert "\n" not in str(err.value) and not marker.exists() and not ray.is_initialized()


def test_a_bad_override_is_refused_before_the_run_folder_exists(tmp_path):
    """--set is checked in full (every task resolved) before the lock takes the folder: nothing is left behind."""
    from agents.pipeline import run_search

    for sets, fragment in (({"training.epochs": 1e12}, "training.epochs"), ({"budget.ratio": 0.001}, "budget")):
        with pytest.raises(ConfigError, match=fragment):
            run_search(SMOKE, out=tmp_path / "run", overrides=sets, final_eval=False)
        assert not (tmp_path / "run").exists()
