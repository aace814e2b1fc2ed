"""AutoAttack through ``pyautoattack`` (the official Croce & Hein code on PyPI), behind our attack interface.

Imported lazily: the package costs seconds at import. Its API differs from upstream (keyword-only, ``attacks=``,
``eps`` defaulting to 0.3 so we always pass it, ``(x_adv, y_adv)`` returned); this adapter absorbs that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from rcnas.attacks.run import AttackContext

COMPACT = ["apgd-ce", "apgd-t"]


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    version: str,
    ctx: AttackContext,
    batch_size: int = 250,
) -> torch.Tensor:
    """Run AutoAttack ``standard`` (APGD-CE, APGD-T, FAB-T, Square 5000) or ``compact`` (APGD-CE + APGD-T with the
    standard version's settings). Robust points come back as the clean input.

    pyautoattack's own resumable state file is not used: it does not round-trip (its attack set is saved as a string
    that never matches on reload), so a rerun into the same folder failed. Finished results are reused per job from
    ``results.json`` instead (``rcnas.evaluation.jobs.run_jobs``).
    """
    from pyautoattack import AutoAttack

    seed, num_classes, progress = ctx.seed, ctx.num_classes, ctx.progress
    device = next(model.parameters()).device
    if version == "standard":
        aa = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=seed, device=device)
    else:
        aa = AutoAttack(model, eps=eps, norm="Linf", version="custom", attacks=list(COMPACT), seed=seed,
                        device=device)
        aa.apgd.n_restarts = 1  # the standard version's settings for the same two attacks
    targets = min(9, num_classes - 1)
    aa.apgd_targeted.n_target_classes = targets
    aa.fab.n_target_classes = targets
    logger = logging.getLogger("auto-attack")
    handler = _Forward(progress) if progress else None
    # pyautoattack logs each sub-attack's start and result at DEBUG: forwarded as progress lines when wanted (a
    # standard run takes minutes per model), silenced otherwise
    logger.setLevel(logging.DEBUG if handler else logging.WARNING)
    if handler:
        logger.addHandler(handler)
    try:
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        if handler:
            logger.removeHandler(handler)
            logger.setLevel(logging.WARNING)
    return x_adv.detach()


class _Forward(logging.Handler):
    """AutoAttack's lines that say where it is ("running apgd-t", "robust accuracy after apgd-t: 61.50% (total time
    12.3 s)"), passed on; its per-batch and sanity-check chatter left out."""

    KEEP = ("running ", "robust accuracy after ", "initial accuracy", "no robust datapoints left")

    def __init__(self, progress: Callable[[str], None]) -> None:
        super().__init__(logging.DEBUG)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg.startswith(self.KEEP):
            self.progress(msg)
