"""ISIC 2018 Task 1 dataset: official layout, splits, errors, draft decoding, resized cache, a training run."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import datasets.isic as isic
import train
from datasets import read_image
from tests.fixtures_isic import FOLDERS, write_isic_tree
from tests.test_train_e2e import REPO, _speed_overrides, load_test_script
from utils.errors import DataError
from utils.constants import IGNORE_INDEX
from utils.registry import DATASETS

#: A flat lesion colour far from any skin tone, to find the lesion in a decoded image.
BLUE = (20, 40, 235)


def build(root: Path, split: str = "train", **kwargs) -> isic.ISIC2018Dataset:
    return DATASETS.build("isic2018", root=str(root), split=split, num_classes=kwargs.pop("num_classes", 2), **kwargs)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """4 train, 2 val, 2 test images of 64x48 in the official layout."""
    root = tmp_path / "ISIC2018"
    write_isic_tree(root)
    return root


@pytest.fixture
def large(tmp_path: Path) -> Path:
    """One 800x600 JPEG (flat blue lesion) in each of train and val."""
    root = tmp_path / "large"
    write_isic_tree(root, n_train=1, n_val=1, n_test=0, size=(800, 600), lesion_colour=BLUE, quality=95)
    return root


def blue_pixels(image: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: pixels where blue clearly dominates red (the fixture's flat lesion colour)."""
    return image[2] - image[0] > 0.4


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


# ------------------------------------------------------------------ layout


def test_pairs_images_with_segmentation_masks_and_skips_text_files(tree: Path) -> None:
    input_dir, truth_dir = (tree / name for name in FOLDERS["train"])
    assert (input_dir / "LICENSE.txt").is_file() and (truth_dir / "ATTRIBUTION.txt").is_file()
    ds = build(tree)
    assert len(ds) == 4
    assert [(img.name, mask.name) for img, mask in ds.samples] == [
        (f"ISIC_000000{i}.jpg", f"ISIC_000000{i}_segmentation.png") for i in range(4)]
    assert all(img.parent == input_dir and mask.parent == truth_dir for img, mask in ds.samples)
    image, mask = ds.read_sample(2)
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    expected = np.array(Image.open(truth_dir / "ISIC_0000002_segmentation.png")) > 127
    assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(expected).long())
    assert 0 < int(mask.sum()) < mask.numel()
    assert ds.class_names == ["background", "lesion"]
    assert ds.palette[0].tolist() == [0, 0, 0] and ds.palette[1].tolist() == list(isic.LESION_COLOUR)


def test_splits_map_to_the_official_folders(tree: Path) -> None:
    val, test = build(tree, "val"), build(tree, "test")
    assert [p.name for p, _ in val.samples] == ["ISIC_0000004.jpg", "ISIC_0000005.jpg"]
    assert {p.parent.name for p, _ in val.samples} == {"ISIC2018_Task1-2_Validation_Input"}
    assert {m.parent.name for _, m in val.samples} == {"ISIC2018_Task1_Validation_GroundTruth"}
    assert [p.name for p, _ in test.samples] == ["ISIC_0000006.jpg", "ISIC_0000007.jpg"]
    assert {m.parent.name for _, m in test.samples} == {"ISIC2018_Task1_Test_GroundTruth"}
    assert len(build(tree, "all")) == 8


def test_test_split_without_ground_truth_has_no_masks(tree: Path) -> None:
    shutil.rmtree(tree / "ISIC2018_Task1_Test_GroundTruth")
    ds = build(tree, "test")
    assert len(ds) == 2 and not ds.has_masks
    image, mask = ds.read_sample(0)
    assert image.shape == (3, 48, 64) and mask is None
    assert torch.all(ds[0][1] == IGNORE_INDEX)


# ------------------------------------------------------------------ errors


def test_missing_input_folder_names_it_and_says_unpack(tree: Path) -> None:
    shutil.rmtree(tree / "ISIC2018_Task1-2_Validation_Input")
    with pytest.raises(DataError) as err:
        build(tree, "val")
    message = str(err.value)
    assert "ISIC2018_Task1-2_Validation_Input" in message and "'val'" in message and "as published" in message


def test_missing_ground_truth_is_an_error_for_train(tree: Path) -> None:
    shutil.rmtree(tree / "ISIC2018_Task1_Training_GroundTruth")
    with pytest.raises(DataError, match="ISIC2018_Task1_Training_GroundTruth.*masks"):
        build(tree, "train")


def test_root_one_level_too_high_suggests_the_right_root(tree: Path) -> None:
    with pytest.raises(DataError) as err:
        build(tree.parent, "train")
    assert f"set data.root to {tree}" in str(err.value)


def test_zip_left_packed_is_pointed_out(tree: Path) -> None:
    shutil.rmtree(tree / "ISIC2018_Task1-2_Training_Input")
    (tree / "ISIC2018_Task1-2_Training_Input.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"Training_Input\.zip is there: unpack it"):
        build(tree, "train")


def test_image_without_mask_names_the_expected_mask(tree: Path) -> None:
    (tree / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000001_segmentation.png").unlink()
    with pytest.raises(ValueError, match=r"1 image\(s\) in .*Training_Input have no mask .*"
                                         r"expected ISIC_0000001_segmentation\.png"):
        build(tree)


def test_mask_without_image_and_stray_mask_names(tree: Path) -> None:
    truth = tree / "ISIC2018_Task1_Training_GroundTruth"
    shutil.copy(truth / "ISIC_0000000_segmentation.png", truth / "ISIC_0009999_segmentation.png")
    with pytest.raises(ValueError, match=r"mask\(s\) in .* have no image .*: ISIC_0009999_segmentation\.png"):
        build(tree)
    (truth / "ISIC_0009999_segmentation.png").rename(truth / "ISIC_0000000.png")
    with pytest.raises(ValueError, match=r"ISIC_0000000\.png not named <image id>_segmentation\.png"):
        build(tree)


def test_mask_of_another_size_is_named(tree: Path) -> None:
    mask = tree / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000000_segmentation.png"
    Image.fromarray(np.zeros((40, 64), np.uint8)).save(mask)
    with pytest.raises(ValueError, match=r"ISIC_0000000_segmentation\.png: size 64x40 differs from image"):
        build(tree, decode_size=16).load_sample(0)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"num_classes": 3}, r"num_classes must be 2 \(background, lesion\), got 3"),
    ({"decode_size": 8}, r"decode_size must be at least 16"),
    ({"cache_size": 0}, r"cache_size must be at least 16"),
])
def test_bad_arguments(tree: Path, kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        build(tree, **kwargs)


# ------------------------------------------------------------------ draft decoding


@pytest.mark.parametrize("shorter, decode_size, scale", [
    (600, 150, 4), (600, 151, 2), (600, 75, 8), (600, 301, 1), (3000, 512, 4), (767, 512, 1), (3000, 375, 8)])
def test_dct_scale_is_the_smallest_size_at_least_decode_size(shorter: int, decode_size: int, scale: int) -> None:
    assert isic.dct_scale((shorter * 4 // 3, shorter), decode_size) == scale


@pytest.mark.parametrize("decode_size, size", [(150, (200, 150)), (151, (400, 300)), (75, (100, 75))])
def test_draft_decode_reduces_size_and_keeps_mask_aligned(large: Path, decode_size: int, size: tuple) -> None:
    ds = build(large, decode_size=decode_size)
    image, mask = ds.load_sample(0)
    assert image.shape == (3, size[1], size[0]) and mask.shape == (size[1], size[0])
    assert min(image.shape[-2:]) >= decode_size
    assert set(mask.unique().tolist()) == {0, 1}
    lesion, blue = mask == 1, blue_pixels(image)
    aligned = iou(blue, lesion)
    assert aligned > 0.97
    # No systematic offset: the mask matches the image best where it is, not one pixel off.
    for shift in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        assert iou(blue, torch.roll(lesion, shift, dims=(0, 1))) < aligned
    full_image, full_mask = ds.read_sample(0)
    assert full_image.shape == (3, 600, 800) and full_mask.shape == (600, 800)


def test_no_reduction_gives_exactly_read_image_values(tree: Path) -> None:
    for in_channels in (3, 1):
        ds = build(tree, decode_size=40, in_channels=in_channels)  # 48 // 2 < 40: decoded at full size
        image, mask = ds.load_sample(1)
        full_image, full_mask = ds.read_sample(1)
        assert image.shape[0] == in_channels
        assert torch.equal(image, full_image) and torch.equal(mask, full_mask)
        assert torch.equal(image, read_image(ds.samples[1][0], "auto", in_channels))


# ------------------------------------------------------------------ cache


def test_cache_written_then_reused_without_decoding_the_source(tree: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    ds = build(tree, cache_dir=str(cache), cache_size=32)
    image, mask = ds.load_sample(0)
    assert image.shape == (3, 32, 43) and mask.shape == (32, 43)
    files = sorted(cache.iterdir())
    assert [p.name.startswith("ISIC_0000000_32_") for p in files] == [True, True]
    assert files[1].name.endswith("_segmentation.png")
    assert Image.open(files[0]).size == (43, 32) and Image.open(files[0]).mode == "RGB"

    # The cached mask is the full mask resized with nearest-neighbour lookups.
    full_mask = Image.open(ds.samples[0][1])
    assert torch.equal(mask, torch.from_numpy(np.array(full_mask.resize((43, 32), Image.NEAREST)) > 127).long())
    # The cached image is the full image resized (antialiased).
    full_image, _ = ds.read_sample(0)
    resized = F.interpolate(full_image[None], size=(32, 43), mode="bilinear", antialias=True)[0]
    assert float((image - resized).abs().mean()) < 0.02

    stamps = [p.stat().st_mtime_ns for p in files]

    def no_decoding(*args, **kwargs):
        raise AssertionError("the source image was decoded although the cache holds it")

    monkeypatch.setattr(isic, "open_reduced", no_decoding)
    monkeypatch.setattr(isic, "read_resized_mask", no_decoding)
    again = build(tree, cache_dir=str(cache), cache_size=32).load_sample(0)  # a fresh dataset, as in a new run
    assert torch.equal(again[0], image) and torch.equal(again[1], mask)
    assert [p.stat().st_mtime_ns for p in sorted(cache.iterdir())] == stamps


def test_cache_rebuilt_when_the_source_changes(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ds = build(tree, cache_dir=str(cache), cache_size=32)
    before, _ = ds.load_sample(0)
    old = set(cache.iterdir())
    source = ds.samples[0][0]
    Image.fromarray(np.full((48, 64, 3), 10, np.uint8)).save(source, quality=95)
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after, _ = ds.load_sample(0)
    assert float(after.mean()) < 0.06 < float(before.mean())
    now = set(cache.iterdir())
    assert len(now) == 2 and not now & old, "stale cache files were not replaced"
    assert not [p for p in now if p.name.startswith(".")], "temp files left behind"


def test_cache_keeps_small_images_at_their_size_and_read_sample_full(tree: Path, tmp_path: Path) -> None:
    ds = build(tree, cache_dir=str(tmp_path / "cache"), cache_size=100, decode_size=16)
    image, mask = ds.load_sample(3)
    full_image, full_mask = ds.read_sample(3)
    assert image.shape == full_image.shape == (3, 48, 64)
    assert torch.equal(mask, full_mask) and torch.equal(image, full_image)


def test_cache_without_masks_for_an_unlabelled_test_split(tree: Path, tmp_path: Path) -> None:
    shutil.rmtree(tree / "ISIC2018_Task1_Test_GroundTruth")
    ds = build(tree, "test", cache_dir=str(tmp_path / "cache"), cache_size=24)
    image, mask = ds.load_sample(0)
    assert image.shape == (3, 24, 32) and mask is None
    assert [p.name.endswith("_segmentation.png") for p in (tmp_path / "cache").iterdir()] == [False]


# ------------------------------------------------------------------ end to end


def test_train_with_the_isic_config_then_predict_val_at_original_size(tmp_path: Path) -> None:
    root = tmp_path / "ISIC2018"
    write_isic_tree(root, n_train=8, n_val=2, n_test=0, size=(64, 48))
    config = REPO / "configs" / "isic.yaml"
    overrides = [f"data.root={root}", "data.decode_size=16", *_speed_overrides(tmp_path)]
    assert train.main(["--config", str(config), "--set", *overrides]) == 0
    history = json.loads((tmp_path / "checkpoint" / "isic2018" / "metrics.json").read_text())["history"]
    assert len(history) == 1 and "dice_foreground" in history[0]["val"]

    out = tmp_path / "results"
    assert load_test_script().main(["--config", str(config), "--set", *overrides, "--output", str(out)]) == 0
    masks = sorted((out / "masks").glob("*.png"))
    assert [p.name for p in masks] == ["ISIC_0000008.png", "ISIC_0000009.png"]
    for path in masks:
        written = Image.open(path)
        assert written.size == (64, 48) and written.mode == "L"
        assert set(np.unique(np.array(written)).tolist()) <= {0, 255}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 2 and summary["source"] == "split val"
    assert set(summary["metrics"]["iou_per_class"]) == {"background", "lesion"}
