"""The training step on a CUDA GPU, checked: data resident on the device, every draw from a generator there
(shuffles, crops, flips, PGD starts, TRADES noise, sandwich sub-networks), a checkpoint that resumes with the
generator's state. On a CPU the same code runs in every test; only a GPU shows a draw made on the wrong device.

    python bench/gpu_step_check.py [cuda|cpu]   # default: cuda where there is one (gpu_check.sh runs it first)

Random digits-shaped data, so that it needs torch, numpy, pydantic and pyyaml only (what gpu_check.sh installs).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rcnas.config import TrainConfig  # noqa: E402 - after the path: run as a script from anywhere
from rcnas.data.tensors import DataSplits, TensorData  # noqa: E402
from rcnas.models.builder import build_model  # noqa: E402
from rcnas.models.teachers import get_teacher  # noqa: E402
from rcnas.space.arch import InputShape  # noqa: E402
from rcnas.train import LOSSES, LoopOptions, adversarial_train  # noqa: E402
from rcnas.train.sandwich import sandwich_objective  # noqa: E402
from rcnas.train.trainer import TrainingLoop  # noqa: E402

SHAPE = InputShape(1, 8, 10)


def recipe(loss: str, **kw: object) -> TrainConfig:
    return TrainConfig.model_validate({"loss": loss, "attack": {"name": "pgd", "epsilon": "1/10", "steps": 2,
                                                                "step_size": "1/20"}, "epochs": 1, "batch_size": 64,
                                       "schedule": "cosine", "val_examples": 100, **kw})


def splits() -> DataSplits:
    g = torch.Generator().manual_seed(0)

    def part(n: int) -> TensorData:
        return TensorData(torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8),
                          torch.randint(0, 10, (n,), generator=g))

    return DataSplits(part(320), part(100), part(50))


def check_training_resumes(loss: str, device: torch.device, folder: Path) -> None:
    """One epoch with crops and flips, then a second continued from its checkpoint, drawing where the model is."""
    torch.manual_seed(0)
    data = splits()
    model = build_model(get_teacher("tiny-444").arch, SHAPE).to(device)
    opts = LoopOptions(num_classes=10, crop_padding=1, flip=True, checkpoint=folder / f"{loss}.pt")
    res = adversarial_train(model, data, recipe(loss), opts)
    assert not res.diverged and len(res.history) == 1, res
    saved = torch.load(opts.checkpoint, weights_only=True)
    assert saved["generator_device"] == device.type, saved["generator_device"]
    loop = TrainingLoop(model, data, recipe(loss, epochs=2), opts)
    assert loop.g.device.type == device.type and loop.train.x.device.type == device.type
    assert torch.equal(loop.g.get_state(), saved["generator"].cpu()) and loop.state.step == saved["step"]
    assert len(loop.run().history) == 2


def check_sandwich(device: torch.device) -> None:
    teacher = get_teacher("tiny-444")
    supernet = build_model(teacher.arch, SHAPE).to(device)
    objective = sandwich_objective(supernet, teacher, LOSSES.get("pgd_at"))
    assert not adversarial_train(supernet, splits(), recipe("pgd_at"),
                                 LoopOptions(num_classes=10, objective=objective)).diverged


def main(device: str) -> int:
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as folder:
        for loss in LOSSES.names():
            check_training_resumes(loss, dev, Path(folder))
            print(f"{loss}: trained, checkpointed and resumed on {dev}", flush=True)
    check_sandwich(dev)
    print(f"sandwich: trained on {dev}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "cuda" if torch.cuda.is_available() else "cpu"))
