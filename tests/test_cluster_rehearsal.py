"""The README's cluster section, rehearsed on one machine: cluster.yaml's own start commands bring up a head and a
worker "node" (no cloud, no Docker: ports, temporary folders and homes moved so that two nodes fit on one machine),
each with its own home, so its own cache and copy of the data; then the README's head-shell commands run exactly as
written, apart from the named substitutions (the experiment at smoke scale on synthetic CIFAR-10, the buckets as
``file://`` folders, the dashboard's port), in a shell that has only what a ``ray attach`` shell has: no
``RAY_AUTH_MODE``, no ``RAY_ADDRESS``, no rcnas variable.

The search is submitted as a Ray job, its driver killed mid-way (a lost SSH session does not stop a job; a killed
driver does), and the README's resume command continues it; then evaluate.py runs on what it chose.

Everything the rehearsal starts runs in process sessions it created, and is ended by process id (never ``ray
stop``, which would end every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

EXPERIMENT = """\
# the README's experiment at smoke scale: cifar10-smoke's tasks, the workers asking for what only worker nodes have
name: cifar10-rehearsal
meta_tasks: [configs/tasks/smoke-cifar10/smoke-c10-a.yaml, configs/tasks/smoke-cifar10/smoke-c10-b.yaml]
target_task: configs/tasks/smoke-cifar10/smoke-c10-target.yaml
M: 2
meta_iterations: 2
finetune_iterations: 1
ppo: {num_epochs: 2}
workers: {count: 2, gpus: 0, cpus: 0.5, resources: {rehearsal_gpu: 1}}
final_eval: {epochs: 0.3, attacks: [clean, pgd20], n_examples: 16}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Rehearsal:
    """The machine's processes this rehearsal started (by session id) and the nodes' homes."""

    root: Path
    temp: Path
    """Ray's temporary folders: short (Ray's socket paths must fit in 107 characters)"""
    sessions: set[int] = field(default_factory=set)
    ports: dict[str, int] = field(default_factory=dict)

    def home(self, node: str) -> Path:
        return self.root / node

    def env(self, node: str) -> dict[str, str]:
        """What a login shell on ``node`` has: its home, the image's Python first on PATH, nothing else of ours."""
        bin_dir = Path(_python()).parent
        return {"HOME": str(self.home(node)), "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8", "USER": os.environ.get("USER", "ray"), "RAY_HEAD_IP": "127.0.0.1",
                # the node's copy of the project (the image's ~/rcnas with file_mounts over it) comes first
                "PYTHONPATH": str(self.home(node) / "rcnas")}

    def start(self, node: str, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``command`` in ``node``'s shell, in a new process session (whatever it leaves running stays in it)."""
        proc = subprocess.Popen(["bash", "-c", command], cwd=self.home(node), env=self.env(node), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.sessions.add(proc.pid)
        out, _ = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(command, proc.returncode, out, "")

    def background(self, node: str, command: str) -> subprocess.Popen:
        proc = subprocess.Popen(["bash", "-c", command], cwd=self.home(node), env=self.env(node), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.sessions.add(proc.pid)
        return proc

    def pids(self, contains: str = "") -> list[int]:
        """Live processes the rehearsal started (whose command line holds ``contains``): those in its sessions and
        every descendant of them (a Ray job's driver runs in a session of its own, under the head's raylet)."""
        table: dict[int, tuple[int, int, str]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                table[int(entry.name)] = (ppid, os.getsid(int(entry.name)), cmdline)
            except (OSError, ProcessLookupError, ValueError, IndexError):
                continue
        ours = {pid for pid, (_, sid, _) in table.items() if sid in self.sessions}
        grew = True
        while grew:
            more = {pid for pid, (ppid, _, _) in table.items() if ppid in ours and pid not in ours}
            ours |= more
            grew = bool(more)
        return sorted(pid for pid in ours if contains in table[pid][2])

    def end(self) -> None:
        """Every process of the rehearsal's sessions, by id."""
        for _ in range(3):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1)


def _python() -> str:
    import sys

    return sys.executable


def _moved(command: str, node: str, r: Rehearsal) -> str | None:
    """cluster.yaml's ``command`` as it runs on this machine's ``node``; None for ``ray stop`` (it ends every Ray on
    the machine, other users' and other tests' too: the rehearsal's nodes are new). Every change is checked to
    apply, so a cluster.yaml the rehearsal no longer understands fails here, not silently."""
    if command.strip() == "ray stop":
        return None
    p = r.ports
    changes: list[tuple[str, str]] = []
    if "ray start --head" in command:
        changes = [("--port=6379", f"--port={p['gcs']}"),
                   (" --autoscaling-config=~/ray_bootstrap_config.yaml", ""),  # written by `ray up` (no cloud here)
                   ("--dashboard-host=127.0.0.1", f"--dashboard-host=127.0.0.1 --dashboard-port={p['dashboard']} "
                    f"--ray-client-server-port={p['client']} --dashboard-agent-listen-port={p['agent_head']} "
                    f"--temp-dir={r.temp}/head --num-cpus=3")]
    elif "ray start --address" in command:
        changes = [("$RAY_HEAD_IP:6379", f"$RAY_HEAD_IP:{p['gcs']}"),
                   ("ray start --address", f"ray start --temp-dir={r.temp}/worker --num-cpus=2 "
                    f"--dashboard-agent-listen-port={p['agent_worker']} "
                    "--resources='{\"rehearsal_gpu\": 2}' --address")]
    elif "tensorboard" in command:
        changes = [("--port 6006", f"--port {p['tensorboard']}")]
    for old, new in changes:
        assert old in command, f"cluster.yaml's command changed ({old!r} not in {command!r}): update the rehearsal"
        command = command.replace(old, new)
    return command


def _readme_head_commands() -> list[str]:
    """The README's cluster block: the commands typed in the head's shell (the indented lines after
    ``ray attach cluster.yaml``), continuation lines joined."""
    text = (REPO / "README.md").read_text()
    block = text.split("## On a Ray cluster", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines, inside, joined = [], False, ""
    for line in block.splitlines():
        if line.startswith("ray attach cluster.yaml ") and "a shell on the head" in line:
            inside = True
            continue
        if inside and line and not line.startswith(" "):
            break
        if inside and line.strip():
            code = line.split("  #", 1)[0].rstrip()
            joined = joined + " " + code.strip() if joined else code.strip()
            if joined.endswith("\\"):
                joined = joined[:-1].rstrip()
                continue
            lines.append(joined)
            joined = ""
    assert lines, "README: no head-shell commands found under `ray attach cluster.yaml`"
    return lines


def _node_copy(home: Path) -> None:
    """The node's ~/rcnas: the project as the image holds it, with cluster.yaml's file_mounts over it; its token."""
    target = home / "rcnas"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("rcnas", "envs", "agents", "configs", "bench"):
        shutil.copytree(REPO / name, target / name, ignore=ignore)
    for name in ("train.py", "evaluate.py", "pyproject.toml"):
        shutil.copy2(REPO / name, target / name)


@pytest.fixture
def rehearsal():
    root = Path(tempfile.mkdtemp(prefix="rcnas-rehearsal-"))
    temp = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))
    r = Rehearsal(root, temp, ports={k: _free_port() for k in ("gcs", "dashboard", "client", "agent_head",
                                                                  "agent_worker", "tensorboard")})
    try:
        yield r
    finally:
        r.end()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(temp, ignore_errors=True)


def test_the_readme_cluster_section_runs_command_by_command(rehearsal):
    r = rehearsal
    from rcnas.data.synthetic import write_cifar10

    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    # 1. the user's machine: the token (README's first command), then `ray up`: file_mounts on every node
    laptop = r.home("laptop")
    laptop.mkdir(parents=True)
    got = r.start("laptop", "ray get-auth-token --generate")
    assert got.returncode == 0, got.stdout
    token = laptop / ".ray" / "auth_token"
    bucket = r.root / "bucket"
    write_cifar10(bucket / "cifar")  # the user's bucket, holding the dataset once
    for node in ("head", "worker"):
        home = r.home(node)
        (home / ".ray").mkdir(parents=True)
        assert "~/.ray/auth_token" in cluster["file_mounts"]
        shutil.copy2(token, home / ".ray" / "auth_token")
        _node_copy(home)
    (r.home("head") / "rcnas" / "configs" / "experiments" / "cifar10-rehearsal.yaml").write_text(EXPERIMENT)
    # 2. cluster.yaml's start commands, head then worker
    for node, key in (("head", "head_start_ray_commands"), ("worker", "worker_start_ray_commands")):
        for command in cluster[key]:
            moved = _moved(command, node, r)
            if moved is None:
                continue
            done = r.start(node, moved)
            assert done.returncode == 0, f"{node}: {moved}\n{done.stdout[-3000:]}"
    # 3. the README's commands in the head's shell, as written, with these substitutions only
    storage = (bucket / "rcnas" / "cifar10").as_uri()
    substitutions = {"configs/experiments/cifar10.yaml": "configs/experiments/cifar10-rehearsal.yaml",
                     "s3://my-bucket/cifar": (bucket / "cifar").as_uri(),
                     "s3://my-bucket/rcnas/cifar10": storage,
                     "http://127.0.0.1:8265": f"http://127.0.0.1:{r.ports['dashboard']}",
                     "CIFAR10/RL_5G.yaml": "CIFAR10/RL_SUBNET.yaml",
                     "configs/tasks/cifar10-aa-wrna2-5g.yaml": "configs/tasks/smoke-cifar10/smoke-c10-target.yaml"}
    commands = []
    for command in _readme_head_commands():
        for old, new in substitutions.items():
            command = command.replace(old, new)
        commands.append(command)
    assert not any("s3://" in c for c in commands), commands
    submit = [c for c in commands if "ray job submit" in c and "train.py" in c]
    assert len(submit) == 2 and "--resume" in submit[1], "README: the search's job and its --resume"
    setup = [c for c in commands if c.startswith(("export ", "cd "))]
    shell = " && ".join(setup)
    # the search, as a job; its driver killed once the first policy iteration has evaluated something
    run = r.home("head") / "runs" / "cifar10"
    job = r.background("head", f"{shell} && {submit[0]}")
    deadline = time.monotonic() + 900
    while not _stored(run) and job.poll() is None:
        assert time.monotonic() < deadline, "the search's job evaluated nothing in 15 minutes"
        time.sleep(2)
    assert job.poll() is None, f"the job ended before its driver was killed:\n{job.stdout.read()[-4000:]}"
    drivers = [pid for pid in r.pids("python train.py") if "ray job submit" not in _cmdline(pid)]
    assert drivers, "no train.py driver running under the head's Ray"
    for pid in drivers:
        os.kill(pid, signal.SIGKILL)
    first_out, _ = job.communicate(timeout=300)
    assert job.returncode != 0, first_out[-3000:]
    # the README's resume command continues it
    resumed = r.start("head", f"{shell} && {submit[1]}", timeout=1800)
    assert resumed.returncode == 0, resumed.stdout[-5000:]
    summary = json.loads((run / "summary.json").read_text())
    final = json.loads((run / "final" / "results.json").read_text())
    assert {f["name"] for f in final} >= {"rl-chosen", "uniform-shrink"}
    # the final jobs asked for the experiment's worker resources: they ran on the worker node, not the head's CPUs
    head_node = _node_id(r, "head")
    assert all(f["provenance"].get("ray_node") not in ("", None, head_node) for f in final), \
        [f["provenance"].get("ray_node") for f in final]
    for f in final:
        assert (run / "final" / f["name"] / "model.pt").is_file(), "the final weights are back in the run folder"
    # what --storage holds survives `ray down`: the run's summary, store, kept teachers and final weights
    kept = Path(storage.removeprefix("file://"))
    assert (kept / "summary.json").is_file() and (kept / "evaluations.sqlite").is_file()
    assert list((kept / "teachers").glob("*/model.pt")), "the teachers are kept in the run's storage"
    assert (kept / "final" / "rl-chosen" / "model.pt").is_file()
    # each node copied the data once into its own cache (nothing downloaded from the dataset's origin)
    for node in ("head", "worker"):
        assert list(r.home(node).glob("**/data/*/.complete.json")), f"{node} has no copy of the data"
    # 4. evaluate.py on what the search chose, as the README runs it
    chosen = Path(summary["yaml"])
    evaluate = [c for c in commands if "evaluate.py" in c]
    assert len(evaluate) == 1
    command = evaluate[0].replace("CIFAR10/RL_SUBNET.yaml", str(chosen) if chosen.is_absolute() else
                                  str(Path("CIFAR10") / chosen.name))
    done = r.start("head", f"{shell} && {command}", timeout=1800)
    assert done.returncode == 0, done.stdout[-5000:]
    assert "aa_compact" in done.stdout or "pgd" in done.stdout.lower()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _stored(run: Path) -> bool:
    """The run folder's store holds at least one evaluation."""
    import sqlite3

    path = run / "evaluations.sqlite"
    if not path.is_file():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("select count(*) from evaluations").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def _node_id(r: Rehearsal, node: str) -> str:
    """``node``'s Ray node id, read from its raylet's command line (each node has its own temporary folder)."""
    for pid in r.pids("raylet"):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if f"{r.temp}/{node}/" in cmdline:
            found = re.search(r"--node_id=([0-9a-f]+)", cmdline)
            if found:
                return found.group(1)
    raise AssertionError(f"no raylet of {node}")
