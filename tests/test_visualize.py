"""Overlays: binary predictions stay visible on red objects; test.overlay_color sets the fill."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import minimal_config
from utils.config import ConfigError, config_from_dict, load_config
from utils.visualize import boundary, default_palette, overlay

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
