"""Photometric transforms and normalize: the image changes as specified, the mask never does."""
import colorsys

import pytest
import torch
from torchvision import tv_tensors

from tests.fixtures_transforms import PHOTOMETRIC_SPECS, SEEDS, block_mask, run_seeded, spec_id
from utils.errors import ConfigError
from utils.transforms import IMAGENET_MEAN, IMAGENET_STD, adjust_saturation_hue, build_transforms


# --------------------------------------------------------------------------- #
# Image only; normalize
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
    with pytest.raises(ConfigError, match="1 channel.*3 values"):
        build_transforms([{"name": "normalize"}])(image, None)
    out_image, _ = build_transforms([{"name": "normalize", "mean": [0.5], "std": [0.5]}])(image, None)
    assert torch.allclose(out_image, image * 2 - 1)


def test_photometric_p_zero_is_identity():
    image = tv_tensors.Image(torch.rand(3, 8, 8))
    for spec in [{"name": "gaussian_blur", "p": 0.0}, {"name": "color_jitter", "brightness": 0.9, "p": 0.0}]:
        assert torch.equal(build_transforms([spec])(image, None)[0], image)


# --------------------------------------------------------------------------- #
# photometric_distortion and gaussian_noise
# --------------------------------------------------------------------------- #
def test_photometric_distortion_stays_in_range_and_keeps_mask():
    mask = block_mask()
    image = tv_tensors.Image(torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(1)))
    image[:, :4] = 0.0
    image[:, 4:8] = 1.0
    spec = {"name": "photometric_distortion", "brightness": 0.5, "contrast": [0.3, 3.0], "p": 1.0}
    for seed in SEEDS:
        out_image, out_mask = run_seeded(spec, image, mask.clone(), seed)
        assert torch.equal(out_mask, mask)
        assert out_image.min() >= 0.0 and out_image.max() <= 1.0
        assert (out_image - image).abs().max() > 0.05


def test_photometric_distortion_defaults_are_mmsegmentations():
    # PhotoMetricDistortion(brightness_delta=32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
    # hue_delta=18) on 0-255 images with OpenCV's 0-180 hue, each step with probability 0.5.
    distortion = build_transforms([{"name": "photometric_distortion"}]).transforms[0]
    assert distortion.brightness == pytest.approx(32 / 255) and distortion.hue == pytest.approx(18 / 180)
    assert distortion.contrast == (0.5, 1.5) and distortion.saturation == (0.5, 1.5) and distortion.p == 0.5


def test_photometric_distortion_contrast_is_multiplicative():
    image = tv_tensors.Image(torch.tensor([[[0.1, 0.3, 0.6]], [[0.2, 0.2, 0.2]], [[0.0, 0.45, 0.9]]]))
    spec = {"name": "photometric_distortion", "brightness": 0.0, "contrast": [2.0, 2.0],
            "saturation": [1.0, 1.0], "hue": 0.0, "p": 1.0}
    out_image, _ = build_transforms([spec])(image, None)
    assert torch.allclose(out_image, (image * 2).clamp(0, 1), atol=1e-6)


def test_photometric_distortion_on_one_channel_skips_colour_steps():
    image = tv_tensors.Image(torch.full((1, 4, 4), 0.5))
    spec = {"name": "photometric_distortion", "brightness": 0.0, "contrast": [1.5, 1.5], "p": 1.0}
    out_image, _ = build_transforms([spec])(image, None)
    assert out_image.shape == (1, 4, 4) and torch.allclose(out_image, torch.tensor(0.75))


@pytest.mark.parametrize("factor, shift", [(1.4, None), (0.5, None), (None, 0.1), (1.3, -0.25), (2.0, 0.45)])
def test_adjust_saturation_hue_matches_hsv_round_trip(factor, shift):
    rgb = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(2))
    rgb[:, 0, 0] = 0.4  # grey: no hue
    rgb[:, 0, 1] = torch.tensor([0.7, 0.7, 0.2])  # two channels tie for the maximum
    expected = []
    for r, g, b in rgb.permute(1, 2, 0).reshape(-1, 3).tolist():
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        h = (h + (shift or 0.0)) % 1.0
        s = min(s * (factor if factor is not None else 1.0), 1.0)
        expected.append(colorsys.hsv_to_rgb(h, s, v))
    out = adjust_saturation_hue(rgb, factor, shift)
    assert torch.allclose(out.permute(1, 2, 0).reshape(-1, 3), torch.tensor(expected), atol=1e-5)


def test_gaussian_noise_is_not_clamped_and_leaves_the_mask():
    mask = block_mask()
    image = tv_tensors.Image(torch.zeros(3, 64, 48))
    torch.manual_seed(0)
    out_image, out_mask = build_transforms([{"name": "gaussian_noise", "std": 0.2, "p": 1.0}])(image, mask)
    assert out_image.min() < -0.3 and out_image.max() > 0.3  # [0, 1] is not enforced
    assert torch.equal(out_mask, mask)


def test_gaussian_noise_statistics():
    image = tv_tensors.Image(torch.full((3, 64, 64), 0.5))
    torch.manual_seed(0)
    out_image, _ = build_transforms([{"name": "gaussian_noise", "std": 0.1, "p": 1.0}])(image, None)
    noise = out_image - image
    assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 0.1) < 0.005
    assert torch.equal(build_transforms([{"name": "gaussian_noise", "p": 0.0}])(image, None)[0], image)
