"""What a run folder already holds, so that running the same command again neither repeats nor mixes a run.

``run.json`` records the run's fingerprint (the resolved experiment and tasks, the searcher's flags and the code
version) when a search starts, and ``finished`` when it ends. The same command on a finished run prints its results
and computes nothing; a run with other settings (or a new run without ``--resume`` over an interrupted one) first
moves the earlier Tune experiments, reports and final trainings to ``previous/<time>/``, so that TensorBoard, the
reward plot and the report each show one run. The evaluation store stays where it is: its results are keyed by
content and still answer every repeated request.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from rcnas.infra.errors import ConfigError
from rcnas.infra.files import inside, write_atomic

RUN_FILE = "run.json"
MOVED = ("tune", "summary.json", "report.md", "reward.png", "candidates.png", "topology.png", "chosen_metrics.json",
         "final")
"""what belongs to one search (the store, the configs and the lock stay). ``final`` too: another search's pick has
another network, and its final-training checkpoint under the same name (``final/rl-chosen``) cannot resume it"""


def fingerprint(exp: Any, tasks: list[Any], **flags: Any) -> str:
    """A content key of everything that decides what a search does: two runs with the same fingerprint compute
    the same thing."""
    from rcnas.infra.provenance import code_version, content_key

    return content_key([exp.model_dump(mode="json"), [t.config.model_dump(mode="json") for t in tasks],
                        sorted(flags.items()), code_version()])


def previous(out: Path) -> Optional[dict[str, Any]]:
    """The folder's ``run.json`` (None when there is none or it is not ours)."""
    path = out / RUN_FILE
    if not path.is_file() or path.is_symlink():
        return None
    try:
        state = json.loads(path.read_bytes()[:65536])
    except ValueError:
        return None
    return state if isinstance(state, dict) and isinstance(state.get("fingerprint"), str) else None


def finished_summary(out: Path, fp: str, need_final: bool) -> Optional[dict[str, Any]]:
    """``summary.json`` of a finished run with fingerprint ``fp`` (None when there is none, the settings differ or
    the final comparison asked for is not complete)."""
    state = previous(out)
    if not state or state["fingerprint"] != fp or not state.get("finished"):
        return None
    summary_path, final = out / "summary.json", out / "final"
    if not summary_path.is_file() or (need_final and not (final / "comparison.txt").is_file()):
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except ValueError:
        return None
    return summary if isinstance(summary, dict) else None


def check_resume(out: Path, fp: str) -> None:
    """``--resume`` continues the run that is there, with its settings: other settings would restore Tune's old
    trials under a new experiment's name.

    Raises:
        ConfigError: the folder's run was started with other settings.
    """
    state = previous(out)
    if state and state["fingerprint"] != fp:
        raise ConfigError(f"--resume: the run in {out} was started with other settings (experiment, tasks, flags or "
                          "code version); resume it with its own command, or drop --resume to start a new run there")


def set_aside(out: Path) -> Optional[Path]:
    """Move an earlier search's Tune experiments and reports to ``previous/<time>/``; returns where (None when
    there was nothing to move)."""
    present = [name for name in MOVED if (out / name).exists() or (out / name).is_symlink()]
    if not present:
        return None
    dest = inside(out, f"previous/{time.strftime('%Y%m%d-%H%M%S')}")
    dest.mkdir(parents=True, exist_ok=True)
    for name in present:
        (out / name).rename(dest / name)  # a rename moves a link itself, never what it points to
    return dest


def mark(out: Path, fp: str, finished: bool) -> None:
    """Record the run's fingerprint, started or finished."""
    write_atomic(inside(out, RUN_FILE), json.dumps({"fingerprint": fp, "finished": finished,
                                                    "at": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))


PATH_KEYS = ("yaml", "meta_checkpoint", "finetune_checkpoint")
"""summary.json's paths: written relative to the run folder (a folder moved or shared keeps working and does not
reveal where it lived), read back absolute"""


def relative_paths(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with its paths inside ``out`` made relative to it (URIs and outside paths unchanged)."""
    root = out.resolve()
    fixed = dict(summary)
    for key in PATH_KEYS:
        value = fixed.get(key)
        if isinstance(value, str) and "://" not in value and Path(value).is_absolute():
            path = Path(value).resolve()
            if path.is_relative_to(root):
                fixed[key] = str(path.relative_to(root))
    return fixed


def absolute_paths(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`relative_paths`: every relative path of ``summary`` under ``out``."""
    fixed = dict(summary)
    for key in PATH_KEYS:
        value = fixed.get(key)
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
            fixed[key] = str(out.resolve() / value)
    return fixed
