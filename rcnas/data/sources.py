"""Readers for each dataset's files, returning (training pool, test split) as tensors.

CIFAR from its python-format batches (read with a restricted unpickler: arrays and lists only); Tiny-ImageNet from its
standard folder layout; digits from scikit-learn's bundled copy, the offline default. A missing dataset is one
:class:`DataNotFoundError` line saying which dataset, where we looked, and how to get it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from rcnas.data.tensors import TensorData
from rcnas.infra.errors import DataNotFoundError
from rcnas.infra.files import cache_root, write_atomic_with
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


class _ArrayUnpickler(pickle.Unpickler):
    """Reads CIFAR's python-format batches (pickled dicts of numpy arrays and lists) and nothing else: any other
    class in the file is refused, so a planted batch file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch file")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            # latin1, as torchvision reads them: the originals are Python 2 pickles of numpy arrays
            raw = _ArrayUnpickler(f, encoding="latin1").load()
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}
        x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch[label_key], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError, AttributeError) as exc:
        raise DataNotFoundError(f"{path}: not a readable CIFAR batch ({type(exc).__name__}: {exc}); replace the "
                                f"folder with the extracted original; {HOW_TO_ROOT}") from None
    if len(x) != len(y):
        raise DataNotFoundError(f"{path}: {len(x)} images but {len(y)} labels; the file is damaged")
    return x, y


def _cifar(name: str, folder: str, train_files: list[str], test_files: list[str], label_key: str, root: Path,
           download: bool) -> tuple[TensorData, TensorData]:
    """CIFAR in its python format, found at ``<root>/<folder>`` (torchvision's and RobustBench's layout) or at
    ``<root>/<name>/<folder>``. Read with a restricted unpickler instead of torchvision's dataset class, which
    would unpickle whatever it finds once its md5 check passes, and could not read any file but the originals."""
    where = next((d for d in (root / folder, root / name / folder) if d.is_dir()), None)
    if where is None and download:
        import torchvision

        try:  # torchvision downloads and checks the archive's md5
            getattr(torchvision.datasets, name.upper())(str(root / name), train=True, download=True)
        except (OSError, RuntimeError) as exc:
            raise DataNotFoundError(
                f"{name}: download into {root / name} failed ({exc}); with no network, copy the extracted "
                f"{folder}/ to {root} instead; {HOW_TO_ROOT}") from None
        where = root / name / folder
    if where is None:
        raise DataNotFoundError(
            f"{name}: {folder}/ not found under {root} (looked in {root / folder} and {root / name / folder}); "
            f"download it with `dataset.download: true` on a machine with a network, or copy the extracted "
            f"{folder}/ there; {HOW_TO_ROOT}")

    def read(files: list[str]) -> TensorData:
        parts = [_read_batch(where / f, label_key) for f in files]
        x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return TensorData(torch.from_numpy(x).contiguous(), torch.from_numpy(y))

    return read(train_files), read(test_files)


def load_cifar10(root: Path, download: bool) -> tuple[TensorData, TensorData]:
    return _cifar("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                  "labels", root, download)


def load_cifar100(root: Path, download: bool) -> tuple[TensorData, TensorData]:
    return _cifar("cifar100", "cifar-100-python", ["train"], ["test"], "fine_labels", root, download)


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
            write_atomic_with(cache, lambda handle: np.savez(handle, **arrays))
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
