"""The augmentation preview: a sheet of training samples, each image beside its mask overlay.

``python train.py --config X --preview-augmentations`` builds the training
dataset with the config's train transforms and writes this sheet, so a
person can see what the augmentations do and that masks stay aligned.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from utils.errors import ConfigError, DataError
from utils.visualize import make_grid, overlay, to_display


def preview_grid(dataset: Any, num: int, palette: np.ndarray, per_row: int = 4) -> np.ndarray:
    """A (H, W, 3) uint8 sheet of ``num`` samples of ``dataset``, each beside its mask overlay.

    ``dataset[i]`` must return ``(image, mask)`` after its transforms: a float
    (C, H, W) image and an (H, W) mask of class indices; ``palette`` is a
    (256, 3) uint8 colour table (ignored pixels white, as
    ``utils.visualize.default_palette`` gives). Samples are taken in a random
    order (torch's generator: seed it for a reproducible sheet), repeating when
    ``num`` exceeds the dataset; ``per_row`` pairs go on a row.
    """
    if num < 1:
        raise ConfigError(f"augmentation preview: the number of samples must be at least 1, got {num}")
    if len(dataset) == 0:
        raise DataError("augmentation preview: the dataset holds no samples")
    order = torch.randperm(len(dataset)).tolist()
    tiles = []
    for i in range(num):
        image, mask = dataset[order[i % len(order)]]
        shown = to_display(image)
        tiles += [shown, overlay(shown, mask.numpy(), palette)]
    return make_grid(tiles, columns=2 * min(num, per_row))
