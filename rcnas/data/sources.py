"""Readers for each dataset's files, returning (training pool, test split) as tensors.

CIFAR comes through torchvision (which checks each batch file's md5); Tiny-ImageNet from its standard folder
layout; digits from scikit-learn's bundled copy, the offline default. A missing dataset is one
:class:`DataNotFoundError` line saying which dataset, where we looked, and how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from rcnas.data.tensors import TensorData
from rcnas.infra.errors import DataNotFoundError
from rcnas.infra.files import cache_root
from rcnas.infra.locks import file_lock
from rcnas.infra.provenance import content_key

HOW_TO_ROOT = "set the data root with --data-root or RCNAS_DATA"
DIGITS_TEST_SEED = 20240806  # fixed forever: the test split never depends on a run's seed


def load_digits(root: Path, download: bool) -> tuple[TensorData, TensorData]:
    """scikit-learn's 1,797 bundled 8x8 digits (values 0..16 scaled to [0, 1]); a fixed stratified 20% test split."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    g = torch.Generator().manual_seed(DIGITS_TEST_SEED)
    test_idx, pool_idx = [], []
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = round(len(idx) * 0.2)
        test_idx.append(idx[:n_test])
        pool_idx.append(idx[n_test:])
    return TensorData(x, y).subset(torch.cat(pool_idx)), TensorData(x, y).subset(torch.cat(test_idx))


def _cifar(cls_name: str, folder: str, root: Path, download: bool) -> tuple[TensorData, TensorData]:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    where = root / cls_name.lower()
    try:
        train = cls(str(where), train=True, download=download)
        test = cls(str(where), train=False, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DataNotFoundError(
            f"{cls_name.lower()}: {folder}/ not found or corrupted under {where} ({exc}); download it with "
            f"`dataset.download: true` on a machine with a network, or copy the extracted {folder}/ there; "
            f"{HOW_TO_ROOT}"
        ) from None
    except OSError as exc:  # URLError and socket errors: no network
        raise DataNotFoundError(
            f"{cls_name.lower()}: download into {where} failed ({exc}); this machine has no network: copy the "
            f"extracted {folder}/ there from elsewhere; {HOW_TO_ROOT}"
        ) from None

    def tensors(ds: object) -> TensorData:
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # type: ignore[attr-defined]
        return TensorData(x, torch.as_tensor(ds.targets, dtype=torch.long))  # type: ignore[attr-defined]

    return tensors(train), tensors(test)


def load_cifar10(root: Path, download: bool) -> tuple[TensorData, TensorData]:
    return _cifar("CIFAR10", "cifar-10-batches-py", root, download)


def load_cifar100(root: Path, download: bool) -> tuple[TensorData, TensorData]:
    return _cifar("CIFAR100", "cifar-100-python", root, download)


def load_tiny_imagenet(root: Path, download: bool) -> tuple[TensorData, TensorData]:
    """Tiny-ImageNet-200 from its standard layout: ``train/<wnid>/images/*.JPEG`` and ``val/images`` with
    ``val/val_annotations.txt``. The official test labels are unpublished, so its ``val`` is our test split and
    our validation split is carved from ``train``.

    Decoding 110,000 JPEGs takes minutes and every process that loads the data would pay it: the decoded images are
    cached once as uint8 arrays (``<cache>/decoded/tiny-imagenet-<key>.npz``, no pickles), keyed by the folder's
    listing (each file's path, size and modification time), so changed files are decoded again.
    """
    base = root / "tiny-imagenet-200"
    wnids_file = base / "wnids.txt"
    if not wnids_file.is_file():
        raise DataNotFoundError(
            f"tiny-imagenet: {wnids_file} not found; it is not downloadable here: unzip tiny-imagenet-200.zip "
            f"(from the CS231n site) into {root}; {HOW_TO_ROOT}"
        )
    wnids = wnids_file.read_text().split()
    label = {w: i for i, w in enumerate(wnids)}
    annotations = base / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataNotFoundError(f"tiny-imagenet: {annotations} not found; the unzipped folder looks incomplete")
    train = [(p, label[w]) for w in wnids for p in sorted((base / "train" / w / "images").glob("*.JPEG"))]
    val = [(base / "val" / "images" / parts[0], label[parts[1]])
           for parts in (line.split("\t") for line in annotations.read_text().splitlines()) if len(parts) >= 2]
    for name, items in (("train", train), ("val", val)):
        if not items:
            raise DataNotFoundError(f"tiny-imagenet: no {name} images found under {base}; the layout looks "
                                    "incomplete")
    listing = [(str(p.relative_to(base)), *_stat(p), y) for p, y in train + val]
    cache = cache_root() / "decoded" / f"tiny-imagenet-{content_key([wnids, listing])}.npz"
    with file_lock(cache.with_suffix(".lock")):  # one process decodes, the others wait and read its arrays
        if not cache.is_file():
            arrays = {"x_train": _decode([p for p, _ in train]), "y_train": np.array([y for _, y in train]),
                      "x_test": _decode([p for p, _ in val]), "y_test": np.array([y for _, y in val])}
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, cache)
        with np.load(cache, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}

    def tensors(x: np.ndarray, y: np.ndarray) -> TensorData:
        return TensorData(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long())

    return tensors(arrays["x_train"], arrays["y_train"]), tensors(arrays["x_test"], arrays["y_test"])


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        raise DataNotFoundError(f"tiny-imagenet: {path} is listed but missing; the folder looks incomplete") from None
    return st.st_size, st.st_mtime_ns


def _decode(paths: list[Path]) -> np.ndarray:
    """The images as one uint8 array (N, H, W, 3)."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in paths])
