"""Cityscapes: the label id -> train id table, the official layout, split handling, a run end to end."""
from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from PIL import Image

import train
from datasets.cityscapes import LABEL_ID_TO_TRAIN_ID, CityscapesDataset, LabelIdMapping
from datasets.io import IdentityMapping
from tests.fixtures_cityscapes import write_cityscapes_tree
from tests.test_train_e2e import load_test_script
from utils.errors import DataError
from utils.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]

#: label id -> train id, written from the label definitions of cityscapesscripts/helpers/labels.py.
OFFICIAL_TRAIN_IDS = {
    0: 255,   # unlabeled
    1: 255,   # ego vehicle
    2: 255,   # rectification border
    3: 255,   # out of roi
    4: 255,   # static
    5: 255,   # dynamic
    6: 255,   # ground
    7: 0,     # road
    8: 1,     # sidewalk
    9: 255,   # parking
    10: 255,  # rail track
    11: 2,    # building
    12: 3,    # wall
    13: 4,    # fence
    14: 255,  # guard rail
    15: 255,  # bridge
    16: 255,  # tunnel
    17: 5,    # pole
    18: 255,  # polegroup
    19: 6,    # traffic light
    20: 7,    # traffic sign
    21: 8,    # vegetation
    22: 9,    # terrain
    23: 10,   # sky
    24: 11,   # person
    25: 12,   # rider
    26: 13,   # car
    27: 14,   # truck
    28: 15,   # bus
    29: 255,  # caravan
    30: 255,  # trailer
    31: 16,   # train
    32: 17,   # motorcycle
    33: 18,   # bicycle
}
#: Values no label has (license plate, id -1, is never written to the 8-bit PNGs).
UNUSED_IDS = {34: 255, 35: 255, 100: 255, 254: 255, 255: 255}

OFFICIAL_NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                  "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                  "bicycle"]
OFFICIAL_COLOURS = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
                    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180),
                    (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230),
                    (119, 11, 32)]


def expected_train_ids(label_ids_png: Path) -> np.ndarray:
    """The train ids of a labelIds PNG, through the test's own table."""
    label_ids = np.array(Image.open(label_ids_png))
    table = {**OFFICIAL_TRAIN_IDS, **{v: 255 for v in range(34, 256)}}
    return np.vectorize(table.__getitem__)(label_ids).astype(np.int64)


def cityscapes(root: Path, split: str = "train", num_classes: int = 19) -> CityscapesDataset:
    return CityscapesDataset(root=str(root), split=split, num_classes=num_classes)


def gt(root: Path, split: str, prefix: str, kind: str) -> Path:
    return root / "gtFine" / split / prefix.split("_")[0] / f"{prefix}_gtFine_{kind}.png"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    write_cityscapes_tree(root)
    return root


# ------------------------------------------------------------------ the table


@pytest.mark.parametrize("label_id,train_id", sorted({**OFFICIAL_TRAIN_IDS, **UNUSED_IDS}.items()))
def test_label_id_maps_to_official_train_id(label_id: int, train_id: int) -> None:
    assert LABEL_ID_TO_TRAIN_ID[label_id] == train_id
    mapped = LabelIdMapping()(np.array([[label_id]], dtype=np.uint8))
    assert mapped.dtype == np.int64 and mapped.tolist() == [[train_id]]


def test_table_covers_every_byte_and_each_train_id_once() -> None:
    assert LABEL_ID_TO_TRAIN_ID.shape == (256,)
    train_ids = LABEL_ID_TO_TRAIN_ID[LABEL_ID_TO_TRAIN_ID != 255]
    assert sorted(train_ids.tolist()) == list(range(19))
    assert LabelIdMapping.decode == "index"
    assert LabelIdMapping().classes() == list(range(19)) + [255]


def test_sixteen_bit_values_above_255_are_ignored() -> None:
    pixels = np.array([[7, 26, 300, 26000]], dtype=np.uint16)
    assert LabelIdMapping()(pixels).tolist() == [[0, 13, 255, 255]]


def test_class_names_and_palette_are_official() -> None:
    assert CityscapesDataset.class_names == OFFICIAL_NAMES
    palette = CityscapesDataset.palette
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert [tuple(row) for row in palette[:19].tolist()] == OFFICIAL_COLOURS
    assert palette[255].tolist() == [0, 0, 0]
    assert DATASETS.get("cityscapes") is CityscapesDataset


# ------------------------------------------------------------------ layout


def test_discovers_frames_sorted_by_city_and_name(tmp_path: Path) -> None:
    root = tmp_path / "cs"
    written = write_cityscapes_tree(root, cities={"train": ["bochum", "aachen"], "val": ["frankfurt"]}, per_city=3)
    dataset = cityscapes(root)
    names = [image.name for image, _ in dataset.samples]
    assert names == [f"{p}_leftImg8bit.png" for p in written["train"]]
    assert names[:3] == [f"aachen_00000{k}_000019_leftImg8bit.png" for k in range(3)]
    assert [mask for _, mask in dataset.samples] == [gt(root, "train", p, "labelIds") for p in written["train"]]
    assert isinstance(dataset.mask_mapping, LabelIdMapping)


def test_reads_full_size_image_and_mapped_mask(tree: Path) -> None:
    dataset = cityscapes(tree, "val")
    image, mask = dataset.read_sample(1)
    image_path, mask_path = dataset.samples[1]
    assert image_path == tree / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000001_000019_leftImg8bit.png"
    assert image.shape == (3, 32, 64) and image.dtype == torch.float32
    rgb = np.array(Image.open(image_path)).astype(np.float32) / 255
    assert torch.allclose(image, torch.from_numpy(rgb.transpose(2, 0, 1)))
    expected = expected_train_ids(mask_path)
    assert mask.dtype == torch.int64 and np.array_equal(mask.numpy(), expected)
    assert {0, 1, 2, 13, 255} <= set(np.unique(expected).tolist())  # classes and ignored ids both present
    sample_image, sample_mask = dataset[1]
    assert torch.equal(sample_mask, mask) and torch.equal(sample_image, image)


def test_other_gtfine_files_are_not_needed(tree: Path) -> None:
    before = cityscapes(tree).read_sample(2)[1]
    for pattern in ("*_gtFine_color.png", "*_gtFine_instanceIds.png", "*_gtFine_polygons.json"):
        for path in (tree / "gtFine" / "train").rglob(pattern):
            path.unlink()
    (tree / "leftImg8bit" / "train" / "aachen" / "notes.txt").write_text("not a frame")
    dataset = cityscapes(tree)
    assert len(dataset) == 4
    assert torch.equal(dataset.read_sample(2)[1], before)


def test_label_train_ids_files_are_preferred(tmp_path: Path) -> None:
    root = tmp_path / "cs"
    written = write_cityscapes_tree(root, train_ids_files=True)
    # Official files hold the same train ids as the mapped labelIds.
    dataset = cityscapes(root)
    assert isinstance(dataset.mask_mapping, IdentityMapping)
    assert [m for _, m in dataset.samples] == [gt(root, "train", p, "labelTrainIds") for p in written["train"]]
    first = written["train"][0]
    assert np.array_equal(dataset.read_sample(0)[1].numpy(), expected_train_ids(gt(root, "train", first, "labelIds")))
    # A labelTrainIds file that differs from its labelIds is the one read, as it is.
    custom = np.tile(np.array([[3, 12], [18, 255]], dtype=np.uint8), (16, 32))
    Image.fromarray(custom).save(gt(root, "train", first, "labelTrainIds"))
    assert np.array_equal(cityscapes(root).read_sample(0)[1].numpy(), custom.astype(np.int64))


def test_partial_label_train_ids_fall_back_to_label_ids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "cs"
    written = write_cityscapes_tree(root, train_ids_files=True)
    missing = gt(root, "train", written["train"][3], "labelTrainIds")
    missing.unlink()
    Image.fromarray(np.full((32, 64), 5, np.uint8)).save(gt(root, "train", written["train"][0], "labelTrainIds"))
    with caplog.at_level(logging.WARNING, logger="datasets.cityscapes"):
        dataset = cityscapes(root)
    assert "only 3 of 4 frames" in caplog.text and str(missing) in caplog.text
    assert isinstance(dataset.mask_mapping, LabelIdMapping)
    assert all(m.name.endswith("_gtFine_labelIds.png") for _, m in dataset.samples)
    expected = expected_train_ids(gt(root, "train", written["train"][0], "labelIds"))
    assert np.array_equal(dataset.read_sample(0)[1].numpy(), expected)


# ------------------------------------------------------------------ splits


def test_splits_hold_their_cities(tree: Path) -> None:
    assert [p.parent.name for p, _ in cityscapes(tree, "train").samples] == ["aachen"] * 2 + ["bochum"] * 2
    assert [p.parent.name for p, _ in cityscapes(tree, "val").samples] == ["frankfurt"] * 2
    everything = cityscapes(tree, "all")
    assert [p.parts[-3] for p, _ in everything.samples] == ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    assert everything.has_masks


def test_test_split_reads_its_unlabelled_gtfine_files(tree: Path) -> None:
    dataset = cityscapes(tree, "test")
    assert [p.parent.name for p, _ in dataset.samples] == ["berlin", "berlin"]
    assert dataset.has_masks
    mask = dataset.read_sample(0)[1]
    assert mask.shape == (32, 64) and set(mask.unique().tolist()) == {255}
    raw = set(np.unique(np.array(Image.open(dataset.samples[0][1]))).tolist())
    assert raw == {0, 1, 2}  # unlabeled, ego vehicle, rectification border: all ignored


def test_test_split_without_gtfine_has_no_masks(tree: Path) -> None:
    one = next((tree / "gtFine" / "test" / "berlin").glob("*_000001_000019_gtFine_labelIds.png"))
    one.unlink()
    partial = cityscapes(tree, "test")
    assert partial.samples[0][1] is not None and partial.samples[1][1] is None
    for path in (tree / "gtFine" / "test" / "berlin").iterdir():
        path.unlink()
    (tree / "gtFine" / "test" / "berlin").rmdir()
    (tree / "gtFine" / "test").rmdir()
    dataset = cityscapes(tree, "test")
    assert [m for _, m in dataset.samples] == [None, None] and not dataset.has_masks
    image, mask = dataset.read_sample(0)
    assert image.shape == (3, 32, 64) and mask is None
    assert set(dataset[0][1].unique().tolist()) == {255}


# ------------------------------------------------------------------ errors


def test_missing_train_mask_names_image_and_expected_path(tree: Path) -> None:
    image = tree / "leftImg8bit" / "train" / "bochum" / "bochum_000001_000019_leftImg8bit.png"
    expected = tree / "gtFine" / "train" / "bochum" / "bochum_000001_000019_gtFine_labelIds.png"
    expected.unlink()
    with pytest.raises(DataError) as err:
        cityscapes(tree)
    message = str(err.value)
    assert str(image) in message and str(expected) in message and "gtFine_trainvaltest.zip" in message
    assert len(cityscapes(tree, "val")) == 2  # the other splits still load


def test_num_classes_must_be_19(tree: Path) -> None:
    with pytest.raises(ValueError, match=r"num_classes must be 19 .*got 20; set data.num_classes: 19"):
        cityscapes(tree, num_classes=20)


@pytest.mark.parametrize("removed,split,message", [
    (["."], "train", r"dataset root .*cityscapes does not exist; data.root must hold leftImg8bit"),
    (["leftImg8bit/val"], "val", r"leftImg8bit[/\\]val does not exist; .*leftImg8bit_trainvaltest.zip"),
    (["gtFine/train"], "train", r"gtFine[/\\]train does not exist; .*gtFine_trainvaltest.zip"),
    (["gtFine/val"], "all", r"gtFine[/\\]val does not exist"),
    (["leftImg8bit/train/aachen", "leftImg8bit/train/bochum"], "train",
     r"leftImg8bit[/\\]train holds no <city>/\*_leftImg8bit.png images"),
])
def test_missing_folders_raise_with_the_layout(tree: Path, removed: List[str], split: str, message: str) -> None:
    for folder in removed:
        shutil.rmtree(tree / folder)
    with pytest.raises(DataError, match=message):
        cityscapes(tree, split)


def test_images_outside_city_folders_are_not_frames(tree: Path) -> None:
    city = tree / "leftImg8bit" / "val" / "frankfurt"
    name = "frankfurt_000009_000019_leftImg8bit.png"
    shutil.copy(city / "frankfurt_000000_000019_leftImg8bit.png", city.parent / name)
    assert [p.name for p, _ in cityscapes(tree, "val").samples] == [
        "frankfurt_000000_000019_leftImg8bit.png", "frankfurt_000001_000019_leftImg8bit.png"]


def test_unknown_split_raises(tree: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of train, val, test, all, got 'trainval'"):
        cityscapes(tree, "trainval")


# ------------------------------------------------------------------ end to end


def test_train_and_predict_with_the_shipped_config(tree: Path, tmp_path: Path) -> None:
    """configs/cityscapes.yaml on the fixture (train crops replaced by a flip: the
    scale/crop/photometric transforms are tested with utils/transforms/); val at full size."""
    checkpoints = tmp_path / "checkpoint"
    # The shipped schedule in iterations, shortened; validation by sliding window, shrunk to the fixture's
    # 64x32 frames (two 32x32 windows plus one overlapping them).
    overrides = [f"data.root={tree}", "data.num_workers=0", "train.iterations=4", "train.batch_size=2",
                 "train.val_interval=2", "train.progress=false", "train.amp=false", "train.sync_bn=false",
                 f"train.checkpoint_dir={checkpoints}", "model.base_channels=4", "model.depth=2",
                 "scheduler.warmup_iters=0", "inference.tile=[32, 32]", "inference.overlap=0.5",
                 "transforms.train=[{name: hflip}, {name: normalize}]"]
    assert train.main(["--config", str(REPO / "configs" / "cityscapes.yaml"), "--set", *overrides]) == 0
    run_dir = checkpoints / "cityscapes"
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert len(history) == 2
    val = history[-1]["val"]
    assert list(val["iou_per_class"]) == OFFICIAL_NAMES and 0.0 <= val["miou"] <= 1.0
    state = torch.load(run_dir / "best.pt", weights_only=True)
    assert state["model"]["outc.conv.weight"].shape[0] == 19

    script = load_test_script()
    out = tmp_path / "results"
    assert script.main(["--checkpoint", str(run_dir / "best.pt"), "--output", str(out)]) == 0
    masks = sorted((out / "masks").glob("*.png"))
    assert [p.name for p in masks] == ["frankfurt_000000_000019_leftImg8bit.png",
                                       "frankfurt_000001_000019_leftImg8bit.png"]
    flat_colours = [c for colour in OFFICIAL_COLOURS for c in colour]
    for path in masks:
        png = Image.open(path)
        assert png.mode == "P" and png.size == (64, 32)
        assert png.getpalette()[:57] == flat_colours
        assert set(np.unique(np.array(png)).tolist()) <= set(range(19))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 2 and list(summary["metrics"]["iou_per_class"]) == OFFICIAL_NAMES
    rows = list(csv.DictReader((out / "per_image.csv").read_text().splitlines()))
    assert [r["image"] for r in rows] == [p.stem for p in masks]

    # The test split: its gtFine files hold only ignored pixels, predictions are still written.
    test_out = tmp_path / "test_results"
    assert script.main(["--checkpoint", str(run_dir / "best.pt"), "--output", str(test_out),
                        "--set", "test.split=test"]) == 0
    assert sorted(p.name for p in (test_out / "masks").glob("*.png")) == [
        "berlin_000000_000019_leftImg8bit.png", "berlin_000001_000019_leftImg8bit.png"]
