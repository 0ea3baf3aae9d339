"""Tests for the synthetic demo data generator and SyntheticDataset."""
import json
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import SyntheticDataset
from datasets.synthetic import MARKER, generate, main
from utils.registry import DATASETS

TINY = {"num_train": 4, "num_val": 2, "image_size": 64}


def files(root: Path):
    """Relative path -> bytes of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def masks(root: Path):
    return [Image.open(p) for p in sorted(root.glob("*/masks/*.png"))]


@pytest.fixture(scope="module")
def binary_set(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("binary") / "demo", num_classes=2, seed=0, **TINY)


@pytest.fixture(scope="module")
def multiclass_set(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("multi") / "demo", num_classes=4, num_train=10, num_val=2,
                    image_size=64, seed=0)


def test_layout_and_counts(binary_set):
    names = files(binary_set).keys()
    for split, count in (("train", 4), ("val", 2)):
        expected = {f"{split}/{kind}/{i:04d}.png" for kind in ("images", "masks") for i in range(count)}
        assert expected <= names
    assert len(names) == 4 * 2 + 2 * 2 + 1
    assert json.loads((binary_set / MARKER).read_text()) == {"num_classes": 2, "seed": 0, **TINY}
    image = Image.open(binary_set / "train" / "images" / "0000.png")
    assert image.mode == "RGB" and image.size == (64, 64)
    assert not [p for p in binary_set.parent.iterdir() if p.name != "demo"]  # no temporary folder left


def test_same_seed_gives_identical_bytes_and_other_seed_differs(binary_set, tmp_path):
    again = generate(tmp_path / "again", num_classes=2, seed=0, **TINY)
    other = generate(tmp_path / "other", num_classes=2, seed=1, **TINY)
    assert files(again) == files(binary_set)
    reference = files(binary_set)
    changed = {name for name, data in files(other).items() if name != MARKER and data != reference[name]}
    assert {name for name in reference if "/images/" in name} <= changed
    assert any("/masks/" in name for name in changed)


def test_binary_masks_are_0_255_with_objects_in_most_images(binary_set):
    found = masks(binary_set)
    assert all(m.mode == "L" for m in found)
    values = [set(np.unique(np.asarray(m)).tolist()) for m in found]
    assert all(v <= {0, 255} for v in values)
    assert sum(255 in v for v in values) >= 4
    images = [np.asarray(Image.open(p), dtype=np.float64) for p in sorted(binary_set.glob("*/images/*.png"))]
    contrasts = [img[np.asarray(m) == 255].mean() - img[np.asarray(m) == 0].mean() for img, m in zip(images, found)
                 if 255 in np.asarray(m)]
    assert all(c < -40 for c in contrasts)  # objects are clearly darker than the background


def test_multiclass_masks_are_palette_pngs_with_several_classes(multiclass_set):
    found = masks(multiclass_set)
    assert all(m.mode == "P" for m in found)
    classes = set().union(*(np.unique(np.asarray(m)).tolist() for m in found))
    assert {0}.union(classes) == classes and len(classes - {0}) >= 3 and max(classes) <= 3
    palette = found[0].getpalette()
    assert palette[:3] == [0, 0, 0] and palette[3:6] != [0, 0, 0]


def test_existing_dataset_is_kept_and_a_different_one_refused(binary_set):
    before = {p: p.stat().st_mtime_ns for p in binary_set.rglob("*")}
    assert generate(binary_set, num_classes=2, seed=0, **TINY) == binary_set
    assert {p: p.stat().st_mtime_ns for p in binary_set.rglob("*")} == before
    with pytest.raises(ValueError, match="does not hold a synthetic dataset generated with"):
        generate(binary_set, num_classes=3, seed=0, **TINY)


def test_bad_generator_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        generate(tmp_path / "x", num_classes=1)
    with pytest.raises(ValueError, match="image_size"):
        generate(tmp_path / "x", image_size=8)
    assert not (tmp_path / "x").exists()


def test_dataset_creates_missing_root_and_loads(tmp_path):
    assert DATASETS.get("synthetic") is SyntheticDataset and SyntheticDataset.generates_its_files
    typing.get_type_hints(SyntheticDataset.__init__)
    root = tmp_path / "nested" / "demo"
    train = SyntheticDataset(root=str(root), split="train", num_classes=2, **TINY)
    val = SyntheticDataset(root=str(root), split="val", num_classes=2, **TINY)
    assert root.is_dir() and len(train) == 4 and len(val) == 2
    assert repr(train.mask_mapping) == "MaskMapping('binary')"
    image, mask = train[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert mask.dtype == torch.int64 and set(torch.unique(mask).tolist()) <= {0, 1}


def test_multiclass_dataset_uses_identity_and_grey_input(tmp_path):
    dataset = SyntheticDataset(root=str(tmp_path / "demo"), split="train", num_classes=4, in_channels=1, **TINY)
    assert repr(dataset.mask_mapping) == "MaskMapping('identity')"
    values = set()
    for i in range(len(dataset)):
        image, mask = dataset[i]
        assert image.shape == (1, 64, 64)
        values |= set(torch.unique(mask).tolist())
    assert values <= {0, 1, 2, 3} and len(values) >= 2


def test_command_line_writes_the_dataset(tmp_path, caplog):
    caplog.set_level("INFO")
    main(["--out", str(tmp_path / "cli"), "--num-classes", "3", "--num-train", "2", "--num-val", "1",
          "--size", "48", "--seed", "5"])
    assert len(list((tmp_path / "cli" / "train" / "images").iterdir())) == 2
    assert str(tmp_path / "cli") in caplog.text
