"""Stable content keys, deterministic seeds, and the code version stamp."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any


def content_key(obj: Any) -> str:
    """16 hex chars of sha256 over canonical JSON: equal content, equal key, in every process."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def state_sha256(state: Mapping[str, Any]) -> str:
    """The sha256 (hex) of a state dict of tensors: names, dtypes, shapes and values, in name order, wherever they
    live (CPU or GPU) and however a file holding them was pickled. The weights a result was measured with and the
    weights a file holds hash equal exactly when every tensor is the same."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous().reshape(-1)
        h.update(json.dumps([key, str(t.dtype), list(state[key].shape)]).encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def derive_seed(*parts: Any) -> int:
    """A deterministic 31-bit seed per (task, sub-network, repeat): the same candidate always gets the same
    initialisation, batches and attack noise, so rewards differ because sub-networks do, not because seeds do."""
    return int(content_key(list(parts)), 16) % (2**31 - 1)


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version and, in a git checkout, the commit (with ``+dirty`` for local changes)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("rcnas")
    except PackageNotFoundError:
        v = "unknown"
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return v
    return f"{v}+{commit}{'.dirty' if dirty else ''}" if commit else v


def cpu_model() -> str:
    """The CPU's model name: floating-point kernels, and so the last digits of a CPU result, differ between models."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


LIBRARIES = ("torch", "torchvision", "ray", "pyautoattack", "gymnasium", "numpy")


def environment(device: str | None = None) -> dict[str, object]:
    """What an output was made with: the code version (commit, dirty flag), the Python and library versions (read
    from the installed metadata: no library is imported), the machine and, when given, the device."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    libs: dict[str, str] = {}
    for name in LIBRARIES:
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            libs[name] = "not installed"
    out: dict[str, object] = {"code_version": code_version(), "python": platform.python_version(), **libs,
                              "node": platform.node(), "cpu": cpu_model()}
    if device is not None:
        out["device"] = device
    return out
