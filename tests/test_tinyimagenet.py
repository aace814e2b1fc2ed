"""Tiny-ImageNet end to end on a small folder in the real layout: the loader, its decode-once cache, a search with
train.py and evaluate.py on the chosen sub-network."""

from __future__ import annotations

import json
import os

import pytest

from rcnas.data.synthetic import write_tiny_imagenet
from tests.conftest import run_script


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


def test_search_and_evaluation_run_on_tiny_imagenet(tiny_root, tmp_path):
    env = {"RCNAS_CACHE": str(tmp_path / "cache")}
    run = tmp_path / "run"
    proc = run_script("train.py", "--experiment", "configs/experiments/tinyimagenet-smoke.yaml", "--data-root",
                      str(tiny_root), "--out", str(run), env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["target"] == "smoke-ti-target" and summary["macs"] <= summary["budget"]
    assert "TinyImageNet" in summary["yaml"]
    final = json.loads((run / "final" / "results.json").read_text())
    assert {r["dataset"] for r in final} == {"tiny-imagenet"} and all(r["n_examples"] == 16 for r in final)
    proc = run_script("evaluate.py", summary["yaml"], "--task",
                      "configs/tasks/smoke-tinyimagenet/smoke-ti-target.yaml", "--data-root", str(tiny_root),
                      "--epochs", "0.3", "--n-examples", "16", "--attacks", "clean,pgd20", "--no-ray",
                      "--out", str(tmp_path / "eval"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert result["split"] == "test" and result["n_examples"] == 16 and 0 <= result["clean"] <= 1
