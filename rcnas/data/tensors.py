"""In-memory datasets as tensors, deterministic splits, and batch iteration with on-the-fly augmentation.

Every dataset here fits in memory (Tiny-ImageNet's 100k 64x64 images are 1.2 GB as uint8), and tensor batches
with vectorised augmentation keep the data path off the critical path of small CPU models, where a
``DataLoader`` with per-image PIL transforms would dominate an adversarial training step.

On a GPU the training loop moves its splits to the device once (:meth:`TensorData.to`) and draws with a generator
there: shuffling, crops and flips then never go through the host, and a batch is one gather on the device. Every
draw uses its generator's device, so on a CPU the numbers are the ones they always were.
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

    def to(self, device: torch.device | str) -> TensorData:
        """This data on ``device`` (itself when it is there already); uint8 images stay uint8, 4x smaller than
        floats (CIFAR's 48,000 training images are 147 MB)."""
        if self.x.device == torch.device(device) and self.y.device == torch.device(device):
            return self
        return TensorData(self.x.to(device), self.y.to(device))


RESIDENT_SHARE = 0.25
"""the most of a GPU's memory left to this process that its training data may take there"""


def resident(data: TensorData, device: torch.device) -> TensorData:
    """``data`` on ``device`` when it takes at most :data:`RESIDENT_SHARE` of the memory this process may still use
    there, else where it is: a worker sharing a GPU (its memory capped to its share) keeps its room for the network,
    and its batches are then copied as they always were."""
    if device.type != "cuda":
        return data.to(device)
    free, total = torch.cuda.mem_get_info(device)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # newer torch only: else no cap is known
    cap = total * (fraction(device) if fraction else 1.0) - torch.cuda.memory_reserved(device)
    fits = data.x.nbytes + data.y.nbytes <= RESIDENT_SHARE * min(free, cap)
    return data.to(device) if fits else data


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


def draw_device(generator: torch.Generator | None) -> torch.device:
    """Where a draw from ``generator`` is made: its own device (the CPU for the global generator)."""
    return generator.device if generator is not None else torch.device("cpu")


def augment(x: torch.Tensor, padding: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding (+ horizontal flip) for a float batch, vectorised over the batch; drawn on
    ``g``'s device."""
    n, c, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        di = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=g.device)
        dj = torch.randint(0, 2 * padding + 1, (n,), generator=g, device=g.device)
        rows = (di[:, None] + torch.arange(h, device=g.device)[None]).to(x.device)
        cols = (dj[:, None] + torch.arange(w, device=g.device)[None]).to(x.device)
        x = padded[
            torch.arange(n, device=x.device)[:, None, None, None],
            torch.arange(c, device=x.device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    if flip:
        mask = (torch.rand(n, generator=g, device=g.device) < 0.5).to(x.device)
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
    even: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float batches in [0, 1] on ``device``; shuffled and augmented when asked (training). ``even``: batches of
    one size where ``len(data)`` allows it (:func:`even_batch_size`)."""
    n = len(data)
    if even:
        batch_size = even_batch_size(n, batch_size)
    order = torch.randperm(n, generator=generator, device=draw_device(generator)) if shuffle else torch.arange(n)
    order = order.to(data.x.device)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        x = to_float(data.x[idx]).to(device, non_blocking=True)
        if generator is not None and (padding or flip):
            x = augment(x, padding, flip, generator)
        yield x, data.y[idx].to(device, non_blocking=True)


def even_batch_size(n: int, batch_size: int) -> int:
    """The smallest size that splits ``n`` examples into as many batches as ``batch_size`` does: one shape whenever
    their number divides ``n`` (1,000 validation images in 500 and 500 instead of 512 and 488). On a GPU, cuDNN
    autotunes its kernels for every new input shape (``cudnn.benchmark``), and each candidate's evaluation paid for
    two."""
    return -(-n // -(-n // batch_size)) if n else batch_size
