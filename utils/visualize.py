"""Colour palettes, overlays with contours and image grids for people to look at."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.utils import draw_segmentation_masks

from utils.constants import IGNORE_INDEX

# A distinct colour per class: background black, then well-separated hues.
_BASE_PALETTE = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
    (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60),
    (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200),
    (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
]
IGNORE_COLOR = (255, 255, 255)
# Binary prediction contours: colours far from red/brown tissue (skin lesions) and from
# the white ground-truth contour; the first one not too close to the fill is used.
CONTOUR_COLORS = ((0, 255, 255), (255, 255, 0))   # cyan, then yellow


def default_palette(num_classes: int) -> np.ndarray:
    """(256, 3) uint8 palette: distinct colours for the classes, white for ignore."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    rng = np.random.default_rng(0)
    for k in range(min(num_classes, 255)):
        palette[k] = _BASE_PALETTE[k] if k < len(_BASE_PALETTE) else rng.integers(40, 256, 3)
    palette[IGNORE_INDEX] = IGNORE_COLOR
    return palette


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 colours."""
    return palette[np.clip(mask, 0, 255).astype(np.uint8)]


def to_display(image: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """A float (C, H, W) image of any range -> (H, W, 3) uint8 for viewing.

    Values already in [0, 1] are scaled by 255; anything else (normalised or
    raw 16-bit intensities) is min-max stretched per image.
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = np.moveaxis(image, 0, -1)
    else:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = image[..., :3]
    lo, hi = float(image.min()), float(image.max())
    if lo < 0.0 or hi > 1.0:
        image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbourhood holds another label: (H, W) bool."""
    edge = np.zeros(mask.shape, dtype=bool)
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    return edge


def contour_color(fill: Sequence[int]) -> Tuple[int, int, int]:
    """A contour colour that stands out from red tissue and from ``fill``."""
    fill_arr = np.asarray(fill, dtype=np.float32)
    for colour in CONTOUR_COLORS:
        if np.linalg.norm(np.asarray(colour, dtype=np.float32) - fill_arr) > 150:
            return colour
    return CONTOUR_COLORS[-1]


def overlay(image: np.ndarray, pred: np.ndarray, palette: np.ndarray, alpha: float = 0.45,
            target: Optional[np.ndarray] = None, binary: bool = False,
            color: Optional[Sequence[int]] = None) -> np.ndarray:
    """Blend the predicted classes into ``image`` and draw contours.

    ``image`` is (H, W, 3) uint8; ``pred`` and ``target`` are (H, W) class
    indices. Background (class 0) is left unblended. Prediction contours are
    drawn in the class colour; ground-truth contours, when given, in white.

    ``binary``: the foreground is blended in ``color`` (an RGB triple; default
    the class-1 palette colour) and its contour is drawn in cyan or yellow, so
    it stays visible on red objects such as skin lesions.
    """
    fill = tuple(int(v) for v in (palette[1] if color is None else color))
    if binary:
        classes, colours = np.array([1]), [fill]
        masks = (pred > 0)[None]
    else:
        classes = np.unique(pred[pred > 0])
        colours = [tuple(int(v) for v in palette[min(int(k), 255)]) for k in classes]
        masks = pred[None] == classes[:, None, None]
    out = _fill(image, masks, colours, alpha)
    edge = boundary(pred)
    # Contours are ours: torchvision draws filled masks only.
    out[edge] = contour_color(fill) if binary else colorize(pred[edge], palette)
    if target is not None:
        out[boundary(target)] = 255
    return out


def _fill(image: np.ndarray, masks: np.ndarray, colours: List[Tuple[int, int, int]], alpha: float) -> np.ndarray:
    """``draw_segmentation_masks`` of (K, H, W) bool ``masks`` on an (H, W, 3) uint8 image, rounded to uint8.

    Drawn on a [0, 1] float copy: its uint8 path truncates ``x * (1 - a) + x * a``, which moves
    unmasked pixels down one level (22 of the 256 values at alpha 0.35).
    """
    if not masks.any():
        return image.copy()
    drawn = draw_segmentation_masks(torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0),
                                    torch.from_numpy(masks), alpha=alpha, colors=colours)
    return drawn.mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def mask_image(pred: np.ndarray, num_classes: int, palette: np.ndarray) -> Image.Image:
    """The PNG to write for a prediction: 0/255 grayscale (binary) or palette (multiclass)."""
    if num_classes == 2:
        return Image.fromarray((pred > 0).astype(np.uint8) * 255, mode="L")
    img = Image.fromarray(pred.astype(np.uint8), mode="P")
    img.putpalette(palette.reshape(-1).tolist())
    return img


def make_grid(tiles: Sequence[np.ndarray], columns: int = 4, pad: int = 4,
              tile_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Tile (H, W, 3) uint8 images on a white sheet (``torchvision.utils.make_grid``).

    Each tile is scaled (aspect kept) to fit a ``tile_size`` (height, width)
    box, by default the size of the first tile, and letterboxed in white to
    the box's size (ours: torchvision's grid needs tiles of one size).
    """
    if not tiles:
        raise ValueError("make_grid needs at least one image")
    box_h, box_w = tile_size or tiles[0].shape[:2]
    boxes: List[np.ndarray] = []
    for tile in tiles:
        scale = min(box_h / tile.shape[0], box_w / tile.shape[1])
        size = (max(1, round(tile.shape[1] * scale)), max(1, round(tile.shape[0] * scale)))
        img = Image.fromarray(tile)
        tile = np.asarray(img if img.size == size else img.resize(size, Image.Resampling.BILINEAR))
        spare = ((0, box_h - tile.shape[0]), (0, box_w - tile.shape[1]), (0, 0))
        boxes.append(np.pad(tile, spare, constant_values=255) if any(spare[0] + spare[1]) else tile)
    if len(boxes) == 1:  # torchvision returns a lone tile as it is, without the border
        return np.pad(boxes[0], ((pad, pad), (pad, pad), (0, 0)), constant_values=255)
    batch = torch.from_numpy(np.stack(boxes)).permute(0, 3, 1, 2)
    sheet = torchvision.utils.make_grid(batch, nrow=columns, padding=pad, pad_value=255)
    return sheet.permute(1, 2, 0).contiguous().numpy()


def save_png(array_or_image: Union[np.ndarray, Image.Image], path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    img.save(path)
    return path
