"""Datasets: deterministic splits, augmentation, and the real CIFAR / Tiny-ImageNet readers without a network."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from rcnas.config import DatasetConfig
from rcnas.data.registry import DATASETS, load_splits
from rcnas.data.tensors import TensorData, augment, batches, even_batch_size
from rcnas.infra.errors import DataNotFoundError


def test_digits_splits_are_disjoint_deterministic_and_stratified():
    a = load_splits(DatasetConfig(name="digits", val_fraction=0.25, split_seed=0))
    b = load_splits(DatasetConfig(name="digits", val_fraction=0.25, split_seed=0))
    c = load_splits(DatasetConfig(name="digits", val_fraction=0.25, split_seed=1))
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)
    assert torch.equal(a.test.x, c.test.x), "the test split never depends on the split seed"
    rows = lambda d: {tuple(r) for r in d.x.flatten(1).numpy().round(4).tolist()}  # noqa: E731
    assert not rows(a.train) & rows(a.test) - rows(a.val)  # no test image is a training image (some digits repeat)
    counts = torch.bincount(a.val.y, minlength=10)
    assert counts.min() >= 30
    assert a.train.x.min() >= 0 and a.train.x.max() <= 1


def test_augment_keeps_shape_and_range_and_is_seeded():
    x = torch.rand(16, 3, 32, 32)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = augment(x, 4, True, g1), augment(x, 4, True, g2)
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and not torch.equal(a, x)
    same = augment(x, 0, False, g1)
    assert torch.equal(same, x)


def test_batches_cover_the_data_once(digits):
    seen = sum(len(y) for _, y in batches(digits.val, 100))
    assert seen == len(digits.val)


@pytest.mark.parametrize(("n", "size", "sizes"), [(1000, 512, [500, 500]), (1000, 256, [250] * 4), (359, 512, [359]),
                                                  (7, 3, [3, 3, 1]), (64, 64, [64])])
def test_even_batches_split_as_many_times_with_one_shape_where_possible(n, size, sizes):
    data = TensorData(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n))
    got = [len(y) for _, y in batches(data, size, even=True)]
    assert got == sizes and len(got) == -(-n // size) and even_batch_size(n, size) == sizes[0]
    assert torch.equal(torch.cat([y for _, y in batches(data, size, even=True)]), torch.arange(n))


def test_data_moved_to_its_own_device_is_itself_and_shuffles_draw_on_the_generators_device(digits):
    assert digits.val.to("cpu") is digits.val
    g = torch.Generator(device="cpu").manual_seed(3)
    first = torch.cat([y for _, y in batches(digits.val, 50, shuffle=True, generator=g)])
    again = torch.cat([y for _, y in batches(digits.val, 50, shuffle=True, generator=torch.Generator().manual_seed(3))])
    # a generator on the data's device gives the stream a CPU generator always gave: stored CPU results stay valid
    assert torch.equal(first, again) and sorted(first.tolist()) == sorted(digits.val.y.tolist())


def test_missing_cifar_is_one_clear_line(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        DATASETS.get("cifar10").load(tmp_path, False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "cifar10" in msg and str(tmp_path) in msg and "download" in msg and "RCNAS_DATA" in msg


def test_cifar_download_without_network_is_one_clear_line(tmp_path, monkeypatch):
    import torchvision

    def refuse(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", refuse)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", refuse)
    with pytest.raises(DataNotFoundError, match=r"cifar100: download into .* failed .*no network"):
        DATASETS.get("cifar100").load(tmp_path, True)


def _fake_cifar10(root, n_train=20, n_test=10):
    """The real on-disk format (pickled dicts with str keys, as Python 2 pickles decode with latin1)."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        data = {"data": rng.integers(0, 256, (n_train, 3072), dtype=np.uint8),
                "labels": list(range(10)) * (n_train // 10)}
        pickle.dump(data, open(folder / f"data_batch_{i}", "wb"))
    pickle.dump({"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8), "labels": list(range(10))},
                open(folder / "test_batch", "wb"))
    pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, open(folder / "batches.meta", "wb"))


def test_cifar10_reader_on_files_in_the_real_format(tmp_path, monkeypatch):
    _fake_cifar10(tmp_path)
    monkeypatch.setenv("RCNAS_DATA", str(tmp_path))
    splits = load_splits(DatasetConfig(name="cifar10", val_fraction=0.2))
    assert splits.train.x.dtype == torch.uint8 and splits.train.x.shape[1:] == (3, 32, 32)
    assert len(splits.train) + len(splits.val) == 100 and len(splits.test) == 10
    x, _ = next(batches(splits.train, 8))
    assert x.dtype == torch.float32 and x.max() <= 1


def test_tiny_imagenet_reader_on_the_standard_layout(tmp_path):
    from PIL import Image

    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    (base).mkdir()
    (base / "wnids.txt").write_text("\n".join(wnids))
    for w in wnids:
        (base / "train" / w / "images").mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), (i * 40, 0, 0)).save(base / "train" / w / "images" / f"{w}_{i}.JPEG")
    (base / "val" / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate(wnids):
        Image.new("RGB", (64, 64), (0, i * 90, 0)).save(base / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines))
    pool, test = DATASETS.get("tiny-imagenet").load(tmp_path, False)
    assert pool.x.shape == (6, 3, 64, 64) and test.y.tolist() == [0, 1]


def test_missing_tiny_imagenet_says_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"tiny-imagenet: .*wnids.txt not found.*unzip"):
        DATASETS.get("tiny-imagenet").load(tmp_path, False)
