"""The run folder as seen from other nodes: a small actor on the driver's node that writes and reads files under the
run folder for workers anywhere in the cluster, and records their progress.

Why: a worker's disk is not the run's. Spot workers are terminated (never stopped) and the cluster launcher runs
containers with ``--rm``, so a checkpoint left on the node that wrote it is gone with the node, and a long training
retried elsewhere would start again from epoch 0. Through this actor each finished epoch's checkpoint reaches the run
folder (which the run copies to ``--storage``), a retry on another node starts from it, and the final weights come
back to the run folder. The same actor keeps each long job's last sign of progress, which is what the evaluation
pool judges a long job alive by (never a wall-clock limit on the whole job).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rcnas.infra.files import inside, open_nofollow, write_atomic_with
from rcnas.infra.log import say


@ray.remote(num_cpus=0)
class RunFiles:
    """Files under one run folder, on its node; every path is checked to stay inside it (no ``..``, no links)."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.beats: dict[str, tuple[float, str]] = {}
        self.reports: list[dict[str, Any]] = []
        """every progress report in order (tag, node, note, time): what happened to each long job, for its
        record and for tests; a few per epoch of a few jobs, so it stays small"""

    def where(self) -> tuple[str, str]:
        """The run folder's absolute path and the node it is on."""
        return str(self.root), ray.get_runtime_context().get_node_id()

    def put(self, rel: str, data: bytes) -> None:
        path = inside(self.root, rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic_with(path, lambda handle: handle.write(data))

    def get(self, rel: str) -> Optional[bytes]:
        """The file's bytes, or None when there is none (a link is refused, never followed)."""
        path = inside(self.root, rel)
        if not path.is_file():
            return None
        fd = open_nofollow(path, os.O_RDONLY)
        with os.fdopen(fd, "rb") as handle:
            return handle.read()

    def beat(self, tag: str, note: str = "", node: str = "") -> None:
        """``tag``'s job made progress now (an epoch ended, or it started), on ``node``."""
        self.beats[tag] = (time.time(), note)
        self.reports.append({"tag": tag, "node": node, "note": note, "time": time.time()})

    def history(self, tag: str) -> list[dict[str, Any]]:
        """``tag``'s progress reports, oldest first."""
        return [r for r in self.reports if r["tag"] == tag]

    def quiet_for(self, tag: str) -> Optional[float]:
        """Seconds since ``tag``'s last progress; None when it never reported any."""
        beat = self.beats.get(tag)
        return None if beat is None else time.time() - beat[0]


def start_run_files(root: str | Path) -> Any:
    """A :class:`RunFiles` actor for ``root``, pinned to this node (where the run folder is)."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return RunFiles.options(scheduling_strategy=here).remote(str(Path(root).resolve()))


@dataclass(frozen=True)
class Mirror:
    """One long job's checkpoint, kept in the run folder as it is written (``rel`` under the run folder), and its
    progress reported under ``tag``. Passed to the job's worker, which calls :meth:`restore` before training and
    :meth:`keep` after every checkpoint (the training loop's progress callback runs after the checkpoint is saved).

    On the run folder's own node, writing to the very file the job trains into, nothing is copied."""

    files: Any
    """the run's :class:`RunFiles` handle"""
    rel: str
    """the checkpoint's path under the run folder"""
    tag: str
    """the job's name for its progress reports"""
    root: str = ""
    """the run folder's absolute path (to recognise a job that writes into it directly)"""
    node: str = ""
    """the node the run folder is on"""

    def _same_file(self, local: Path, rel: Optional[str] = None) -> bool:
        """``local`` is the run folder's file ``rel`` itself (a job on the run folder's node writing into it)."""
        here = ray.get_runtime_context().get_node_id()
        return (bool(self.root) and here == self.node
                and Path(self.root, rel or self.rel).resolve() == local.resolve())

    def restore(self, local: Path) -> bool:
        """Put the run folder's checkpoint at ``local`` (over a local one: the run folder's is the latest any attempt
        kept, a local one may be an earlier attempt's on this node); True when one was fetched."""
        self.beat("started")
        if self._same_file(local):
            return False
        data = ray.get(self.files.get.remote(self.rel))
        if data is None:
            return False  # none kept yet: a local checkpoint of this node, if any, is continued
        local.parent.mkdir(parents=True, exist_ok=True)
        write_atomic_with(local, lambda handle: handle.write(data))
        say(f"{self.tag}: continuing from the run folder's checkpoint {self.rel}")
        return True

    def keep(self, local: Path, rel: Optional[str] = None) -> None:
        """Copy ``local`` to the run folder (at ``rel``, default the checkpoint's place) and report progress."""
        target = rel or self.rel
        if not self._same_file(local, target):
            ray.get(self.files.put.remote(target, local.read_bytes()))
        self.beat(f"kept {target}")

    def beat(self, note: str = "") -> None:
        # fire and forget: progress reports never slow the job
        self.files.beat.remote(self.tag, note, ray.get_runtime_context().get_node_id())
