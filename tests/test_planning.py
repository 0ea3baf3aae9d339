"""Volume planning: fingerprint, nnU-Net's anisotropy rule, pooling topology under a memory budget, the plan."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.volumes import VolumeDataset
from datasets.volumes.planning import (OVERHEAD_GB, divisors, estimate_memory_gb, fingerprint, format_plan,
                                       make_plan, plan_key, plan_topology, pooling_strides, target_spacing)
from models.unet import UNet
from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError, DataError


def write_case(folder: Path, name: str, data, seg=None, spacing=(1.0, 1.0, 1.0)):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"data": data} if seg is None else {"data": data, "seg": seg}
    np.savez(folder / f"{name}.npz", **arrays)
    (folder / f"{name}.json").write_text(json.dumps({"spacing": list(spacing)}))


# ------------------------------------------------------------------ target spacing


def test_anisotropic_dataset_gets_the_10th_percentile_of_its_coarse_axis():
    spacings = [[5, 0.7, 0.7], [3, 0.8, 0.8], [5, 0.75, 0.75], [4, 0.7, 0.7], [6, 0.8, 0.8]]
    shapes = [[20, 256, 256], [30, 240, 250], [18, 256, 256], [22, 260, 260], [16, 250, 250]]
    # median z 5 > 3 * 0.75 and 20 * 3 < 250; z spacings sorted 3, 4, 5, 5, 6: 10th percentile 3 + 0.4 * 1
    assert target_spacing(spacings, shapes) == pytest.approx([3.4, 0.75, 0.75])


def test_coarse_axis_is_kept_at_least_as_fine_as_the_others_allow():
    spacings = [[0.5, 1.0, 1.0]] * 2 + [[4.0, 1.0, 1.0]] * 8  # 10th percentile of z is 0.5 < 1.0
    shapes = [[40, 200, 200]] * 10
    assert target_spacing(spacings, shapes) == pytest.approx([1.0 + 1e-5, 1.0, 1.0], abs=1e-9)


def test_median_is_kept_when_the_rule_does_not_apply():
    many_slices = [[[5, 0.7, 0.7], [3, 0.8, 0.8], [5, 0.75, 0.75]], [[100, 256, 256]] * 3]  # 100 * 3 > 256
    assert target_spacing(*many_slices) == pytest.approx([5.0, 0.75, 0.75])
    isotropic = [[1.0, 1.0, 1.0], [1.2, 0.9, 0.9], [0.8, 1.1, 1.0], [1.1, 1.0, 1.2]]
    assert target_spacing(isotropic, [[100, 100, 100]] * 4) == pytest.approx([1.05, 1.0, 1.0])
    assert target_spacing([[2.0, 0.7, 0.7]], [[20, 256, 256]]) == pytest.approx([2.0, 0.7, 0.7])  # 2.0 < 3 * 0.7


# ------------------------------------------------------------------ topology


def test_pooling_waits_for_in_plane_to_catch_up_with_a_coarse_z():
    assert pooling_strides([3.0, 1.0, 1.0], [32, 128, 128], max_depth=4) == [[1, 2, 2], [2, 2, 2], [2, 2, 2],
                                                                             [2, 2, 2]]
    assert pooling_strides([5.0, 1.0, 1.0], [32, 128, 128], max_depth=4) == [[1, 2, 2], [1, 2, 2], [2, 2, 2],
                                                                             [2, 2, 2]]
    assert pooling_strides([1.0, 1.0, 1.0], [64, 64, 64], max_depth=6) == [[2, 2, 2]] * 4  # 64 / 16 = 4
    assert pooling_strides([1.0, 1.0, 1.0], [8, 64, 64]) == [[2, 2, 2], [1, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert pooling_strides([1.0, 1.0, 1.0], [7, 7, 7]) == []


@pytest.mark.parametrize("spacing, median, first", [([3.0, 1.0, 1.0], [60, 256, 256], [1, 2, 2]),
                                                    ([1.0, 1.0, 1.0], [160, 160, 160], [2, 2, 2]),
                                                    ([0.8, 0.8, 3.5], [200, 200, 40], [2, 2, 1])])
def test_topology_strides_patch_and_budget(spacing, median, first):
    previous = None
    for memory_gb in (0.8, 1.0, 2.0, 4.0, 8.0, 16.0):
        plan = plan_topology(spacing, median, memory_gb, in_channels=1, num_classes=3)
        patch, strides = plan["patch_size"], plan["strides"]
        assert strides[0] == first and plan["depth"] == len(strides) >= 1
        assert all(n % d == 0 for n, d in zip(patch, divisors(strides)))
        assert all(n // d >= 4 for n, d in zip(patch, divisors(strides)))
        assert all(p <= m for p, m in zip(patch, median))
        if memory_gb >= 1.0:
            assert plan["estimated_memory_gb"] <= memory_gb
        if previous is not None:
            assert all(a >= b for a, b in zip(patch, previous))  # a larger budget never gives a smaller patch
        previous = patch


def test_memory_estimate_hand_computed():
    # level 0: 2 channels on 512 voxels, 4 conv outputs; level 1 (bottleneck): 4 channels on 64, 2 outputs;
    # input + logits 512 * (1 + 2); 8 bytes a value. Weights 27 * ((1*2 + 2*2) * 2 + (2*4 + 4*4)), 16 bytes each.
    activations = 4 * 2 * 512 + 2 * 4 * 64 + 512 * 3
    weights = 27 * ((1 * 2 + 2 * 2) * 2 + (2 * 4 + 4 * 4))
    expected = (activations * 8 * 3 + weights * 16) / 1024 ** 3 + OVERHEAD_GB
    got = estimate_memory_gb([8, 8, 8], [[2, 2, 2]], 1, 2, base_channels=2, batch_size=3)
    assert got == pytest.approx(expected, rel=1e-12)
    assert estimate_memory_gb([16, 16, 16], [[2, 2, 2]], 1, 2) > estimate_memory_gb([8, 16, 16], [[2, 2, 2]], 1, 2)


def test_planned_strides_build_a_unet_that_takes_the_patch():
    plan = plan_topology([3.0, 1.0, 1.0], [12, 48, 40], 100.0, in_channels=1, num_classes=2)
    assert plan["patch_size"] == [12, 48, 40] and plan["strides"] == [[1, 2, 2], [2, 2, 2], [1, 2, 2]]
    model = UNet(1, 2, base_channels=2, depth=plan["depth"], dims=3, strides=plan["strides"], norm="instance")
    with torch.no_grad():
        assert model(torch.zeros(1, 1, *plan["patch_size"])).shape == (1, 2, 12, 48, 40)


def test_topology_of_a_tiny_median_shape_raises():
    with pytest.raises(DataError, match="too small to pool"):
        plan_topology([1.0, 1.0, 1.0], [5, 6, 7], 2.0, 1, 2)


# ------------------------------------------------------------------ fingerprint and plan


@pytest.fixture
def dataset(tmp_path):
    """Three cases: 1000 foreground voxels of 1, 10 of 3 (+ ignore voxels of 50), and one unlabelled."""
    big = np.zeros((1, 20, 40, 40), np.float32)
    big[0, 2:18, 4:36, 4:36] = 0.5
    big_seg = np.zeros((20, 40, 40), np.uint8)
    big_seg[5:15, 10:20, 10:20] = 1
    big[0][big_seg == 1] = 1.0
    small = np.full((1, 10, 40, 40), 0.5, np.float32)
    small_seg = np.zeros((10, 40, 40), np.uint8)
    small_seg[2, 3, 0:10] = 2
    small[0, 2, 3, 0:10] = 3.0
    small_seg[5, 5, 5], small[0, 5, 5, 5] = IGNORE_INDEX, 50.0
    write_case(tmp_path / "d", "big", big, big_seg, spacing=(2.0, 1.0, 1.0))
    write_case(tmp_path / "d", "small", small, small_seg, spacing=(4.0, 1.0, 1.0))
    write_case(tmp_path / "d", "unlabelled", np.full((1, 12, 40, 40), 9.0, np.float32), spacing=(3.0, 1.0, 1.0))
    return VolumeDataset(tmp_path / "d", "all", num_classes=3)


def test_fingerprint_counts_each_case_equally_and_skips_ignore(dataset):
    fp = fingerprint(dataset, max_voxels_per_case=10)
    assert fp["num_cases"] == 3 and fp["spacings"] == [[2.0, 1.0, 1.0], [4.0, 1.0, 1.0], [3.0, 1.0, 1.0]]
    assert fp["shapes"] == [[20, 40, 40], [10, 40, 40], [12, 40, 40]]
    assert fp["shapes_after_crop"] == [[16, 32, 32], [10, 40, 40], [12, 40, 40]]
    assert fp["median_relative_size_after_crop"] == 1.0
    stats = fp["intensity"][0]  # 10 voxels of 1 (sampled from 1000) and 10 of 3; not the ignored 50
    assert stats["mean"] == pytest.approx(2.0) and stats["std"] == pytest.approx(1.0)
    assert (stats["min"], stats["max"], stats["percentile_50_0"]) == (1.0, 3.0, 2.0)
    assert stats["percentile_00_5"] == pytest.approx(1.0) and stats["percentile_99_5"] == pytest.approx(3.0)
    assert json.loads(json.dumps(fp)) == fp
    assert fingerprint(dataset)["intensity"][0]["mean"] == pytest.approx((1000 + 30) / 1010)


def test_make_plan_defaults_overrides_and_errors(dataset):
    plan = make_plan(dataset, num_classes=3, in_channels=1, memory_gb=1.0)
    assert plan["version"] == 1 and plan["target_spacing"] == [3.0, 1.0, 1.0] and plan["anisotropic_axis"] is None
    assert plan["median_shape"] == [12, 40, 40] and plan["normalization"] == ["zscore"]
    assert plan["resampling"] == {"image_order": 3, "image_order_z": 0, "mask": "nearest"}
    assert plan["strides"][0] == [1, 2, 2] and plan["use_nonzero_mask"] is False
    assert json.loads(json.dumps(plan)) == plan
    fp = fingerprint(dataset)
    ct = make_plan(dataset, 3, 1, normalization="ct", mask_resampling="linear", fingerprint_data=fp)
    assert ct["normalization"] == ["ct"] and ct["resampling"]["mask"] == "linear"
    custom = make_plan(dataset, 3, 1, fingerprint_data=fp, overrides={
        "target_spacing": [2, 1, 1], "patch_size": [8, 32, 32], "normalization": ["percentile"]})
    assert custom["target_spacing"] == [2.0, 1.0, 1.0] and custom["patch_size"] == [8, 32, 32]
    assert custom["strides"] == pooling_strides([2, 1, 1], [8, 32, 32]) and custom["normalization"] == ["percentile"]
    strided = make_plan(dataset, 3, 1, fingerprint_data=fp, overrides={"patch_size": [8, 32, 32],
                                                                      "strides": [[1, 2, 2], 2]})
    assert strided["strides"] == [[1, 2, 2], [2, 2, 2]] and strided["depth"] == 2
    for overrides, words in [({"patch": [1, 2, 3]}, "patch_size, strides"),
                             ({"patch_size": [8, 30, 32], "strides": [[2, 2, 2]] * 2}, "use e.g. patch_size"),
                             ({"target_spacing": [1, -1, 1]}, "three positive"),
                             ({"strides": [[1, 2]]}, "one entry per level"),
                             ({"normalization": "minmax"}, "ct, zscore, percentile, none")]:
        with pytest.raises(ConfigError, match=words):
            make_plan(dataset, 3, 1, fingerprint_data=fp, overrides=overrides)
    with pytest.raises(ConfigError, match="in_channels"):
        make_plan(dataset, 3, 2, fingerprint_data=fp)


def test_plan_key_follows_preprocessing_only(dataset):
    fp = fingerprint(dataset)
    plan = make_plan(dataset, 3, 1, fingerprint_data=fp)
    key = plan_key(plan)
    assert len(key) == 12 and key == plan_key(json.loads(json.dumps(plan)))
    assert plan_key(dict(plan, patch_size=[4, 8, 8], strides=[[1, 2, 2]], depth=1, memory_gb=9.0)) == key
    assert plan_key(dict(plan, target_spacing=[2.0, 1.0, 1.0])) != key
    assert plan_key(dict(plan, target_spacing=[3.0 + 1e-9, 1.0, 1.0])) == key  # float noise is not a change
    assert plan_key(dict(plan, resampling=dict(plan["resampling"], mask="linear"))) != key
    shifted = [dict(plan["intensity"][0], mean=7.0)]
    assert plan_key(dict(plan, intensity=shifted)) == key  # z-score does not use the dataset statistics
    ct = dict(plan, normalization=["ct"])
    assert plan_key(ct) != key and plan_key(dict(ct, intensity=shifted)) != plan_key(ct)


def test_format_plan_is_readable(dataset):
    plan = make_plan(dataset, 3, 1, overrides={"patch_size": [8, 32, 32]})
    text = format_plan(plan)
    assert plan_key(plan) in text and "target spacing [z, y, x]: 3, 1, 1" in text
    assert "patch size: 8, 32, 32" in text and "[1, 2, 2]" in text and "overridden: patch_size" in text
    assert "normalization: zscore" in text and len(text.splitlines()) >= 8
