"""What the Tiny-ImageNet decode cache saves: loading a folder in the real layout by decoding its JPEGs (what every
worker process paid before) against reading the cached uint8 arrays (what every load after the first pays now).

    python bench/tinyimagenet_decode.py [--classes 200] [--train-per-class 25] [--val-per-class 5]

Writes a synthetic folder of that size (64x64 JPEGs, rcnas.data.synthetic) in a temporary directory, then times
the first load (decode + cache write) and a second load (cache), in one run; prints seconds and the ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rcnas.infra.cli import run_main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--train-per-class", type=int, default=25)
    p.add_argument("--val-per-class", type=int, default=5)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rcnas-decode-"))
    os.environ["RCNAS_CACHE"] = str(tmp / "cache")

    from rcnas.config import DatasetConfig
    from rcnas.data.registry import load_splits
    from rcnas.data.synthetic import write_tiny_imagenet

    t0 = time.perf_counter()
    write_tiny_imagenet(tmp / "data", args.classes, args.train_per_class, args.val_per_class)
    n = args.classes * (args.train_per_class + args.val_per_class)
    print(f"{n} JPEGs written in {time.perf_counter() - t0:.1f} s")
    cfg = DatasetConfig(name="tiny-imagenet", val_fraction=0.1)
    t0 = time.perf_counter()
    load_splits(cfg, tmp / "data")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_splits(cfg, tmp / "data")
    second = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in (tmp / "cache" / "decoded").glob("*.npz")) / 2**20
    print(f"first load (decode {n} JPEGs + write the cache): {first:.2f} s")
    print(f"later loads (cached arrays, {size:.0f} MiB):        {second:.2f} s   ({first / second:.1f}x faster)")
    print(f"per 1,000 images: decode {1000 * first / n:.2f} s, cache {1000 * second / n:.3f} s; the real "
          f"110,000-image folder, extrapolated: decode {110 * first / (n / 1000):.0f} s once, then "
          f"{110 * second / (n / 1000):.1f} s per process")


if __name__ == "__main__":
    run_main(main)
