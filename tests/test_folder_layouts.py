"""Folder layouts without renaming: image_dir / mask_dir, mmsegmentation's img_dir + ann_dir, mask_suffix."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Dict, Iterable, Tuple

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import train
from datasets.folder import FolderDataset
from tests.conftest import minimal_config
from utils.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def write_pairs(image_folder: Path, mask_folder: Path, stems: Iterable[str], mask_suffix: str = "",
                image_ext: str = ".jpg", size: int = 16) -> None:
    """An image per stem (its grey value encodes the stem's index) and a 0/255 mask with a square."""
    image_folder.mkdir(parents=True, exist_ok=True)
    mask_folder.mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(stems):
        image = np.full((size, size, 3), 10 * (i + 1), dtype=np.uint8)
        image[4:12, 4:12] = 200
        Image.fromarray(image).save(image_folder / f"{stem}{image_ext}", quality=95)
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[4:12, 4:12] = 255
        Image.fromarray(mask).save(mask_folder / f"{stem}{mask_suffix}.png")


#: layout name -> (FolderDataset keyword arguments, folders (image, mask) of a split relative to root)
LAYOUTS: Dict[str, Tuple[Dict[str, str], str, str]] = {
    "split_renamed": ({"image_dir": "image", "mask_dir": "label"}, "{split}/image", "{split}/label"),
    "mmseg": ({}, "img_dir/{split}", "ann_dir/{split}"),
    "mmseg_renamed": ({"image_dir": "JPEGImages", "mask_dir": "SegmentationClass"},
                      "JPEGImages/{split}", "SegmentationClass/{split}"),
    "isic_suffix": ({"mask_suffix": "_segmentation"}, "{split}/images", "{split}/masks"),
}


def make_layout(root: Path, layout: str, counts: Dict[str, int]) -> Dict[str, str]:
    """Write ``counts[split]`` pairs per split in ``layout``; returns the dataset arguments."""
    kwargs, image_pattern, mask_pattern = LAYOUTS[layout]
    for split, count in counts.items():
        stems = [f"ISIC_{split}_{i:04d}" for i in range(count)]
        write_pairs(root / image_pattern.format(split=split), root / mask_pattern.format(split=split), stems,
                    kwargs.get("mask_suffix", ""))
    return kwargs


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_pairs_images_with_their_masks(tmp_path, layout):
    kwargs = make_layout(tmp_path, layout, {"train": 3, "val": 2})
    train_set = FolderDataset(str(tmp_path), "train", 2, mask_mapping="binary", **kwargs)
    _, image_pattern, mask_pattern = LAYOUTS[layout]
    assert train_set.layout == ("mmseg" if layout.startswith("mmseg") else "split")
    assert [(image.parent, mask.parent) for image, mask in train_set.samples] == [
        (tmp_path / image_pattern.format(split="train"), tmp_path / mask_pattern.format(split="train"))] * 3
    suffix = kwargs.get("mask_suffix", "")
    assert [mask.stem for _, mask in train_set.samples] == [image.stem + suffix for image, _ in train_set.samples]
    assert len(FolderDataset(str(tmp_path), "val", 2, mask_mapping="binary", **kwargs)) == 2
    assert len(FolderDataset(str(tmp_path), "all", 2, mask_mapping="binary", **kwargs)) == 5
    image, mask = train_set.read_sample(1)
    assert image.shape == (3, 16, 16) and mask.sum() == 64 and abs(image[0, 0, 0].item() - 20 / 255) < 0.02


def test_flat_layout_with_renamed_folders_and_a_suffix(tmp_path):
    write_pairs(tmp_path / "image", tmp_path / "label", [f"c{i}" for i in range(5)], mask_suffix=".mask")
    dataset = FolderDataset(str(tmp_path), "all", 2, mask_mapping="binary", image_dir="image", mask_dir="label",
                            mask_suffix=".mask")
    assert dataset.layout == "flat" and len(dataset) == 5
    assert [(i.name, m.name) for i, m in dataset.samples][0] == ("c0.jpg", "c0.mask.png")
    split = FolderDataset(str(tmp_path), "val", 2, image_dir="image", mask_dir="label", mask_suffix=".mask")
    assert len(split) == 1


def test_mmseg_test_split_without_annotations(tmp_path):
    make_layout(tmp_path, "mmseg", {"train": 2})
    write_pairs(tmp_path / "img_dir" / "test", tmp_path / "unused", ["t0", "t1"])
    test_set = FolderDataset(str(tmp_path), "test", 2, mask_mapping="binary")
    assert [mask for _, mask in test_set.samples] == [None, None] and not test_set.has_masks
    assert test_set[0][1].eq(255).all()


def test_a_missing_mask_with_a_suffix_names_the_expected_file(tmp_path):
    write_pairs(tmp_path / "images", tmp_path / "masks", ["ISIC_0001", "ISIC_0002"], mask_suffix="_segmentation")
    (tmp_path / "masks" / "ISIC_0002_segmentation.png").unlink()
    with pytest.raises(DataError) as err:
        FolderDataset(str(tmp_path), "all", 2, mask_suffix="_segmentation")
    message = str(err.value)
    assert f"1 image(s) in {tmp_path / 'images'} without a mask: ISIC_0002.jpg" in message
    assert f"expected {tmp_path / 'masks' / 'ISIC_0002_segmentation'}.png" in message


def test_a_mask_without_the_suffix_is_not_paired(tmp_path):
    # a.png in masks/ has the image's stem but not the suffix: it is no mask of a.jpg
    write_pairs(tmp_path / "images", tmp_path / "masks", ["a"], mask_suffix="")
    lonely = r"image\(s\) in .*without a mask: a\.jpg.*mask\(s\) in .*without an image: a\.png"
    with pytest.raises(DataError, match=lonely):
        FolderDataset(str(tmp_path), "all", 2, mask_suffix="_segmentation")


def test_errors_name_the_folders_in_use(tmp_path):
    make_layout(tmp_path, "mmseg", {"train": 2})
    with pytest.raises(DataError, match=r"img_dir.val does not exist; this dataset has the splits train"):
        FolderDataset(str(tmp_path), "val", 2)
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match=r"none of train/image/, image/train/ and image/;.*root/train/image \+ "
                                        r"root/train/label"):
        FolderDataset(str(tmp_path / "other"), "train", 2, image_dir="image", mask_dir="label")
    write_pairs(tmp_path / "flat" / "image", tmp_path / "flat" / "nolabel", ["a"])
    with pytest.raises(DataError, match=r"flat.label does not exist: every image in .*flat.image needs a mask"):
        FolderDataset(str(tmp_path / "flat"), "train", 2, image_dir="image", mask_dir="label")


@pytest.mark.parametrize("kwargs, message", [
    ({"image_dir": "a/b"}, "data.image_dir must be a folder name"),
    ({"mask_dir": ""}, "data.mask_dir must be a folder name"),
    ({"image_dir": "same", "mask_dir": "same"}, "must differ"),
    ({"mask_suffix": "x/y"}, "data.mask_suffix"),
])
def test_bad_folder_arguments(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        FolderDataset(str(tmp_path), "train", 2, **kwargs)


# ---------------------------------------------------------- end to end


def load_test_script():
    spec = importlib.util.spec_from_file_location("seg_test_script_layouts", REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def layout_run(tmp_path: Path, layout: str) -> Path:
    root = tmp_path / "data"
    kwargs = make_layout(root, layout, {"train": 4, "val": 2})
    raw = minimal_config(root, data={**kwargs, "check": "full"},
                         train={"epochs": 1, "batch_size": 2, "monitor": "dice_foreground", "progress": False,
                                "checkpoint_dir": str(tmp_path / "checkpoint")},
                         test={"output_dir": str(tmp_path / "results"), "split": "val"})
    if layout == "mmseg":  # with this other additions: mosaic (p 0.5) then pad to one size, border weights
        raw["transforms"]["train"] = [{"name": "mosaic", "size": 32}, {"name": "pad", "size": 32},
                                      {"name": "hflip"}, {"name": "normalize"}]
        raw["loss"][0].update(border_w0=10.0, border_sigma=5.0)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_trains(tmp_path, layout):
    config = layout_run(tmp_path, layout)
    assert train.main(["--config", str(config)]) == 0
    last = torch.load(tmp_path / "checkpoint" / "unit" / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and np.isfinite(last["history"][0]["train_loss"])
    if layout == "isic_suffix":  # test.py reads the val split through the same arguments
        out = tmp_path / "preds"
        assert load_test_script().main(["--config", str(config), "--output", str(out)]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["num_images"] == 2 and (out / "masks" / "ISIC_val_0000.png").is_file()
