"""Paired transforms: image and mask stay aligned, masks are never interpolated; the builder and its checks.

Photometric transforms, warps and mosaic have their own files (test_transforms_*.py).
"""
import inspect
import typing
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

import utils.transforms.geometry as geometry_module
from tests.fixtures_transforms import (ALL_SPECS, CLASSES, EXACT_SPECS, GEOMETRIC_SPECS, PHOTOMETRIC_SPECS,
                                       RESAMPLING_SPECS, SEEDS, block_mask, image_of, run_seeded, spec_id,
                                       uniform_interior)
from utils.config import load_config
from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError
from utils.registry import TRANSFORMS
from utils.transforms import Compose, build_transforms

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- #
# Geometry: one draw for image and mask
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("spec", EXACT_SPECS, ids=spec_id)
def test_exact_geometry_keeps_image_and_mask_aligned(spec):
    for seed in SEEDS:
        mask = block_mask(seed=seed)
        out_image, out_mask = run_seeded(spec, image_of(mask), mask, seed)
        labelled = out_mask != IGNORE_INDEX
        expected = torch.where(labelled, out_mask + 1, 0).float()
        assert torch.equal(out_image, expected.expand_as(out_image))


@pytest.mark.parametrize("spec", RESAMPLING_SPECS, ids=spec_id)
def test_resampling_geometry_keeps_image_and_mask_aligned(spec):
    for seed in SEEDS:
        mask = block_mask(seed=seed)
        out_image, out_mask = run_seeded(spec, image_of(mask), mask, seed)
        inside = uniform_interior(out_mask) & (out_mask != IGNORE_INDEX)
        assert inside.sum() >= 100  # enough interior pixels to judge
        for channel in out_image:
            agree = (channel.round().long() - 1 == out_mask)[inside].float().mean()
            assert agree >= 0.99, f"seed {seed}: only {agree:.3f} of interior pixels agree"


def test_flips_move_pixels_as_expected():
    mask = tv_tensors.Mask(torch.tensor([[0, 1, 2], [3, 4, 5]]))
    image = image_of(mask, channels=1)
    h_image, h_mask = build_transforms([{"name": "hflip", "p": 1.0}])(image, mask)
    v_image, v_mask = build_transforms([{"name": "vflip", "p": 1.0}])(image, mask)
    assert h_mask.tolist() == [[2, 1, 0], [5, 4, 3]]
    assert v_mask.tolist() == [[3, 4, 5], [0, 1, 2]]
    assert torch.equal(h_image[0], h_mask.float() + 1)
    # p=0 never flips.
    assert torch.equal(build_transforms([{"name": "hflip", "p": 0.0}])(image, mask)[1], mask)


def test_resize_shrinks_mask_with_image_pixel_centres():
    # Columns hold their own index; shrinking 16 -> 2 columns samples the
    # image at 3.5 and 11.5. The mask must pick a column within half a pixel
    # of those centres (plain nearest would pick columns 0 and 8).
    mask = tv_tensors.Mask(torch.arange(16).repeat(4, 1))
    image = tv_tensors.Image(mask[None].float())
    spec = {"name": "resize", "size": [4, 2], "antialias": False}
    out_image, out_mask = build_transforms([spec])(image, mask)
    assert out_mask.shape == (4, 2) and out_image.shape == (1, 4, 2)
    assert torch.allclose(out_image[0], torch.tensor([3.5, 11.5]).expand(4, 2))
    assert (out_image[0] - out_mask.float()).abs().max() <= 0.5


def test_output_sizes():
    mask = block_mask()  # 64 x 48
    image = image_of(mask)
    cases = [
        ({"name": "resize", "size": 32}, (32, 32)),
        ({"name": "resize", "size": [30, 20]}, (30, 20)),
        ({"name": "random_resized_crop", "size": [24, 16]}, (24, 16)),
        ({"name": "random_crop", "size": [70, 10]}, (70, 10)),
        ({"name": "rotate", "degrees": 45}, (64, 48)),
        ({"name": "random_scale_crop", "size": [24, 80], "scale": [0.5, 2.0]}, (24, 80)),
        ({"name": "random_scale_crop", "size": 16, "scale": [0.1, 0.1]}, (16, 16)),
        ({"name": "affine", "degrees": 30, "scale": [0.5, 2.0]}, (64, 48)),
        ({"name": "elastic", "p": 1.0}, (64, 48)),
    ]
    for spec, size in cases:
        out_image, out_mask = build_transforms([spec])(image, mask)
        assert out_image.shape == (3, *size) and out_mask.shape == size, spec


def test_random_crop_pads_image_with_zero_and_mask_with_ignore():
    mask = tv_tensors.Mask(torch.full((8, 6), 3))
    image = tv_tensors.Image(torch.ones(1, 8, 6))
    out_image, out_mask = build_transforms([{"name": "random_crop", "size": 12}])(image, mask)
    assert out_mask.shape == (12, 12)
    padded = out_mask == IGNORE_INDEX
    assert padded.sum() == 12 * 12 - 8 * 6
    assert torch.all(out_mask[~padded] == 3)
    assert torch.all(out_image[0][padded] == 0) and torch.all(out_image[0][~padded] == 1)


def test_random_crop_without_padding_rejects_small_images():
    mask = block_mask(8, 8)
    with pytest.raises(ConfigError, match="set pad_if_needed: true"):
        build_transforms([{"name": "random_crop", "size": 12, "pad_if_needed": False}])(image_of(mask), mask)


def test_rotate_fills_corners_with_ignore_and_zero():
    mask = tv_tensors.Mask(torch.full((32, 32), 2))
    image = tv_tensors.Image(torch.ones(1, 32, 32))
    torch.manual_seed(1)  # draws about 23 degrees
    out_image, out_mask = build_transforms([{"name": "rotate", "degrees": 45}])(image, mask)
    assert out_mask[0, 0] == IGNORE_INDEX and out_image[0, 0, 0] == 0
    assert out_mask[16, 16] == 2 and out_image[0, 16, 16] == 1


# --------------------------------------------------------------------------- #
# Mask values and types after every transform
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_mask_values_dtype_and_types(spec):
    for seed in SEEDS:
        mask = block_mask(seed=seed)
        mask[:4, :4] = IGNORE_INDEX
        out_image, out_mask = run_seeded(spec, image_of(mask % 8) / 8, mask, seed)
        assert type(out_mask) is tv_tensors.Mask and out_mask.dtype == torch.int64
        assert type(out_image) is tv_tensors.Image and out_image.dtype == torch.float32
        allowed = set(CLASSES.tolist()) | {IGNORE_INDEX}
        assert set(out_mask.unique().tolist()) <= allowed


@pytest.mark.parametrize("spec", ALL_SPECS, ids=spec_id)
def test_same_draw_with_and_without_mask(spec):
    mask = block_mask()
    image = image_of(mask) / 8
    with_mask, _ = run_seeded(spec, image, mask, seed=3)
    without_mask, none = run_seeded(spec, image, None, seed=3)
    assert none is None
    assert type(without_mask) is tv_tensors.Image
    assert torch.equal(with_mask, without_mask)


# --------------------------------------------------------------------------- #
# 1-channel images, plain tensors, input checks
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("spec", GEOMETRIC_SPECS + PHOTOMETRIC_SPECS[:2], ids=spec_id)
def test_one_channel_images(spec):
    mask = block_mask()
    out_image, out_mask = run_seeded(spec, image_of(mask, channels=1) / 8, mask, seed=1)
    assert out_image.shape[0] == 1 and out_image.shape[1:] == out_mask.shape


def test_color_jitter_on_one_channel_changes_brightness():
    image = tv_tensors.Image(torch.full((1, 4, 4), 0.5))
    torch.manual_seed(0)
    out_image, _ = build_transforms([{"name": "color_jitter", "brightness": 0.5, "saturation": 0.5, "hue": 0.2}])(
        image, None
    )
    assert out_image.shape == (1, 4, 4)
    assert not torch.allclose(out_image, image)
    assert torch.allclose(out_image, out_image.flatten()[0].expand_as(out_image))  # still uniform


def test_plain_tensors_are_wrapped():
    mask = torch.randint(0, 3, (16, 16))
    image = torch.rand(3, 16, 16)
    out_image, out_mask = build_transforms([{"name": "hflip", "p": 1.0}])(image, mask)
    assert type(out_image) is tv_tensors.Image and type(out_mask) is tv_tensors.Mask
    assert torch.equal(out_mask, mask.flip(-1)) and torch.equal(out_image, image.flip(-1))


def test_bad_inputs_raise():
    pipeline = build_transforms([])
    with pytest.raises(ValueError, match="differs from mask size"):
        pipeline(torch.rand(3, 8, 8), torch.zeros(8, 9, dtype=torch.int64))
    with pytest.raises(TypeError, match="float image"):
        pipeline(torch.zeros(3, 8, 8, dtype=torch.uint8), None)
    with pytest.raises(TypeError, match="int64 mask"):
        pipeline(torch.rand(3, 8, 8), torch.zeros(8, 8, dtype=torch.uint8))


# --------------------------------------------------------------------------- #
# build_transforms and the registry
# --------------------------------------------------------------------------- #
def test_registered_names_and_annotations():
    expected = {
        "resize", "random_resized_crop", "random_crop", "hflip", "vflip",
        "rotate", "color_jitter", "gaussian_blur", "normalize", "random_resize", "random_scale_crop",
        "photometric_distortion", "affine", "elastic", "gaussian_noise", "mosaic", "pad",
    }
    assert expected <= set(TRANSFORMS.names())
    for name in expected:
        cls = TRANSFORMS.get(name)
        hints = typing.get_type_hints(cls.__init__)
        assert set(inspect.signature(cls).parameters) <= set(hints), f"{name}: unannotated arguments"


def test_build_pipeline_from_specs():
    specs = [
        {"name": "resize", "size": [32, 24], "antialias": False},
        {"name": "hflip", "p": 1.0},
        {"name": "normalize", "mean": [0.0], "std": [2.0]},
    ]
    pipeline = build_transforms(specs)
    assert isinstance(pipeline, Compose) and len(pipeline.transforms) == 3
    mask = block_mask()
    out_image, out_mask = pipeline(image_of(mask), mask)
    assert out_image.shape == (3, 32, 24) and out_mask.shape == (32, 24)
    # Halving keeps one pixel of every 2x2 cell (8x8 blocks are never split).
    assert torch.equal(out_mask, mask[1::2, 1::2].flip(-1))
    assert torch.equal(out_image, (out_mask + 1).float().expand(3, -1, -1) / 2)
    assert specs[0] == {"name": "resize", "size": [32, 24], "antialias": False}  # not mutated


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_config_pipelines_build_and_run(name):
    cfg = load_config(REPO / "configs" / name, check_paths=False)
    mask = block_mask(96, 128)
    for specs in (cfg.transforms.train, cfg.transforms.val):
        out_image, out_mask = build_transforms(specs)(image_of(mask) / 8, mask)
        assert out_image.shape[-2:] == out_mask.shape
        assert set(out_mask.unique().tolist()) <= set(CLASSES.tolist()) | {IGNORE_INDEX}


def test_empty_pipeline_is_identity():
    image, mask = torch.rand(3, 5, 7), torch.randint(0, 4, (5, 7))
    out_image, out_mask = build_transforms([])(image, mask)
    assert type(out_image) is tv_tensors.Image and type(out_mask) is tv_tensors.Mask
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)
    assert build_transforms([])(image, None)[1] is None


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError, match="valid transform names.*hflip.*resize"):
        build_transforms([{"name": "hflipp"}])


def test_bad_specs_raise():
    with pytest.raises(ConfigError, match=r"transform 'resize': unknown argument 'sise' \(did you mean 'size'\?\); "
                                          "accepted: size, antialias"):
        build_transforms([{"name": "resize", "sise": 4}])
    with pytest.raises(ConfigError, match="transform 'random_crop': needs the argument 'size'"):
        build_transforms([{"name": "random_crop"}])
    with pytest.raises(ConfigError, match="'name'"):
        build_transforms([{"size": 4}])


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "hflip", "p": 1.5}, "p must be in"),
        ({"name": "vflip", "p": -0.1}, "p must be in"),
        ({"name": "resize", "size": 0}, "size must be"),
        ({"name": "resize", "size": [4, 4, 4]}, "size must be"),
        ({"name": "random_crop", "size": [-3, 4]}, "size must be"),
        ({"name": "random_resized_crop", "size": 8, "scale": [0.9, 0.5]}, "scale"),
        ({"name": "random_resized_crop", "size": 8, "scale": [0.5, 1.5]}, "scale"),
        ({"name": "random_resized_crop", "size": 8, "ratio": [0.0, 1.0]}, "ratio"),
        ({"name": "rotate", "degrees": -1}, "degrees"),
        ({"name": "rotate", "degrees": 10, "p": 2}, "p must be in"),
        ({"name": "color_jitter", "brightness": -0.1}, "brightness"),
        ({"name": "color_jitter", "hue": 0.6}, "hue"),
        ({"name": "gaussian_blur", "kernel_size": 4}, "kernel_size"),
        ({"name": "gaussian_blur", "sigma": [0.0, 1.0]}, "sigma"),
        ({"name": "normalize", "mean": [0.5, 0.5], "std": [0.5]}, "same"),
        ({"name": "normalize", "mean": [0.5], "std": [0.0]}, "std values must be > 0"),
        ({"name": "random_crop", "size": 8, "cat_max_ratio": 0.0}, "cat_max_ratio"),
        ({"name": "random_crop", "size": 8, "cat_max_ratio": 1.5}, "cat_max_ratio"),
        ({"name": "random_resize", "scale": [512]}, "scale must be"),
        ({"name": "random_resize", "scale": [512, 1024], "ratio_range": [2.0, 0.5]}, "ratio_range"),
        ({"name": "random_resize", "scale": [512, 1024], "ratio_range": [0.0, 2.0]}, "ratio_range"),
        ({"name": "random_scale_crop", "size": 8, "scale": [0.0, 1.0]}, "scale"),
        ({"name": "random_scale_crop", "size": 8, "cat_max_ratio": 0.0}, "cat_max_ratio"),
        ({"name": "photometric_distortion", "brightness": -0.1}, "brightness"),
        ({"name": "photometric_distortion", "contrast": [1.5, 0.5]}, "contrast"),
        ({"name": "photometric_distortion", "saturation": [0.0, 1.0]}, "saturation"),
        ({"name": "photometric_distortion", "hue": 0.7}, "hue"),
        ({"name": "photometric_distortion", "p": 1.1}, "p must be in"),
        ({"name": "affine", "degrees": 181}, "degrees"),
        ({"name": "affine", "translate": [0.5]}, "translate"),
        ({"name": "affine", "translate": [0.5, 1.5]}, "translate"),
        ({"name": "affine", "scale": [0.0, 1.0]}, "scale"),
        ({"name": "affine", "shear": 90}, "shear"),
        ({"name": "elastic", "alpha": -1.0}, "alpha"),
        ({"name": "elastic", "sigma": 0.0}, "sigma"),
        ({"name": "gaussian_noise", "std": -0.1}, "std"),
        ({"name": "mosaic", "size": 0}, "size must be"),
        ({"name": "mosaic", "size": 8, "center_range": [0.0, 0.5]}, "center_range"),
        ({"name": "mosaic", "size": 8, "center_range": [0.6, 0.4]}, "center_range"),
        ({"name": "mosaic", "size": 8, "p": -1.0}, "p must be in"),
        ({"name": "mosaic", "size": 8, "seg_pad_val": 256}, "seg_pad_val"),
        ({"name": "pad"}, "give size"),
        ({"name": "pad", "size": [8]}, "size must be"),
        ({"name": "pad", "size_divisor": 0}, "size_divisor"),
        ({"name": "pad", "size": 8, "seg_pad_val": -1}, "seg_pad_val"),
    ],
    ids=lambda value: value if isinstance(value, str) else spec_id(value),
)
def test_bad_arguments_raise_config_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_transforms([spec])


# --------------------------------------------------------------------------- #
# random_crop with cat_max_ratio
# --------------------------------------------------------------------------- #
def scripted_draws(monkeypatch, values):
    """Make the transforms' integer draws return ``values`` in order; returns the list of draws made."""
    made = []
    script = iter(values)

    def draw(low, high):
        value = next(script)
        assert low <= value <= high, f"scripted {value} outside [{low}, {high}]"
        made.append(value)
        return value

    monkeypatch.setattr(geometry_module, "randint", draw)
    return made


def class_strip_mask() -> tv_tensors.Mask:
    """20 x 100: class 1 in columns 0-4, IGNORE_INDEX in 90-99, class 0 elsewhere (94% of the labels)."""
    mask = torch.zeros(20, 100, dtype=torch.int64)
    mask[:, :5] = 1
    mask[:, 90:] = IGNORE_INDEX
    return tv_tensors.Mask(mask)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "random_crop", "size": [20, 10], "cat_max_ratio": 0.75},
        # Factor 1: the same windows, drawn by the same (row, column) offsets.
        {"name": "random_scale_crop", "size": [20, 10], "scale": [1.0, 1.0], "cat_max_ratio": 0.75},
    ],
    ids=["random_crop", "random_scale_crop"],
)
def test_cat_max_ratio_redraws_until_no_class_dominates(monkeypatch, spec):
    mask = class_strip_mask()
    # Draws are (row, column) offsets. Column 50: all class 0; 85: class 0 and
    # ignore only (one class); 90: ignore only; 1: four columns of class 1 ->
    # 60% class 0, kept.
    made = scripted_draws(monkeypatch, [0, 50, 0, 85, 0, 90, 0, 1, 0, 70])
    out_image, out_mask = build_transforms([spec])(image_of(mask), mask)
    assert made == [0, 50, 0, 85, 0, 90, 0, 1]
    assert torch.equal(out_mask, mask[:, 1:11])
    assert torch.equal(out_image[0], (mask[:, 1:11] + 1).float())


def test_cat_max_ratio_keeps_the_last_draw_after_ten_redraws(monkeypatch):
    mask = class_strip_mask()
    spec = {"name": "random_crop", "size": [20, 10], "cat_max_ratio": 0.75}
    made = scripted_draws(monkeypatch, [0, 40] * 10 + [0, 60, 0, 1])
    _, out_mask = build_transforms([spec])(image_of(mask), mask)
    assert len(made) == 22  # the first draw and ten more; the last is not checked
    assert torch.equal(out_mask, mask[:, 60:70])


def test_cat_max_ratio_one_takes_the_first_draw(monkeypatch):
    mask = class_strip_mask()
    made = scripted_draws(monkeypatch, [0, 50, 0, 1])
    _, out_mask = build_transforms([{"name": "random_crop", "size": [20, 10]}])(image_of(mask), mask)
    assert made == [0, 50] and torch.equal(out_mask, mask[:, 50:60])


def test_cat_max_ratio_improves_real_draws():
    # Class 1 is a 6-column strip of a 64 x 64 mask; a 16 x 16 crop holds 25-75%
    # of it for 13 of the 49 column offsets.
    mask = torch.zeros(64, 64, dtype=torch.int64)
    mask[:, 29:35] = 1
    mask = tv_tensors.Mask(mask)
    image = image_of(mask)

    def mixed_share(spec):
        pipeline, hits = build_transforms([spec]), 0
        for seed in range(40):
            torch.manual_seed(seed)
            counts = pipeline(image, mask)[1].flatten().bincount(minlength=2)
            hits += int(counts.min() > 0 and counts.max() / counts.sum() < 0.75)
        return hits / 40

    assert mixed_share({"name": "random_crop", "size": 16, "cat_max_ratio": 0.75}) >= 0.8  # 1 - (36 / 49) ** 11 = 0.97
    assert mixed_share({"name": "random_crop", "size": 16}) <= 0.4  # 13 / 49 = 0.27


def test_random_crop_places_small_images_inside_the_padding():
    mask = tv_tensors.Mask(torch.full((4, 4), 2))
    for seed in range(6):
        torch.manual_seed(seed)
        out_image, out_mask = build_transforms([{"name": "random_crop", "size": [6, 10]}])(image_of(mask), mask)
        rows, cols = (out_mask == 2).nonzero().unbind(1)
        assert (out_mask == 2).sum() == 16 and rows.max() - rows.min() == 3 and cols.max() - cols.min() == 3
        assert torch.equal(out_image[0] == 0, out_mask == IGNORE_INDEX)


# --------------------------------------------------------------------------- #
# random_resize and random_scale_crop
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "image_size, ratio, keep_ratio, expected",
    [
        # scale [100, 400] x 0.75 = target [75, 300]; factor min(300 / 200, 75 / 60) = 1.25
        ((60, 200), 0.75, True, (75, 250)),
        ((200, 60), 0.75, True, (250, 75)),  # orientation does not matter
        ((60, 200), 0.75, False, (75, 300)),
        # target [50, 200]; factor min(200 / 200, 50 / 60) = 0.8333: 200 * 0.8333 = 166.7
        ((60, 200), 0.5, True, (50, 167)),
        # target [150, 600]; factor min(600 / 200, 150 / 60) = 2.5
        ((60, 200), 1.5, True, (150, 500)),
        ((60, 200), 1.5, False, (150, 600)),
    ],
)
def test_random_resize_sizes(image_size, ratio, keep_ratio, expected):
    spec = {"name": "random_resize", "scale": [100, 400], "ratio_range": [ratio, ratio], "keep_ratio": keep_ratio}
    mask = tv_tensors.Mask(torch.zeros(image_size, dtype=torch.int64))
    out_image, out_mask = build_transforms([spec])(image_of(mask), mask)
    assert out_image.shape[-2:] == expected and out_mask.shape == expected


def test_random_resize_draws_the_ratio_from_its_range(monkeypatch):
    calls = []
    monkeypatch.setattr(geometry_module, "uniform", lambda low, high: calls.append((low, high)) or 1.5)
    spec = {"name": "random_resize", "scale": [100, 400], "ratio_range": [0.5, 2.0]}
    out_image, _ = build_transforms([spec])(torch.rand(3, 60, 200), None)
    assert calls == [(0.5, 2.0)] and out_image.shape == (3, 150, 500)


def test_random_scale_crop_pads_when_scaled_smaller():
    mask = tv_tensors.Mask(torch.full((40, 40), 3))
    spec = {"name": "random_scale_crop", "size": [32, 48], "scale": [0.5, 0.5]}
    out_image, out_mask = build_transforms([spec])(image_of(mask), mask)
    assert out_mask.shape == (32, 48)
    assert (out_mask == 3).sum() == 20 * 20 and (out_mask == IGNORE_INDEX).sum() == 32 * 48 - 400
    assert torch.equal(out_image[0] == 0, out_mask == IGNORE_INDEX)
    assert torch.allclose(out_image[0][out_mask == 3], torch.tensor(4.0))


def test_random_scale_crop_matches_resize_then_crop():
    # Factor 2 on a 16 x 16 ramp: the crop shows a 4 x 4 source window at twice
    # the size, so neighbouring output columns differ by half a source step.
    mask = tv_tensors.Mask(torch.arange(16).repeat(16, 1))
    image = tv_tensors.Image(mask[None].float())
    torch.manual_seed(0)
    out_image, out_mask = build_transforms([{"name": "random_scale_crop", "size": 8, "scale": [2.0, 2.0]}])(
        image, mask
    )
    first = int(out_mask[0, 0])
    assert out_mask[0].tolist() == [first + i // 2 for i in range(8)]
    assert torch.allclose(out_image[0, 4, 1:7].diff(), torch.tensor(0.5))


# --------------------------------------------------------------------------- #
# pad (mmsegmentation's Pad)
# --------------------------------------------------------------------------- #
def test_pad_to_size_at_the_bottom_and_right():
    mask = block_mask(10, 6, block=2)
    spec = {"name": "pad", "size": [16, 12], "pad_val": 0.25}
    out_image, out_mask = build_transforms([spec])(image_of(mask), mask)
    assert out_image.shape == (3, 16, 12) and out_mask.shape == (16, 12)
    assert torch.equal(out_mask[:10, :6], mask) and torch.equal(out_image[:, :10, :6], image_of(mask))
    assert out_mask[10:].eq(IGNORE_INDEX).all() and out_mask[:, 6:].eq(IGNORE_INDEX).all()
    assert (out_mask == IGNORE_INDEX).sum() == 16 * 12 - 60
    assert torch.equal(out_image == 0.25, (out_mask == IGNORE_INDEX).expand_as(out_image))


def test_pad_to_a_multiple_with_a_class_as_mask_fill():
    mask = block_mask(33, 64, block=1)
    spec = {"name": "pad", "size_divisor": 32, "seg_pad_val": 0}
    out_image, out_mask = build_transforms([spec])(image_of(mask), mask)
    assert out_image.shape == (3, 64, 64) and torch.equal(out_mask[:33], mask) and out_mask[33:].eq(0).all()
    assert out_image[:, 33:].eq(0).all()
    # size first, then up to the multiple; a sample already that size comes back as it is
    both = build_transforms([{"name": "pad", "size": [40, 40], "size_divisor": 32}])
    assert both(image_of(mask[:20, :20]), mask[:20, :20])[1].shape == (64, 64)
    same_image, same_mask = build_transforms([{"name": "pad", "size_divisor": 32}])(image_of(mask[:32]), mask[:32])
    assert same_image.shape == (3, 32, 64) and torch.equal(same_mask, mask[:32])
    assert build_transforms([spec])(image_of(mask), None)[1] is None


def test_pad_rejects_an_image_larger_than_its_size():
    mask = block_mask(20, 8, block=1)
    with pytest.raises(ConfigError, match=r"pad: image size 20x8 is larger than size 16x16; put a crop"):
        build_transforms([{"name": "pad", "size": 16}])(image_of(mask), mask)
