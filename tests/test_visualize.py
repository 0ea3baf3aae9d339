"""Overlays: binary predictions stay visible on red objects; test.overlay_color sets the fill."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from torchvision.utils import draw_segmentation_masks

from tests.conftest import minimal_config
from utils.config import ConfigError, config_from_dict, load_config
from utils.visualize import boundary, default_palette, make_grid, overlay

RED = (200, 30, 30)          # a red/brown lesion-like background


def _red_scene(size: int = 64):
    """A uniformly red image and a binary prediction disc in its middle."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = RED
    yy, xx = np.mgrid[:size, :size]
    pred = (((yy - size // 2) ** 2 + (xx - size // 2) ** 2) <= (size // 4) ** 2).astype(np.int64)
    return image, pred


def _dist(a: np.ndarray, b) -> np.ndarray:
    return np.linalg.norm(a.astype(np.float32) - np.asarray(b, np.float32), axis=-1)


def test_binary_contour_contrasts_with_red_and_with_the_fill() -> None:
    image, pred = _red_scene()
    palette = default_palette(2)
    out = overlay(image, pred, palette, alpha=0.35, binary=True)
    edge = boundary(pred)
    interior = (pred > 0) & ~edge
    assert edge.any() and interior.any()
    contour = out[edge]
    # Every contour pixel has one contrasting colour, far from the red background ...
    assert (contour == contour[0]).all()
    assert tuple(contour[0]) in {(0, 255, 255), (255, 255, 0)}
    assert _dist(contour, RED).min() > 100
    # ... and far from the blended fill inside the disc.
    assert _dist(contour, out[interior].mean(axis=0)).min() > 100
    # The fill stays the palette's class colour blended into the image.
    expected = 0.65 * np.asarray(RED, np.float32) + 0.35 * palette[1].astype(np.float32)
    assert np.abs(out[interior].astype(np.float32) - expected).max() <= 1.0
    # Background away from the contour is untouched.
    assert (out[(pred == 0) & ~edge] == RED).all()


def test_ground_truth_contour_stays_white() -> None:
    image, pred = _red_scene()
    target = np.roll(pred, 5, axis=1)
    out = overlay(image, pred, default_palette(2), binary=True, target=target)
    assert (out[boundary(target)] == 255).all()


def test_overlay_color_moves_the_fill_toward_it() -> None:
    image, pred = _red_scene()
    palette = default_palette(2)
    interior = (pred > 0) & ~boundary(pred)
    default = overlay(image, pred, palette, alpha=0.5, binary=True)
    green = overlay(image, pred, palette, alpha=0.5, binary=True, color=[0, 255, 0])
    g_default, g_green = default[interior].astype(np.float32), green[interior].astype(np.float32)
    assert g_green[:, 1].mean() > g_default[:, 1].mean() + 100      # green channel up
    assert _dist(g_green, (0, 255, 0)).mean() < _dist(g_default, (0, 255, 0)).mean() - 50
    assert _dist(g_green, (0, 255, 0)).mean() < _dist(image[interior], (0, 255, 0)).mean()
    # The contour still contrasts with red and with the new fill.
    contour = green[boundary(pred)]
    assert _dist(contour, RED).min() > 100
    assert _dist(contour, g_green.mean(axis=0)).min() > 100


def test_cyan_fill_gets_a_yellow_contour() -> None:
    image, pred = _red_scene()
    out = overlay(image, pred, default_palette(2), binary=True, color=(0, 230, 230))
    assert (out[boundary(pred)] == (255, 255, 0)).all()


def test_multiclass_overlay_keeps_class_colour_contours() -> None:
    image, pred = _red_scene()
    pred = pred * 2
    palette = default_palette(3)
    out = overlay(image, pred, palette)
    inner_edge = boundary(pred) & (pred == 2)
    assert (out[inner_edge] == palette[2]).all()


def test_overlay_color_config(binary_folder: Path, tmp_path: Path) -> None:
    cfg = config_from_dict(minimal_config(binary_folder))
    assert cfg.test.overlay_color is None
    cfg = config_from_dict(minimal_config(binary_folder, test={"overlay_color": [0, 255, 0]}))
    assert tuple(cfg.test.overlay_color) == (0, 255, 0)
    assert cfg.to_dict()["test"]["overlay_color"] == [0, 255, 0]
    # Round trip through YAML, as config.yaml beside the checkpoints.
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert tuple(load_config(path).test.overlay_color) == (0, 255, 0)


@pytest.mark.parametrize("value", [[0, 255], [0, 255, 0, 0], [0, 256, 0], [-1, 0, 0], [0.5, 0, 0], "green"])
def test_bad_overlay_color_names_the_key(binary_folder: Path, value) -> None:
    with pytest.raises(ConfigError, match=r"test\.overlay_color"):
        config_from_dict(minimal_config(binary_folder, test={"overlay_color": value}), source="x.yaml")


def test_make_grid_lays_tiles_out_like_torchvision() -> None:
    """Tiles of one size: the sheet torchvision.utils.make_grid draws; a smaller tile is letterboxed in white."""
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 255, (6, 5, 3), dtype=np.uint8) for _ in range(5)]
    sheet = make_grid(tiles, columns=3, pad=2)
    assert sheet.shape == (2 * (6 + 2) + 2, 3 * (5 + 2) + 2, 3)
    reference = torchvision.utils.make_grid(torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2), nrow=3,
                                            padding=2, pad_value=255)
    assert np.array_equal(sheet, reference.permute(1, 2, 0).numpy())
    # A 3 x 5 tile in the 6 x 5 box: the tile at the top, white below it.
    sheet = make_grid([tiles[0], tiles[1][:3]], columns=2, pad=2)
    assert np.array_equal(sheet[2:5, 9:14], tiles[1][:3]) and (sheet[5:8, 9:14] == 255).all()
    # One tile keeps its white border.
    assert make_grid(tiles[:1], pad=2).shape == (10, 9, 3)


@pytest.mark.parametrize("binary", [True, False])
def test_overlay_fill_matches_draw_segmentation_masks(binary: bool) -> None:
    """Inside the objects the blend is torchvision's (within the one level of rounding); outside, the image."""
    image, pred = _red_scene()
    if not binary:
        pred[:, 32:] *= 2                        # the right half of the disc is class 2
    palette = default_palette(3)
    out = overlay(image, pred, palette, alpha=0.35, binary=binary)
    classes = [1] if binary else [1, 2]
    masks = torch.from_numpy(np.stack([pred == k for k in classes]))
    colours = [tuple(int(v) for v in palette[k]) for k in classes]
    reference = draw_segmentation_masks(torch.from_numpy(image).permute(2, 0, 1).float() / 255, masks, alpha=0.35,
                                        colors=colours).mul(255).permute(1, 2, 0).numpy()
    inside = (pred > 0) & ~boundary(pred)
    assert np.abs(out[inside].astype(np.float32) - reference[inside]).max() <= 1.0
    assert (out[(pred == 0) & ~boundary(pred)] == image[(pred == 0) & ~boundary(pred)]).all()
