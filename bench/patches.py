"""Can the patch loader keep up with the model? Samples/s of each, in one run.

Writes ``--images`` large synthetic images (default 3 of 2048 x 2048, discs on
texture, 0/255 masks), then times:

* loader: ``data.sampling: patch`` batches through train.py's own loader
  (``utils.builders``: PatchDataset + the seeded sampler, the config's train
  transforms, ``--workers`` loader processes), cases already read;
* model:  forward + loss + backward + step of the config's model on batches of
  the same patch size.

The loader should be at least 2x faster than the model, so that it never
makes the model wait. Figures are per process on this machine.

    python bench/patches.py [--images 3] [--size 2048] [--patch 256] [--batch 8] [--threads 2] [--workers 0]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.builders import build_criterion, build_datasets, build_loaders, build_model, build_optimizer  # noqa: E402
from utils.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_images(root: Path, count: int, size: int, seed: int = 0) -> None:
    """``count`` training images of ``size`` px (and one small validation image) with 0/255 disc masks."""
    rng = np.random.default_rng(seed)
    for split, n, side in (("train", count, size), ("val", 1, 64)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            yy, xx = np.mgrid[:side, :side]
            mask = np.zeros((side, side), bool)
            for _ in range(max(1, side // 256)):
                cy, cx, r = rng.integers(0, side, 2).tolist() + [int(rng.integers(side // 64 + 2, side // 16 + 4))]
                mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            image = rng.integers(0, 90, (side, side, 3), dtype=np.uint8)
            image[mask] = (200, 120, 90)
            Image.fromarray(image).save(root / split / "images" / f"{split}_{i}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / split / "masks" / f"{split}_{i}.png")


def loader_speed(loader, batches: int) -> float:
    """Samples/s of ``batches`` batches from ``loader`` (after one warm-up batch that reads the cases)."""
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    seen = sum(next(iterator)[0].shape[0] for _ in range(batches))
    return seen / (time.perf_counter() - start)


def model_speed(cfg, train_ds, batch: torch.Tensor, masks: torch.Tensor, steps: int) -> float:
    """Samples/s of forward + loss + backward + step on ``batch``."""
    model = build_model(cfg).train()
    criterion, optimizer = build_criterion(cfg, train_ds, Path(tempfile.gettempdir())), build_optimizer(cfg, model)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(batch), masks)[0].backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch.shape[0] / (time.perf_counter() - start)


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=10, help="timed loader batches")
    p.add_argument("--steps", type=int, default=3, help="timed model steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            write_images(Path(tmp), args.images, args.size)
            cfg = load_config(args.config, [f"data.root={tmp}", "data.sampling=patch",
                                            f"data.patch_size=[{args.patch}, {args.patch}]",
                                            f"data.num_workers={args.workers}", f"train.batch_size={args.batch}",
                                            f"train.iterations_per_epoch={args.batches + 1}", "train.amp=off",
                                            "transforms.train=[{name: hflip}, {name: vflip}, {name: normalize}]"])
            train_ds, val_ds = build_datasets(cfg)
            loader, _ = build_loaders(cfg, train_ds, val_ds, torch.device("cpu"))
            loader.sampler.start_round(1, 1)
            loading = loader_speed(loader, args.batches)
            images, masks = next(iter(loader))
            training = model_speed(cfg, train_ds, images, masks, args.steps)
    finally:
        torch.set_num_threads(threads)
    print(f"{args.images} images of {args.size} px, {args.patch} px patches, batch {args.batch}, "
          f"{args.threads} threads, {args.workers} loader workers, model {cfg.model.name}")
    print(f"patch loader: {loading:9.1f} samples/s")
    print(f"model train:  {training:9.1f} samples/s")
    print(f"ratio loader / model: {loading / training:.2f}  (target >= 2)")
    return {"loader": loading, "model": training, "ratio": loading / training}


if __name__ == "__main__":
    main()
