"""Search quality from a searcher's request log: what it had found after its first N distinct evaluations.

Pure functions over the rows of :meth:`rcnas.proxy.store.EvaluationStore.requests`, so the benchmark's arithmetic
is tested without Ray. Cost is counted in *distinct* evaluations: a repeat of a sub-network the searcher already
asked for costs nothing (the store answers it), whoever computed it first.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

Row = dict[str, Any]


def distinct(requests: Sequence[Row], task_name: str) -> list[Row]:
    """The first request of each sub-network of ``task_name``, in the order the searcher made them."""
    seen: set[str] = set()
    out = []
    for r in requests:
        if r["task_name"] == task_name and r["arch_key"] not in seen:
            seen.add(r["arch_key"])
            out.append(r)
    return out


def best_within(rows: Sequence[Row], n: int, score: Callable[[Row], float]) -> Row | None:
    """The highest-scoring of the first ``n`` rows (None when there are none)."""
    head = rows[:n]
    return max(head, key=score) if head else None


def best_so_far(values: Sequence[float]) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(v if not out else max(out[-1], v))
    return out


def mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN for none)."""
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def text_chart(series: dict[str, Sequence[float]], height: int = 12, width: int = 50) -> str:
    """A line chart in characters (one letter per series), for a Markdown file that should not carry images."""
    finite = [v for s in series.values() for v in s if not math.isnan(v)]
    if not finite:
        return "(no data)"
    lo, hi = min(finite), max(finite)
    hi = hi if hi > lo else lo + 1e-9
    n = max(len(s) for s in series.values())
    grid = [[" "] * width for _ in range(height)]
    marks = {}
    for k, (name, s) in enumerate(series.items()):
        mark = chr(ord("A") + k)
        marks[mark] = name
        for col in range(width):
            i = min(len(s) - 1, round(col * (n - 1) / max(width - 1, 1)))
            if i < 0 or math.isnan(s[i]):
                continue
            row = height - 1 - round((s[i] - lo) / (hi - lo) * (height - 1))
            grid[row][col] = mark if grid[row][col] in (" ", mark) else "*"
    lines = [f"{hi - (hi - lo) * r / (height - 1):7.3f} |" + "".join(g) for r, g in enumerate(grid)]
    lines.append(" " * 8 + "+" + "-" * width)
    lines.append(" " * 9 + f"1{'distinct evaluations':^{width - len(str(n)) - 1}}{n}")
    lines.append("  ".join(f"{m} = {name}" for m, name in marks.items()) + "   (* = several)")
    return "\n".join(lines)
