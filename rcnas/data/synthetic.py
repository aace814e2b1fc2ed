"""Small datasets written in the real on-disk formats, with a learnable class signal, so that the real loaders
run end to end where the real data cannot be downloaded (tests, benchmarks, trying the CIFAR/Tiny-ImageNet paths
offline). Nothing here is used to report a result."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def class_images(n: int, label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` RGB uint8 images of class ``label``: noise plus one bright quadrant and a tint that depend on the
    class, so a small network can learn them and an attack can still break them."""
    x = rng.integers(0, 96, size=(n, size, size, 3)).astype(np.int32)
    half = size // 2
    r, c = divmod(label % 4, 2)
    x[:, r * half:(r + 1) * half, c * half:(c + 1) * half, :] += 120
    x[..., label % 3] += 30 * (1 + label // 4)
    return np.clip(x, 0, 255).astype(np.uint8)


def write_tiny_imagenet(root: Path, classes: int = 4, train_per_class: int = 16, val_per_class: int = 6,
                        seed: int = 0) -> Path:
    """``root/tiny-imagenet-200`` in the official layout: ``wnids.txt``, ``train/<wnid>/images/<wnid>_<i>.JPEG``
    with ``<wnid>_boxes.txt``, ``val/images/val_<i>.JPEG`` with ``val/val_annotations.txt``; 64x64 JPEGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = root / "tiny-imagenet-200"
    wnids = [f"n{9000000 + i:08d}" for i in range(classes)]
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    annotations = []
    for label, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True, exist_ok=True)
        boxes = []
        for i, img in enumerate(class_images(train_per_class, label, 64, rng)):
            Image.fromarray(img).save(folder / f"{wnid}_{i}.JPEG", quality=95)
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t63\t63")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
        for img in class_images(val_per_class, label, 64, rng):
            name = f"val_{len(annotations)}.JPEG"
            Image.fromarray(img).save(base / "val" / "images" / name, quality=95)
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return base


def write_cifar10(root: Path, train_per_class: int = 20, test_per_class: int = 8, classes: int = 10,
                  seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` in CIFAR-10's python format (torchvision's and RobustBench's layout):
    ``data_batch_1..5`` and ``test_batch``, pickled dicts with ``data`` (N x 3072 uint8: the R, G, B planes) and
    ``labels``, plus ``batches.meta``. Only the md5 sums differ from the real files'."""
    import pickle

    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)

    def batch(per_class: int) -> tuple[np.ndarray, list[int]]:
        images = np.concatenate([class_images(per_class, c, 32, rng) for c in range(classes)])
        labels = [c for c in range(classes) for _ in range(per_class)]
        order = rng.permutation(len(labels))
        return images[order].transpose(0, 3, 1, 2).reshape(len(labels), -1), [labels[i] for i in order]

    train_x, train_y = batch(train_per_class)
    for i, part in enumerate(np.array_split(np.arange(len(train_y)), 5), start=1):
        payload = {b"batch_label": f"training batch {i} of 5".encode(), b"data": train_x[part],
                   b"labels": [train_y[j] for j in part]}
        (base / f"data_batch_{i}").write_bytes(pickle.dumps(payload, protocol=2))
    test_x, test_y = batch(test_per_class)
    (base / "test_batch").write_bytes(pickle.dumps({b"batch_label": b"testing batch 1 of 1", b"data": test_x,
                                                    b"labels": test_y}, protocol=2))
    names = [f"class{c}".encode() for c in range(10)]
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_cases_per_batch": 10000},
                                                     protocol=2))
    return base
