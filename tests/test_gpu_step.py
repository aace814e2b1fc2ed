"""The device-side training step (``bench/gpu_step_check.py``): on a CPU here, and on CUDA where there is one (the
only place a draw made on the wrong device shows)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import run_script

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_the_gpu_step_check_passes(device):
    res = run_script("bench/gpu_step_check.py", device, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "sandwich: trained on" in res.stdout and res.stdout.count("resumed on") == 2
