"""Data check: figures of a clean dataset, every kind of problem with its file and fix, the start-up check,
the command line (train.py --check-data)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import yaml
from PIL import Image

import train
from datasets.check import SPLITS, CheckReport, Problem, check_before_training, check_dataset, format_report
from datasets.folder import FolderDataset
from tests.conftest import minimal_config
from utils.builders import build_check_splits, class_names_and_palette
from utils.config import Config, config_from_dict
from utils.errors import DataError


def save(path: Path, array: np.ndarray, mode: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode or None).save(path)


def pair(root: Path, split: str, name: str, mask: np.ndarray, image_hw: Any = None, grey: bool = False) -> None:
    """Write split/images/name.png (RGB, or grey) and split/masks/name.png (8-bit)."""
    h, w = image_hw or mask.shape[:2]
    image = np.full((h, w) if grey else (h, w, 3), 100, np.uint8)
    save(root / split / "images" / f"{name}.png", image)
    save(root / split / "masks" / f"{name}.png", mask)


def run_check(root: Path, num_classes: int = 2, **data: Any) -> CheckReport:
    raw = minimal_config(root, data={"num_classes": num_classes, "mask_mapping": "identity", **data})
    raw["model"]["out_channels"] = num_classes
    raw["loss"] = [{"name": "ce"}]
    raw["train"]["monitor"] = "miou"
    return check_config(config_from_dict(raw))


def check_config(cfg: Config) -> CheckReport:
    """What train.py --check-data does: every split the config's dataset has, checked."""
    names = class_names_and_palette(cfg)[0]
    return check_dataset(*build_check_splits(cfg, SPLITS), cfg.data.root, cfg.data.name, cfg.data.num_classes,
                         names, progress=False)


def by_kind(problems: List[Problem]) -> Dict[str, List[Problem]]:
    out: Dict[str, List[Problem]] = {}
    for item in problems:
        out.setdefault(item.kind, []).append(item)
    return out


@pytest.fixture
def clean_root(tmp_path: Path) -> Path:
    """train: 16x12 top 3 rows class 1, 16x12 all 0, 20x10 left 5 columns class 1; val: 16x12 row 0
    class 1, grey 16x12 all class 1."""
    root = tmp_path / "clean"
    a = np.zeros((12, 16)); a[:3] = 1
    c = np.zeros((10, 20)); c[:, :5] = 1
    d = np.zeros((12, 16)); d[0] = 1
    pair(root, "train", "a", a)
    pair(root, "train", "b", np.zeros((12, 16)))
    pair(root, "train", "c", c)
    pair(root, "val", "d", d)
    pair(root, "val", "e", np.ones((12, 16)), grey=True)
    return root


def test_clean_dataset_counts_sizes_values(clean_root: Path) -> None:
    report = run_check(clean_root, class_names=["background", "lesion"])
    assert report.problems == [] and report.exit_code == 0
    assert list(report.splits) == ["train", "val"] and report.absent_splits == ["test"]
    train_stats, val_stats, total = report.splits["train"], report.splits["val"], report.total()
    assert (train_stats.num_pairs, val_stats.num_pairs, total.num_without_mask) == (3, 2, 0)
    assert dict(train_stats.sizes) == {(16, 12): 2, (20, 10): 1}
    assert dict(total.image_modes) == {"RGB (8-bit)": 4, "L (8-bit)": 1}
    assert dict(total.mask_modes) == {"L (8-bit)": 5}
    # train: class 1 = 48 + 0 + 50 px; val: 16 + 192 px
    assert train_stats.class_pixels.tolist() == [486, 98]
    assert val_stats.class_pixels.tolist() == [176, 208]
    assert dict(total.raw_values) == {0: 662, 1: 306}
    assert train_stats.missing_classes() == [] and total.ignore_pixels == 0

    text = format_report(report)
    assert "16x10 .. 20x12 (2 sizes)" in text
    assert "1 lesion" in text and "98 (16.78%)" in text and "306 (31.61%)" in text
    assert "splits the layout lacks: test" in text
    assert text.rstrip().endswith("No problems found.")


def test_classes_that_never_occur_per_split_and_overall(clean_root: Path) -> None:
    report = run_check(clean_root, num_classes=3)
    assert report.exit_code == 0
    assert report.splits["train"].missing_classes() == [2] and report.total().missing_classes() == [2]
    text = format_report(report)
    assert "train: 2 class_2" in text and "all: 2 class_2" in text  # the one default name (utils.metrics)
    assert "cannot be learned: check data.num_classes" in text


def test_binary_masks_with_identity_mapping_suggest_binary(binary_folder: Path) -> None:
    report = run_check(binary_folder)  # 0/255 masks, flat layout split 10 train / 2 val
    assert report.exit_code == 1
    assert {p.kind for p in report.problems} == {"mask values outside the classes"}
    assert len(report.problems) == 12
    first = report.problems[0]
    assert first.file.endswith(".png") and "/masks/" in first.file and first.split == "train"
    assert "holds values {0, 255}" in first.message
    assert "set data.mask_mapping: binary" in first.fix
    assert set(report.total().raw_values) == {0, 255}
    text = format_report(report)
    assert "12 problem(s) found" in text and "(12 file(s))" in text and "... and 7 more" in text
    assert "fix: If these are 0/255 binary masks set data.mask_mapping: binary" in text
    # the same data with the right mapping is clean
    assert run_check(binary_folder, mask_mapping="binary").exit_code == 0


def test_each_problem_is_reported_with_its_file_and_fix(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    ok = np.zeros((8, 8)); ok[:2] = 1
    pair(root, "train", "good", ok)
    pair(root, "train", "small_mask", np.zeros((8, 7)), image_hw=(8, 8))
    pair(root, "train", "broken_image", ok)
    (root / "train" / "images" / "broken_image.png").write_bytes(b"not a png")
    pair(root, "train", "broken_mask", ok)
    (root / "train" / "masks" / "broken_mask.png").write_bytes(b"\x89PNG garbage")
    pair(root, "train", "truncated", np.random.default_rng(0).integers(0, 3, (64, 64)), image_hw=(64, 64))
    data = (root / "train" / "masks" / "truncated.png").read_bytes()
    (root / "train" / "masks" / "truncated.png").write_bytes(data[: len(data) // 2])
    rgb = np.zeros((8, 8, 3)); rgb[:4] = (255, 0, 0)
    pair(root, "train", "rgb", rgb)
    five = ok.copy(); five[0, 0] = 5
    pair(root, "train", "five", five)
    pair(root, "train", "ignored", np.full((8, 8), 255))
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "masks").mkdir(parents=True)
    pair(root, "test", "lonely", ok)
    (root / "test" / "masks" / "lonely.png").rename(root / "test" / "masks" / "other.png")

    report = run_check(root, num_classes=3)
    assert report.exit_code == 1
    kinds = by_kind(report.problems)
    assert set(kinds) == {"size mismatch", "unreadable image", "unreadable mask", "mask cannot be decoded",
                          "RGB colour mask",
                          "mask values outside the classes", "mask all ignore", "split cannot be loaded"}

    (size,) = kinds["size mismatch"]
    assert size.file == str(root / "train" / "masks" / "small_mask.png")
    assert "size 7x8 differs from image small_mask.png 8x8" in size.message and "nearest-neighbour" in size.fix
    (image,) = kinds["unreadable image"]
    assert image.file.endswith("images/broken_image.png") and "valid image" in image.fix
    (mask,) = kinds["unreadable mask"]
    assert mask.file.endswith("masks/broken_mask.png")
    (truncated,) = kinds["mask cannot be decoded"]
    assert truncated.file.endswith("masks/truncated.png") and "is it a valid image?" in truncated.message
    (colour,) = kinds["RGB colour mask"]
    assert colour.file.endswith("masks/rgb.png") and '"255,0,0" (32 px)' in colour.message
    assert colour.fix.startswith("map each colour to a class, e.g. data.mask_mapping: {")
    (values,) = kinds["mask values outside the classes"]
    assert values.file.endswith("masks/five.png") and "holds values {5}" in values.message
    assert "Increase data.num_classes to 6" in values.fix
    (ignored,) = kinds["mask all ignore"]
    assert ignored.file.endswith("masks/ignored.png") and "remove the pair" in ignored.fix

    split_errors = {p.split: p for p in kinds["split cannot be loaded"]}
    assert set(split_errors) == {"val", "test"}
    assert "holds no images" in split_errors["val"].message  # empty split
    unpaired = split_errors["test"].message
    assert "lonely.png" in unpaired and "other.png" in unpaired and "same file stem" in unpaired

    # the scan went on past the problems: the good mask and the in-range part of the others are counted
    train_stats = report.splits["train"]
    assert train_stats.num_images == 8
    assert train_stats.class_pixels.tolist() == [48 + 56 + 48, 32, 0]  # good, small_mask, broken_image masks
    assert train_stats.raw_values["255,0,0"] == 32 and train_stats.raw_values[5] == 1
    text = format_report(report)
    assert f"[train] {size.file}: size 7x8" in text and "fix: replace it with a valid image file" in text


def test_missing_val_split_is_a_problem_but_missing_test_is_not(tmp_path: Path) -> None:
    root = tmp_path / "train_only"
    pair(root, "train", "a", np.zeros((4, 4)))
    report = run_check(root)
    assert report.absent_splits == ["val", "test"]
    (problem,) = report.problems
    assert problem.kind == "missing split" and problem.split == "val" and problem.file == str(root)
    assert "val/images does not exist" in problem.message and "needs a train and a val split" in problem.fix


def test_test_split_without_masks_or_labels_is_not_a_problem(clean_root: Path) -> None:
    save(clean_root / "test" / "images" / "t1.png", np.zeros((5, 7, 3)))
    save(clean_root / "test" / "images" / "t2.png", np.zeros((5, 7, 3)))
    report = run_check(clean_root)
    assert report.exit_code == 0 and report.absent_splits == []
    test = report.splits["test"]
    assert (test.num_images, test.num_without_mask, test.num_pairs) == (2, 2, 0)
    assert "test: no labelled pixels" in format_report(report)

    # labelled test masks that are all 255 (as the official Cityscapes test files) only get a note
    for name in ("t1", "t2"):
        save(clean_root / "test" / "masks" / f"{name}.png", np.full((5, 7), 255))
    report = run_check(clean_root, mask_mapping={0: 0, 1: 1})
    assert report.exit_code == 0 and report.splits["test"].num_all_ignore == 2
    assert "note: 2 test mask(s) are all ignore" in format_report(report)


def test_colour_mapping_counts_colours_and_classes(tmp_path: Path) -> None:
    root = tmp_path / "colour"
    mask = np.zeros((4, 6, 3)); mask[:, :2] = (0, 255, 0); mask[0, 5] = (255, 0, 0)
    for split in ("train", "val"):
        pair(root, split, "a", mask)
    report = run_check(root, num_classes=3, mask_mapping={"0,0,0": 0, "0,255,0": 1, "255,0,0": 2})
    assert report.exit_code == 0
    assert report.splits["train"].class_pixels.tolist() == [15, 8, 1]
    assert dict(report.splits["val"].raw_values) == {"0,0,0": 15, "0,255,0": 8, "255,0,0": 1}


def synthetic_config(root: Path, image_size: int) -> Any:
    raw = minimal_config(root, data={"name": "synthetic", "num_classes": 3, "mask_mapping": None,
                                     "num_train": 3, "num_val": 2, "image_size": image_size})
    raw["model"]["out_channels"] = 3
    raw["train"]["monitor"] = "miou"
    return config_from_dict(raw)


def test_synthetic_dataset(tmp_path: Path) -> None:
    report = check_config(synthetic_config(tmp_path / "synth", 32))
    assert report.exit_code == 0 and report.absent_splits == ["test"]
    assert [s.num_pairs for s in report.splits.values()] == [3, 2]
    assert dict(report.total().sizes) == {(32, 32): 5} and dict(report.total().mask_modes) == {"P (8-bit)": 5}
    assert report.total().class_pixels.sum() == 5 * 32 * 32


def test_a_bad_dataset_argument_is_a_problem_not_an_absent_split(tmp_path: Path) -> None:
    report = check_config(synthetic_config(tmp_path / "synth", 16))
    assert report.absent_splits == ["test"]
    assert [(p.split, p.kind) for p in report.problems] == [("train", "split cannot be loaded"),
                                                            ("val", "split cannot be loaded")]
    assert "image_size must be at least 32, got 16" in report.problems[0].message


def write_config(tmp_path: Path, root: Path, mapping: str) -> Path:
    raw = minimal_config(root, data={"mask_mapping": mapping},
                         train={"checkpoint_dir": str(tmp_path / "checkpoint"), "progress": False})
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_train_check_data_reports_and_does_not_train(tmp_path: Path, binary_folder: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path, binary_folder, "identity")
    assert train.main(["--config", str(config), "--check-data"]) == 1
    out = capsys.readouterr().out
    assert "12 problem(s) found" in out and "set data.mask_mapping: binary" in out
    assert not (tmp_path / "checkpoint").exists()
    assert train.main(["--config", str(config), "--check-data", "--set", "data.mask_mapping=binary"]) == 0
    out = capsys.readouterr().out
    assert "No problems found." in out and "folder dataset at" in out
    assert train.main(["--config", str(config), "--check-data", "--set", "data.num_clases=2"]) == 2


# ------------------------------------------------------------------ the library, without a config


def folder_splits(root: Path, num_classes: int = 2, splits: Any = ("train", "val")) -> Dict[str, FolderDataset]:
    return {split: FolderDataset(str(root), split, num_classes, mask_mapping="identity") for split in splits}


def test_check_dataset_takes_built_splits_and_sorts_failures(clean_root: Path) -> None:
    failures = {"test": DataError("no test split here")}
    report = check_dataset(folder_splits(clean_root), failures, clean_root, "folder", 2, ["bg", "lesion"],
                           progress=False)
    assert report.problems == [] and report.absent_splits == ["test"]
    assert (report.dataset, report.root, report.class_names) == ("folder", str(clean_root), ["bg", "lesion"])
    assert report.splits["train"].class_pixels.tolist() == [486, 98]
    assert "0 bg" in format_report(report)

    # a failing split whose folder exists is a problem; a missing val split is one too
    only_train = folder_splits(clean_root, splits=("train",))
    report = check_dataset(only_train, {"val": DataError("unpaired files")}, clean_root, "folder", 2, ["a", "b"],
                           progress=False)
    (problem,) = report.problems
    assert (problem.kind, problem.split, problem.message) == ("split cannot be loaded", "val",
                                                              "the val split cannot be loaded: unpaired files")
    with pytest.raises(ValueError, match="class_names has 1 names for 2 classes"):
        check_dataset(only_train, {}, clean_root, "folder", 2, ["a"], progress=False)


def test_quick_start_check_remembers_passed_pairs(clean_root: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "run" / ".data_check_cache.json"
    hint = "python train.py --config exp.yaml --check-data"

    def quick(mode: str = "quick", failures: Any = None) -> None:
        check_before_training(folder_splits(clean_root), failures or {}, mode, cache, hint, root=clean_root,
                              dataset_name="folder", num_classes=2, class_names=["bg", "lesion"], progress=False)

    with caplog.at_level(logging.INFO, logger="datasets.check"):
        quick()
        assert "5 new or changed image(s) checked" in caplog.text and cache.is_file()
        caplog.clear()
        quick()
        assert "checked" not in caplog.text  # every pair passed before
        five = np.zeros((12, 16)); five[0, :3] = 5
        save(clean_root / "train" / "masks" / "b.png", five)  # changed: checked again, and now wrong
        with pytest.raises(DataError) as err:
            quick()
        assert "1 new or changed image(s) checked" in caplog.text
    message = str(err.value)
    assert message.startswith(f"[train] {clean_root / 'train' / 'masks' / 'b.png'}: holds values {{5}}")
    assert f"(no other problem; the full report: {hint}; data.check: off skips this check)" in message
    quick("off")  # skipped: nothing raised
    with pytest.raises(DataError, match="unpaired files"):  # a split that could not be built, raised as it is
        quick(failures={"val": DataError("unpaired files")})
    with caplog.at_level(logging.INFO, logger="datasets.check"), pytest.raises(DataError, match="the full report"):
        quick("full")
    assert "data check (data.check: full)" in caplog.text and "1 problem(s) found" in caplog.text
