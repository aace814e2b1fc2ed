"""rcnas (outside rcnas.distributed) and envs import without Ray; the config layer without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def imports(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["rcnas", "rcnas.evaluation.final", "rcnas.evaluation.command", "rcnas.train",
                                    "rcnas.attacks", "rcnas.space.space", "rcnas.proxy.local",
                                    "rcnas.search.searchers", "envs"])
def test_no_ray_outside_distributed(module):
    assert "ray" not in imports(module)


def test_config_and_space_do_not_need_torch():
    mods = imports("rcnas.config, rcnas.space.space, rcnas.data.registry, rcnas.models.teachers")
    assert "torch" not in mods
