"""Warps (rotate, affine, elastic): one geometry for image and mask, IGNORE_INDEX where pixels come from outside."""
import math

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from tests.fixtures_transforms import SEEDS, block_mask, image_of, uniform_interior
from utils.constants import IGNORE_INDEX
from utils.transforms import build_transforms, elastic_displacement, warp_pair
from utils.transforms.elastic import displacement_grid


# --------------------------------------------------------------------------- #
# Exact quarter turns and the fill of uncovered pixels
# --------------------------------------------------------------------------- #
def force_affine(monkeypatch, angle: float = 0.0, translate=(0, 0), scale: float = 1.0) -> None:
    """Make torchvision's RandomAffine and RandomRotation (behind affine and rotate) draw these parameters."""
    params = {"angle": angle, "translate": translate, "scale": scale, "shear": (0.0, 0.0)}
    monkeypatch.setattr(v2.RandomAffine, "make_params", lambda self, flat_inputs: params)
    monkeypatch.setattr(v2.RandomRotation, "make_params", lambda self, flat_inputs: {"angle": angle})


@pytest.mark.parametrize("spec", [{"name": "rotate", "degrees": 90}, {"name": "affine", "degrees": 90}],
                         ids=["rotate", "affine"])
def test_quarter_turns_move_image_and_mask_to_the_same_pixels(monkeypatch, spec):
    # About the centre of a square, a quarter turn maps pixel centres onto pixel centres:
    # the bilinear image and the nearest mask must both come out as torch.rot90 of their input.
    force_affine(monkeypatch, angle=90.0)
    mask = block_mask(32, 32, block=4, seed=5)
    out_image, out_mask = build_transforms([spec])(image_of(mask), mask)
    # torchvision's conventions: rotate turns counter-clockwise as shown, affine clockwise.
    assert torch.equal(out_mask, torch.rot90(mask, 1 if spec["name"] == "rotate" else -1))
    assert torch.allclose(out_image, (out_mask + 1).float().expand_as(out_image), atol=1e-4)


@pytest.mark.parametrize("spec", [{"name": "rotate", "degrees": 180},
                                  {"name": "affine", "degrees": 30, "translate": [0.3, 0.3], "scale": [0.5, 0.8]},
                                  {"name": "elastic", "alpha": 200.0, "sigma": 3.0, "p": 1.0}],
                         ids=["rotate", "affine", "elastic"])
def test_warps_fill_what_comes_from_outside_with_ignore_and_zero(spec):
    # A constant image and mask: wherever the mask says IGNORE_INDEX the pixel came from
    # outside, so the image is 0 there (nearest and bilinear agree away from the edge of
    # the uncovered area); every other mask pixel keeps its class.
    mask = tv_tensors.Mask(torch.full((48, 48), 3))
    image = tv_tensors.Image(torch.ones(1, 48, 48))
    for seed in SEEDS:
        torch.manual_seed(seed)
        out_image, out_mask = build_transforms([spec])(image, mask)
        ignored = out_mask == IGNORE_INDEX
        assert ignored.any() and set(out_mask.unique().tolist()) == {3, IGNORE_INDEX}
        assert torch.all(out_image[0][uniform_interior(out_mask) & ignored] == 0)
        assert torch.all(out_image[0][uniform_interior(out_mask) & ~ignored] > 0.99)


# --------------------------------------------------------------------------- #
# affine and elastic
# --------------------------------------------------------------------------- #
def test_affine_moves_pixels_where_expected(monkeypatch):
    mask = torch.zeros(20, 30, dtype=torch.int64)
    mask[5, 7] = 1
    force_affine(monkeypatch, translate=(10, 3))
    out_image, out_mask = build_transforms([{"name": "affine", "translate": [0.5, 0.5]}])(image_of(mask), mask)
    assert (out_mask == 1).nonzero().tolist() == [[8, 17]]  # x + 10, y + 3
    assert out_mask[:3].eq(IGNORE_INDEX).all() and out_mask[:, :10].eq(IGNORE_INDEX).all()
    assert out_mask[3:, 10:].lt(IGNORE_INDEX).all()
    assert abs(out_image[0, 8, 17] - 2) < 1e-4 and out_image[0, 0, 0] == 0
    # Zoom 2 about the centre (14.5, 9.5): pixel (x 12, y 8) lands on x 9.5, y 6.5.
    mask = torch.zeros(20, 30, dtype=torch.int64)
    mask[8, 12] = 1
    force_affine(monkeypatch, scale=2.0)
    _, out_mask = build_transforms([{"name": "affine", "scale": [2.0, 2.0]}])(image_of(mask), mask)
    assert (out_mask == 1).nonzero().tolist() == [[6, 9], [6, 10], [7, 9], [7, 10]]


def test_affine_defaults_are_identity():
    mask = block_mask()
    out_image, out_mask = build_transforms([{"name": "affine"}])(image_of(mask), mask)
    assert torch.equal(out_mask, mask)
    assert torch.allclose(out_image, image_of(mask), atol=1e-4)


def test_warp_pair_reads_image_and_mask_at_the_displaced_points():
    # Every output pixel reads the input 10 columns left and 3 rows up: content moves by (+10, +3).
    mask = torch.zeros(20, 30, dtype=torch.int64)
    mask[5, 7] = 1
    displacement = torch.tensor([-10.0, -3.0]).view(2, 1, 1).expand(2, 20, 30)
    out_image, out_mask = warp_pair(image_of(mask), mask, displacement_grid(displacement))
    assert (out_mask == 1).nonzero().tolist() == [[8, 17]]
    assert out_mask[:3].eq(IGNORE_INDEX).all() and out_mask[:, :10].eq(IGNORE_INDEX).all()
    assert out_mask[3:, 10:].lt(IGNORE_INDEX).all()
    assert torch.allclose(out_image[0, 3:, 10:], out_mask[3:, 10:].float() + 1, atol=1e-4)
    assert out_image[0, :3].abs().max() < 1e-4 and out_image[0, :, :10].abs().max() < 1e-4


def test_elastic_with_alpha_zero_is_identity():
    mask = block_mask()
    torch.manual_seed(0)
    out_image, out_mask = build_transforms([{"name": "elastic", "alpha": 0.0, "p": 1.0}])(image_of(mask), mask)
    assert torch.equal(out_mask, mask)
    assert torch.allclose(out_image, image_of(mask), atol=1e-4)


def test_elastic_moves_pixels_with_one_field_for_image_and_mask():
    mask = block_mask(128, 128, block=16)
    torch.manual_seed(0)
    out_image, out_mask = build_transforms([{"name": "elastic", "alpha": 300.0, "sigma": 8.0, "p": 1.0}])(
        image_of(mask), mask
    )
    changed = out_mask != mask
    assert changed.float().mean() > 0.05  # visibly deformed
    inside = uniform_interior(out_mask) & (out_mask != IGNORE_INDEX)
    assert (out_image[0].round() - 1 == out_mask)[inside].float().mean() >= 0.99


@pytest.mark.parametrize("sigma", [3.0, 4.0, 8.0])
def test_elastic_displacement_has_the_textbook_spread_and_smoothness(sigma):
    # Uniform noise in [-1, 1] (variance 1/3) filtered by a normalised Gaussian
    # kernel k has std alpha * sqrt(1/3 * sum(k2d ** 2)) = alpha * sqrt(1/3) * sum(k1d ** 2),
    # and an autocorrelation exp(-d^2 / (4 sigma^2)): exp(-1/4) one sigma apart.
    taps = torch.arange(-4 * sigma, 4 * sigma + 1)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    expected_std = 34.0 * math.sqrt(1 / 3) * (kernel / kernel.sum()).pow(2).sum().item()
    torch.manual_seed(0)
    field = elastic_displacement(320, 320, 34.0, sigma)[:, 64:-64, 64:-64]  # away from the faded borders
    assert field.shape == (2, 192, 192)
    assert abs(field.std().item() / expected_std - 1) < 0.12
    lag = int(sigma)
    correlation = (field[..., :-lag] * field[..., lag:]).mean() / field.pow(2).mean()
    assert abs(correlation.item() - math.exp(-0.25)) < 0.06
