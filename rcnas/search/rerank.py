"""Re-ranking the search's best candidates at a higher fidelity before choosing.

The search ranks hundreds of sub-networks by a cheap proxy (one short fine-tuning, one seed); the top few are often
within that proxy's noise of each other. Their order is decided again by a more faithful measurement (more
fine-tuning epochs, more seeds) of only those few, so the pick is the one most likely to survive full training.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from rcnas.config import ProxyConfig
from rcnas.proxy.protocol import Evaluator
from rcnas.search.candidates import Candidate, best, candidate
from rcnas.task import Task


def higher_fidelity(task: Task, epochs: float, repeats: int) -> Task:
    """``task`` with the proxy's fine-tuning lengthened and more seeds averaged (its teacher unchanged)."""
    proxy: ProxyConfig = task.config.proxy.model_copy(update={"epochs": epochs, "repeats": repeats})
    return task.replace(proxy=proxy)


def rerank(task: Task, candidates: list[Candidate], evaluator: Evaluator, top_k: int, epochs: float,
           repeats: int) -> list[tuple[Candidate, Candidate]]:
    """The ``top_k`` candidates by the search's reward, each with its higher-fidelity evaluation, ordered by the
    latter (best first). Evaluated concurrently (a pool of evaluation workers takes them side by side)."""
    top = [c for c in best(candidates, top_k) if c.metrics.ok]
    hi = higher_fidelity(task, epochs, repeats)
    teacher = evaluator.teacher_stats(hi)
    with ThreadPoolExecutor(max_workers=max(1, len(top))) as pool:
        done = list(pool.map(lambda c: evaluator.evaluate(hi, c.arch), top))
    pairs = [(c, candidate(c.index, hi, c.arch, e.metrics, teacher)) for c, e in zip(top, done)]
    return sorted(pairs, key=lambda p: (p[1].metrics.ok, p[1].reward), reverse=True)
