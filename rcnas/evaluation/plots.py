"""The Pareto plot of an evaluation: robust accuracy against MACs for every evaluated network, one series per
attack, with the frontier of the strongest attack run (what a compression paper's main figure shows)."""

from __future__ import annotations

from pathlib import Path

from rcnas.evaluation.final import FinalResult

STRENGTH = ("aa", "aa_compact", "cw40", "pgd20", "fgsm")
"""attack labels from strongest to weakest: the frontier is drawn for the first one every result has"""


def frontier(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The Pareto-optimal (MACs, accuracy, name) points: none other is cheaper and at least as accurate."""
    out: list[tuple[float, float, str]] = []
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or p[1] > out[-1][1]:
            out.append(p)
    return out


def pareto_plot(results: list[FinalResult], path: str | Path) -> str | None:
    """Write the plot to ``path`` (PNG); returns the attack whose frontier is drawn, or None when no attack ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [a.label for a in results[0].attacks] if results else []
    common = [lb for lb in labels if all(r.accuracy(lb) is not None for r in results)]
    if not common:
        return None
    strongest = next((s for s in STRENGTH if s in common), common[-1])
    r0 = results[0]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for lb in common:
        xs = [r.macs / 1e6 for r in results]
        ys = [100 * (r.accuracy(lb) or 0.0) for r in results]
        ax.scatter(xs, ys, label=_label(results, lb), s=24, alpha=1.0 if lb == strongest else 0.45)
    front = frontier([(r.macs / 1e6, 100 * (r.accuracy(strongest) or 0.0), r.name) for r in results])
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label=f"Pareto frontier ({strongest})")
    for r in results:
        ax.annotate(r.name, (r.macs / 1e6, 100 * (r.accuracy(strongest) or 0.0)), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(f"{r0.dataset} {r0.split} split, eps {r0.eps_255}, n = {r0.n_examples}, seed {r0.seed}",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return strongest


def _label(results: list[FinalResult], label: str) -> str:
    a = next(a for a in results[0].attacks if a.label == label)
    return f"{label} ({a.attack}, {a.steps} steps)" if a.steps > 1 else f"{label} ({a.attack})"
