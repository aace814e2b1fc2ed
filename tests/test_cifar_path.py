"""The CIFAR path end to end on a small folder in CIFAR-10's real python format: both folder layouts, a batch file
that would run code is refused, and train.py (data root handed to every worker) then evaluate.py run on it."""

from __future__ import annotations

import pickle

import pytest
import torch

from rcnas.config import DatasetConfig
from rcnas.data.registry import load_splits
from rcnas.data.synthetic import write_cifar10
from rcnas.infra.errors import DataNotFoundError
from tests.conftest import search_then_evaluate


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root)
    return root


def test_both_folder_layouts_load_the_same_images(cifar_root, tmp_path):
    cfg = DatasetConfig(name="cifar10", val_fraction=0.25)
    flat = load_splits(cfg, cifar_root)  # <root>/cifar-10-batches-py, as torchvision and RobustBench keep it
    assert flat.train.x.shape[1:] == (3, 32, 32) and flat.train.x.dtype == torch.uint8 and len(flat.test) == 80
    nested = tmp_path / "cifar10"
    nested.mkdir()
    (nested / "cifar-10-batches-py").symlink_to(cifar_root / "cifar-10-batches-py")
    same = load_splits(cfg, tmp_path)  # <root>/cifar10/cifar-10-batches-py
    assert torch.equal(same.train.x, flat.train.x) and torch.equal(same.test.y, flat.test.y)


def test_a_batch_file_that_would_run_code_is_refused(cifar_root, tmp_path):
    import shutil

    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar_root / "cifar-10-batches-py", folder)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
    with pytest.raises(DataNotFoundError, match=r"data_batch_3: not a readable CIFAR batch.*not allowed"):
        load_splits(DatasetConfig(name="cifar10"), tmp_path)
    assert not marker.exists()
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-py/ not found"):
        load_splits(DatasetConfig(name="cifar10"), tmp_path / "empty")


def test_search_and_evaluation_run_on_cifar10(cifar_root, tmp_path):
    # the data root only on the command line (RCNAS_DATA points elsewhere): the workers must be handed it
    env = {"RCNAS_CACHE": str(tmp_path / "cache"), "RCNAS_DATA": str(tmp_path / "nothing-here")}
    summary, final, result = search_then_evaluate("configs/experiments/cifar10-smoke.yaml",
                                                  "configs/tasks/smoke-cifar10/smoke-c10-target.yaml", cifar_root,
                                                  tmp_path, env)
    assert summary["target"] == "smoke-c10-target" and "CIFAR10" in summary["yaml"]
    assert {r["dataset"] for r in final} == {"cifar10"} and all(r["n_examples"] == 16 for r in final)
    assert result["dataset"] == "cifar10" and result["split"] == "test" and result["n_examples"] == 16
