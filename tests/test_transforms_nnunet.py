"""nnU-Net's augmentations (utils/transforms/nnunet.py) on images (C, H, W) and volumes (C, Z, Y, X)."""
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from torchvision import tv_tensors

from utils.config import load_config
from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError
from utils.transforms import build_transforms, nnunet
from utils.transforms.nnunet import affine_sampling_grid, rotation_matrix, straddling_factors

REPO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "volumes_demo.yaml"
#: Image shapes per number of spatial axes: two channels, no two axes alike.
SHAPES = {2: (2, 12, 10), 3: (2, 6, 8, 10)}
#: Every transform, forced to act.
FORCED = [
    {"name": "nnunet_spatial", "p_rotation": 1.0, "p_scale": 1.0},
    {"name": "nnunet_mirror", "p": 1.0},
    {"name": "nnunet_noise", "p": 1.0},
    {"name": "nnunet_blur", "p": 1.0, "p_per_channel": 1.0},
    {"name": "nnunet_brightness", "p": 1.0},
    {"name": "nnunet_contrast", "p": 1.0},
    {"name": "nnunet_low_resolution", "p": 1.0, "p_per_channel": 1.0, "zoom": [0.5, 0.5]},
    {"name": "nnunet_gamma", "p": 1.0},
    {"name": "nnunet_gamma", "invert": True, "p": 1.0},
]
IDS = [spec["name"] + ("_invert" if spec.get("invert") else "") for spec in FORCED]


def sample(dims: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = SHAPES[dims]
    image = torch.rand(shape, generator=generator)
    mask = torch.randint(0, 3, shape[1:], generator=generator)
    mask[(0,) * dims] = IGNORE_INDEX  # masks may hold IGNORE_INDEX already
    return image, mask


def run(spec: dict, image, mask, seed: int = 0):
    return run_pipeline(build_transforms([spec]), image, mask, seed)


def run_pipeline(pipeline, image, mask, seed: int = 0):
    torch.manual_seed(seed)
    return pipeline(image, mask)


def default_pipeline():
    """The default list the module docstring shows, read from the docstring itself."""
    block = re.search(r"::\n\n(    transforms:.*?)\n\n", nnunet.__doc__, re.S).group(1)
    return yaml.safe_load(block)["transforms"]["train"]


# --------------------------------------------------------------------------- #
# What every transform keeps
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("spec", FORCED, ids=IDS)
def test_shapes_dtypes_and_types_are_kept_and_inputs_untouched(dims, spec):
    image, mask = sample(dims)
    image_before, mask_before = image.clone(), mask.clone()
    out_image, out_mask = run(spec, image, mask)
    assert type(out_image) is tv_tensors.Image and type(out_mask) is tv_tensors.Mask
    assert out_image.shape == image.shape and out_image.dtype == torch.float32
    assert out_mask.shape == mask.shape and out_mask.dtype == torch.int64
    assert torch.equal(image, image_before) and torch.equal(mask, mask_before)
    assert run(spec, image, None)[1] is None


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("spec", FORCED, ids=IDS)
def test_p_zero_is_the_identity(dims, spec):
    spec = {**spec, **({"p_rotation": 0.0, "p_scale": 0.0} if spec["name"] == "nnunet_spatial" else {"p": 0.0})}
    image, mask = sample(dims)
    out_image, out_mask = run(spec, image, mask)
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("spec", [s for s in FORCED if s["name"] != "nnunet_spatial" and s["name"] != "nnunet_mirror"],
                         ids=[i for i in IDS if i not in ("nnunet_spatial", "nnunet_mirror")])
def test_intensity_transforms_leave_the_mask(dims, spec):
    image, mask = sample(dims)
    assert torch.equal(run(spec, image, mask)[1], mask)


@pytest.mark.parametrize("dims", [2, 3])
def test_same_seed_same_result_other_seed_other_result(dims):
    pipeline = [{**spec, "p": 0.5} if "p" in spec else spec for spec in FORCED]
    image, mask = sample(dims)
    first, again = [], []
    for out in (first, again):
        torch.manual_seed(3)
        out += list(build_transforms(pipeline)(image, mask))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    torch.manual_seed(4)
    assert not torch.equal(build_transforms(pipeline)(image, mask)[0], first[0])


# --------------------------------------------------------------------------- #
# nnunet_spatial
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dims", [2, 3])
def test_spatial_with_angle_zero_and_scale_one_is_the_identity(dims):
    image, mask = sample(dims)
    spec = {"name": "nnunet_spatial", "rotation": [0, 0], "scale": [1, 1], "p_rotation": 1.0, "p_scale": 1.0}
    out_image, out_mask = run(spec, image, mask)
    assert torch.equal(out_mask, mask)
    assert torch.allclose(out_image, image, atol=1e-6)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("seed", range(3))
def test_spatial_mask_keeps_its_values_and_marks_outside_as_ignore(dims, seed):
    image, mask = sample(dims, seed)
    spec = {"name": "nnunet_spatial", "p_rotation": 1.0, "p_scale": 1.0, "scale": [1.3, 1.4]}
    _, out_mask = run(spec, image, mask, seed)
    assert set(out_mask.unique().tolist()) <= set(mask.unique().tolist()) | {IGNORE_INDEX}
    outside = out_mask == IGNORE_INDEX
    assert outside[(0,) * dims]  # zoomed out: the corners are read from outside the patch


def test_volume_quarter_turn_about_z_is_rot90_of_each_slice():
    # A (Y, X) square turned about its centre maps voxel centres onto voxel centres.
    # +90 degrees: out[y, x] = in[-x, y] about the centre, torch.rot90 with k=-1.
    image, mask = torch.rand(2, 5, 6, 6), torch.randint(0, 4, (5, 6, 6))
    spec = {"name": "nnunet_spatial", "rotation": [90, 90], "p_rotation": 1.0, "p_scale": 0.0, "in_plane_only": True}
    out_image, out_mask = run(spec, image, mask)
    assert torch.equal(out_mask, torch.rot90(mask, -1, (1, 2)))
    assert torch.allclose(out_image, torch.rot90(image, -1, (2, 3)), atol=1e-5)


def test_volume_quarter_turns_about_every_axis_compose_as_nnunet():
    # Rz @ Ry @ Rx with 90 degrees each: the composition is a signed permutation of the axes.
    matrix = rotation_matrix([90.0, 90.0, 90.0])
    expected = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(matrix, expected, atol=1e-12)
    image, mask = torch.rand(1, 6, 6, 6), torch.randint(0, 4, (6, 6, 6))
    spec = {"name": "nnunet_spatial", "rotation": [90, 90], "p_rotation": 1.0, "p_scale": 0.0}
    _, out_mask = run(spec, image, mask)
    # out[z, y, x] = in[matrix @ (z, y, x)] about the centre = in[x, y, -z]
    assert torch.equal(out_mask, mask.permute(2, 1, 0).flip(0))


def test_image_quarter_turn_on_a_non_square_patch_turns_voxels_not_fractions():
    # Rotating in voxel space: the central 6 x 6 square of a 6 x 10 image turns onto itself.
    image, mask = torch.rand(1, 6, 10), torch.randint(0, 4, (6, 10))
    spec = {"name": "nnunet_spatial", "rotation": [90, 90], "p_rotation": 1.0, "p_scale": 0.0}
    out_image, out_mask = run(spec, image, mask)
    assert torch.equal(out_mask[:, 2:8], torch.rot90(mask[:, 2:8], -1))
    assert torch.allclose(out_image[:, :, 2:8], torch.rot90(image[:, :, 2:8], -1, (1, 2)), atol=1e-5)
    assert torch.all(out_mask[:, :2] == IGNORE_INDEX) and out_image[:, :, :2].abs().max() < 1e-5


@pytest.mark.parametrize("dims", [2, 3])
def test_scale_two_reads_every_other_voxel_about_the_centre(dims):
    # Size 7: output voxel i reads input 3 + 2 (i - 3) = 2i - 3, inside for i = 2, 3, 4 only (nnU-Net: > 1 zooms out).
    shape = (7,) * dims
    image, mask = torch.rand(1, *shape), torch.randint(0, 4, shape)
    spec = {"name": "nnunet_spatial", "scale": [2, 2], "p_rotation": 0.0, "p_scale": 1.0}
    out_image, out_mask = run(spec, image, mask)
    inner, read = (slice(2, 5),) * dims, (slice(1, 6, 2),) * dims
    assert torch.equal(out_mask[inner], mask[read])
    assert torch.allclose(out_image[(slice(None),) + inner], image[(slice(None),) + read], atol=1e-5)
    border = torch.ones(shape, dtype=torch.bool)
    border[inner] = False
    assert torch.all(out_mask[border] == IGNORE_INDEX) and out_image[0][border].abs().max() < 1e-5


@pytest.mark.parametrize("shape", [(5, 6, 7), (4, 9)])
def test_sampling_grid_equals_affine_grid_of_the_normalised_matrix(shape):
    dims = len(shape)
    matrix = rotation_matrix([20.0, -35.0, 50.0][:1 if dims == 2 else 3]).float() * 1.2
    half = torch.tensor(shape, dtype=torch.float32) / 2
    theta = (matrix * half[None, :] / half[:, None]).flip(0, 1)  # normalised, axes in (x, y, z) order
    theta = torch.cat([theta, torch.zeros(dims, 1)], 1)[None]
    expected = torch.nn.functional.affine_grid(theta, [1, 1, *shape], align_corners=False)
    assert torch.allclose(affine_sampling_grid(matrix, shape), expected, atol=1e-6)


# --------------------------------------------------------------------------- #
# nnunet_mirror
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dims", [2, 3])
def test_mirror_flips_image_and_mask_alike(dims):
    image, mask = sample(dims)
    out_image, out_mask = run({"name": "nnunet_mirror", "p": 1.0}, image, mask)
    axes = list(range(dims))
    assert torch.equal(out_mask, mask.flip(axes)) and torch.equal(out_image, image.flip([a + 1 for a in axes]))
    out_image, out_mask = run({"name": "nnunet_mirror", "axes": [1], "p": 1.0}, image, mask)
    assert torch.equal(out_mask, mask.flip(1)) and torch.equal(out_image, image.flip(2))
    coded = mask.float().expand(2, *mask.shape)
    for seed in range(6):  # random axes: still the same ones for both
        out_image, out_mask = run({"name": "nnunet_mirror"}, coded, mask, seed)
        assert torch.equal(out_image[1], out_mask.float())


def test_mirror_draws_each_axis_with_p_one_half():
    image, mask = torch.arange(8.0).view(1, 2, 2, 2), torch.arange(8).view(2, 2, 2)
    torch.manual_seed(0)
    mirror, flips = build_transforms([{"name": "nnunet_mirror"}]), torch.zeros(3)
    for _ in range(400):
        out = mirror(image, mask)[1]
        flips += torch.tensor([out[1, 0, 0] < 4, out[0, 1, 0] % 4 < 2, out[0, 0, 1] % 2 == 0]).float()
    assert torch.all((flips / 400 - 0.5).abs() < 0.08)


def test_mirror_axis_beyond_the_samples_raises():
    with pytest.raises(ConfigError, match=r"nnunet_mirror: axes \[2\].*2 spatial axes"):
        run({"name": "nnunet_mirror", "axes": [2]}, *sample(2))


# --------------------------------------------------------------------------- #
# Intensity transforms, hand-computed
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dims", [2, 3])
def test_noise_has_the_drawn_std(dims):
    image = torch.zeros((1,) + (64,) * dims if dims == 2 else (1, 24, 32, 32))
    out, _ = run({"name": "nnunet_noise", "std": [0.05, 0.05], "p": 1.0}, image, None)
    assert abs(out.mean().item()) < 0.002
    assert out.var().item() == pytest.approx(0.05**2, rel=0.05)


def test_straddling_factors_shrink_as_often_as_they_stretch():
    torch.manual_seed(0)
    factors = straddling_factors(0.5, 2.0, 4000)
    assert factors.min() >= 0.5 and factors.max() <= 2.0
    assert (factors < 1).float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.all(straddling_factors(1.2, 1.2, 5) == 1.2)


def test_brightness_multiplies_each_channel():
    image = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.0], [0.5, 1.0]]])
    out, _ = run({"name": "nnunet_brightness", "factor": [2, 2], "p": 1.0}, image, None)
    assert torch.equal(out, image * 2)


@pytest.mark.parametrize("preserve_range, expected", [(True, [0.0, 0.0, 2.0, 5.0]), (False, [-2.0, 0.0, 2.0, 8.0])])
def test_contrast_scales_deviations_from_the_channel_mean(preserve_range, expected):
    # channel 0: mean 2, (x - 2) * 2 + 2; channel 1: mean 11
    image = torch.tensor([[0.0, 1.0, 2.0, 5.0], [10.0, 11.0, 11.0, 12.0]]).view(2, 1, 2, 2)
    spec = {"name": "nnunet_contrast", "factor": [2, 2], "preserve_range": preserve_range, "p": 1.0}
    out, _ = run(spec, image, None)
    assert torch.allclose(out[0].flatten(), torch.tensor(expected))
    assert torch.allclose(out[1].flatten(), torch.tensor([10.0, 11.0, 11.0, 12.0] if preserve_range
                                                          else [9.0, 11.0, 11.0, 13.0]))


@pytest.mark.parametrize("invert, expected", [(False, [0.0, 0.25, 1.0, 4.0]), (True, [0.0, 1.75, 3.0, 4.0])])
def test_gamma_hand_computed(invert, expected):
    # [0, 1, 2, 4] on [0, 4]: (x / 4) ** 2 * 4; inverted: -(((-x + 4) / 4) ** 2 * 4 - 4)
    image = torch.tensor([0.0, 1.0, 2.0, 4.0]).view(1, 2, 2)
    spec = {"name": "nnunet_gamma", "gamma": [2, 2], "invert": invert, "retain_stats": False, "p": 1.0}
    assert torch.allclose(run(spec, image, None)[0].flatten(), torch.tensor(expected))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("invert", [False, True])
def test_gamma_one_is_the_identity_and_stats_are_retained(dims, invert):
    image, _ = sample(dims)
    out, _ = run({"name": "nnunet_gamma", "gamma": [1, 1], "invert": invert, "p": 1.0}, image, None)
    assert torch.allclose(out, image, atol=1e-5)
    out, _ = run({"name": "nnunet_gamma", "gamma": [0.5, 0.5], "invert": invert, "p": 1.0}, image, None)
    flat, new = image.flatten(1), out.flatten(1)
    assert not torch.allclose(out, image, atol=1e-3)
    assert torch.allclose(new.mean(1), flat.mean(1), atol=1e-5) and torch.allclose(new.std(1), flat.std(1), atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_blur_is_a_separable_gaussian(dims):
    # An impulse far from the borders becomes the outer product of the 1D kernels; constants stay constant.
    sigma = 0.8
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-taps**2 / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).float()
    shape = (11,) * dims
    image = torch.zeros(1, *shape)
    image[(0,) + (5,) * dims] = 1.0
    out, _ = run({"name": "nnunet_blur", "sigma": [sigma, sigma], "p_per_channel": 1.0, "p": 1.0}, image, None)
    expected = kernel
    for _ in range(dims - 1):
        expected = expected[..., None] * kernel
    window = (0,) + (slice(5 - radius, 6 + radius),) * dims
    assert torch.allclose(out[window], expected, atol=1e-6) and out.sum().item() == pytest.approx(1.0, abs=1e-5)
    constant, _ = run({"name": "nnunet_blur", "p_per_channel": 1.0, "p": 1.0}, torch.full((2, *shape), 0.3), None)
    assert torch.allclose(constant, torch.full_like(constant, 0.3))


def test_blur_picks_channels_with_p_per_channel():
    image = torch.rand(2, 9, 9)
    out, _ = run({"name": "nnunet_blur", "p_per_channel": 0.0, "p": 1.0}, image, None)
    assert torch.equal(out, image)


@pytest.mark.parametrize("dims, value", [(2, 0.0), (3, 1.0)])
def test_low_resolution_at_half_keeps_every_other_voxel(dims, value):
    # Nearest-exact halving keeps the odd voxels: a checkerboard (sum of indices % 2) turns constant.
    shape = (8, 10, 12)[-dims:]
    grids = torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij")
    board = (sum(grids) % 2).float()[None]
    out, _ = run({"name": "nnunet_low_resolution", "zoom": [0.5, 0.5], "p_per_channel": 1.0, "p": 1.0}, board, None)
    assert out.shape == board.shape and torch.allclose(out, torch.full_like(board, value))
    same, _ = run({"name": "nnunet_low_resolution", "zoom": [1, 1], "p_per_channel": 1.0, "p": 1.0}, board, None)
    assert torch.equal(same, board)


# --------------------------------------------------------------------------- #
# Building: specs, configs, bad arguments, 2D-only transforms
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dims", [2, 3])
def test_docstring_default_pipeline_builds_and_runs(dims):
    specs = default_pipeline()
    assert [s["name"] for s in specs] == ["nnunet_spatial", "nnunet_noise", "nnunet_blur", "nnunet_brightness",
                                          "nnunet_contrast", "nnunet_low_resolution", "nnunet_gamma",
                                          "nnunet_gamma", "nnunet_mirror"]
    pipeline = build_transforms(specs)
    image, mask = sample(dims)
    for seed in range(3):
        out_image, out_mask = run_pipeline(pipeline, image, mask, seed)
        assert out_image.shape == image.shape and out_mask.shape == mask.shape


def test_config_validates_the_default_pipeline_keys():
    listed = ", ".join("{" + ", ".join(f"{k}: {v}".lower() for k, v in spec.items()) + "}"
                       for spec in default_pipeline() + [{"name": "nnunet_mirror", "axes": [1, 2]}])
    cfg = load_config(REPO_CONFIG, [f"transforms.train=[{listed}]"], check_paths=False)
    assert len(build_transforms(cfg.transforms.train).transforms) == 10
    with pytest.raises(ConfigError, match="transforms.train"):
        load_config(REPO_CONFIG, ["transforms.train=[{name: nnunet_mirror, axes: x}]"], check_paths=False)


@pytest.mark.parametrize("spec, message", [
    ({"name": "nnunet_spatial", "rotation": [-200, 30]}, "nnunet_spatial: rotation"),
    ({"name": "nnunet_spatial", "scale": [0, 1.4]}, "nnunet_spatial: scale"),
    ({"name": "nnunet_spatial", "p_scale": 1.5}, "nnunet_spatial: p"),
    ({"name": "nnunet_spatial", "in_plane_only": "yes"}, "nnunet_spatial: in_plane_only"),
    ({"name": "nnunet_mirror", "axes": [0, 0]}, "nnunet_mirror: axes"),
    ({"name": "nnunet_mirror", "axes": [3]}, "nnunet_mirror: axes"),
    ({"name": "nnunet_mirror", "axes": []}, "nnunet_mirror: axes"),
    ({"name": "nnunet_noise", "std": [-0.1, 0.1]}, "nnunet_noise: std"),
    ({"name": "nnunet_noise", "p": -0.1}, "nnunet_noise: p"),
    ({"name": "nnunet_blur", "sigma": [1.0, 0.5]}, "nnunet_blur: sigma"),
    ({"name": "nnunet_blur", "p_per_channel": 2}, "nnunet_blur: p"),
    ({"name": "nnunet_brightness", "factor": [0.75]}, "nnunet_brightness: factor"),
    ({"name": "nnunet_contrast", "factor": [-1, 1]}, "nnunet_contrast: factor"),
    ({"name": "nnunet_low_resolution", "zoom": [0.5, 1.5]}, "nnunet_low_resolution: zoom"),
    ({"name": "nnunet_gamma", "gamma": [0, 1.5]}, "nnunet_gamma: gamma"),
    ({"name": "nnunet_gamma", "invert": 1}, "nnunet_gamma: invert"),
    ({"name": "nnunet_gamma", "sigma": 1}, "unknown argument 'sigma'"),
])
def test_bad_arguments_raise_config_error_naming_transform_and_argument(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_transforms([spec])


def test_2d_only_transforms_refuse_volumes_by_name():
    image, mask = sample(3)
    with pytest.raises(ConfigError, match="transform 'hflip' takes 2D images.*nnunet_"):
        build_transforms([{"name": "hflip"}])(image, mask)
    with pytest.raises(TypeError, match=r"int64 mask of shape \(Z, Y, X\)"):
        build_transforms([])(image, mask[0])
