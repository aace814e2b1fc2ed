"""Tiny-ImageNet end to end on a small folder in the real layout: the loader, its decode-once cache, a search with
train.py and evaluate.py on the chosen sub-network."""

from __future__ import annotations

import os

import pytest

from rcnas.data.synthetic import write_tiny_imagenet
from tests.conftest import search_then_evaluate


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_tiny_imagenet(root)
    return root


def test_the_real_layout_loads_and_is_decoded_once(tiny_root, tmp_path, monkeypatch):
    from rcnas.config import DatasetConfig
    from rcnas.data.registry import load_splits

    monkeypatch.setenv("RCNAS_CACHE", str(tmp_path / "cache"))
    cfg = DatasetConfig(name="tiny-imagenet", val_fraction=0.25)
    first = load_splits(cfg, tiny_root)
    assert first.train.x.shape[1:] == (3, 64, 64) and len(first.test) == 4 * 6
    assert sorted(set(first.test.y.tolist())) == [0, 1, 2, 3] and len(first.train) + len(first.val) == 4 * 16
    cached = list((tmp_path / "cache" / "decoded").glob("tiny-imagenet-*.npz"))
    assert len(cached) == 1
    again = load_splits(cfg, tiny_root)  # from the arrays, not the JPEGs
    assert (again.train.x == first.train.x).all() and (again.test.y == first.test.y).all()
    image = next((tiny_root / "tiny-imagenet-200" / "val" / "images").glob("*.JPEG"))
    os.utime(image, ns=(1, 1))  # a changed file: decoded again under a new key
    load_splits(cfg, tiny_root)
    assert len(list((tmp_path / "cache" / "decoded").glob("tiny-imagenet-*.npz"))) == 2


@pytest.mark.slow  # 80-90 s; the CIFAR path's end-to-end run stays in the default suite, and the loader test above
def test_search_and_evaluation_run_on_tiny_imagenet(tiny_root, tmp_path):
    summary, final, result = search_then_evaluate("configs/experiments/tinyimagenet-smoke.yaml",
                                                  "configs/tasks/smoke-tinyimagenet/smoke-ti-target.yaml", tiny_root,
                                                  tmp_path, {"RCNAS_CACHE": str(tmp_path / "cache")})
    assert summary["target"] == "smoke-ti-target" and "TinyImageNet" in summary["yaml"]
    assert {r["dataset"] for r in final} == {"tiny-imagenet"} and all(r["n_examples"] == 16 for r in final)
    assert result["split"] == "test" and result["n_examples"] == 16 and 0 <= result["clean"] <= 1
