"""Volumes from one YAML, end to end: plan, preprocess (cached), train on patches, predict each case back at its
original spacing and shape, written in the input's own format, scored per case, with QC grids."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import test as test_entry
import train
from datasets.synthetic_volumes import generate
from utils.metrics import ConfusionMatrix, default_class_names

nib = pytest.importorskip("nibabel")


def volume_config(tmp_path: Path, root: Path, name: str, **data) -> Path:
    raw = {"experiment": name,
           "data": {"name": "volumes", "root": str(root), "num_classes": 3, "num_workers": 0, "sampling": "patch",
                    "normalization": "zscore", **data},
           "plan": {"memory_gb": 0.6},
           "transforms": {"train": [{"name": "nnunet_mirror"}, {"name": "nnunet_gamma"}], "val": []},
           "model": {"name": "unet", "dims": 3, "in_channels": 1, "out_channels": 3, "base_channels": 4,
                     "norm": "instance", "activation": "leaky_relu", "deep_supervision": True},
           "loss": [{"name": "ce"}, {"name": "dice"}],
           "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True},
           "train": {"epochs": 2, "batch_size": 2, "iterations_per_epoch": 2, "monitor": "mean_dice_no_background",
                     "checkpoint_dir": str(tmp_path / "ck"), "progress": False,
                     "deep_supervision_weights": "halving", "deep_supervision_targets": "downsample_targets"},
           "inference": {"mode": "slide", "overlap": 0.5, "flips": ["h"]},
           "test": {"output_dir": str(tmp_path / "results")}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The synthetic anisotropic volumes (3x coarser voxels: ~8 x 38 x 38), planned and trained once."""
    tmp_path = tmp_path_factory.mktemp("vol")
    root = generate(tmp_path / "data", num_train=3, num_val=2, num_test=1, voxel_scale=3.0)
    config = volume_config(tmp_path, root, "vol")
    assert train.main(["--config", str(config)]) == 0
    return tmp_path, root, config


def test_the_plan_is_saved_used_and_in_the_checkpoint(trained):
    tmp_path, root, _ = trained
    run_dir = tmp_path / "ck" / "vol"
    plan = json.loads((run_dir / "plan.json").read_text())
    spacings = np.array([json.loads(p.read_text())["spacing"] for p in sorted((root / "train").glob("*.json"))])
    assert plan["target_spacing"][1:] == pytest.approx(np.median(spacings, axis=0)[1:].tolist())
    assert plan["anisotropic_axis"] == 0  # z is over 3x coarser: its target is the 10th percentile
    assert plan["target_spacing"][0] == pytest.approx(max(np.percentile(spacings[:, 0], 10),
                                                          np.median(spacings[:, 1]) + 1e-5), rel=1e-4)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["patch_size"] == plan["patch_size"]
    assert saved["model"]["strides"] == plan["strides"] and saved["model"]["depth"] == len(plan["strides"])
    assert saved["inference"]["tile"] == plan["patch_size"]
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["plan"] == plan
    cache = root / ".preprocessed"
    (key,) = [p.name for p in cache.iterdir()]
    data = np.load(cache / key / "case_000_data.npy", mmap_mode="r")
    assert isinstance(data, np.memmap) and data.ndim == 4 and data.dtype == np.float32


def test_a_second_start_reuses_the_preprocessed_cases(trained, caplog):
    tmp_path, _, config = trained
    caplog.set_level(logging.INFO)
    args = ["--config", str(config), "--set", "experiment=vol2", "train.epochs=1", "train.iterations_per_epoch=1"]
    assert train.main(args) == 0
    assert any("3 reused, 0 computed" in r.getMessage() for r in caplog.records)


def test_predictions_are_at_the_original_shape_and_scored_per_case(trained):
    tmp_path, root, config = trained
    assert test_entry.main(["--config", str(config)]) == 0
    out = tmp_path / "results" / "vol"
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert [r["case"] for r in rows] == ["case_003", "case_004"]
    dice = []
    for row in rows:
        truth = np.load(root / "val" / f"{row['case']}.npz")
        written = np.load(out / f"{row['case']}.npz")["seg"]
        assert written.shape == truth["seg"].shape  # restored to the original grid
        assert json.loads((out / f"{row['case']}.json").read_text())["spacing"] == pytest.approx(
            json.loads((root / "val" / f"{row['case']}.json").read_text())["spacing"])
        names = default_class_names(3)
        cm = ConfusionMatrix(3, class_names=names)
        cm.update(torch.from_numpy(written.astype(np.int64)), torch.from_numpy(truth["seg"].astype(np.int64)))
        recomputed = cm.compute()["dice_per_class"]
        for cls in names[1:]:
            assert (float(row[f"dice_{cls}"]) if row[f"dice_{cls}"] else None) == pytest.approx(recomputed[cls], abs=1e-6)
        dice.append([np.nan if recomputed[c] is None else recomputed[c] for c in names[1:]])
        assert (out / "qc" / f"{row['case']}.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    per_class = np.nanmean(np.array(dice, dtype=float), axis=0)
    assert summary["per_case_mean"]["foreground_mean"] == pytest.approx(per_class.mean(), abs=1e-6)
    assert "nnU-Net" in summary["per_case_mean"]["definition"]


def test_unlabelled_input_folder(trained):
    tmp_path, root, config = trained
    out = tmp_path / "unlabelled"
    assert test_entry.main(["--config", str(config), "--input", str(root / "test"), "--output", str(out)]) == 0
    written = np.load(out / "case_005.npz")["seg"]
    assert written.shape == np.load(root / "test" / "case_005.npz")["data"].shape[1:]
    assert not (out / "per_case.csv").exists() and (out / "qc" / "case_005.png").is_file()


def write_msd(root: Path) -> np.ndarray:
    """A tiny Decathlon task: 3 training cases and 1 test case, with a rotated, shifted affine."""
    rng = np.random.default_rng(1)
    affine = np.array([[0, 0, -1.5, 10.0], [0, 2.0, 0, -4.0], [3.0, 0, 0, 7.0], [0, 0, 0, 1]])
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    zz, yy, xx = np.mgrid[:10, :24, :20]
    training = []
    for i in range(4):
        label = ((((zz - 5) / 3) ** 2 + ((yy - 12) / 6) ** 2 + ((xx - 10 + i) / 5) ** 2) <= 1).astype(np.uint8)
        label[(label == 1) & (xx > 10)] = 2
        image = (rng.normal(0, 0.2, label.shape) + label).astype(np.float32)
        sub = "imagesTs" if i == 3 else "imagesTr"
        nib.save(nib.Nifti1Image(image.transpose(2, 1, 0), affine), str(root / sub / f"c{i}.nii.gz"))
        if i < 3:
            nib.save(nib.Nifti1Image(label.transpose(2, 1, 0), affine), str(root / "labelsTr" / f"c{i}.nii.gz"))
            training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"training": training, "test": ["./imagesTs/c3.nii.gz"]}))
    return affine


def test_decathlon_predictions_keep_the_affine(tmp_path):
    affine = write_msd(tmp_path / "msd")
    config = volume_config(tmp_path, tmp_path / "msd", "msd", val_fraction=0.34)
    assert train.main(["--config", str(config), "--set", "train.epochs=1"]) == 0
    out = tmp_path / "pred"
    assert test_entry.main(["--config", str(config), "--split", "test", "--output", str(out)]) == 0
    written = nib.load(str(out / "c3.nii.gz"))
    np.testing.assert_allclose(written.affine, affine)
    assert written.shape == (20, 24, 10)  # nibabel's (x, y, z), as the input
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
