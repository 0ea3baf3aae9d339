"""A small ISIC 2018 Task 1 tree in the official layout and file formats, for tests and benchmarks.

``write_isic_tree(root)`` writes what unpacking the six official Task 1 zips
into ``root`` gives::

    ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg ... ATTRIBUTION.txt LICENSE.txt
    ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png ... ATTRIBUTION.txt LICENSE.txt
    ISIC2018_Task1-2_Validation_Input/       ISIC2018_Task1_Validation_GroundTruth/
    ISIC2018_Task1-2_Test_Input/             ISIC2018_Task1_Test_GroundTruth/

Images are 8-bit RGB JPEGs of skin-like texture (a smooth tint plus grain)
with one darker elliptical lesion; masks are 8-bit grey PNGs holding 0 and
255, the lesion ellipse. Image ids run on across the splits, as the official
ids do. The folder names are spelled here independently of
``datasets/isic.py``, so a typo there fails the tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

#: (input folder, ground-truth folder) of each split, as the official zips unpack.
FOLDERS = {
    "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
}

#: Skin tints (RGB) an image background is drawn around.
SKIN_TINTS = np.array([[226, 178, 160], [214, 160, 140], [232, 190, 178]], dtype=np.float32)

#: Lesion tints (RGB): brown to dark brown.
LESION_TINTS = np.array([[120, 72, 52], [92, 54, 40], [140, 92, 70]], dtype=np.float32)


def write_isic_tree(
    root: Path,
    n_train: int = 4,
    n_val: int = 2,
    n_test: int = 2,
    size: Tuple[int, int] = (64, 48),
    jpeg: bool = True,
    seed: int = 0,
    lesion_colour: Optional[Tuple[int, int, int]] = None,
    test_ground_truth: bool = True,
    quality: int = 92,
) -> Dict[str, List[str]]:
    """Write the official ISIC 2018 Task 1 layout under ``root``; returns the image ids per split.

    Args:
        root: the folder the zips are unpacked into (created).
        n_train, n_val, n_test: images per split; a split with 0 images gets no folders.
        size: (width, height) of every image and mask.
        jpeg: write ``.jpg`` images (as published); False writes lossless ``.png``.
        seed: random seed; the same arguments give the same files.
        lesion_colour: a flat RGB colour for the lesion (no grain), to check
            image/mask alignment by colour; None draws a textured brown lesion.
        test_ground_truth: also write ``ISIC2018_Task1_Test_GroundTruth``.
        quality: JPEG quality.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids: Dict[str, List[str]] = {}
    next_id = 0
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        input_dir, truth_dir = (root / name for name in FOLDERS[split])
        with_truth = split != "test" or test_ground_truth
        if count:
            _write_notices(input_dir)
            if with_truth:
                _write_notices(truth_dir)
        ids[split] = []
        for _ in range(count):
            image_id = f"ISIC_{next_id:07d}"
            next_id += 1
            image, mask = _sample(size, rng, lesion_colour)
            suffix = ".jpg" if jpeg else ".png"
            options = {"quality": quality} if jpeg else {}
            Image.fromarray(image).save(input_dir / f"{image_id}{suffix}", **options)
            if with_truth:
                Image.fromarray(mask).save(truth_dir / f"{image_id}_segmentation.png")
            ids[split].append(image_id)
    return ids


def _write_notices(folder: Path) -> None:
    """The two text files every official folder carries beside the images."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ATTRIBUTION.txt").write_text("ISIC Archive contributors; see https://challenge.isic-archive.com\n")
    (folder / "LICENSE.txt").write_text("CC-BY-NC 4.0 (fixture written for tests)\n")


def _sample(size: Tuple[int, int], rng: np.random.Generator,
            lesion_colour: Optional[Tuple[int, int, int]]) -> Tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 skin image with a lesion and its (H, W) 0/255 uint8 mask."""
    width, height = size
    lesion = _ellipse(width, height, rng)
    image = _smooth_field(width, height, SKIN_TINTS[rng.integers(len(SKIN_TINTS))], 18.0, rng)
    if lesion_colour is None:
        dark = _smooth_field(width, height, LESION_TINTS[rng.integers(len(LESION_TINTS))], 25.0, rng)
        image[lesion] = dark[lesion]
        _add_grain(image, rng)
    else:
        _add_grain(image, rng)
        image[lesion] = lesion_colour
    return np.clip(image, 0, 255).astype(np.uint8), lesion.astype(np.uint8) * 255


def _add_grain(image: np.ndarray, rng: np.random.Generator) -> None:
    """Add float32 sensor-like noise (standard deviation 5 grey levels) to ``image`` in place.

    Large images repeat one 509x511 tile (odd sizes, so the repeats do not
    line up with JPEG's 8x8 blocks): as costly to encode and decode as fresh
    noise, and much quicker to draw.
    """
    height, width = image.shape[:2]
    tile = rng.standard_normal((min(height, 509), min(width, 511), image.shape[2]), dtype=np.float32) * 5
    for y in range(0, height, tile.shape[0]):
        for x in range(0, width, tile.shape[1]):
            block = image[y : y + tile.shape[0], x : x + tile.shape[1]]
            block += tile[: block.shape[0], : block.shape[1]]


def _ellipse(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean (H, W) rotated ellipse off the image centre, covering roughly 5-25% of the image."""
    cy, cx = rng.uniform(0.35, 0.6) * height, rng.uniform(0.3, 0.6) * width
    ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width
    angle = rng.uniform(0, np.pi)
    dy = np.arange(height, dtype=np.float32)[:, None] - np.float32(cy)
    dx = np.arange(width, dtype=np.float32)[None, :] - np.float32(cx)
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u = (dx * cos + dy * sin) / np.float32(rx)
    v = (dy * cos - dx * sin) / np.float32(ry)
    return u * u + v * v <= 1.0


def _smooth_field(width: int, height: int, tint: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """A float32 (H, W, 3) low-frequency colour field around ``tint`` (bilinear-upsampled 6x8 noise)."""
    coarse = np.clip(tint + rng.normal(0.0, spread, (6, 8, 3)), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.float32)
