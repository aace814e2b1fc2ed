"""A worker given a GPU that torch cannot see stops with one line (never computes on the CPU while it holds the GPU),
and a worker given a share of a GPU has its GPU memory capped to that share."""

from __future__ import annotations

import json

import pytest
import torch

from rcnas.distributed.remote import WorkerStart, cap_gpu_memory, memory_share, place_worker
from rcnas.infra.devices import gpu_not_visible_message, pick_device
from rcnas.infra.errors import GpuNotVisible, RcnasError
from tests.conftest import run_script

no_visible_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no GPU")


def test_the_message_names_the_ids_the_driver_the_cuda_build_and_the_fix_in_one_line():
    line = gpu_not_visible_message("535.104.05", "13.0", [0, 3], "0,3", "CUDA initialization: driver too old\n(x)")
    assert line.startswith(GpuNotVisible.PREFIX) and "\n" not in line
    for part in ("GPU ids ['0', '3']", "CUDA_VISIBLE_DEVICES='0,3'", "NVIDIA driver 535.104.05",
                 "built for CUDA 13.0", "driver supports CUDA 13.0", "Docker image", 'README "On a Ray cluster"',
                 "torch: CUDA initialization: driver too old (x)"):
        assert part in line, part
    bare = gpu_not_visible_message(None, None, ["1"], None)
    assert "no NVIDIA driver found" in bare and "CPU-only build" in bare and "CUDA_VISIBLE_DEVICES=unset" in bare
    assert "torch:" not in bare


@no_visible_gpu
def test_an_assigned_gpu_torch_cannot_see_is_an_error_never_the_cpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(GpuNotVisible) as info:
        pick_device(want_gpu=True, gpu_ids=[0])
    line = str(info.value)
    assert isinstance(info.value, RcnasError) and info.value.exit_code == 2
    assert "\n" not in line and "GPU ids ['0']" in line and "CUDA_VISIBLE_DEVICES='0'" in line
    assert (f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build") in line
    assert GpuNotVisible.find(f"Traceback ...\nrcnas.infra.errors.GpuNotVisible: {line}\n\nmore").args == (line,)
    assert pick_device(False) == torch.device("cpu") and pick_device(None) == torch.device("cpu")
    assert pick_device() == torch.device("cpu")
    with pytest.raises(GpuNotVisible):
        place_worker([0], {"GPU": 0.5, "CPU": 1.0})
    assert place_worker([], {"CPU": 1.0}) == WorkerStart(torch.device("cpu"), [], [], None)


def test_memory_share_is_the_fraction_of_a_gpu_ray_assigned():
    assert memory_share({"GPU": 0.5, "CPU": 1}) == 0.5
    assert memory_share({"GPU": 0.25}) == 0.25
    assert memory_share({"GPU": 1}) is None and memory_share({"GPU": 2.0}) is None
    assert memory_share({}) is None and memory_share({"CPU": 1, "GPU": 0}) is None


def test_a_fractional_gpu_worker_caps_its_memory_to_its_share(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append((f, d)))
    started = place_worker([2], {"GPU": 0.5, "CPU": 1.0})
    assert started.device == torch.device("cuda") and started.memory_share == 0.5 and started.gpu_ids == [2]
    assert calls == [(0.5, 0)]
    assert "GPU memory capped to 50% of GPU ['2'] (cuda:0)" in capsys.readouterr().err
    assert place_worker([2], {"GPU": 1.0, "CPU": 1.0}).memory_share is None
    assert cap_gpu_memory(torch.device("cuda", 1), 0.25, [1]) == 0.25
    assert cap_gpu_memory(torch.device("cpu"), 0.5, []) is None
    assert calls == [(0.5, 0), (0.25, 1)], "a whole GPU and the CPU are never capped"


PROBE = r'''
import asyncio, json, os, sys

import ray

marker = sys.argv[1]
ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)
try:
    @ray.remote(num_gpus=1, num_cpus=1, max_restarts=0)
    class Probe:
        def __init__(self):
            from rcnas.distributed.remote import start_worker

            self.started = start_worker()
            with open(marker, "a") as f:
                f.write("started\n")

        def where(self):
            with open(marker, "a") as f:
                f.write("computed\n")
            return str(self.started.device)

    def report(exc):
        return {"mro": [c.__name__ for c in type(exc).__mro__], "text": str(exc),
                "init_failed": getattr(exc, "actor_init_failed", None)}

    async def awaited(probe):  # as the pool's service actor does: awaits the ObjectRef
        try:
            return {"result": await probe.where.remote()}
        except Exception as exc:
            return report(exc)

    probe = Probe.remote()
    out = {}
    try:
        out["get"] = {"result": ray.get(probe.where.remote(), timeout=600)}
    except Exception as exc:
        out["get"] = report(exc)
    out["await"] = asyncio.run(awaited(probe))
    print("RESULT " + json.dumps(out))
finally:
    ray.shutdown()
'''


@no_visible_gpu
@pytest.mark.ray
def test_a_ray_actor_given_a_gpu_torch_cannot_see_dies_at_start_with_the_one_line(tmp_path):
    """A real Ray (in its own process: the tests' shared Ray has no GPU) declaring a GPU this machine does not have:
    the actor's creation fails with GpuNotVisible's line, and it never computes anything."""
    marker = tmp_path / "marker"
    proc = run_script("-c", PROBE, str(marker), env={"HOME": str(tmp_path)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    out = json.loads(line.removeprefix("RESULT "))
    for how in ("get", "await"):  # what pool.py's ``await worker.where.remote()`` sees, and a plain ray.get
        got = out[how]
        assert "result" not in got, f"the actor computed on {got.get('result')}"
        assert got["mro"][:3] == ["ActorDiedError", "RayActorError", "RayError"] and got["init_failed"] is True
        found = GpuNotVisible.find(got["text"])
        assert found is not None and "torch cannot see it" in str(found) and "GPU ids ['0']" in str(found)
        assert "CUDA_VISIBLE_DEVICES='0'" in str(found)
        assert (f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build") in str(found)
    assert not marker.exists(), f"the actor went on after start_worker: {marker.read_text()}"
