"""Volume preprocessing: crop, resampling (separate z), normalisation schemes, restore, class locations, cache."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.patches import class_locations
from datasets.volumes import VolumeDataset
from datasets.volumes import preprocessing as pre
from datasets.volumes.planning import make_plan, plan_key
from datasets.volumes.preprocessing import (PreprocessedCache, anisotropic_axis, class_locations_np, crop,
                                            nonzero_bbox, normalise, preprocess_case, resample_image, resample_mask,
                                            resample_to_shape, restore_probabilities)
from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError, DataError


def sphere(shape, spacing, radius, centre):
    """0/1 int64 mask of the voxels whose centres (in mm) lie within ``radius`` of ``centre``."""
    axes = [(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    inside = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2
    return inside.astype(np.int64)


def plan_for(target=(1.0, 1.0, 1.0), schemes=("zscore",), mask="nearest", nonzero=False, intensity=None):
    return {"version": 1, "target_spacing": list(target), "normalization": list(schemes),
            "intensity": intensity or [None] * len(schemes), "use_nonzero_mask": nonzero, "crop": "nonzero",
            "resampling": {"image_order": 3, "image_order_z": 0, "mask": mask}, "num_classes": 2}


# ------------------------------------------------------------------ crop


def test_nonzero_bbox_and_crop():
    image = np.zeros((2, 5, 6, 7), np.float32)
    image[0, 1, 2, 3] = 1.0
    image[1, 3, 4, 5] = -2.0  # another channel widens the box; negative values count
    assert nonzero_bbox(image) == [(1, 4), (2, 5), (3, 6)]
    assert crop(image, nonzero_bbox(image)).shape == (2, 3, 3, 3)
    assert crop(image[0], nonzero_bbox(image)).shape == (3, 3, 3)
    assert nonzero_bbox(np.zeros((1, 2, 3, 4))) == [(0, 2), (0, 3), (0, 4)]
    with pytest.raises(ValueError):
        crop(np.zeros((2, 2)), [(0, 1)] * 3)


def test_anisotropic_axis():
    assert anisotropic_axis([3.0, 1.0, 1.0]) is None  # exactly 3x is not more than the threshold
    assert anisotropic_axis([3.1, 1.0, 1.0]) == 0
    assert anisotropic_axis([1.0, 0.8, 5.0]) == 2
    assert anisotropic_axis([0.24, 1.25, 1.25]) is None  # two coarse axes: no single one to treat apart
    assert anisotropic_axis([2.0, 1.0, 1.0], threshold=1.5) == 0


# ------------------------------------------------------------------ resampling


@pytest.mark.parametrize("mode, target", [("nearest", (1.0, 1.0, 1.0)), ("linear", (1.0, 1.0, 1.0)),
                                          ("nearest", (1.2, 0.8, 0.8))])
def test_sphere_keeps_its_volume_there_and_back(mode, target):
    spacing, shape = (3.0, 1.0, 1.0), (14, 40, 40)
    mask = sphere(shape, spacing, 10.0, (21.0, 20.0, 20.0))
    volume = mask.sum() * np.prod(spacing)
    assert volume == pytest.approx(4 / 3 * np.pi * 1000, rel=0.02)
    there = resample_mask(mask, spacing, target, 2, mode)
    assert there.dtype == np.int64 and set(np.unique(there)) == {0, 1}
    assert there.sum() * np.prod(target) == pytest.approx(volume, rel=0.02)
    back = resample_mask(there, target, spacing, 2, mode, shape=shape)
    assert back.shape == shape and back.sum() * np.prod(spacing) == pytest.approx(volume, rel=0.02)
    # positions are kept: the centre of mass does not move by more than a tenth of a voxel
    centre = np.array(np.nonzero(mask)).mean(1)
    assert np.abs(np.array(np.nonzero(back)).mean(1) - centre).max() < 0.1


def test_image_resampling_keeps_shape_rule_and_mean():
    spacing = (3.0, 1.0, 1.0)
    mask = sphere((14, 40, 40), spacing, 10.0, (21.0, 20.0, 20.0))
    image = (100.0 * mask + 10.0).astype(np.float32)[None]
    out = resample_image(image, spacing, (1.0, 1.0, 1.0))
    assert out.shape == (1, 42, 40, 40) and out.dtype == np.float32
    assert out.mean() == pytest.approx(image.mean(), rel=0.01)
    assert resample_image(image, spacing, (2.0, 3.0, 0.7)).shape == (1, 21, 13, 57)  # round(n * s / t)


def test_anisotropic_case_takes_nearest_slices_along_z():
    values = np.array([0.0, 10.0, 30.0, 60.0], np.float32)
    image = np.broadcast_to(values[:, None, None], (4, 6, 6)).copy()[None]
    out = resample_image(image, (4.0, 1.0, 1.0), (1.0, 1.0, 1.0))  # 4 / 1 > 3: separate z, order 0 along z
    assert out.shape == (1, 16, 6, 6)
    np.testing.assert_allclose(out[0, :, 3, 3], np.repeat(values, 4), atol=1e-5)
    smooth = resample_image(image, (2.0, 1.0, 1.0), (1.0, 1.0, 1.0))  # isotropic enough: cubic along z
    assert not np.isin(np.round(smooth[0, :, 3, 3], 3), values).all()


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_mask_resampling_keeps_ignore_voxels(mode):
    mask = np.zeros((6, 8, 8), np.int64)
    mask[:, :4] = IGNORE_INDEX
    mask[2:4, 5:7, 2:6] = 1
    out = resample_mask(mask, (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), 2, mode)
    assert out.shape == (12, 16, 16) and set(np.unique(out)) == {0, 1, IGNORE_INDEX}
    assert (out == IGNORE_INDEX).sum() == 8 * (mask == IGNORE_INDEX).sum()
    assert (out[:, :8] == IGNORE_INDEX).all()
    with pytest.raises(ConfigError, match="nearest, linear"):
        resample_mask(mask, (1, 1, 1), (2, 2, 2), 2, "cubic")


def test_resample_to_shape_keeps_probabilities_normalised():
    rng = np.random.default_rng(0)
    probs = rng.random((3, 4, 5, 6)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    out = resample_to_shape(probs, (7, 3, 11), order=1)
    assert out.shape == (3, 7, 3, 11) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)


# ------------------------------------------------------------------ normalisation


def test_normalisation_schemes_hand_computed():
    ct_stats = {"mean": 10.0, "std": 2.0, "percentile_00_5": 0.0, "percentile_99_5": 20.0}
    x = np.array([[[[-5.0, 0.0, 10.0, 30.0]]]], np.float32)
    np.testing.assert_allclose(normalise(x, ["ct"], [ct_stats])[0, 0, 0], [-5.0, -5.0, 0.0, 5.0])
    y = np.array([[[[1.0, 2.0, 3.0, 4.0]]]], np.float32)  # mean 2.5, std sqrt(1.25)
    np.testing.assert_allclose(normalise(y, ["zscore"], None)[0, 0, 0], (y[0, 0, 0] - 2.5) / np.sqrt(1.25),
                               rtol=1e-6)
    z = np.array([[[[0.0, 0.0, 2.0, 4.0]]]], np.float32)
    region = np.array([[[False, False, True, True]]])  # inside: mean 3, std 1; outside set to 0
    np.testing.assert_allclose(normalise(z, ["zscore"], None, region)[0, 0, 0], [0.0, 0.0, -1.0, 1.0])
    ramp = np.arange(201, dtype=np.float32).reshape(1, 1, 1, 201)  # percentiles 0.5 / 99.5 are 1 and 199
    out = normalise(ramp, ["percentile"], None)[0, 0, 0]
    assert out[0] == 0.0 and out[100] == pytest.approx(0.5) and out[200] == 1.0 and out[1] == 0.0
    two = np.concatenate([y, x])
    both = normalise(two, ["none", "ct"], [None, ct_stats])
    np.testing.assert_array_equal(both[0], y[0])
    np.testing.assert_allclose(both[1, 0, 0], [-5.0, -5.0, 0.0, 5.0])
    assert normalise(np.full((1, 1, 1, 3), 7.0), ["zscore"], None).tolist() == [[[[0.0, 0.0, 0.0]]]]


def test_normalisation_errors():
    image = np.ones((1, 2, 2, 2), np.float32)
    with pytest.raises(ConfigError, match="ct, zscore, percentile, none"):
        normalise(image, ["minmax"], None)
    with pytest.raises(ConfigError, match="one per channel"):
        normalise(image, ["zscore", "zscore"], None)
    with pytest.raises(ConfigError, match="zscore"):
        normalise(image, ["ct"], [None])


# ------------------------------------------------------------------ one case


def test_preprocess_crop_and_restore_round_trip():
    image = np.zeros((1, 10, 12, 14), np.float32)
    mask = np.zeros((10, 12, 14), np.int64)
    image[0, 2:8, 3:9, 4:12] = np.random.default_rng(0).random((6, 6, 8)) + 1.0
    mask[3:6, 4:7, 5:9] = 1
    properties = {"case": "c", "spacing": (2.0, 1.0, 1.0), "shape": (10, 12, 14), "format": "nifti",
                  "affine": np.diag([1.0, 1.0, 2.0, 1.0])}
    data, seg, info = preprocess_case(image, mask, properties, plan_for(), num_classes=2)
    assert data.shape == (1, 12, 6, 8) and data.dtype == np.float32 and seg.dtype == np.uint8
    assert info["bbox"] == [[2, 8], [3, 9], [4, 12]] and info["shape_after_crop"] == [6, 6, 8]
    assert info["shape_after_resampling"] == [12, 6, 8] and info["shape"] == [10, 12, 14]
    assert info["affine"][2][2] == 2.0 and info["format"] == "nifti" and json.loads(json.dumps(info)) == info
    assert data.mean() == pytest.approx(0.0, abs=0.05)  # z-scored
    probs = torch.from_numpy(np.stack([seg == 0, seg == 1]).astype(np.float32))
    restored = restore_probabilities(probs, info)
    assert restored.shape == (2, 10, 12, 14) and restored.dtype == np.float32
    np.testing.assert_array_equal(restored.argmax(0), mask)
    outside = np.ones(mask.shape, bool)
    outside[2:8, 3:9, 4:12] = False
    assert (restored[0][outside] == 1.0).all() and (restored[1][outside] == 0.0).all()
    with pytest.raises(DataError, match="expected"):
        restore_probabilities(probs[:, :-1], info)


def test_preprocess_uses_the_nonzero_mask_when_the_plan_says_so():
    image = np.zeros((1, 5, 5, 5), np.float32)
    image[0, :, 1:, :] = 5.0
    image[0, 2, 2, 2] = 0.0  # a hole: filled, so inside the region
    image[0, 0, 0, 0] = 1.0  # keeps the box whole; the other zeros (y = 0) are outside the region
    data, seg, _ = preprocess_case(image, None, {"spacing": (1, 1, 1)}, plan_for(nonzero=True), 2)
    assert seg is None and data.shape == image.shape
    outside = image[0] == 0
    outside[2, 2, 2] = False
    assert (data[0][outside] == 0.0).all()
    inside = image[0][~outside]  # one voxel of 1, one of 0 (the hole), 99 of 5
    np.testing.assert_allclose(data[0, 2, 2, 2], (0.0 - inside.mean()) / inside.std(), rtol=1e-5)
    assert data[0, 0, 0, 0] < 0 < data[0, 1, 1, 1]
    whole, _, _ = preprocess_case(image, None, {"spacing": (1, 1, 1)}, plan_for(nonzero=False), 2)
    assert whole[0, 0, 0, 1] != 0.0


@pytest.mark.parametrize("mask_shape, properties, words", [
    ((3, 4, 4), {"case": "c9", "spacing": (1, 1, 1)}, "differs from label"),
    ((1, 3, 4, 4), {"case": "c9", "spacing": (1, 1, 1)}, "expected [Z, Y, X]"),
    ((3, 4, 5), {"case": "c9"}, "spacing is missing"),
    ((3, 4, 5), {"case": "c9", "spacing": (1, 0, 1)}, "positive"),
])
def test_preprocess_errors_name_the_case(mask_shape, properties, words):
    with pytest.raises(DataError, match="c9") as info:
        preprocess_case(np.ones((1, 3, 4, 5), np.float32), np.zeros(mask_shape, np.int64), properties,
                        plan_for(), 2)
    assert words in str(info.value)
    with pytest.raises(DataError, match=r"expected \[C, Z, Y, X\]"):
        preprocess_case(np.ones((3, 4, 5), np.float32), None, {"case": "c9", "spacing": (1, 1, 1)}, plan_for(), 2)


def test_class_locations_numpy_matches_torch_and_is_bounded():
    seg = np.zeros((4, 5, 6), np.uint8)
    seg[1, 2, 3] = 1
    seg[2:4, 1:3, 0:2] = 2
    seg[0, 0, 0] = IGNORE_INDEX
    found = class_locations_np(seg, 3)
    assert sorted(found) == [1, 2] and found[1].tolist() == [[1, 2, 3]] and found[2].dtype == np.int64
    reference = class_locations(torch.from_numpy(seg.astype(np.int64)), 3, seed=0)
    assert sorted(map(tuple, found[2].tolist())) == sorted(map(tuple, reference[2].tolist()))
    few = class_locations_np(seg, 3, limit=3, seed=5)
    assert few[2].shape == (3, 3) and all(seg[tuple(c)] == 2 for c in few[2])
    assert few[2].tolist() == class_locations_np(seg, 3, limit=3, seed=5)[2].tolist()
    assert class_locations_np(np.zeros((2, 2, 2), np.uint8), 3) == {}


# ------------------------------------------------------------------ cache


def write_case(folder: Path, name: str, seed: int, labelled: bool = True, spacing=(2.0, 1.0, 1.0)):
    rng = np.random.default_rng(seed)
    data = np.zeros((1, 12, 20, 20), np.float32)
    data[0, 1:11, 2:18, 1:17] = rng.random((10, 16, 16)) + 1.0
    arrays = {"data": data}
    if labelled:
        seg = np.zeros((12, 20, 20), np.uint8)
        seg[2:4, 3:6, 2:5] = 1
        arrays["seg"] = seg
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / f"{name}.npz", **arrays)
    (folder / f"{name}.json").write_text(json.dumps({"spacing": list(spacing)}))


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """A two-case npz dataset (one unlabelled), its plan, and a counter of preprocess_case calls."""
    write_case(tmp_path / "data", "a", 0)
    write_case(tmp_path / "data", "b", 1, labelled=False)
    dataset = VolumeDataset(tmp_path / "data", "all", num_classes=2)
    plan = make_plan(dataset, num_classes=2, in_channels=1, memory_gb=1.0)
    calls = []
    real = pre.preprocess_case
    monkeypatch.setattr(pre, "preprocess_case", lambda *args: calls.append(args[2]["case"]) or real(*args))
    return dataset, plan, calls


def test_cache_writes_reuses_and_opens_memmaps(cached, tmp_path):
    dataset, plan, calls = cached
    cache = PreprocessedCache(tmp_path / "cache" / plan_key(plan))
    cache.ensure(dataset, plan, num_classes=2)
    assert calls == ["a", "b"] and cache.cases() == ["a", "b"]
    assert json.loads((cache.folder / "plan.json").read_text()) == json.loads(json.dumps(plan))
    data, seg, info, locations = cache.open("a")
    assert isinstance(data, np.memmap) and isinstance(seg, np.memmap) and seg.dtype == np.uint8
    image, mask, properties = dataset.read_case(0)
    expected, expected_seg, _ = pre.preprocess_case(image, mask, properties, plan, 2)
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_array_equal(seg, expected_seg)
    assert info["bbox"] == [[1, 11], [2, 18], [1, 17]] and sorted(locations) == [1]
    assert all(seg[tuple(c)] == 1 for c in locations[1])
    unlabelled = cache.open("b")
    assert unlabelled[1] is None and unlabelled[3] == {}
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.folder.iterdir()}
    calls.clear()
    cache.ensure(dataset, plan, num_classes=2)
    assert calls == [] and {p.name: p.stat().st_mtime_ns for p in cache.folder.iterdir()} == stamps


def test_cache_recomputes_a_touched_case_and_a_new_plan_gets_a_new_folder(cached, tmp_path):
    dataset, plan, calls = cached
    root = tmp_path / "cache"
    PreprocessedCache(root / plan_key(plan)).ensure(dataset, plan, num_classes=2)
    source = tmp_path / "data" / "b.npz"
    later = source.stat().st_mtime_ns + 5_000_000_000
    os.utime(source, ns=(later, later))
    calls.clear()
    PreprocessedCache(root / plan_key(plan)).ensure(dataset, plan, num_classes=2)
    assert calls == ["b"]
    bigger = dict(plan, patch_size=[2 * n for n in plan["patch_size"]])
    assert plan_key(bigger) == plan_key(plan)  # the patch does not change the preprocessing
    other = dict(plan, normalization=["percentile"])
    assert plan_key(other) != plan_key(plan)
    calls.clear()
    PreprocessedCache(root / plan_key(other)).ensure(dataset, other, num_classes=2)
    assert calls == ["a", "b"] and sorted(p.name for p in root.iterdir()) == sorted([plan_key(plan),
                                                                                     plan_key(other)])


def test_cache_errors(cached, tmp_path):
    dataset, plan, _ = cached
    cache = PreprocessedCache(tmp_path / "cache")
    with pytest.raises(DataError, match="no preprocessed case 'zz'"):
        cache.open("zz")
    write_case(tmp_path / "split" / "train", "a", 0)
    write_case(tmp_path / "split" / "val", "a", 1)
    twice = VolumeDataset(tmp_path / "split", "all", num_classes=2)
    with pytest.raises(DataError, match="used twice"):
        cache.ensure(twice, plan, num_classes=2)
