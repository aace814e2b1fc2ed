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

    ``root`` (else ``$RCNAS_DATA``) may be a URI (``s3://``, ``gs://``, ``file://``): it is copied once into this
    node's cache first (:func:`rcnas.data.remote_root.local_data_root`), here, so that every caller (the driver's
    up-front check, each evaluation worker on its own node, evaluate.py) gets URIs alike. With a URI the dataset is
    never downloaded from its origin (``cfg.download`` is ignored): the bucket is where the data comes from, and every
    node downloading at once is what a bucket avoids.

    Raises:
        rcnas.infra.errors.DataNotFoundError: the files are missing (one line: which dataset, where, how to get it),
            or a URI cannot be read from this node.
        rcnas.infra.errors.ConfigError: a URI with credentials in it, or one pyarrow cannot open.
    """
    from rcnas.data.remote_root import local_data_root
    from rcnas.data.tensors import DataSplits, split_train_val
    from rcnas.infra.errors import DataNotFoundError
    from rcnas.infra.uris import is_uri, redact

    given = root or os.environ.get(DATA_ENV)
    if not is_uri(given):
        pool, test = DATASETS.get(cfg.name).load(data_root(root), cfg.download)
    else:
        local = local_data_root(str(given))
        try:
            pool, test = DATASETS.get(cfg.name).load(Path(str(local)), False)
        except DataNotFoundError as exc:
            # the loader's what-and-where only: its advice (download it, set --data-root) is for a local folder
            raise DataNotFoundError(f"--data-root {redact(str(given))} (copied to {os.path.abspath(str(local))} on "
                                    f"this node): {str(exc).split('; ')[0]}; put the dataset's extracted files in "
                                    "the bucket (with a URI nothing is downloaded from the dataset's origin)") from None
    train, val = split_train_val(pool, cfg.val_fraction, cfg.split_seed)
    return DataSplits(train=train, val=val, test=test)
