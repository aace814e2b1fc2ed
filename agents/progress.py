"""One readable line per PPO iteration: how the *search* is going, not how PPO's internals are.

Printed in the driver by a Tune callback (Tune runs the trial in another process) or by the plain ``--no-tune``
loop, from the ``rcnas`` section the search's callback adds to every result (``agents/callbacks.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ray import tune

from rcnas.evaluation.tables import human


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def progress_line(stage: str, iteration: int, total: int, rcnas: dict[str, Any], elapsed: float,
                  done_here: int) -> str:
    """``[meta] 3/6 | best reward 0.912: val robust acc 61.5% at 878K MACs | evaluations 12 computed, 3 from
    store, 0 failed | 1m12s, ETA 1m12s``; ``done_here`` = iterations run by this process (the ETA's rate)."""
    parts = [f"[{stage}] iteration {iteration}/{total}"]
    if "best_reward" in rcnas:
        parts.append(f"best reward {rcnas['best_reward']:.3f}: val robust acc {100 * rcnas['best_robust_acc']:.1f}% "
                     f"at {human(rcnas['best_macs'])} MACs")
    if "computed" in rcnas:
        parts.append(f"evaluations {rcnas['computed']} computed, {rcnas['from_store']} from store, "
                     f"{rcnas['failed']} failed"
                     + (f"; {rcnas['screened_out']} proposals screened out" if "screened_out" in rcnas else ""))
    eta = elapsed / done_here * (total - iteration) if done_here else 0.0
    parts.append(f"{_clock(elapsed)} elapsed, ETA {_clock(eta)}")
    return " | ".join(parts)


class ProgressLine(tune.Callback):
    """Tune callback: :func:`progress_line` for each result of the stage's trial."""

    def __init__(self, stage: str, total: int, log: Callable[[str], None]) -> None:
        self.stage, self.total, self.log = stage, total, log
        self.t0 = time.perf_counter()
        self.first: int | None = None

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        it = int(result.get("training_iteration", 0))
        if self.first is None:
            self.first = it - 1  # a resumed stage: the ETA counts only this process's iterations
        self.log(progress_line(self.stage, it, self.total, result.get("rcnas", {}), time.perf_counter() - self.t0,
                               it - self.first))
