"""Patch sampling (datasets/patches.py): padding, foreground share, determinism, 2D and 3D, and few large images."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pytest
import torch
import yaml

import train
from conftest import minimal_config, write_pair
from datasets.patches import PatchDataset, class_locations, crop_with_padding, window_start
from utils.config import ConfigError, config_from_dict
from utils.constants import IGNORE_INDEX
from utils.errors import DataError
from utils.sampling import SeededDataset


class Cases:
    """A minimal case source: ``load_sample`` gives (image (C, *S), mask (*S))."""

    def __init__(self, pairs: List[Tuple[torch.Tensor, Optional[torch.Tensor]]]) -> None:
        self.pairs = pairs
        self.samples = [(f"case{i}.png", f"mask{i}.png") for i in range(len(pairs))]

    def __len__(self) -> int:
        return len(self.pairs)

    def load_sample(self, index: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.pairs[index]


def test_crop_with_padding_2d_by_hand() -> None:
    image = torch.arange(1, 13, dtype=torch.float32).reshape(1, 3, 4)  # rows 1..4, 5..8, 9..12
    mask = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 2, 2]])
    patch, patch_mask = crop_with_padding(image, mask, start=[-1, 2], size=[3, 3])
    assert patch[0].tolist() == [[0, 0, 0], [3, 4, 0], [7, 8, 0]]
    assert patch_mask.tolist() == [[255, 255, 255], [0, 1, 255], [0, 0, 255]]
    inside, inside_mask = crop_with_padding(image, mask, start=[1, 1], size=[2, 2])
    assert inside[0].tolist() == [[6, 7], [10, 11]] and inside_mask.tolist() == [[1, 0], [0, 2]]


def test_crop_with_padding_3d_and_a_case_smaller_than_the_patch() -> None:
    image = torch.ones(2, 2, 3, 3)
    mask = torch.ones(2, 3, 3, dtype=torch.long)
    patch, patch_mask = crop_with_padding(image, mask, start=[-1, -1, 0], size=[4, 5, 3])
    assert patch.shape == (2, 4, 5, 3) and patch_mask.shape == (4, 5, 3)
    assert patch.sum() == 2 * 2 * 3 * 3 and (patch_mask == 1).sum() == 2 * 3 * 3
    assert (patch_mask[0] == IGNORE_INDEX).all() and (patch_mask[3] == IGNORE_INDEX).all()


def test_window_start_stays_inside_or_holds_the_whole_case() -> None:
    torch.manual_seed(0)
    starts = [window_start([10, 4], [4, 6], None) for _ in range(200)]
    assert {s[0] for s in starts} == set(range(0, 7))  # inside along the long axis
    assert {s[1] for s in starts} <= {-2, -1, 0}  # the short axis lies inside the window
    assert window_start([10, 10], [4, 4], torch.tensor([9, 0])) == [6, 0]  # centred, then clipped inside
    assert window_start([10, 10], [4, 4], torch.tensor([5, 5])) == [3, 3]


def test_class_locations_are_the_pixels_of_each_present_class() -> None:
    mask = torch.zeros(6, 6, dtype=torch.long)
    mask[1, 2] = 1
    mask[4:6, 0] = 3
    found = class_locations(mask, num_classes=4, seed=0)
    assert sorted(found) == [1, 3] and found[1].tolist() == [[1, 2]] and sorted(found[3].tolist()) == [[4, 0], [5, 0]]
    assert len(class_locations(torch.ones(200, 200, dtype=torch.long), 2, seed=0, limit=50)[1]) == 50


def _sparse_cases() -> Cases:
    """Two 64x64 cases whose foreground is 1 % of the pixels (a 6x6 square and a 7x6 one)."""
    pairs = []
    for top in (5, 40):
        mask = torch.zeros(64, 64, dtype=torch.long)
        mask[top:top + 6 + (top == 40), 20:26] = 1
        pairs.append((torch.rand(1, 64, 64), mask))
    return Cases(pairs)


def test_foreground_share_over_1000_batches_is_the_setting() -> None:
    batch = 8
    patches = SeededDataset(PatchDataset(_sparse_cases(), [8, 8], length=1000 * batch, batch_size=batch,
                                         num_classes=2, foreground_share=0.33))
    centred = [int(patches[(i, 1000 + i)][1][4, 4] == 1) for i in range(1000 * batch)]
    # Random windows hit the 1 % foreground at their centre about 1 % of the time.
    assert abs(np.mean(centred) - 0.33) < 0.03
    per_batch = [sum(patches.dataset.forced_foreground(b * batch + p) for p in range(batch)) for b in range(1000)]
    assert set(per_batch) == {2, 3} and sum(per_batch) == round(0.33 * batch * 1000)


def test_same_seed_same_patch_and_shapes_in_3d() -> None:
    volume = torch.rand(1, 12, 20, 20)
    mask = (volume[0] > 0.9).long()
    patches = SeededDataset(PatchDataset(Cases([(volume, mask)]), [4, 8, 8], length=16, batch_size=4,
                                         num_classes=2, foreground_share=0.5))
    first, again, other = patches[(3, 77)], patches[(3, 77)], patches[(3, 78)]
    assert first[0].shape == (1, 4, 8, 8) and first[1].shape == (4, 8, 8)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_a_case_without_foreground_is_sampled_at_random(caplog: pytest.LogCaptureFixture) -> None:
    patches = PatchDataset(Cases([(torch.rand(1, 16, 16), torch.zeros(16, 16, dtype=torch.long))]), [8, 8],
                           length=8, batch_size=4, num_classes=2, foreground_share=1.0)
    assert patches[0][1].shape == (8, 8)
    assert "case0.png: no foreground pixel; its patches are drawn at random" in caplog.text


def test_wrong_patch_rank_or_missing_mask_names_the_case() -> None:
    with pytest.raises(DataError, match=r"data.patch_size \[8, 8, 8\] has 3 axes but case0.png has 2"):
        PatchDataset(Cases([(torch.rand(1, 16, 16), torch.zeros(16, 16, dtype=torch.long))]), [8, 8, 8], 4, 2, 2)[0]
    with pytest.raises(DataError, match="case0.png: has no mask"):
        PatchDataset(Cases([(torch.rand(1, 16, 16), None)]), [8, 8], 4, 2, 2)[0]


@pytest.mark.parametrize("data, key", [({"sampling": "patch"}, "data.patch_size"),
                                       ({"sampling": "patch", "patch_size": [0, 8]}, "data.patch_size"),
                                       ({"foreground_oversampling": 1.5}, "data.foreground_oversampling")])
def test_patch_settings_are_checked_in_the_config(data: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(minimal_config("unused", data=data), check_paths=False)


def test_three_large_images_train_with_batch_8(tmp_path: Path) -> None:
    """Few large images: 3 training images of 96 px, batch 8 of 32 px patches, 3 steps an epoch."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            write_pair(root / split, f"{split}_{i}", rng, size=96)
    raw = minimal_config(root, data={"sampling": "patch", "patch_size": [32, 32]},
                         train={"epochs": 2, "batch_size": 8, "iterations_per_epoch": 3, "monitor": "dice_foreground",
                                "checkpoint_dir": str(tmp_path / "ck"), "progress": False, "tensorboard": False})
    config = tmp_path / "patches.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert train.main(["--config", str(config)]) == 0
    metrics = json.loads((tmp_path / "ck" / "unit" / "metrics.json").read_text())
    assert [h["iteration"] for h in metrics["history"]] == [3, 6]
    assert all(0.0 <= h["val"]["dice_foreground"] <= 1.0 for h in metrics["history"])
    assert "3 train / 2 val images" in (tmp_path / "ck" / "unit" / "train.log").read_text()


def test_patch_runs_repeat_and_resume_exactly(tiny_run: Path, tmp_path: Path) -> None:
    """The same seed gives the same patches; Ctrl-C mid-epoch and --resume give the uninterrupted curve."""
    from test_training_features import interrupted_at_step, losses, train_history

    common = ["train.epochs=2", "train.iterations_per_epoch=3", "train.tensorboard=false", "data.sampling=patch",
              "data.patch_size=[16, 16]", "data.foreground_oversampling=0.5"]
    first, second = (train_history(tiny_run, tmp_path, common, name) for name in ("a", "b"))
    assert losses(first) == losses(second) and len(first) == 2
    cut = interrupted_at_step(5, lambda: train_history(tiny_run, tmp_path, common, "c"))
    assert len(cut) == 1
    resumed = train_history(tiny_run, tmp_path, common, "c", resume=True)
    assert losses(resumed) == losses(first)
    assert [r["val"]["confusion_matrix"] for r in resumed] == [r["val"]["confusion_matrix"] for r in first]
