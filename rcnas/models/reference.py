"""RobustBench's own architecture classes, the reference the checkpoint importers (:mod:`rcnas.models.imports`) are
checked against, and random weights for them: what ``tests/`` and ``bench/published_teacher.py`` build published
teachers from without a network.

RobustBench's modules are loaded from their files: its package ``__init__`` imports AutoAttack under the module
name of its git version (``autoattack``), which the PyPI release we pin (``pyautoattack``) does not provide.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import torch
from torch import nn


def robustbench_module(name: str) -> ModuleType:
    """``robustbench.model_zoo.architectures.<name>``, imported from its file (see the module docstring).

    Raises:
        ImportError: robustbench (a dev dependency) is not installed.
    """
    spec = importlib.util.find_spec("robustbench")
    if spec is None or not spec.origin:
        raise ImportError("robustbench is a dev dependency: pip install -e '.[dev]'")
    path = Path(spec.origin).parent / "model_zoo" / "architectures" / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"_robustbench_{name}", path)
    assert module_spec is not None and module_spec.loader is not None, path
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@torch.no_grad()
def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere and random BN statistics (a freshly initialised BN is the identity in eval mode and
    would hide a wrongly mapped one)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        elif isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model.eval()
