"""Benchmark data: ISIC 2018 Task 1 training pairs in the official layout, at any size.

``write_isic_train(root, count, size)`` writes ``count`` RGB JPEGs (quality
92, as published) into ``ISIC2018_Task1-2_Training_Input/`` and their 0/255
grey PNG masks into ``ISIC2018_Task1_Training_GroundTruth/``, named as the
``isic2018`` dataset expects (its own folder names are used here). Images are
a smooth skin-coloured gradient with grain and a darker elliptical lesion:
what matters for a benchmark is that they cost what a real dermoscopy JPEG
costs to decode, so they hold noise in every 8x8 block.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image

from datasets.isic import MASK_SUFFIX, SPLIT_FOLDERS

#: Grain tile (rows, columns): odd, so its repeats do not line up with JPEG blocks.
GRAIN_TILE = (499, 503)


def write_isic_train(root: Path, count: int, size: Tuple[int, int], seed: int = 0) -> None:
    """Write ``count`` (image, mask) pairs of ``size`` (width, height) into ``root``'s training folders."""
    input_dir, truth_dir = (Path(root) / name for name in SPLIT_FOLDERS["train"])
    input_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    grain = rng.normal(0.0, 6.0, (*GRAIN_TILE, 3)).astype(np.float32)
    grain = np.tile(grain, (-(-height // GRAIN_TILE[0]), -(-width // GRAIN_TILE[1]), 1))[:height, :width]
    for index in range(count):
        lesion = _lesion(width, height, rng)
        image = _skin(width, height, rng) + grain
        image[lesion] *= 0.55
        stem = f"ISIC_{index:07d}"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(input_dir / f"{stem}.jpg", quality=92)
        Image.fromarray(lesion.astype(np.uint8) * 255).save(truth_dir / f"{stem}{MASK_SUFFIX}.png")


def _skin(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A float32 (H, W, 3) skin tone varying smoothly from one corner to the other."""
    start, end = rng.uniform([200, 150, 130], [235, 190, 170], (2, 3)).astype(np.float32)
    ramp = (np.linspace(0, 1, height, dtype=np.float32)[:, None] + np.linspace(0, 1, width, dtype=np.float32)) / 2
    return start + ramp[..., None] * (end - start)


def _lesion(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean (H, W) axis-aligned ellipse near the centre, a quarter to a half of each side across."""
    centre_y, centre_x = rng.uniform(0.4, 0.6, 2) * (height, width)
    radius_y, radius_x = rng.uniform(0.12, 0.25, 2) * (height, width)
    rows = ((np.arange(height, dtype=np.float32) - centre_y) / radius_y) ** 2
    columns = ((np.arange(width, dtype=np.float32) - centre_x) / radius_x) ** 2
    return rows[:, None] + columns[None, :] <= 1.0
