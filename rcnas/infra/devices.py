"""Device choice from what torch reports, never assumed: a worker given a GPU it cannot see falls back to the CPU
with a warning instead of failing."""

from __future__ import annotations

import warnings

import torch


def pick_device(want_gpu: bool | None = None) -> torch.device:
    """CUDA when torch sees a GPU (and ``want_gpu`` is not False), else the CPU.

    Args:
        want_gpu: True when a scheduler (Ray) assigned this process a GPU: warn if torch cannot see it;
            False to stay on the CPU; None to take a GPU when there is one.
    """
    if torch.cuda.is_available() and want_gpu is not False:
        return torch.device("cuda")
    if want_gpu:
        warnings.warn("a GPU was assigned to this process but torch cannot see one; running on the CPU",
                      RuntimeWarning, stacklevel=2)
    return torch.device("cpu")
