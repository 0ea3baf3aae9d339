"""Volume cases in the npz, MSD (NIfTI) and TIFF layouts, the restricted unpickler and the NIfTI round trip."""
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.volumes import VolumeDataset
from datasets.volumes.readers import read_nifti, write_nifti
from datasets.volumes.safe_pickle import load_restricted
from utils.errors import DataError
from utils.registry import DATASETS

nib = pytest.importorskip("nibabel")


def ramp(shape, dtype=np.float32):
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


def write_npz_case(folder: Path, name: str, data, seg=None, spacing=(3.0, 1.0, 0.5), props="json"):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"data": data} if seg is None else {"data": data, "seg": seg}
    np.savez(folder / f"{name}.npz", **arrays)
    if props == "json":
        (folder / f"{name}.json").write_text(json.dumps({"spacing": list(spacing)}))
    elif props == "pkl":
        (folder / f"{name}.pkl").write_bytes(pickle.dumps({"spacing": np.array(spacing), "extra": [1, "a"]}))


# ------------------------------------------------------------------ npz


def test_npz_case_shapes_values_and_json_spacing(tmp_path):
    seg = np.zeros((2, 3, 4), np.uint8)
    seg[1, 2, 3] = 2
    write_npz_case(tmp_path, "a", ramp((2, 3, 4)), seg)
    dataset = VolumeDataset(tmp_path, "all", num_classes=3)
    assert dataset.layout == "npz" and dataset.samples == [(tmp_path / "a.npz", tmp_path / "a.npz")]
    image, mask = dataset.load_sample(0)
    assert image.dtype == torch.float32 and image.shape == (1, 2, 3, 4)
    assert image[0, 1, 2, 3].item() == 23.0  # z*12 + y*4 + x
    assert mask.dtype == torch.int64 and mask.sum().item() == 2 and mask[1, 2, 3].item() == 2
    properties = dataset.read_properties(0)
    assert properties["spacing"] == (3.0, 1.0, 0.5) and properties["shape"] == (2, 3, 4)
    assert properties["case"] == "a" and properties["format"] == "npz"


def test_npz_multichannel_and_pkl_properties(tmp_path):
    write_npz_case(tmp_path, "b", ramp((2, 2, 3, 4)), np.zeros((2, 3, 4), np.int16), props="pkl")
    dataset = VolumeDataset(tmp_path, "all", num_classes=2, in_channels=2)
    image, _ = dataset.load_sample(0)
    assert image.shape == (2, 2, 3, 4) and image[1, 0, 0, 0].item() == 24.0
    properties = dataset.read_properties(0)
    assert properties["spacing"] == (3.0, 1.0, 0.5) and properties["extra"] == [1, "a"]


def test_npz_without_seg_has_no_mask(tmp_path):
    write_npz_case(tmp_path / "test", "t", ramp((2, 3, 4)))
    write_npz_case(tmp_path / "train", "a", ramp((2, 3, 4)), np.zeros((2, 3, 4), np.uint8))
    dataset = VolumeDataset(tmp_path, "test", num_classes=2)
    assert dataset.samples == [(tmp_path / "test" / "t.npz", None)]
    image, mask = dataset.load_sample(0)
    assert mask is None
    assert (dataset[0][1] == 255).all()


def test_split_folders_and_val_fraction(tmp_path):
    for name in ("a", "b"):
        write_npz_case(tmp_path / "split" / "train", name, ramp((1, 2, 2)), np.zeros((1, 2, 2), np.uint8))
    write_npz_case(tmp_path / "split" / "val", "c", ramp((1, 2, 2)), np.zeros((1, 2, 2), np.uint8))
    assert [p.stem for p, _ in VolumeDataset(tmp_path / "split", "val", 2).samples] == ["c"]
    assert len(VolumeDataset(tmp_path / "split", "all", 2)) == 3
    for name in "abcde":
        write_npz_case(tmp_path / "flat", name, ramp((1, 2, 2)), np.zeros((1, 2, 2), np.uint8))
    train = VolumeDataset(tmp_path / "flat", "train", 2, seed=1, val_fraction=0.4)
    val = VolumeDataset(tmp_path / "flat", "val", 2, seed=1, val_fraction=0.4)
    assert len(train) == 3 and len(val) == 2
    assert {p.stem for p, _ in train.samples + val.samples} == set("abcde")
    assert val.samples == VolumeDataset(tmp_path / "flat", "val", 2, seed=1, val_fraction=0.4).samples


@pytest.mark.parametrize("data, seg, props, words", [
    (ramp((2, 3, 4)), np.zeros((2, 3, 5), np.uint8), "json", ["shape", "[2, 3, 4]", "[2, 3, 5]"]),
    (ramp((2, 3, 4)), np.zeros((2, 3, 4), np.uint8), None, ["spacing is missing", "case7.json"]),
    (ramp((2, 3, 4)), np.full((2, 3, 4), 3, np.uint8), "json", ["[3]", "0..1"]),
    (ramp((2, 3, 4)), np.zeros((1, 2, 3, 4), np.uint8), "json", ["4D", "[Z, Y, X]"]),
    (np.where(ramp((2, 3, 4)) == 5, np.nan, ramp((2, 3, 4))), np.zeros((2, 3, 4), np.uint8), "json", ["NaN", "[0, 0, 1, 1]"]),
])
def test_npz_errors_name_the_case(tmp_path, data, seg, props, words):
    write_npz_case(tmp_path, "case7", data, seg, props=props)
    dataset = VolumeDataset(tmp_path, "all", num_classes=2)
    with pytest.raises(DataError) as info:
        dataset.load_sample(0)
    assert "case7" in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_ignore_label_is_allowed_and_channels_checked(tmp_path):
    write_npz_case(tmp_path, "a", ramp((2, 3, 4)), np.full((2, 3, 4), 255, np.uint8))
    assert (VolumeDataset(tmp_path, "all", 2).load_sample(0)[1] == 255).all()
    with pytest.raises(DataError, match="a.npz: image has 1 channels but data.in_channels is 3"):
        VolumeDataset(tmp_path, "all", 2, in_channels=3).load_sample(0)


# ------------------------------------------------------------------ restricted unpickler


class Exploit:
    def __init__(self, call, argument):
        self.call, self.argument = call, argument

    def __reduce__(self):
        return self.call, (self.argument,)


@pytest.mark.parametrize("call, refused", [(os.system, "system"), (exec, "builtins.exec")])
def test_restricted_unpickler_refuses_code(tmp_path, call, refused):
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if call is os.system else f"open({str(marker)!r}, 'w').close()"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"spacing": [1, 1, 1], "x": Exploit(call, command)}))
    with pytest.raises(DataError) as info:
        load_restricted(path)
    assert "evil.pkl" in str(info.value) and refused in str(info.value)
    assert not marker.exists()


def test_restricted_unpickler_refused_through_the_dataset(tmp_path):
    write_npz_case(tmp_path, "a", ramp((1, 2, 2)), np.zeros((1, 2, 2), np.uint8), props=None)
    marker = tmp_path / "pwned"
    (tmp_path / "a.pkl").write_bytes(pickle.dumps({"spacing": Exploit(os.system, f"touch {marker}")}))
    with pytest.raises(DataError, match=r"a\.pkl: refused to load the global (posix|nt)\.system"):
        VolumeDataset(tmp_path, "all", 2).read_properties(0)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_unpickler_reads_numpy_and_containers(tmp_path, protocol):
    from collections import OrderedDict
    value = {"a": np.arange(6, dtype=np.int16).reshape(2, 3).T, "s": np.float64(2.5), "t": (1, None),
             "o": OrderedDict(k={1, 2}), "d": np.dtype("float32"), "b": b"\x00\xff", "c": 1 + 2j}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(value, protocol=protocol))
    loaded = load_restricted(path)
    assert loaded["a"].dtype == np.int16 and loaded["a"].tolist() == [[0, 3], [1, 4], [2, 5]]
    assert loaded["s"] == 2.5 and loaded["t"] == (1, None) and loaded["o"] == OrderedDict(k={1, 2})
    assert loaded["d"] == np.float32 and loaded["b"] == b"\x00\xff" and loaded["c"] == 1 + 2j


# ------------------------------------------------------------------ MSD / NIfTI

AFFINE = np.array([[-0.8, 0, 0, 10.0], [0, 0.7, 0, -5.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]])


def write_msd(root: Path, cases=("la_001", "la_002"), channels=2, num_test=1):
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    xyz = (4, 3, 2)
    for name in cases:
        image = ramp((*xyz, channels)) if channels > 1 else ramp(xyz)
        label = np.zeros(xyz, np.uint8)
        label[3, 1, 0] = 1  # x=3, y=1, z=0
        nib.save(nib.Nifti1Image(image, AFFINE), str(root / "imagesTr" / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(label, AFFINE), str(root / "labelsTr" / f"{name}.nii.gz"))
    tests = [f"./imagesTs/t{i}.nii.gz" for i in range(num_test)]
    for path in tests:
        nib.save(nib.Nifti1Image(ramp((*xyz, channels)), AFFINE), str(root / path))
    description = {"labels": {"0": "background", "1": "atrium"}, "modality": {"0": "T1", "1": "T2"},
                   "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in cases],
                   "test": tests}
    (root / "dataset.json").write_text(json.dumps(description))


def test_msd_4d_image_becomes_czyx_with_spacing_from_zooms(tmp_path):
    write_msd(tmp_path)
    dataset = VolumeDataset(tmp_path, "all", num_classes=2, in_channels=2)
    assert dataset.layout == "msd" and len(dataset) == 3
    assert dataset.samples[0] == (tmp_path / "imagesTr/la_001.nii.gz", tmp_path / "labelsTr/la_001.nii.gz")
    image, mask = dataset.load_sample(0)
    assert image.shape == (2, 2, 3, 4) and mask.shape == (2, 3, 4)
    # x, y, z, c ramp: value = ((x*3 + y)*2 + z)*2 + c
    assert image[1, 1, 2, 3].item() == ((3 * 3 + 2) * 2 + 1) * 2 + 1
    assert mask[0, 1, 3].item() == 1 and mask.sum().item() == 1
    properties = dataset.read_properties(0)
    assert properties["spacing"] == pytest.approx((2.5, 0.7, 0.8))
    assert np.allclose(properties["affine"], AFFINE) and properties["case"] == "la_001"
    test = VolumeDataset(tmp_path, "test", num_classes=2, in_channels=2)
    assert test.samples == [(tmp_path / "imagesTs/t0.nii.gz", None)] and test.load_sample(0)[1] is None


def test_msd_train_val_split_and_channel_check(tmp_path):
    write_msd(tmp_path, cases=("a", "b", "c", "d", "e"), channels=1)
    train = VolumeDataset(tmp_path, "train", 2, val_fraction=0.2)
    val = VolumeDataset(tmp_path, "val", 2, val_fraction=0.2)
    assert len(train) == 4 and len(val) == 1 and not set(train.samples) & set(val.samples)
    assert train.load_sample(0)[0].shape == (1, 2, 3, 4)
    with pytest.raises(DataError, match="a.nii.gz: image has 1 channels"):
        VolumeDataset(tmp_path, "all", 2, in_channels=2).load_sample(0)


def test_msd_label_shape_mismatch_names_the_case(tmp_path):
    write_msd(tmp_path, cases=("bad",), channels=1, num_test=0)
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 3), np.uint8), AFFINE), str(tmp_path / "labelsTr/bad.nii.gz"))
    with pytest.raises(DataError, match=r"bad\.nii\.gz.*\[2, 3, 4\] differs from label shape \[3, 3, 4\]"):
        VolumeDataset(tmp_path, "all", 2).load_sample(0)


def test_nifti_affine_round_trip(tmp_path):
    source = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(ramp((4, 3, 2)), AFFINE), str(source))
    image, properties = read_nifti(source)
    prediction = (image > 10).astype(np.uint8)  # (z, y, x)
    write_nifti(tmp_path / "pred.nii.gz", prediction, properties)
    written = nib.load(str(tmp_path / "pred.nii.gz"))
    assert np.allclose(written.affine, AFFINE)
    assert np.array_equal(np.asarray(written.dataobj), (ramp((4, 3, 2)) > 10).astype(np.uint8))
    again, again_properties = read_nifti(tmp_path / "pred.nii.gz", is_label=True)
    assert np.array_equal(again, prediction) and np.allclose(again_properties["affine"], properties["affine"])
    assert again_properties["spacing"] == pytest.approx(properties["spacing"])


# ------------------------------------------------------------------ TIFF


def write_tiff(path: Path, volume: np.ndarray, mode=None):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    pages = [Image.fromarray(page, mode) if mode else Image.fromarray(page) for page in volume]
    pages[0].save(path, save_all=True, append_images=pages[1:])


def test_tiff_stack_case(tmp_path):
    image = ramp((3, 4, 5)).astype(np.uint8)
    mask = np.zeros((3, 4, 5), np.uint8)
    mask[2, 3, 4] = 1
    write_tiff(tmp_path / "images/c1.tif", image)
    write_tiff(tmp_path / "masks/c1.tif", mask)
    dataset = VolumeDataset(tmp_path, "all", num_classes=2, spacing=[2, 1, 1])
    assert dataset.layout == "tiff" and dataset.samples == [(tmp_path / "images/c1.tif", tmp_path / "masks/c1.tif")]
    loaded, loaded_mask = dataset.load_sample(0)
    assert loaded.shape == (1, 3, 4, 5) and loaded[0, 2, 3, 4].item() == 59.0
    assert loaded_mask.shape == (3, 4, 5) and loaded_mask[2, 3, 4].item() == 1 and loaded_mask.sum().item() == 1
    assert dataset.read_properties(0)["spacing"] == (2.0, 1.0, 1.0)


def test_tiff_float_pages_and_errors(tmp_path):
    write_tiff(tmp_path / "images/c2.tif", ramp((2, 3, 3)) / 4, mode="F")
    write_tiff(tmp_path / "masks/c2.tif", np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(DataError, match=r"c2\.tif: spacing is missing.*data\.spacing"):
        VolumeDataset(tmp_path, "all", num_classes=2).load_sample(0)
    with pytest.raises(DataError, match=r"c2\.tif.*\[2, 3, 3\] differs from label shape \[2, 3, 4\]"):
        VolumeDataset(tmp_path, "all", num_classes=2, spacing=[1, 1, 1]).load_sample(0)
    write_tiff(tmp_path / "masks/c2.tif", np.zeros((2, 3, 3), np.uint8))
    image, _ = VolumeDataset(tmp_path, "all", num_classes=2, spacing=[1, 1, 1]).load_sample(0)
    assert image[0, 1, 2, 2].item() == 17 / 4


def test_registered_and_layout_errors(tmp_path):
    assert DATASETS.get("volumes") is VolumeDataset
    with pytest.raises(DataError, match="no volume layout found"):
        VolumeDataset(tmp_path, "train", 2)
    with pytest.raises(DataError, match="does not exist"):
        VolumeDataset(tmp_path / "missing", "train", 2)


def test_patches_drawn_from_volume_cases(tmp_path):
    from datasets.patches import PatchDataset
    seg = np.zeros((4, 6, 6), np.uint8)
    seg[3, 5, 5] = 1
    write_npz_case(tmp_path, "a", ramp((4, 6, 6)), seg)
    patches = PatchDataset(VolumeDataset(tmp_path, "all", 2), patch_size=[2, 3, 3], length=4, batch_size=2,
                           num_classes=2, foreground_share=0.5)
    torch.manual_seed(0)
    image, mask = patches[1]  # the last of its batch: centred on the one foreground voxel
    assert image.shape == (1, 2, 3, 3) and mask.shape == (2, 3, 3)
    assert (mask == 1).sum().item() == 1
    assert image[0][mask == 1].item() == 3 * 36 + 5 * 6 + 5


# ------------------------------------------------------------------ the data check and class weights on volumes


def test_data_check_and_class_counts_read_volume_cases(tmp_path):
    """The start-up check reads each case as training does (naming a bad one), caches the good ones, and the
    full report and the class weights count voxels per class by hand."""
    from datasets.check import check_before_training, check_dataset
    from utils.class_stats import class_pixel_counts
    from utils.errors import DataError

    seg = np.zeros((2, 3, 4), np.uint8)
    seg[0, :, :2] = 1
    seg[1, 0, 0] = 255
    for name in ("a", "b"):
        write_npz_case(tmp_path / "root" / "train", name, ramp((2, 3, 4)), seg)
    write_npz_case(tmp_path / "root" / "val", "c", ramp((2, 3, 4)), seg)
    splits = {s: VolumeDataset(tmp_path / "root", s, 2) for s in ("train", "val")}
    kwargs = dict(root=tmp_path / "root", dataset_name="volumes", num_classes=2, class_names=["bg", "fg"],
                  progress=False)
    cache = tmp_path / "cache.json"
    check_before_training(splits, {}, "quick", cache, "train.py --check-data", **kwargs)
    assert len(json.loads(cache.read_text())["passed"]) == 3
    report = check_dataset(splits, {}, str(tmp_path / "root"), "volumes", 2, ["bg", "fg"], progress=False)
    assert report.problems == [] and report.total().class_pixels.tolist() == [3 * 17, 3 * 6]
    assert report.total().ignore_pixels == 3
    counts = class_pixel_counts(splits["train"])
    assert counts.pixels.tolist() == [2 * 17, 2 * 6]

    write_npz_case(tmp_path / "root" / "val", "c", ramp((2, 3, 4)), np.full((2, 3, 4), 3, np.uint8))
    with pytest.raises(DataError, match=r"c\.npz.*\[3\]"):
        check_before_training(splits, {}, "quick", cache, "train.py --check-data", **kwargs)
