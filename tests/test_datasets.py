"""Tests for datasets.io (image/mask reading, mask mappings) and FolderDataset."""
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torchvision import tv_tensors

from datasets import FolderDataset, list_images, parse_mask_mapping, read_image, read_mask
from datasets.io import count_mask, distinct_pixels
from utils.errors import DataError
from utils.constants import IGNORE_INDEX
from utils.registry import DATASETS


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    """Write ``array`` as an image file (format from the suffix), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def square_mask(size: int = 16, value: int = 1) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[4:12, 6:14] = value
    return mask


def make_pairs(folder: Path, stems, size: int = 8) -> None:
    """Write RGB images and class-index masks named by ``stems`` into folder/images and folder/masks."""
    for stem in stems:
        save(folder / "images" / f"{stem}.png", np.full((size, size, 3), 100, dtype=np.uint8))
        save(folder / "masks" / f"{stem}.png", np.eye(size, dtype=np.uint8))


# ------------------------------------------------------------------ masks


def test_identity_reads_class_indices(tmp_path):
    mask = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    out = read_mask(save(tmp_path / "m.png", mask), "identity", num_classes=3)
    assert out.dtype == torch.int64 and out.shape == (2, 3)
    assert out.tolist() == mask.tolist()


def test_identity_on_palette_png_reads_indices_not_colours(tmp_path):
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    image = Image.fromarray(indices)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    image.save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode == "P"
    assert read_mask(tmp_path / "m.png", "identity", 3).tolist() == [[0, 1], [2, 1]]


def test_binary_maps_0_255_to_0_1(tmp_path):
    path = save(tmp_path / "m.png", square_mask(value=255))
    assert torch.equal(read_mask(path, "binary", 2), torch.from_numpy(square_mask(value=1)).long())


def test_binary_threshold_is_above_127(tmp_path):
    """Grey values above 127 are class 1: 127 is still background, 128 already foreground."""
    grey = np.array([[0, 100, 127, 128, 200, 255]], dtype=np.uint8)
    path = save(tmp_path / "m.png", grey)
    assert np.asarray(Image.open(path)).tolist() == grey.tolist()  # stored losslessly
    out = read_mask(path, "binary", 2)
    assert out.dtype == torch.int64
    assert out.tolist() == [[0, 0, 0, 1, 1, 1]]


def test_binary_on_jpeg_noisy_mask_is_right_except_at_edges(tmp_path):
    truth = np.zeros((48, 48), dtype=np.uint8)
    truth[10:30, 12:40] = 1
    path = save(tmp_path / "m.jpg", truth * 255, quality=70)
    raw = np.asarray(Image.open(path))
    assert len(np.unique(raw)) > 2  # the JPEG really is noisy
    wrong = read_mask(path, "binary", 2).numpy() != truth
    edges = ndimage.binary_dilation(truth, iterations=2) & ~ndimage.binary_erosion(truth, iterations=2)
    assert not (wrong & ~edges).any()
    assert wrong.sum() <= 0.02 * truth.size


def test_binary_converts_rgb_masks_to_grey(tmp_path):
    rgb = np.repeat(square_mask(value=255)[..., None], 3, axis=2)
    assert torch.equal(read_mask(save(tmp_path / "m.png", rgb), "binary", 2), torch.from_numpy(square_mask()).long())


def test_nonzero_on_16bit_tiff_instance_labels(tmp_path):
    labels = np.zeros((6, 6), dtype=np.uint16)
    labels[0, :2], labels[2, 3], labels[5, 5] = 7, 300, 65535
    path = save(tmp_path / "m.tif", labels)
    assert Image.open(path).mode.startswith("I;16")
    assert read_mask(path, "nonzero", 2).numpy().tolist() == (labels > 0).astype(int).tolist()


@pytest.mark.parametrize(
    "red, green",
    [("255,0,0", "0,255,0"), ("[255, 0, 0]", " [0,255,0] "), ("#ff0000", "#00FF00"), ("255, 0, 0", "#00ff00")],
)
def test_colour_mapping_accepts_all_key_syntaxes(tmp_path, red, green):
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 1] = (255, 0, 0)
    rgb[1, 2] = (0, 255, 0)
    mapping = {"0,0,0": 0, red: 1, green: 2}
    out = read_mask(save(tmp_path / "m.png", rgb), mapping, num_classes=3)
    assert out.tolist() == [[0, 1, 0], [0, 0, 2]]


def test_colour_mapping_lists_unmapped_colours_with_counts(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[0, :3] = (10, 20, 30)
    path = save(tmp_path / "m.png", rgb)
    with pytest.raises(ValueError, match=r'm\.png.*"10,20,30" \(3 px\)'):
        read_mask(path, {"0,0,0": 0}, num_classes=2)


def test_value_mapping_maps_values_and_keeps_ignore(tmp_path):
    mask = np.array([[0, 128, 200], [255, 0, 128]], dtype=np.uint8)
    path = save(tmp_path / "m.png", mask)
    out = read_mask(path, {0: 0, 128: 1, 200: 2}, num_classes=3)
    assert out.tolist() == [[0, 1, 2], [IGNORE_INDEX, 0, 1]]
    explicit = read_mask(path, {"0": 0, 128: 1, 200: 1, 255: IGNORE_INDEX}, num_classes=2)
    assert explicit.tolist() == [[0, 1, 1], [IGNORE_INDEX, 0, 1]]


def test_value_mapping_rejects_unmapped_values(tmp_path):
    path = save(tmp_path / "m.png", np.array([[0, 7, 9]], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"m\.png: holds values \{7, 9\} missing from data\.mask_mapping"):
        read_mask(path, {0: 0}, num_classes=2)


def test_parse_mask_mapping_forms_and_repr():
    assert repr(parse_mask_mapping("binary")) == "MaskMapping('binary')"
    assert repr(parse_mask_mapping(" Identity ")) == "MaskMapping('identity')"
    assert repr(parse_mask_mapping({255: 1, 0: 0})) == "MaskMapping({0: 0, 255: 1})"
    assert repr(parse_mask_mapping({"#ff0000": 1, "0,0,0": 0})) == "MaskMapping({'0,0,0': 0, '255,0,0': 1})"
    colours = parse_mask_mapping({"#ff0000": 1})
    assert parse_mask_mapping(colours) is colours


def test_unknown_mapping_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown data.mask_mapping 'binar'.*identity, binary, nonzero"):
        parse_mask_mapping("binar")


@pytest.mark.parametrize("key", ["255,0", "#ff00", "[300, 0, 0]", "red", "1,2,3,4"])
def test_bad_colour_key_is_rejected(key):
    with pytest.raises(ValueError, match="bad colour key"):
        parse_mask_mapping({"0,0,0": 0, key: 1})


@pytest.mark.parametrize(
    "mapping, message",
    [({0: "a"}, "classes must be integers"), ({0: -1}, "classes must be integers"), ({0: 1.5}, "integers"),
     ({0: 0, "255,0,0": 1}, "mixes pixel values and colours"), ({}, "non-empty"), (3, "must be one of"),
     ({"1,2,3": 1, "#010203": 2}, "twice")],
)
def test_invalid_mappings_are_rejected(mapping, message):
    with pytest.raises(ValueError, match=message):
        parse_mask_mapping(mapping)


def test_0_255_mask_with_identity_suggests_binary(tmp_path):
    path = save(tmp_path / "masks" / "a.png", square_mask(value=255))
    with pytest.raises(ValueError) as err:
        read_mask(path, "identity", num_classes=2)
    message = str(err.value)
    assert message.startswith(str(path))
    assert "{0, 255}" in message and "data.num_classes=2 allows 0..1" in message
    assert "data.mask_mapping: binary" in message


def test_noisy_binary_values_out_of_range_suggest_binary(tmp_path):
    path = save(tmp_path / "m.png", np.array([[0, 1, 3, 250, 255]], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"holds values \{3, 250\} .*data\.mask_mapping: binary"):
        read_mask(path, "identity", num_classes=2)


def test_out_of_range_classes_suggest_more_classes(tmp_path):
    path = save(tmp_path / "m.png", np.array([[0, 1, 4]], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"m\.png: holds values \{4\} .*allows 0\.\.2.*num_classes to 5"):
        read_mask(path, "identity", num_classes=3)


def test_instance_labels_suggest_nonzero(tmp_path):
    path = save(tmp_path / "m.png", np.arange(30, dtype=np.uint8).reshape(5, 6))
    with pytest.raises(ValueError, match="mask_mapping: nonzero"):
        read_mask(path, "identity", num_classes=2)


def test_colour_mask_with_identity_suggests_colour_mapping(tmp_path):
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[:2] = (255, 0, 0)
    path = save(tmp_path / "m.png", rgb)
    with pytest.raises(ValueError, match=r'm\.png: is an RGB colour mask.*"255,0,0": \d'):
        read_mask(path, "identity", num_classes=2)


# ------------------------------------------------------------------ counting


def test_count_mask_counts_raw_values_and_classes(tmp_path):
    # 3x4: row 0 = 0 0 128 128, row 1 = 128 255 255 0, row 2 = 0 0 0 0
    mask = np.array([[0, 0, 128, 128], [128, 255, 255, 0], [0, 0, 0, 0]], dtype=np.uint8)
    path = save(tmp_path / "m.png", mask)
    counts = count_mask(path, parse_mask_mapping({0: 0, 128: 2}), num_classes=3)
    assert counts.size == (4, 3) and counts.problem is None
    assert counts.values.tolist() == [0, 128, 255] and counts.value_pixels.tolist() == [7, 3, 2]
    assert counts.class_pixels.tolist() == [7, 0, 3] and counts.class_pixels.dtype == np.int64
    assert counts.ignore_pixels == 2
    counts.raise_problem(path)  # no problem: nothing raised
    binary = count_mask(path, parse_mask_mapping("binary"), num_classes=2)  # 128 and 255 are above 127
    assert binary.class_pixels.tolist() == [7, 5] and binary.ignore_pixels == 0


def test_count_mask_returns_problems_with_the_raw_counts(tmp_path):
    path = save(tmp_path / "m.png", square_mask(value=255))  # 64 px of 255 in 256
    counts = count_mask(path, parse_mask_mapping("identity"), num_classes=2)
    assert counts.problem.kind == "mask values outside the classes"
    assert "{0, 255}" in counts.problem.message and "data.mask_mapping: binary" in counts.problem.fix
    assert counts.value_pixels.tolist() == [192, 64] and counts.class_pixels.tolist() == [0, 0]
    with pytest.raises(DataError, match=r"m\.png: holds values \{0, 255\}.*mask_mapping: binary"):
        counts.raise_problem(path)

    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[:1] = (255, 0, 0)
    colour = count_mask(save(tmp_path / "rgb.png", rgb), parse_mask_mapping("identity"), num_classes=2)
    assert colour.problem.kind == "RGB colour mask" and colour.values.tolist() == [[0, 0, 0], [255, 0, 0]]
    assert colour.value_pixels.tolist() == [12, 4]
    seven = save(tmp_path / "seven.png", square_mask(value=7))
    unmapped = count_mask(seven, parse_mask_mapping({0: 0}), num_classes=2)  # 255 would be ignore, 7 is unmapped
    assert unmapped.problem.kind == "unmapped mask values" and "holds values {7}" in unmapped.problem.message
    assert unmapped.value_pixels.tolist() == [192, 64]


def test_count_mask_of_an_unreadable_file_raises(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        count_mask(path, parse_mask_mapping("identity"), num_classes=2)


def test_distinct_pixels_of_values_and_colours():
    values, counts = distinct_pixels(np.array([[3, 1], [3, 3]], dtype=np.uint16))
    assert values.tolist() == [1, 3] and counts.tolist() == [1, 3] and values.dtype == np.uint16
    values, counts = distinct_pixels(np.array([[2, -1], [2, 2]], dtype=np.int32))
    assert values.tolist() == [-1, 2] and counts.tolist() == [1, 3]
    colours = np.array([[[0, 0, 9], [1, 2, 3]], [[0, 0, 9], [0, 0, 9]]], dtype=np.uint8)
    values, counts = distinct_pixels(colours)
    assert values.tolist() == [[0, 0, 9], [1, 2, 3]] and counts.tolist() == [3, 1]


def test_grey_mask_saved_as_rgb_works_with_identity(tmp_path):
    grey = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    path = save(tmp_path / "m.png", np.repeat(grey[..., None], 3, axis=2))
    assert read_mask(path, "identity", 2).tolist() == grey.tolist()


# ----------------------------------------------------------------- images


def test_rgb_8bit_is_divided_by_255(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = read_image(save(tmp_path / "i.png", rgb))
    assert out.dtype == torch.float32 and out.shape == (3, 5, 7)
    assert torch.allclose(out, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)


def test_rgba_alpha_is_dropped(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 10
    out = read_image(save(tmp_path / "i.png", rgba))
    assert out.shape == (3, 2, 2) and out[0].eq(1).all() and out[1:].eq(0).all()


def test_grey_8bit_with_one_and_three_channels(tmp_path):
    grey = np.array([[0, 51], [102, 255]], dtype=np.uint8)
    path = save(tmp_path / "g.png", grey)
    one = read_image(path, in_channels=1)
    three = read_image(path, in_channels=3)
    assert one.shape == (1, 2, 2) and three.shape == (3, 2, 2)
    assert torch.allclose(one[0], torch.tensor([[0.0, 0.2], [0.4, 1.0]]))
    assert all(torch.equal(three[c], one[0]) for c in range(3))


def test_rgb_to_one_channel_uses_itu_601_luminance(tmp_path):
    rgb = np.array([[[200, 100, 50], [0, 0, 255]]], dtype=np.uint8)
    out = read_image(save(tmp_path / "i.png", rgb), in_channels=1)
    expected = [(0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, 0.114]
    assert out.shape == (1, 1, 2)
    assert torch.allclose(out[0, 0], torch.tensor(expected), atol=1e-6)


def test_channel_count_mismatch_is_rejected(tmp_path):
    path = save(tmp_path / "i.png", np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"i\.png: has 3 channel\(s\) but in_channels=2"):
        read_image(path, in_channels=2)


def expected_percentile_scaling(values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values, 0.5), np.percentile(values, 99.5)
    return (np.clip(values.astype(np.float64), low, high) - low) / (high - low)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_auto_clips_to_percentiles(tmp_path, suffix):
    values = np.random.default_rng(1).integers(0, 4000, (20, 20)).astype(np.uint16)
    values[0, 0], values[0, 1] = 65000, 0  # outliers beyond the percentiles
    path = save(tmp_path / f"i{suffix}", values)
    out = read_image(path, intensity="auto", in_channels=1)
    assert out.shape == (1, 20, 20)
    assert np.allclose(out[0].numpy(), expected_percentile_scaling(values), atol=1e-6)
    assert out.min() == 0 and out.max() == 1


def test_big_endian_16bit_tiff_is_read(tmp_path):
    values = np.arange(400, dtype=np.uint16).reshape(20, 20) * 100
    Image.frombytes("I;16B", (20, 20), values.astype(">u2").tobytes()).save(tmp_path / "i.tif")
    out = read_image(tmp_path / "i.tif", intensity="none", in_channels=1)
    assert torch.equal(out[0], torch.from_numpy(values.astype(np.float32)))


def test_float_tiff_auto_and_none(tmp_path):
    values = np.linspace(-3.0, 5.0, 64, dtype=np.float32).reshape(8, 8)
    path = save(tmp_path / "f.tif", values)
    assert torch.equal(read_image(path, intensity="none", in_channels=1)[0], torch.from_numpy(values))
    scaled = read_image(path, intensity="auto", in_channels=3)
    assert scaled.shape == (3, 8, 8)
    assert np.allclose(scaled[0].numpy(), expected_percentile_scaling(values), atol=1e-6)


def test_percentile_applies_to_8bit_and_none_keeps_raw(tmp_path):
    grey = np.random.default_rng(2).integers(10, 200, (10, 10)).astype(np.uint8)
    path = save(tmp_path / "g.png", grey)
    assert np.allclose(read_image(path, "percentile", 1)[0].numpy(), expected_percentile_scaling(grey), atol=1e-6)
    assert torch.equal(read_image(path, "none", 1)[0], torch.from_numpy(grey.astype(np.float32)))


def test_constant_16bit_image_gives_zeros(tmp_path):
    path = save(tmp_path / "c.png", np.full((4, 4), 1234, dtype=np.uint16))
    out = read_image(path, in_channels=1)
    assert torch.equal(out, torch.zeros(1, 4, 4))


def test_corrupt_image_raises_naming_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png: .*is it a valid image\?"):
        read_image(path)


def test_list_images_ignores_other_files_and_matches_suffix_case(tmp_path):
    for name in ["b.JPG", "a.png", "c.TiFF", "LICENSE.txt", ".DS_Store", "ATTRIBUTION.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.TiFF"]
    with pytest.raises(DataError, match="nowhere"):
        list_images(tmp_path / "nowhere")


# ---------------------------------------------------------- FolderDataset


def folder(root, split="train", **kwargs) -> FolderDataset:
    return FolderDataset(root=str(root), split=split, num_classes=kwargs.pop("num_classes", 8), **kwargs)


def test_registered_with_annotated_arguments():
    assert DATASETS.get("folder") is FolderDataset and FolderDataset.generates_its_files is False
    hints = typing.get_type_hints(FolderDataset.__init__)
    assert hints["root"] is str and hints["num_classes"] is int and hints["cache"] is bool


def test_flat_split_is_seeded_disjoint_and_complete(tmp_path):
    stems = [f"{i:03d}" for i in range(20)]
    make_pairs(tmp_path, stems)
    train, val = folder(tmp_path, "train"), folder(tmp_path, "val")
    train_stems = [img.stem for img, _ in train.samples]
    val_stems = [img.stem for img, _ in val.samples]
    assert len(val_stems) == 4 and len(train_stems) == 16
    assert sorted(train_stems + val_stems) == stems
    assert [img.stem for img, _ in folder(tmp_path, "val").samples] == val_stems
    assert [img.stem for img, _ in folder(tmp_path, "val", seed=1).samples] != val_stems
    assert len(folder(tmp_path, "all")) == 20


def test_flat_split_does_not_depend_on_file_creation_order(tmp_path):
    stems = [f"s{i}" for i in range(12)]
    make_pairs(tmp_path / "forward", stems)
    make_pairs(tmp_path / "backward", stems[::-1])
    splits = [[img.stem for img, _ in folder(tmp_path / d, "val", seed=3).samples] for d in ("forward", "backward")]
    assert splits[0] == splits[1]


def test_flat_split_keeps_one_val_image(tmp_path):
    make_pairs(tmp_path, ["a", "b"])
    assert len(folder(tmp_path, "val", val_fraction=0.01)) == 1
    assert len(folder(tmp_path, "train", val_fraction=0.01)) == 1


def test_flat_layout_has_no_test_split(tmp_path):
    make_pairs(tmp_path, ["a", "b"])
    with pytest.raises(ValueError, match="no test split"):
        folder(tmp_path, "test")


def test_split_folder_layout_and_test_split_without_masks(tmp_path):
    make_pairs(tmp_path / "train", ["a", "b", "c"])
    make_pairs(tmp_path / "val", ["d"])
    save(tmp_path / "test" / "images" / "e.png", np.zeros((8, 8, 3), dtype=np.uint8))
    assert [img.name for img, _ in folder(tmp_path, "train").samples] == ["a.png", "b.png", "c.png"]
    assert [img.name for img, _ in folder(tmp_path, "val").samples] == ["d.png"]
    test = folder(tmp_path, "test")
    assert test.samples == [(tmp_path / "test" / "images" / "e.png", None)] and not test.has_masks
    image, mask = test.read_sample(0)
    assert image.shape == (3, 8, 8) and mask is None
    _, filled = test[0]
    assert filled.dtype == torch.int64 and filled.eq(IGNORE_INDEX).all()
    assert len(folder(tmp_path, "all")) == 5


def test_missing_split_folder_names_existing_splits(tmp_path):
    make_pairs(tmp_path / "train", ["a"])
    with pytest.raises(DataError, match=r"val.images does not exist; this dataset has the splits train"):
        folder(tmp_path, "val")


def test_pairs_by_stem_with_case_insensitive_suffix_ignoring_other_files(tmp_path):
    save(tmp_path / "images" / "a.JPG", np.zeros((8, 8, 3), dtype=np.uint8))
    save(tmp_path / "images" / "b.png", np.zeros((8, 8, 3), dtype=np.uint8))
    save(tmp_path / "masks" / "a.png", np.zeros((8, 8), dtype=np.uint8))
    save(tmp_path / "masks" / "b.PNG", np.zeros((8, 8), dtype=np.uint8))
    (tmp_path / "images" / "LICENSE.txt").write_text("CC-BY")
    (tmp_path / "masks" / ".DS_Store").write_bytes(b"\0")
    samples = folder(tmp_path, "all").samples
    assert [(img.name, mask.name) for img, mask in samples] == [("a.JPG", "a.png"), ("b.png", "b.PNG")]


def test_unpaired_files_are_named(tmp_path):
    make_pairs(tmp_path, ["a", "b"])
    save(tmp_path / "images" / "orphan.png", np.zeros((8, 8, 3), dtype=np.uint8))
    save(tmp_path / "masks" / "stray.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError) as err:
        folder(tmp_path, "train")
    message = str(err.value)
    assert "orphan.png" in message and "stray.png" in message and "same file stem" in message


def test_duplicate_stems_are_rejected(tmp_path):
    make_pairs(tmp_path, ["a", "b"])
    save(tmp_path / "images" / "a.jpg", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"a\.jpg and a\.png have the same stem 'a'"):
        folder(tmp_path, "train")


def test_empty_and_missing_folders_are_reported(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match=r"images holds no images.*expected either split folders"):
        folder(tmp_path, "train")
    with pytest.raises(DataError, match=r"nowhere does not exist"):
        folder(tmp_path / "nowhere", "train")
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="none of train/images/, images/train/ and images/"):
        folder(tmp_path / "other", "train")


def test_size_mismatch_names_both_files(tmp_path):
    save(tmp_path / "images" / "0003.png", np.zeros((8, 9, 3), dtype=np.uint8))
    save(tmp_path / "masks" / "0003.png", np.zeros((8, 8), dtype=np.uint8))
    dataset = folder(tmp_path, "all")
    with pytest.raises(ValueError, match=r"masks.0003\.png: size 8x8 differs from image .*images.0003\.png 9x8"):
        dataset.read_sample(0)


def test_bad_mask_is_reported_when_loaded_not_at_construction(tmp_path):
    make_pairs(tmp_path, ["a"])
    save(tmp_path / "masks" / "a.png", np.full((8, 8), 9, dtype=np.uint8))
    dataset = folder(tmp_path, "all", num_classes=3)
    with pytest.raises(ValueError, match=r"a\.png: holds values \{9\}"):
        dataset[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [({"split": "training"}, "split must be one of"), ({"num_classes": 1}, "at least 2"),
     ({"val_fraction": 1.0}, "val_fraction"), ({"intensity": "zscore"}, "intensity must be"),
     ({"mask_mapping": {0: 0, 255: 2}}, r"maps to class\(es\) \[2\] but num_classes=2")],
)
def test_bad_arguments_are_rejected(tmp_path, kwargs, message):
    make_pairs(tmp_path, ["a", "b"])
    arguments = {"root": str(tmp_path), "split": "train", "num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        FolderDataset(**arguments)


def test_getitem_applies_transforms_and_returns_tv_tensors(tmp_path):
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[:, 0] = 255
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[:, 0] = 1
    save(tmp_path / "images" / "a.png", image)
    save(tmp_path / "masks" / "a.png", mask)
    calls = []

    def hflip(img, msk):
        calls.append((type(img), type(msk)))
        return img.flip(-1), msk.flip(-1)

    img, msk = folder(tmp_path, "all", num_classes=2, transforms=hflip)[0]
    assert calls == [(tv_tensors.Image, tv_tensors.Mask)]
    assert isinstance(img, tv_tensors.Image) and isinstance(msk, tv_tensors.Mask)
    assert img.dtype == torch.float32 and msk.dtype == torch.int64
    assert img[:, :, -1].eq(1).all() and img[:, :, 0].eq(0).all()
    assert msk[:, -1].eq(1).all() and msk[:, :-1].eq(0).all()


def test_without_transforms_getitem_returns_the_raw_sample(tmp_path):
    make_pairs(tmp_path, ["a"])
    img, msk = folder(tmp_path, "all")[0]
    assert isinstance(img, tv_tensors.Image) and isinstance(msk, tv_tensors.Mask)
    assert torch.allclose(img, torch.full((3, 8, 8), 100 / 255))
    assert torch.equal(msk, torch.eye(8, dtype=torch.int64))


def test_cache_serves_decoded_samples_from_memory(tmp_path):
    make_pairs(tmp_path, ["a"])
    dataset = folder(tmp_path, "all", cache=True)
    image, mask = dataset.read_sample(0)
    image += 1  # the caller's copy: must not change the cache
    for path in dataset.samples[0]:
        path.unlink()
    again, mask_again = dataset.read_sample(0)
    assert torch.allclose(again, torch.full((3, 8, 8), 100 / 255)) and torch.equal(mask_again, mask)
