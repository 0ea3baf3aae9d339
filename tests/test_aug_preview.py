"""``python -m utils.transforms``: the augmentation preview grid of a config's training pipeline."""
import logging
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.synthetic import generate
from utils.transforms import main

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")
TILE_PAD = 4  # utils.visualize.make_grid's default padding


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    """A tiny binary synthetic dataset (6 train images of 32 x 32) in the layout configs/demo.yaml reads."""
    return generate(tmp_path_factory.mktemp("demo") / "data", num_classes=2, num_train=6, num_val=2, image_size=32)


def grid_size(tile: int, pairs: int, pairs_per_row: int = 4) -> tuple:
    """(width, height) of the sheet: each sample is an image tile and an overlay tile."""
    columns = 2 * min(pairs, pairs_per_row)
    rows = -(-2 * pairs // columns)
    return columns * (tile + TILE_PAD) + TILE_PAD, rows * (tile + TILE_PAD) + TILE_PAD


def test_preview_writes_the_grid(tmp_path, demo_root, caplog):
    out = tmp_path / "preview" / "aug.png"
    with caplog.at_level(logging.INFO):
        status = main(["--config", DEMO, "--out", str(out), "--num", "3",
                       "--set", f"data.root={demo_root}", "transforms.train.0.size=40"])
    assert status == 0
    sheet = np.asarray(Image.open(out))
    assert Image.open(out).size == grid_size(40, 3)
    assert str(out) in caplog.text
    # Each pair: the image, then the same image with the mask drawn over it.
    image, overlay = sheet[4:44, 4:44], sheet[4:44, 48:88]
    assert image.std() > 5 and not np.array_equal(image, overlay)


def test_preview_is_reproducible_and_wraps_rows(tmp_path, demo_root):
    common = ["--config", DEMO, "--num", "5", "--seed", "3",
              "--set", f"data.root={demo_root}", "transforms.train.0.size=32"]
    assert main(common + ["--out", str(tmp_path / "a.png")]) == 0
    assert main(common + ["--out", str(tmp_path / "b.png")]) == 0
    first, second = (np.asarray(Image.open(tmp_path / name)) for name in ("a.png", "b.png"))
    assert first.shape[1::-1] == grid_size(32, 5)  # 5 pairs: 4 on the first row, 1 on the second
    assert np.array_equal(first, second)


def test_preview_with_mosaic_uses_the_dataset_as_source(tmp_path, demo_root):
    out = tmp_path / "mosaic.png"
    pipeline = "[{name: random_crop, size: 24}, {name: mosaic, size: 48}, {name: normalize}]"
    status = main(["--config", DEMO, "--out", str(out), "--num", "2",
                   "--set", f"data.root={demo_root}", f"transforms.train={pipeline}"])
    assert status == 0 and Image.open(out).size == grid_size(48, 2)


def test_preview_reports_config_errors(tmp_path, demo_root, caplog):
    status = main(["--config", DEMO, "--out", str(tmp_path / "x.png"),
                   "--set", f"data.root={demo_root}", "transforms.train.0.sise=3"])
    assert status == 2 and "sise" in caplog.text and not (tmp_path / "x.png").exists()


def test_module_help():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "utils.transforms", "--help"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout and "--num" in result.stdout


def test_module_runs_as_main(tmp_path, demo_root, monkeypatch, caplog):
    # What `python -m utils.transforms` does, in this process: the file runs as __main__
    # beside the imported utils.transforms, and the transforms must not register twice.
    out = tmp_path / "cli.png"
    monkeypatch.setattr(sys, "argv", ["utils/transforms.py", "--config", DEMO, "--out", str(out), "--num", "1",
                                      "--set", f"data.root={demo_root}", "transforms.train.0.size=32"])
    with pytest.raises(SystemExit) as exit_info, warnings.catch_warnings(), caplog.at_level(logging.INFO):
        warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
        runpy.run_module("utils.transforms", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    assert Image.open(out).size == grid_size(32, 1) and str(out) in caplog.text
