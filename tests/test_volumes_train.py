"""Volumes end to end from YAML: .npz cases, 3D patches, a 3D UNet, validation on whole volumes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

import train


def write_cases(root: Path) -> None:
    """Ellipsoids in noise, anisotropic spacing 3 x 1 x 1 mm: 3 training cases, 1 validation case."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:12, :24, :24]
    for split, count in (("train", 3), ("val", 1)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            seg = (((zz - 6) / 4) ** 2 + ((yy - 12 + i) / 7) ** 2 + ((xx - 12) / 7) ** 2 <= 1).astype(np.uint8)
            data = (rng.normal(0, 0.3, (1, 12, 24, 24)) + seg).astype(np.float32)
            np.savez(root / split / f"case{i}.npz", data=data, seg=seg)
            (root / split / f"case{i}.json").write_text(json.dumps({"spacing": [3.0, 1.0, 1.0]}))


def test_a_3d_unet_trains_on_volume_patches_and_validates_whole_volumes(tmp_path: Path) -> None:
    write_cases(tmp_path / "data")
    raw = {"experiment": "vol",
           "data": {"name": "volumes", "root": str(tmp_path / "data"), "num_classes": 2, "num_workers": 0,
                    "sampling": "patch", "patch_size": [8, 16, 16]},
           "transforms": {"train": [], "val": []},
           "model": {"name": "unet", "in_channels": 1, "out_channels": 2, "dims": 3, "base_channels": 4, "depth": 3,
                     "norm": "instance", "activation": "leaky_relu", "strides": [[1, 2, 2], [2, 2, 2], [2, 2, 2]],
                     "deep_supervision": True},
           "loss": [{"name": "ce"}, {"name": "dice"}],
           "train": {"epochs": 2, "batch_size": 2, "iterations_per_epoch": 3, "monitor": "dice_foreground",
                     "checkpoint_dir": str(tmp_path / "ck"), "progress": False,
                     "deep_supervision_weights": "halving", "deep_supervision_targets": "downsample_targets"}}
    config = tmp_path / "vol.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert train.main(["--config", str(config)]) == 0
    run_dir = tmp_path / "ck" / "vol"
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["iteration"] for h in history] == [3, 6]
    assert set(history[0]["loss_parts"]) == {"ce", "dice", "ds_0", "ds_1"}  # depth 3: full and 1/2 resolution
    matrix = np.array(history[-1]["val"]["confusion_matrix"])
    assert matrix.sum() == 12 * 24 * 24  # every voxel of the whole validation volume counted once
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert any(t.ndim == 5 for t in best["model"].values())  # 3D convolution kernels
    assert list(run_dir.glob("events.out.tfevents.*"))  # a slice of each volume went to TensorBoard
