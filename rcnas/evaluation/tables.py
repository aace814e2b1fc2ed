"""Result tables for evaluate.py: one row per sub-network, every robustness column labelled with its attack and
steps, the table caption with epsilon (k/255), n examples, split and seed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rcnas.vocab import ATTACK_KINDS

if TYPE_CHECKING:
    from rcnas.evaluation.final import FinalResult
    from rcnas.evaluation.robustness import AttackAccuracy


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def _columns(results: list[FinalResult]) -> list[str]:
    labels: list[str] = []
    for r in results:
        for a in r.attacks:
            if a.label not in labels:
                labels.append(a.label)
    return labels


def _heading(a: AttackAccuracy) -> str:
    kind = ATTACK_KINDS.get(a.attack)
    return f"{a.label} ({a.steps} steps)" if kind.iterative and not kind.whole_set else a.label


def caption(results: list[FinalResult]) -> str:
    r = results[0]
    return (f"{r.dataset} ({r.task}), L-inf eps = {r.eps_255}, n = {r.n_examples} {r.split} examples, "
            f"seed {r.seed}; accuracy in %; worst = pointwise worst case over the attacks")


def rows(results: list[FinalResult]) -> tuple[list[str], list[list[str]]]:
    labels = _columns(results)
    by_label = {a.label: a for r in results for a in r.attacks}
    header = ["sub-network", "arch", "params", "MACs", "clean"]
    header += [_heading(by_label[lab]) for lab in labels]
    header += ["worst", "LIPS", "wall s"]
    body = []
    for r in results:
        acc = {a.label: a.accuracy for a in r.attacks}
        line = [r.name, r.arch, human(r.params), human(r.macs), f"{100 * r.clean:.2f}"]
        line += [f"{100 * acc[lab]:.2f}" if lab in acc else "-" for lab in labels]
        worst = r.worst_case
        line += ["-" if worst is None else f"{100 * worst:.2f}", f"{r.lipschitz:.3g}", f"{r.wall_seconds:.0f}"]
        body.append(line)
    return header, body


def text_table(results: list[FinalResult]) -> str:
    header, body = rows(results)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body]
    return caption(results) + "\n" + "\n".join(lines)


def markdown_table(results: list[FinalResult]) -> str:
    header, body = rows(results)
    out = [f"_{caption(results)}_", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join(out) + "\n"
