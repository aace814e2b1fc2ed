"""The library's public calls leave the caller's process as they found it."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def leaves_process_as_found(fn: F) -> F:
    """Run ``fn`` and then restore what it changes process-wide: torch's thread count (a search sets it to one,
    since its workers share the cores) and Ray, shut down again if ``fn`` started it (its workers' last lines are
    printed then, not after the call returned). Ray is looked up in ``sys.modules``, never imported here."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        threads = torch.get_num_threads()
        ray = sys.modules.get("ray")
        ray_before = bool(ray is not None and ray.is_initialized())
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
            ray = sys.modules.get("ray")
            if ray is not None and not ray_before and ray.is_initialized():
                ray.shutdown()

    return wrapper  # type: ignore[return-value]
