"""Paired transforms: image and mask stay aligned, masks are never interpolated."""
import inspect
import typing

import pytest
import torch
from torchvision import tv_tensors

from utils.constants import IGNORE_INDEX
from utils.registry import TRANSFORMS
from utils.transforms import IMAGENET_MEAN, IMAGENET_STD, Compose, build_transforms

CLASSES = torch.tensor([0, 2, 3, 7])
SEEDS = range(4)


def block_mask(height: int = 64, width: int = 48, block: int = 8, seed: int = 0) -> tv_tensors.Mask:
    """Random class per ``block`` x ``block`` tile, values drawn from CLASSES."""
    generator = torch.Generator().manual_seed(seed)
    tiles = CLASSES[torch.randint(len(CLASSES), (height // block, width // block), generator=generator)]
    return tv_tensors.Mask(tiles.repeat_interleave(block, 0).repeat_interleave(block, 1))


def image_of(mask: torch.Tensor, channels: int = 3) -> tv_tensors.Image:
    """An image whose every channel is ``mask + 1`` (so 0 marks padding)."""
    return tv_tensors.Image((mask + 1).float().expand(channels, -1, -1).clone())


def uniform_interior(mask: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """True where the (2 * radius + 1)^2 neighbourhood holds a single label.

    Pixels near the image border are excluded: bilinear resampling there
    blends in the fill value.
    """
    values = torch.nn.functional.pad(mask[None, None].float(), [radius] * 4, value=-1.0)
    pool = torch.nn.functional.max_pool2d
    kernel = 2 * radius + 1
    return (pool(values, kernel, 1) == -pool(-values, kernel, 1))[0, 0]


def run_seeded(spec: dict, image, mask, seed: int):
    torch.manual_seed(seed)
    return build_transforms([spec])(image, mask)


# Transforms that move pixels without resampling: image equals mask exactly.
EXACT_SPECS = [
    {"name": "hflip", "p": 1.0},
    {"name": "vflip", "p": 1.0},
    {"name": "hflip"},
    {"name": "random_crop", "size": [40, 24]},
    {"name": "random_crop", "size": 72},  # larger than the input: pads
]
# Transforms that resample the image bilinearly: agree inside uniform blocks.
RESAMPLING_SPECS = [
    {"name": "resize", "size": [96, 80]},
    {"name": "resize", "size": 40},
    {"name": "random_resized_crop", "size": 56},
    {"name": "random_resized_crop", "size": [64, 32], "scale": [0.2, 0.6], "ratio": [0.5, 2.0]},
    {"name": "rotate", "degrees": 30},
]
GEOMETRIC_SPECS = EXACT_SPECS + RESAMPLING_SPECS
PHOTOMETRIC_SPECS = [
    {"name": "color_jitter", "brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.1},
    {"name": "gaussian_blur", "kernel_size": 5, "sigma": [1.0, 2.0], "p": 1.0},
    {"name": "normalize"},
]
ALL_SPECS = GEOMETRIC_SPECS + PHOTOMETRIC_SPECS


def spec_id(spec: dict) -> str:
    return "-".join(f"{v}" for v in spec.values())


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
    with pytest.raises(ValueError):
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
# Photometric transforms: image only
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("spec", PHOTOMETRIC_SPECS, ids=spec_id)
def test_photometric_changes_image_but_never_mask(spec):
    mask = block_mask()
    image = tv_tensors.Image(torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(0)))
    out_image, out_mask = run_seeded(spec, image, mask.clone(), seed=0)
    assert torch.equal(out_mask, mask)
    assert out_image.shape == image.shape
    assert not torch.allclose(out_image, image)


def test_normalize_hand_computed():
    image = tv_tensors.Image(torch.tensor([[[0.5, 1.0]], [[0.25, 0.0]], [[1.0, 3.0]]]))
    mean, std = [0.5, 0.25, 1.0], [0.5, 0.25, 2.0]
    out_image, _ = build_transforms([{"name": "normalize", "mean": mean, "std": std}])(image, None)
    expected = torch.tensor([[[0.0, 1.0]], [[0.0, -1.0]], [[0.0, 1.0]]])
    assert torch.allclose(out_image, expected)


def test_normalize_defaults_to_imagenet():
    image = tv_tensors.Image(torch.tensor(IMAGENET_MEAN).view(3, 1, 1) + torch.tensor(IMAGENET_STD).view(3, 1, 1))
    out_image, _ = build_transforms([{"name": "normalize"}])(image, None)
    assert torch.allclose(out_image, torch.ones(3, 1, 1))


def test_normalize_rejects_channel_mismatch():
    image = tv_tensors.Image(torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match="1 channel.*3 values"):
        build_transforms([{"name": "normalize"}])(image, None)
    out_image, _ = build_transforms([{"name": "normalize", "mean": [0.5], "std": [0.5]}])(image, None)
    assert torch.allclose(out_image, image * 2 - 1)


def test_photometric_p_zero_is_identity():
    image = tv_tensors.Image(torch.rand(3, 8, 8))
    for spec in [{"name": "gaussian_blur", "p": 0.0}, {"name": "color_jitter", "brightness": 0.9, "p": 0.0}]:
        assert torch.equal(build_transforms([spec])(image, None)[0], image)


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
        "rotate", "color_jitter", "gaussian_blur", "normalize",
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
    with pytest.raises(ValueError, match="unknown argument.*sise"):
        build_transforms([{"name": "resize", "sise": 4}])
    with pytest.raises(ValueError, match="'name'"):
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
    ],
    ids=lambda value: value if isinstance(value, str) else spec_id(value),
)
def test_bad_arguments_raise_value_error(spec, message):
    with pytest.raises(ValueError, match=message):
        build_transforms([spec])
