"""Search quality from a searcher's request log: what it had found after its first N distinct evaluations.

Pure functions over :class:`rcnas.proxy.records.Request` logs (the store's, or a table evaluator's), so the
benchmarks' arithmetic is tested without Ray. Cost is counted in *distinct* evaluations: a repeat of a sub-network
the searcher already asked for costs nothing (the store answers it), whoever computed it first.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import TypeVar

from rcnas.proxy.records import Request, TeacherStats
from rcnas.search.candidates import Candidate, candidate
from rcnas.task import Task

T = TypeVar("T")


def distinct(requests: Sequence[Request], task_name: str | None) -> list[Request]:
    """The first request of each sub-network of ``task_name`` (None: of each task and sub-network), in the order the
    searcher made them."""
    seen: set[tuple[str, str]] = set()
    out = []
    for r in requests:
        if task_name in (None, r.task_name) and (r.task_name, r.arch_key) not in seen:
            seen.add((r.task_name, r.arch_key))
            out.append(r)
    return out


def scored(requests: Sequence[Request], task: Task, teacher: TeacherStats) -> list[Candidate]:
    """The distinct evaluations of ``task`` in ``requests``, in the order first asked for, each scored by the task's
    reward (``teacher``: the task's teacher, as measured for it)."""
    return [candidate(i, task, r.arch, r.metrics, teacher) for i, r in enumerate(distinct(requests, task.name))]


def best_within(rows: Sequence[T], n: int, score: Callable[[T], float]) -> T | None:
    """The highest-scoring of the first ``n`` rows (None when there are none)."""
    head = rows[:n]
    return max(head, key=score) if head else None


def best_so_far(values: Sequence[float]) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(v if not out else max(out[-1], v))
    return out


def held(values: Sequence[float], n: int) -> list[float]:
    """``values`` extended to ``n`` by repeating the last one: a search that stopped early (a converged policy, a
    rule with few candidates) keeps its last pick."""
    return [*values, *[values[-1]] * (n - len(values))] if values else []


def mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN for none)."""
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def ci95(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t; 0 for a single value; NaN for none)."""
    m, sd = mean_sd(xs)
    if len(xs) < 2:
        return m, sd
    from scipy.stats import t

    return m, float(t.ppf(0.975, len(xs) - 1)) * sd / math.sqrt(len(xs))


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
