"""One stream for everything rcnas says while it works: standard error (standard output carries results only: the
tables, the profile JSON), from the driver and from every Ray worker alike."""

from __future__ import annotations

import sys
import time


def say(msg: str) -> None:
    """A line on standard error, flushed (a worker's line reaches the driver when it is printed)."""
    print(msg, file=sys.stderr, flush=True)


def log(msg: str) -> None:
    """A timestamped line on standard error: the entry points' progress."""
    say(f"[{time.strftime('%H:%M:%S')}] {msg}")
