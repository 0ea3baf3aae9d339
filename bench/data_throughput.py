"""How fast ISIC-sized samples load: full decode vs JPEG draft decode vs a resized cache.

Writes ``--images`` dermoscopy-like JPEGs of ``--size`` (default 12 of
4000x3000) with their 0/255 PNG masks in the official ISIC 2018 layout to a
temp dir (``bench/fixtures.py``), then reads every sample through the
``isic2018`` dataset (``dataset[i]``, i.e. ``load_sample`` + transforms) with
the same transforms for every mode, a resize to 256 x 256:

* full:        decode_size null, no cache (``load_sample`` is ``read_sample``)
* draft:       decode_size 512 (JPEG decoded at 1/2, 1/4 or 1/8 scale)
* cache build: cache_dir set, cache_size 512, first pass (decodes and writes the cache)
* cache warm:  later passes, reading the cached PNGs

One process, one torch thread: figures are per loader worker.

    python bench/data_throughput.py [--images 12] [--size 4000 3000] [--passes 2]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import datasets  # noqa: E402,F401 - registers isic2018
from bench.fixtures import write_isic_train  # noqa: E402
from utils.registry import DATASETS  # noqa: E402
from utils.transforms import build_transforms  # noqa: E402

TRANSFORMS = [{"name": "resize", "size": [256, 256]}]


def one_pass(dataset) -> float:
    """Seconds to fetch every sample once."""
    start = time.perf_counter()
    for index in range(len(dataset)):
        image, mask = dataset[index]
        assert image.shape[-2:] == mask.shape == (256, 256)
    return time.perf_counter() - start


def best_of(passes: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(passes))


def folder_bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=12, help="number of images")
    p.add_argument("--size", type=int, nargs=2, default=[4000, 3000], metavar=("W", "H"), help="image size")
    p.add_argument("--passes", type=int, default=2, help="timed passes per mode (the fastest is reported)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ISIC2018"
        start = time.perf_counter()
        write_isic_train(root, args.images, size=tuple(args.size))
        input_dir = root / "ISIC2018_Task1-2_Training_Input"
        jpeg_mb = folder_bytes(input_dir, "*.jpg") / args.images / 1e6
        print(f"{args.images} images {args.size[0]}x{args.size[1]} (JPEG {jpeg_mb:.1f} MB each) written in "
              f"{time.perf_counter() - start:.0f} s; transforms {TRANSFORMS}; torch threads 1\n")

        def dataset(**options):
            return DATASETS.build("isic2018", root=str(root), split="train", num_classes=2,
                                  transforms=build_transforms(TRANSFORMS), **options)

        cache_dir = Path(tmp) / "cache_512"
        rows: List[tuple] = [
            ("full decode (read_sample)", best_of(args.passes, lambda: one_pass(dataset()))),
            ("draft decode, decode_size 512", best_of(args.passes, lambda: one_pass(dataset(decode_size=512)))),
        ]
        cached = dataset(cache_dir=str(cache_dir), cache_size=512)
        rows.append(("cache build (first pass)", one_pass(cached)))
        rows.append(("cache warm, cache_size 512", best_of(args.passes, lambda: one_pass(cached))))
        cache_mb = folder_bytes(cache_dir, "*.png") / args.images / 1e6

    full = rows[0][1]
    print(f"{'mode':32s} {'s/pass':>8s} {'img/s':>8s} {'speedup':>8s}")
    for name, seconds in rows:
        print(f"{name:32s} {seconds:8.2f} {args.images / seconds:8.2f} {full / seconds:7.1f}x")
    print(f"\ncache: {cache_mb:.2f} MB per sample on disk (image + mask PNG)")


if __name__ == "__main__":
    main()
