"""Class statistics: pixel counts, inverse and median-frequency weights, the cache, and train.py's use of them."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest
import yaml
from PIL import Image

import train
import utils.builders as builders
import utils.class_stats as class_stats
from datasets.folder import FolderDataset
from tests.conftest import minimal_config
from utils.class_stats import ClassCounts, cached_class_counts, class_pixel_counts, class_weights
from utils.config import ConfigError, config_from_dict
from utils.losses import CrossEntropyLoss

# Three 2x3 masks (255 = ignore):
#   m1: 0 0 0 / 0 1 1      -> class 0: 4, class 1: 2                  (6 labelled)
#   m2: 0 0 2 / 2 2 2      -> class 0: 2, class 2: 4                  (6 labelled)
#   m3: 0 0 0 / 1 255 255  -> class 0: 3, class 1: 1, 2 ignored       (4 labelled)
MASKS = [[[0, 0, 0], [0, 1, 1]], [[0, 0, 2], [2, 2, 2]], [[0, 0, 0], [1, 255, 255]]]
# pixels n_c = (9, 3, 4), N = 16; labelled pixels of the images holding c: P_c = (16, 10, 6)
INVERSE = [16 / (3 * 9), 16 / (3 * 3), 16 / (3 * 4)]
# freq = (9/16, 3/10, 4/6), median 9/16
MEDIAN_FREQUENCY = [1.0, (9 / 16) / (3 / 10), (9 / 16) / (4 / 6)]


def write_masks(root: Path, masks: List[Any] = MASKS) -> Path:
    for split in ("train", "val"):
        for i, mask in enumerate(masks):
            for folder, array in (("images", np.zeros((2, 3, 3))), ("masks", np.array(mask))):
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array.astype(np.uint8)).save(root / split / folder / f"m{i + 1}.png")
    return root


def dataset(root: Path, num_classes: int = 3, mapping: Any = "identity") -> FolderDataset:
    return FolderDataset(str(root), "train", num_classes, mask_mapping=mapping)


def test_counts_and_both_weight_formulas(tmp_path: Path) -> None:
    counts = class_pixel_counts(dataset(write_masks(tmp_path / "d")))
    assert counts.pixels.tolist() == [9, 3, 4] and counts.pixels.dtype == np.int64
    assert counts.image_pixels.tolist() == [16, 10, 6] and counts.num_images == 3
    assert class_weights(counts, "inverse") == pytest.approx(INVERSE)
    assert class_weights(counts, "median_frequency") == pytest.approx(MEDIAN_FREQUENCY)
    assert class_weights(counts, "median_frequency") == pytest.approx([1.0, 1.875, 0.84375])


def test_absent_class_gets_zero_weight_and_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    counts = class_pixel_counts(dataset(write_masks(tmp_path / "d"), num_classes=4))
    assert counts.pixels.tolist() == [9, 3, 4, 0]
    with caplog.at_level(logging.WARNING, logger="utils.class_stats"):
        inverse = class_weights(counts, "inverse")
    assert inverse == pytest.approx([16 / 36, 16 / 12, 16 / 16, 0.0])
    assert "class(es) [3] never occur" in caplog.text
    assert class_weights(counts, "median_frequency") == pytest.approx(MEDIAN_FREQUENCY + [0.0])


def test_weight_errors() -> None:
    empty = ClassCounts(np.zeros(2, np.int64), np.zeros(2, np.int64), 1)
    with pytest.raises(ValueError, match="no labelled pixel"):
        class_weights(empty, "inverse")
    with pytest.raises(ValueError, match="unknown class weight method 'median'"):
        class_weights(empty, "median")


def test_cache_written_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_masks(tmp_path / "d")
    cache = tmp_path / "run" / "class_stats.json"
    calls = []
    real = class_stats.class_pixel_counts
    monkeypatch.setattr(class_stats, "class_pixel_counts", lambda ds, progress=False: calls.append(ds) or real(ds))

    first = cached_class_counts(dataset(root), "folder", cache)
    saved = json.loads(cache.read_text())
    assert saved["key"] == {"dataset": "folder", "root": str(root.resolve()), "split": "train", "num_classes": 3,
                            "mask_mapping": "MaskMapping('identity')", "num_samples": 3}
    assert saved["counts"] == {"pixels": [9, 3, 4], "image_pixels": [16, 10, 6], "num_images": 3}
    assert saved["weights"]["median_frequency"] == pytest.approx(MEDIAN_FREQUENCY)
    assert not list(cache.parent.glob("*.tmp"))

    again = cached_class_counts(dataset(root), "folder", cache)
    assert len(calls) == 1 and again.pixels.tolist() == first.pixels.tolist()

    # a changed key (another mapping, another sample count) counts again
    remapped = cached_class_counts(dataset(root, mapping={0: 0, 1: 1, 2: 1}), "folder", cache)
    assert len(calls) == 2 and remapped.pixels.tolist() == [9, 7, 0]
    write_masks(root, MASKS + [[[2, 2, 2], [2, 2, 2]]])
    grown = cached_class_counts(dataset(root), "folder", cache)
    assert len(calls) == 3 and grown.pixels.tolist() == [9, 3, 10]

    cache.write_text("{ not json")
    cached_class_counts(dataset(root), "folder", cache)
    assert len(calls) == 4 and json.loads(cache.read_text())["key"]["num_samples"] == 4


def test_ce_loss_needs_resolved_weights_and_config_accepts_the_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be resolved to one number per class"):
        CrossEntropyLoss(class_weights="median_frequency")
    raw = minimal_config(write_masks(tmp_path / "d"), data={"num_classes": 3, "mask_mapping": "identity"},
                         model={"out_channels": 3}, train={"monitor": "miou"},
                         loss=[{"name": "ce", "class_weights": "inverse"}])
    assert config_from_dict(raw).loss == [{"name": "ce", "class_weights": "inverse"}]
    raw["loss"] = [{"name": "ce", "class_weights": "median"}]
    with pytest.raises(ConfigError, match="loss\\[0\\].class_weights: expected list of float or one of "
                                          "'inverse', 'median_frequency' or null, got string 'median'"):
        config_from_dict(raw)


def test_training_with_median_frequency_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_masks(tmp_path / "d")
    raw = minimal_config(root, data={"num_classes": 3, "mask_mapping": "identity", "class_names": ["bg", "a", "b"]},
                         model={"out_channels": 3}, loss=[{"name": "ce", "class_weights": "median_frequency"}],
                         train={"epochs": 1, "batch_size": 3, "monitor": "miou", "tensorboard": False,
                                "checkpoint_dir": str(tmp_path / "checkpoint"), "progress": False})
    resize = [{"name": "resize", "size": 8}, {"name": "normalize"}]  # the UNet needs 4x4 at least
    raw["transforms"] = {"train": resize, "val": resize}
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))
    built = []
    real_build = builders.build_loss
    monkeypatch.setattr(builders, "build_loss", lambda specs, *a: built.append(specs) or real_build(specs, *a))

    assert train.main(["--config", str(config)]) == 0
    run_dir = tmp_path / "checkpoint" / "unit"
    (specs,) = built
    assert specs[0]["class_weights"] == pytest.approx(MEDIAN_FREQUENCY)
    saved = json.loads((run_dir / "class_stats.json").read_text())
    assert saved["counts"]["pixels"] == [9, 3, 4]
    assert "ce class weights (median_frequency): bg 1, a 1.875, b 0.8438" in (run_dir / "train.log").read_text()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["loss"][0]["class_weights"] == "median_frequency"
