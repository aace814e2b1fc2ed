"""The dataset registry: metadata (input shape, augmentation) plus a lazy loader per dataset.

Importing this module imports neither torch nor torchvision: configs validate dataset names through it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rcnas.infra.registry import Registry
from rcnas.space.arch import InputShape

if TYPE_CHECKING:
    from rcnas.config import DatasetConfig
    from rcnas.data.tensors import DataSplits, TensorData

DATA_ENV = "RCNAS_DATA"


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of rcnas needs to know about a dataset before loading it."""

    name: str
    shape: InputShape
    crop_padding: int
    """random-crop padding of the training augmentation (pixels)"""
    flip: bool
    """horizontal flips are label-preserving (not for digits)"""
    load: Callable[[Path, bool], tuple[TensorData, TensorData]]
    """(data root, download) -> (training pool, test split); imports torch lazily"""


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def augmentation(cfg: DatasetConfig) -> dict[str, int | bool]:
    """The training augmentation a dataset config asks for, as :func:`rcnas.train.adversarial_train` keywords."""
    info = DATASETS.get(cfg.name)
    return {"crop_padding": info.crop_padding if cfg.augment else 0, "flip": info.flip and cfg.augment}


def data_root(override: str | Path | None = None) -> Path:
    """The data root: ``override`` (a CLI flag), else ``$RCNAS_DATA``, else ``./data``."""
    return Path(override or os.environ.get(DATA_ENV) or "data")


def _lazy(fn_name: str) -> Callable[[Path, bool], tuple[TensorData, TensorData]]:
    def load(root: Path, download: bool) -> tuple[TensorData, TensorData]:
        from rcnas.data import sources

        return getattr(sources, fn_name)(root, download)

    return load


# Registration order is the observation's dataset one-hot order (envs.observation): append new datasets at the end.
DATASETS.add("cifar10", DatasetInfo("cifar10", InputShape(3, 32, 10), crop_padding=4, flip=True,
                                    load=_lazy("load_cifar10")))
DATASETS.add("cifar100", DatasetInfo("cifar100", InputShape(3, 32, 100), crop_padding=4, flip=True,
                                     load=_lazy("load_cifar100")))
DATASETS.add("digits", DatasetInfo("digits", InputShape(1, 8, 10), crop_padding=1, flip=False,
                                   load=_lazy("load_digits")))
DATASETS.add("tiny-imagenet", DatasetInfo("tiny-imagenet", InputShape(3, 64, 200), crop_padding=8, flip=True,
                                          load=_lazy("load_tiny_imagenet")))


def load_splits(cfg: DatasetConfig, root: str | Path | None = None) -> DataSplits:
    """Load a dataset and carve its validation split (deterministic in ``cfg.split_seed``).

    Raises:
        rcnas.infra.errors.DataNotFoundError: the files are missing (one line: which dataset, where, how to get it).
    """
    from rcnas.data.tensors import DataSplits, split_train_val

    pool, test = DATASETS.get(cfg.name).load(data_root(root), cfg.download)
    train, val = split_train_val(pool, cfg.val_fraction, cfg.split_seed)
    return DataSplits(train=train, val=val, test=test)
