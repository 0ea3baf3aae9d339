"""test.py's reports: Cityscapes benchmark files, the --qc sheet, predicted pixels per class, bare ``python test.py``.

Checkpoints are written by hand (a seeded, untrained model, or one forced to
predict background everywhere) so that no test trains.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import minimal_config, write_pair
from datasets.cityscapes import (LABEL_ID_TO_TRAIN_ID, SUBMISSION_FOLDER, TRAIN_ID_TO_LABEL_ID, label_id_image,
                                 submission_wanted)
from tests.fixtures_cityscapes import write_cityscapes_tree
from tests.test_train_e2e import load_test_script
from utils.builders import build_model
from utils.checkpoint import save_checkpoint
from utils.config import InferenceConfig, config_from_dict, load_config
from utils.errors import ConfigError
from utils.qc import PAD, TITLE_HEIGHT, count_pixels, heat_map, sheet_size, tile_box, warn_never_predicted
from utils.visualize import colorize, default_palette

REPO = Path(__file__).resolve().parents[1]
SCRIPT = load_test_script()

#: train id -> label id, written from cityscapesscripts/helpers/labels.py (name, id, trainId).
OFFICIAL_LABEL_IDS = {
    0: 7,     # road
    1: 8,     # sidewalk
    2: 11,    # building
    3: 12,    # wall
    4: 13,    # fence
    5: 17,    # pole
    6: 19,    # traffic light
    7: 20,    # traffic sign
    8: 21,    # vegetation
    9: 22,    # terrain
    10: 23,   # sky
    11: 24,   # person
    12: 25,   # rider
    13: 26,   # car
    14: 27,   # truck
    15: 28,   # bus
    16: 31,   # train
    17: 32,   # motorcycle
    18: 33,   # bicycle
}


def save_model(cfg: Any, path: Path, seed: int = 0, background_only: bool = False) -> Path:
    """A best.pt of an untrained (seeded) model and ``cfg``; ``background_only``: zero final weights and a
    bias that makes every pixel background (sigmoid(-5) = 0.0067)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    if background_only:
        with torch.no_grad():
            model.outc.conv.weight.zero_()
            model.outc.conv.bias.fill_(-5.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": 1}, path)


# ------------------------------------------------------------------ Cityscapes benchmark files


@pytest.mark.parametrize("train_id,label_id", sorted(OFFICIAL_LABEL_IDS.items()))
def test_each_train_id_maps_back_to_its_official_label_id(train_id: int, label_id: int) -> None:
    assert TRAIN_ID_TO_LABEL_ID[train_id] == label_id
    assert LABEL_ID_TO_TRAIN_ID[label_id] == train_id  # the inverse of the reading table
    png = label_id_image(np.full((2, 3), train_id, np.int64))
    assert png.mode == "L" and np.array(png).tolist() == [[label_id] * 3] * 2


def test_label_id_image_refuses_values_outside_the_train_ids() -> None:
    assert TRAIN_ID_TO_LABEL_ID.shape == (19,) and TRAIN_ID_TO_LABEL_ID.dtype == np.uint8
    for bad in (19, 255, -1):
        with pytest.raises(ValueError, match="train ids must lie in 0..18"):
            label_id_image(np.array([[0, bad]]))


@pytest.mark.parametrize("setting,name,split,wanted", [
    ("auto", "cityscapes", "test", True), ("auto", "cityscapes", "val", False),
    ("auto", "cityscapes", None, False), ("on", "cityscapes", "val", True), (True, "cityscapes", "train", True),
    ("off", "cityscapes", "test", False), (False, "cityscapes", "test", False), ("auto", "folder", "test", False),
    ("off", "folder", "test", False),
])
def test_when_submission_files_are_written(setting: Any, name: str, split: Optional[str], wanted: bool) -> None:
    assert submission_wanted(setting, name, split) is wanted


def test_submission_on_for_another_dataset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="test.submission: on writes Cityscapes .*data.name is 'folder'"):
        submission_wanted("on", "folder", "test")
    with pytest.raises(ConfigError, match="test.submission: expected one of auto, on, off, got 'yes please'"):
        submission_wanted("yes please", "cityscapes", "test")


def test_submission_setting_in_the_config(tmp_path: Path) -> None:
    for value in ("auto", "on", "off", True, False):  # a YAML file's bare on/off arrive as booleans
        raw = minimal_config(tmp_path, test={"submission": value})
        assert config_from_dict(raw, check_paths=False).test.submission == value
    with pytest.raises(ConfigError, match="test.submission"):
        config_from_dict(minimal_config(tmp_path, test={"submission": "sometimes"}), check_paths=False)


@pytest.fixture(scope="module")
def cityscapes_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture tree (64x32 frames) and a seeded 19-class unet checkpoint of configs/cityscapes.yaml."""
    folder = tmp_path_factory.mktemp("cs")
    root = folder / "cityscapes"
    write_cityscapes_tree(root)
    cfg = load_config(REPO / "configs" / "cityscapes.yaml", [
        f"data.root={root}", "data.num_workers=0", "model.base_channels=4", "model.depth=2", "inference.mode=whole",
        "train.amp=false", "train.sync_bn=false", "train.progress=false"])
    save_model(cfg, folder / "ck" / "best.pt", seed=3)
    return folder


def test_test_split_writes_label_id_pngs_for_the_server(cityscapes_run: Path) -> None:
    out = cityscapes_run / "test_out"
    assert SCRIPT.main(["--checkpoint", str(cityscapes_run / "ck" / "best.pt"), "--split", "test",
                        "--output", str(out)]) == 0
    files = sorted((out / SUBMISSION_FOLDER).iterdir())
    assert [p.name for p in files] == ["berlin_000000_000019_leftImg8bit.png", "berlin_000001_000019_leftImg8bit.png"]
    reference = np.zeros(256, np.int64)
    reference[list(OFFICIAL_LABEL_IDS)] = list(OFFICIAL_LABEL_IDS.values())
    seen = set()
    for path in files:
        png = Image.open(path)
        assert png.mode == "L" and png.size == (64, 32)  # single-channel 8-bit, the frame's own size
        label_ids = np.array(png)
        assert set(np.unique(label_ids).tolist()) <= set(OFFICIAL_LABEL_IDS.values())
        train_ids = np.array(Image.open(out / "masks" / path.name))  # the palette PNG beside it: train ids
        assert np.array_equal(label_ids, reference[train_ids])
        seen |= set(np.unique(train_ids).tolist())
    assert len(seen) >= 3  # the untrained model predicts several classes, so the mapping is exercised
    assert json.loads((out / "summary.json").read_text())["num_images"] == 2


def test_val_split_writes_them_only_when_asked(cityscapes_run: Path) -> None:
    ckpt = str(cityscapes_run / "ck" / "best.pt")
    assert SCRIPT.main(["--checkpoint", ckpt, "--output", str(cityscapes_run / "val_out")]) == 0
    assert not (cityscapes_run / "val_out" / SUBMISSION_FOLDER).exists()
    assert (cityscapes_run / "val_out" / "masks" / "frankfurt_000000_000019_leftImg8bit.png").is_file()
    assert SCRIPT.main(["--checkpoint", ckpt, "--output", str(cityscapes_run / "on_out"),
                        "--set", "test.submission=on"]) == 0
    assert sorted(p.name for p in (cityscapes_run / "on_out" / SUBMISSION_FOLDER).iterdir()) == [
        "frankfurt_000000_000019_leftImg8bit.png", "frankfurt_000001_000019_leftImg8bit.png"]


def test_qc_sheet_of_a_softmax_model_has_a_map_per_class(cityscapes_run: Path) -> None:
    out = cityscapes_run / "qc_out"
    assert SCRIPT.main(["--checkpoint", str(cityscapes_run / "ck" / "best.pt"), "--output", str(out),
                        "--qc", "2"]) == 0
    sheet = np.array(Image.open(out / "qc.png"))
    box = tile_box(32, 64)
    assert box == (128, 256)
    assert sheet.shape[:2] == sheet_size(2, 3 + 19, box) == (16 + 2 * 132 + 4, 22 * 260 + 4)
    # The QC images' labels come from the probabilities drawn: the same labels as a run without --qc.
    plain = cityscapes_run / "plain_out"
    assert SCRIPT.main(["--checkpoint", str(cityscapes_run / "ck" / "best.pt"), "--output", str(plain)]) == 0
    for path in sorted((plain / "masks").glob("*.png")):
        assert np.array_equal(np.array(Image.open(path)), np.array(Image.open(out / "masks" / path.name)))


# ------------------------------------------------------------------ the qc sheet and pixel counts


@pytest.mark.parametrize("inference", [None, InferenceConfig(mode="slide", tile=(8, 8), tile_batch=4, flips=["h"])])
def test_qc_probabilities_give_the_labels_of_the_normal_path(inference: Optional[InferenceConfig]) -> None:
    torch.manual_seed(5)
    model = torch.nn.Conv2d(3, 3, 3, padding=1).eval()
    cfg = SimpleNamespace(inference=inference, model=SimpleNamespace(threshold=0.5), train=SimpleNamespace(amp="off"))
    image, cpu = torch.randn(3, 18, 22), torch.device("cpu")
    labels, probs = SCRIPT.predict_with_probabilities(model, image, lambda img, mask: (img, mask), cfg, cpu)
    assert probs.shape == (3, 18, 22) and torch.allclose(probs.sum(0), torch.ones(18, 22), atol=1e-5)
    assert np.array_equal(labels, probs.argmax(0).numpy())
    assert np.array_equal(labels, SCRIPT.predict(model, image, lambda img, mask: (img, mask), cfg, cpu))


def test_heat_map_colours() -> None:
    colours = heat_map(np.array([[0.0, 1.0, 0.125, 2.0, -1.0, np.nan]]))
    assert colours.dtype == np.uint8 and colours.shape == (1, 6, 3)
    assert colours[0].tolist() == [[0, 0, 4], [252, 255, 164], [44, 8, 57], [252, 255, 164], [0, 0, 4], [0, 0, 4]]


def test_count_pixels_and_the_never_predicted_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert count_pixels(np.array([[0, 2, 2], [2, 0, 3]]), 4).tolist() == [2, 0, 3, 1]
    log = logging.getLogger("qc_test")
    with caplog.at_level(logging.WARNING, logger="qc_test"):
        names = warn_never_predicted([10, 0, 5, 0], [3, 4, 0, 0], ["a", "b", "c", "d"], log)
    assert names == ["b"]  # c: predicted, not in the truth; d: in neither
    assert len(caplog.records) == 1 and "'b' (4 ground-truth pixels)" in caplog.text
    caplog.clear()
    assert warn_never_predicted([1, 1], [5, 5], ["a", "b"], log) == [] and not caplog.records


@pytest.fixture
def binary_setup(tmp_path: Path) -> Dict[str, Any]:
    """20 pairs of 32x32 discs (4 of them val); a raw binary sigmoid config writing under tmp_path."""
    rng = np.random.default_rng(0)
    for i in range(20):
        write_pair(tmp_path / "data", f"case_{i:02d}", rng)
    raw = minimal_config(tmp_path / "data", train={"checkpoint_dir": str(tmp_path / "checkpoint")},
                         test={"output_dir": str(tmp_path / "results"), "save_overlays": False})
    return raw


def val_masks(raw: Dict[str, Any]) -> List[np.ndarray]:
    """The ground-truth class indices of test.split (val) in the order test.py predicts them."""
    from utils.registry import DATASETS
    cfg = config_from_dict(raw)
    dataset = DATASETS.build(cfg.data.name, split="val", transforms=None, **cfg.dataset_kwargs())
    return [dataset.read_sample(i)[1].numpy() for i in range(len(dataset))]


def test_background_only_model_warns_and_shows_in_the_qc_sheet(binary_setup: Dict[str, Any], tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    ckpt = save_model(config_from_dict(binary_setup), tmp_path / "checkpoint" / "unit" / "best.pt",
                      background_only=True)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert SCRIPT.main(["--checkpoint", str(ckpt), "--output", str(out), "--qc", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    n = summary["num_images"]
    assert n == 4  # 20 pairs, val_fraction 0.2; qc.png shows the first 3
    assert summary["predicted_pixels_per_class"] == {"background": n * 32 * 32, "foreground": 0}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "never predicted" in warnings[0] and "'foreground'" in warnings[0]

    # qc.png: 3 rows of image | truth | prediction | p(foreground), 32x32 tiles drawn at 128x128.
    sheet = np.array(Image.open(out / "qc.png"))
    box = tile_box(32, 32)
    assert box == (128, 128) and sheet.shape == (*sheet_size(3, 4, box), 3)
    masks = val_masks(binary_setup)
    for r in range(3):
        y = TITLE_HEIGHT + PAD + r * (box[0] + PAD)
        tiles = [sheet[y:y + box[0], PAD + c * (box[1] + PAD):PAD + c * (box[1] + PAD) + box[1]] for c in range(4)]
        truth = np.asarray(Image.fromarray(colorize(masks[r], default_palette(2))).resize((128, 128),
                                                                                           Image.Resampling.NEAREST))
        assert np.array_equal(tiles[1], truth)
        assert (tiles[2] == 0).all()  # all background, black
        expected = heat_map(np.array([[1.0 / (1.0 + np.exp(5.0))]]))[0, 0]
        assert (np.abs(tiles[3].astype(int) - expected).max(axis=-1) <= 1).all()  # p(fg) = 0.0067 everywhere
        assert (sheet[y:y + box[0], PAD + box[1]:2 * PAD + box[1]] == 255).all()  # white gap between tiles


def test_pixel_counts_sum_to_every_predicted_pixel(binary_setup: Dict[str, Any], tmp_path: Path) -> None:
    ckpt = save_model(config_from_dict(binary_setup), tmp_path / "best.pt", seed=1)
    out = tmp_path / "out"
    assert SCRIPT.main(["--checkpoint", str(ckpt), "--output", str(out)]) == 0
    counts = json.loads((out / "summary.json").read_text())["predicted_pixels_per_class"]
    masks = sorted((out / "masks").glob("*.png"))
    assert sum(counts.values()) == len(masks) * 32 * 32
    assert counts["foreground"] == sum(int((np.array(Image.open(p)) > 0).sum()) for p in masks)
    assert not (out / "qc.png").exists()


def test_negative_qc_is_a_user_error(caplog: pytest.LogCaptureFixture) -> None:
    assert SCRIPT.main(["--qc", "-1"]) == 2
    assert "--qc -1: the number of images in qc.png must be 0 or more" in caplog.text


# ------------------------------------------------------------------ bare python test.py


def test_bare_call_uses_the_newest_run(binary_setup: Dict[str, Any], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cfg = config_from_dict(binary_setup)
    old = save_model(cfg, tmp_path / "checkpoint" / "old" / "best.pt")
    new = save_model(cfg, tmp_path / "checkpoint" / "new" / "best.pt")
    save_model(cfg, tmp_path / "checkpoint" / "cut" / "last.pt")  # newest of all, but no best.pt: not a choice
    os.utime(old, (1_000_000, 1_000_000))
    os.utime(new, (2_000_000, 2_000_000))
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="test"):
        assert SCRIPT.main([]) == 0
    used = os.path.join("checkpoint", "new", "best.pt")
    assert f"no --config/--checkpoint given: using {used}, the most recent run" in caplog.text
    summary = json.loads((tmp_path / "results" / "unit" / "summary.json").read_text())
    assert summary["checkpoint"] == used
    os.utime(old, (3_000_000, 3_000_000))
    assert SCRIPT.main(["--output", "again"]) == 0
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["checkpoint"] == str(Path(used).parent.parent
                                                                                                / "old" / "best.pt")


def test_bare_call_without_any_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoint" / "cut").mkdir(parents=True)
    (tmp_path / "checkpoint" / "cut" / "last.pt").write_bytes(b"")
    assert SCRIPT.main([]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "no --config/--checkpoint given and no trained run in checkpoint/" in errors[0]
    assert "train first (python train.py --config" in errors[0] and "--checkpoint PATH" in errors[0]
