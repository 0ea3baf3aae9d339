"""Shared fixtures: tiny datasets written into tmp_path, and a minimal config."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest
import yaml
from PIL import Image


def write_pair(root: Path, name: str, rng: np.random.Generator, size: int = 32) -> None:
    """One RGB image with a bright disc and its 0/255 mask."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
    r = rng.integers(size // 8, size // 4)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    image = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
    image[disc] = (200, 120, 90)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    Image.fromarray(disc.astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")


@pytest.fixture
def binary_folder(tmp_path: Path) -> Path:
    """A flat images/ + masks/ folder of 12 tiny 0/255 binary pairs."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(12):
        write_pair(root, f"img_{i:03d}", rng)
    return root


def minimal_config(root: Path, **sections: Any) -> Dict[str, Any]:
    """A valid raw config dict for a binary folder dataset; sections override."""
    raw: Dict[str, Any] = {
        "experiment": "unit",
        "data": {"name": "folder", "root": str(root), "num_classes": 2, "mask_mapping": "binary",
                 "num_workers": 0},
        "transforms": {"train": [{"name": "hflip"}, {"name": "normalize"}], "val": [{"name": "normalize"}]},
        "model": {"name": "unet", "in_channels": 3, "out_channels": 1, "base_channels": 4, "depth": 2},
        "loss": [{"name": "bce", "weight": 1.0}, {"name": "dice", "weight": 0.5}],
        "train": {"epochs": 2, "batch_size": 4, "monitor": "dice_foreground", "progress": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    """A config file for 24 tiny binary pairs, writing under tmp_path."""
    root = tmp_path / "data"
    rng = np.random.default_rng(1)
    for i in range(24):
        write_pair(root, f"case_{i:02d}", rng, size=32)
    raw = minimal_config(root, train={"epochs": 2, "batch_size": 4, "val_batch_size": 2, "monitor": "dice_foreground",
                                      "checkpoint_dir": str(tmp_path / "checkpoint"), "progress": False},
                         test={"output_dir": str(tmp_path / "results")},
                         optimizer={"lr": 0.01}, scheduler={"name": "none"})
    raw["model"].update(base_channels=8, depth=2)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path
