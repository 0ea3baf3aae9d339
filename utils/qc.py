"""test.py's quality control: the ``--qc N`` sheet and the predicted pixels per class.

* :class:`QCGrid` gathers, for the first N images, one row of tiles: the
  image, the ground truth and the prediction in the class colours, then the
  probability map of each class as a heat map (:func:`heat_map`; for a binary
  sigmoid model the one map is the foreground probability). :meth:`QCGrid.save`
  writes them under a strip of column titles as ``qc.png``.
* :func:`count_pixels` counts the predicted pixels per class, and
  :func:`warn_never_predicted` logs a WARNING for each class present in the
  ground truth but never predicted (an all-background model shows at a glance).

Sheet geometry (:func:`tile_box`, :func:`sheet_size`): every tile fits a box
:data:`TILE_HEIGHT` px high (aspect kept, at most :data:`TILE_MAX_WIDTH`
wide), tiles sit :data:`PAD` px apart on a white sheet, below a
:data:`TITLE_HEIGHT` px strip of titles.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from utils.visualize import colorize, make_grid, save_png, to_display

TILE_HEIGHT = 128
TILE_MAX_WIDTH = 256
PAD = 4
TITLE_HEIGHT = 16
NO_TRUTH_GREY = 160  # the ground-truth tile of an image without a mask

# A heat map written by hand: dark blue-black -> purple -> red -> orange -> pale yellow (inferno-like anchors).
_HEAT_STOPS = np.linspace(0.0, 1.0, 5)
_HEAT_COLOURS = np.array([(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)], np.float64)


def heat_map(prob: np.ndarray) -> np.ndarray:
    """(H, W) probabilities in [0, 1] -> (H, W, 3) uint8 colours, 0 dark, 1 pale yellow."""
    p = np.clip(np.nan_to_num(np.asarray(prob, dtype=np.float64)), 0.0, 1.0)
    rgb = [np.interp(p, _HEAT_STOPS, _HEAT_COLOURS[:, c]) for c in range(3)]
    return (np.stack(rgb, axis=-1) + 0.5).astype(np.uint8)


def tile_box(height: int, width: int) -> Tuple[int, int]:
    """(h, w) of the box an image of ``height`` x ``width`` fills on the sheet (aspect kept)."""
    scale = min(TILE_HEIGHT / height, TILE_MAX_WIDTH / width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def sheet_size(rows: int, columns: int, box: Tuple[int, int]) -> Tuple[int, int]:
    """(height, width) of ``qc.png`` for ``rows`` x ``columns`` tiles of size ``box``."""
    return TITLE_HEIGHT + rows * (box[0] + PAD) + PAD, columns * (box[1] + PAD) + PAD


def column_titles(class_names: Sequence[str], binary_sigmoid: bool) -> List[str]:
    """"image", "truth", "prediction", then one "p(<class>)" per probability map."""
    maps = [class_names[-1]] if binary_sigmoid else list(class_names)
    return ["image", "truth", "prediction"] + [f"p({name})" for name in maps]


def _resized(tile: np.ndarray, box: Tuple[int, int], nearest: bool) -> np.ndarray:
    """``tile`` (H, W, 3) uint8 at the box size."""
    img = Image.fromarray(tile)
    size = (box[1], box[0])
    if img.size == size:
        return tile
    return np.asarray(img.resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR))


class QCGrid:
    """The rows of ``qc.png`` for the first ``count`` images (see the module docstring).

    Args:
        count: how many images get a row (0: none).
        palette: (256, 3) class colours.
        titles: the column titles (:func:`column_titles`).
    """

    def __init__(self, count: int, palette: np.ndarray, titles: Sequence[str]) -> None:
        if count < 0:
            raise ValueError(f"QCGrid: count must be 0 or more, got {count}")
        self.count, self.palette, self.titles = count, palette, list(titles)
        self.box: Optional[Tuple[int, int]] = None
        self.tiles: List[np.ndarray] = []
        self.rows = 0

    def wants_more(self) -> bool:
        """True while fewer than ``count`` rows have been added."""
        return self.rows < self.count

    def add(self, image: torch.Tensor, target: Optional[np.ndarray], pred: np.ndarray,
            probs: torch.Tensor) -> None:
        """One row: ``image`` (C, H, W) raw, ``target`` and ``pred`` (H, W) class indices, ``probs`` (K, H, W)."""
        height, width = pred.shape
        if self.box is None:
            self.box = tile_box(height, width)
        box = self.box
        truth = (colorize(target, self.palette) if target is not None
                 else np.full((height, width, 3), NO_TRUTH_GREY, np.uint8))
        self.tiles += [_resized(to_display(image), box, nearest=False), _resized(truth, box, nearest=True),
                       _resized(colorize(pred, self.palette), box, nearest=True)]
        small = F.interpolate(probs[None].float().cpu(), size=box, mode="bilinear", align_corners=False)[0]
        self.tiles += [heat_map(p) for p in small.numpy()]
        self.rows += 1

    def save(self, path: Path) -> Optional[Path]:
        """Write the sheet (titles above the grid) to ``path``; None when no row was added."""
        if not self.tiles or self.box is None:
            return None
        columns = len(self.tiles) // self.rows
        grid = make_grid(self.tiles, columns=columns, pad=PAD, tile_size=self.box)
        strip = Image.new("RGB", (grid.shape[1], TITLE_HEIGHT), (255, 255, 255))
        draw = ImageDraw.Draw(strip)
        for c, title in enumerate(self.titles[:columns]):
            while title and draw.textlength(title) > self.box[1]:
                title = title[:-1]
            draw.text((PAD + c * (self.box[1] + PAD), 2), title, fill=(0, 0, 0))
        return save_png(np.concatenate([np.asarray(strip), grid], axis=0), path)


def count_pixels(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes,) int64: how many pixels of ``pred`` (class indices) each class holds."""
    return np.bincount(np.asarray(pred).reshape(-1), minlength=num_classes)[:num_classes].astype(np.int64)


def warn_never_predicted(predicted: Sequence[int], truth: Sequence[int], class_names: Sequence[str],
                         log: logging.Logger) -> List[str]:
    """Log a WARNING naming the classes with ground-truth pixels (``truth``) but no predicted pixel; their names."""
    missing = [(name, int(t)) for name, p, t in zip(class_names, predicted, truth) if int(t) > 0 and int(p) == 0]
    if missing:
        listed = ", ".join(f"{name!r} ({t} ground-truth pixels)" for name, t in missing)
        log.warning("never predicted although present in the ground truth: %s; check the model (an "
                    "all-background prediction?) and the predicted_pixels_per_class of summary.json", listed)
    return [name for name, _ in missing]
