"""In-memory datasets as tensors, deterministic splits, and batch iteration with on-the-fly augmentation.

Every dataset here fits in memory (Tiny-ImageNet's 100k 64x64 images are 1.2 GB as uint8), and tensor batches
with vectorised augmentation keep the data path off the critical path of small CPU models, where a
``DataLoader`` with per-image PIL transforms would dominate an adversarial training step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorData:
    """Images (uint8 in [0, 255] or float in [0, 1]), NCHW, and integer labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: torch.Tensor) -> TensorData:
        return TensorData(self.x[idx], self.y[idx])

    def head(self, n: int) -> TensorData:
        return TensorData(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class DataSplits:
    """Train, validation (carved from the training data) and test splits."""

    train: TensorData
    val: TensorData
    test: TensorData


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def split_train_val(pool: TensorData, val_fraction: float, seed: int) -> tuple[TensorData, TensorData]:
    """Carve a validation split from the training pool: deterministic in ``seed``, stratified by class so that a
    small validation split (digits) keeps every class."""
    g = torch.Generator().manual_seed(seed)
    val_idx, train_idx = [], []
    for c in torch.unique(pool.y).tolist():
        idx = torch.nonzero(pool.y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = max(1, round(len(idx) * val_fraction))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    # shuffle across classes so that any prefix (the fixed validation subset) is class-balanced
    if not sum(len(t) for t in train_idx):
        from rcnas.infra.errors import ConfigError

        raise ConfigError(f"dataset.val_fraction {val_fraction:g} leaves no training examples of the {len(pool)}; "
                          "lower it (0.1 is usual)")
    val = torch.cat(val_idx)[torch.randperm(sum(len(v) for v in val_idx), generator=g)]
    train = torch.cat(train_idx)[torch.randperm(sum(len(t) for t in train_idx), generator=g)]
    return pool.subset(train), pool.subset(val)


def augment(x: torch.Tensor, padding: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (+ horizontal flip) for a float batch, vectorised over the batch."""
    n, c, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        di = torch.randint(0, 2 * padding + 1, (n,), generator=g)
        dj = torch.randint(0, 2 * padding + 1, (n,), generator=g)
        rows = (di[:, None] + torch.arange(h)[None]).to(x.device)
        cols = (dj[:, None] + torch.arange(w)[None]).to(x.device)
        x = padded[
            torch.arange(n, device=x.device)[:, None, None, None],
            torch.arange(c, device=x.device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    if flip:
        mask = (torch.rand(n, generator=g) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def batches(
    data: TensorData,
    batch_size: int,
    device: torch.device | str = "cpu",
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    padding: int = 0,
    flip: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float batches in [0, 1] on ``device``; shuffled and augmented when asked (training)."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        x = to_float(data.x[idx]).to(device, non_blocking=True)
        if generator is not None and (padding or flip):
            x = augment(x, padding, flip, generator)
        yield x, data.y[idx].to(device, non_blocking=True)
