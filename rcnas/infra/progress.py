"""Progress with an ETA: a tqdm bar on a terminal, plain lines where output is not one (CI, log files, Ray workers,
whose output Ray forwards line by line), so that logs never fill with carriage returns."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional


def on_terminal() -> bool:
    return sys.stderr.isatty()


def eta(done: float, total: float, elapsed: float) -> str:
    """``ETA 1m12s`` from a rate measured so far (empty before any progress)."""
    if done <= 0 or total <= done:
        return ""
    left = int(elapsed / done * (total - done))
    return f"ETA {left // 60}m{left % 60:02d}s"


class Progress:
    """``total`` units of work named ``desc``: a bar on a terminal; elsewhere nothing per unit (the caller's own
    per-epoch or per-attack lines carry :func:`eta`)."""

    def __init__(self, total: int, desc: str, unit: str = "step", enabled: Optional[bool] = None) -> None:
        self.total, self.t0 = total, time.perf_counter()
        self.bar: Any = None
        if enabled if enabled is not None else on_terminal():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
