"""Device choice from what torch reports, never assumed: a worker given a GPU it cannot see stops with one line
(:class:`GpuNotVisible`: the driver version, torch's CUDA build, how to fix it) instead of computing on the CPU while
it holds the GPU."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import torch

from rcnas.infra.errors import GpuNotVisible

DRIVER_VERSION_FILE = "/proc/driver/nvidia/version"
"""where a loaded NVIDIA kernel module says its version (also inside a container run with the NVIDIA runtime)"""


def pick_device(want_gpu: bool | None = None, gpu_ids: Optional[Sequence[Any]] = None) -> torch.device:
    """CUDA when torch sees a GPU (and ``want_gpu`` is not False), else the CPU.

    Args:
        want_gpu: True when a scheduler (Ray) assigned this process a GPU: :class:`GpuNotVisible` if torch cannot
            see it (never the CPU); False to stay on the CPU; None to take a GPU when there is one.
        gpu_ids: the GPUs assigned (Ray's ids), named in that error.
    """
    if not want_gpu:
        return torch.device("cuda" if want_gpu is None and torch.cuda.is_available() else "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # torch says why CUDA failed to initialise (e.g. "driver too old") this way
        available = torch.cuda.is_available()
    if available:
        return torch.device("cuda")
    notes = [str(w.message) for w in caught if "CUDA" in str(w.message) or "NVIDIA" in str(w.message)]
    raise GpuNotVisible(gpu_not_visible_message(nvidia_driver_version(), torch.version.cuda, list(gpu_ids or []),
                                                os.environ.get("CUDA_VISIBLE_DEVICES"), " ".join(notes)))


def gpu_not_visible_message(driver_version: Optional[str], torch_cuda: Optional[str], gpu_ids: Sequence[Any],
                            visible: Optional[str], torch_note: str = "") -> str:
    """The one line of :class:`GpuNotVisible`.

    Args:
        driver_version: the NVIDIA driver's version (:func:`nvidia_driver_version`), None when there is none.
        torch_cuda: the CUDA version torch was built for (``torch.version.cuda``), None for a CPU-only build.
        gpu_ids: the GPU ids Ray assigned.
        visible: ``CUDA_VISIBLE_DEVICES`` (None when unset).
        torch_note: what torch warned while it looked for CUDA, if anything (e.g. that the driver is too old).
    """
    devices = "unset" if visible is None else repr(visible)
    driver = f"NVIDIA driver {driver_version}" if driver_version else "no NVIDIA driver found"
    if torch_cuda:
        build = f"torch {torch.__version__} is built for CUDA {torch_cuda}"
        fix = (f"use a machine image whose NVIDIA driver supports CUDA {torch_cuda}, or the project's Docker image "
               f"(the one cluster.yaml names)")
    else:
        build = f"torch {torch.__version__} is a CPU-only build"
        fix = "install a CUDA build of torch, or use the project's Docker image (the one cluster.yaml names)"
    note = f" (torch: {torch_note})" if torch_note else ""
    line = (f"{GpuNotVisible.PREFIX} (GPU ids {[str(i) for i in gpu_ids]}, CUDA_VISIBLE_DEVICES={devices}) but torch "
            f"cannot see it: {driver}, {build}{note}; this worker stops rather than compute on the CPU while it "
            f"holds a GPU: {fix}; see README \"On a Ray cluster\"")
    return " ".join(line.split())  # one line, whatever the inputs held


def nvidia_driver_version(timeout_s: float = 5.0) -> Optional[str]:
    """The NVIDIA driver's version: from the kernel module's file, else from ``nvidia-smi`` (given ``timeout_s``:
    a wedged driver can hang it); None when neither exists. A failing ``nvidia-smi`` (e.g. a driver/library
    version mismatch) is reported as what it printed: that is the diagnosis."""
    try:
        with open(DRIVER_VERSION_FILE) as f:
            first = f.readline()
        # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  ...": the first dotted number
        found = re.search(r"\b\d+\.\d+(?:\.\d+)?\b", first)
        return found.group(0) if found else first.strip() or None
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        proc = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown (nvidia-smi: {type(exc).__name__})"
    out = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    first = out[0].strip() if out else ""
    return first if proc.returncode == 0 and first else f"unknown (nvidia-smi: {first or f'exit {proc.returncode}'})"
