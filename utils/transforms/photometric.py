"""Photometric transforms and normalisation: they change the image and never the mask.

Colour jitter, blur and noise are torchvision v2's; ``photometric_distortion``
is mmsegmentation's recipe, which v2 has no match for. All expect intensities
in [0, 1], so put them before ``normalize``.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from utils.errors import ConfigError
from utils.registry import TRANSFORMS
from utils.transforms.base import (IMAGENET_MEAN, IMAGENET_STD, Pair, PairedTransform, TorchvisionAdapter,
                                   check_at_most, check_interval, check_non_negative, check_probability, check_range,
                                   coin, uniform)


# --------------------------------------------------------------------------- #
# torchvision v2
# --------------------------------------------------------------------------- #
@TRANSFORMS.register("color_jitter")
class ColorJitter(TorchvisionAdapter):
    """Randomly change brightness, contrast, saturation and hue of the image.

    Expects images in [0, 1]: torchvision clamps the result to that range, so
    put it before ``normalize``. On 1-channel images saturation and hue have
    no effect.

    Args:
        brightness: factor drawn from [1 - brightness, 1 + brightness]; 0 = off.
        contrast: factor drawn from [1 - contrast, 1 + contrast]; 0 = off.
        saturation: factor drawn from [1 - saturation, 1 + saturation]; 0 = off.
        hue: shift drawn from [-hue, hue], hue in [0, 0.5]; 0 = off.
        p: probability of jittering at all, in [0, 1].
    """

    image_only = True

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        p: float = 1.0,
    ) -> None:
        name = "color_jitter"
        op = v2.ColorJitter(
            brightness=check_non_negative(brightness, name, "brightness"),
            contrast=check_non_negative(contrast, name, "contrast"),
            saturation=check_non_negative(saturation, name, "saturation"),
            hue=check_at_most(hue, name, "hue", 0.5),
        )
        super().__init__(op, check_probability(p, name))


@TRANSFORMS.register("gaussian_blur")
class GaussianBlur(TorchvisionAdapter):
    """Blur the image with a Gaussian kernel of random sigma, with probability ``p``.

    Args:
        kernel_size: odd kernel side length in pixels.
        sigma: [min, max] range the standard deviation is drawn from, min > 0.
        p: probability of blurring, in [0, 1].
    """

    image_only = True

    def __init__(self, kernel_size: int = 5, sigma: List[float] = [0.1, 2.0], p: float = 0.5) -> None:
        name = "gaussian_blur"
        if kernel_size <= 0 or kernel_size % 2 == 0:
            raise ConfigError(f"{name}: kernel_size must be a positive odd int, got {kernel_size!r}")
        sigma = check_interval(sigma, name, "sigma", 0.0, float("inf"))
        super().__init__(v2.GaussianBlur(kernel_size, sigma=sigma), check_probability(p, name))


@TRANSFORMS.register("gaussian_noise")
class GaussianNoise(TorchvisionAdapter):
    """Add zero-mean Gaussian noise of std ``std`` to the image, with probability ``p``.

    The std is on the [0, 1] intensity scale, so put this before ``normalize``;
    the result is not clamped.

    Args:
        std: noise standard deviation, >= 0.
        p: probability of adding noise, in [0, 1].
    """

    image_only = True

    def __init__(self, std: float = 0.03, p: float = 0.5) -> None:
        std = check_non_negative(std, "gaussian_noise", "std")
        super().__init__(v2.GaussianNoise(mean=0.0, sigma=std, clip=False), check_probability(p, "gaussian_noise"))


# --------------------------------------------------------------------------- #
# mmsegmentation's photometric distortion
# --------------------------------------------------------------------------- #
#: Offsets n of the R, G, B channels in the HSV -> RGB formula below.
_HSV_OFFSETS = (5.0, 3.0, 1.0)


def adjust_saturation_hue(rgb: torch.Tensor, factor: Optional[float], shift: Optional[float]) -> torch.Tensor:
    """Scale the HSV saturation by ``factor`` (clamped to 1) and turn the hue by ``shift`` of the colour circle.

    Exactly the HSV round trip, computed without building the HSV image:
    value V = max(R, G, B) stays, the chroma C = V - min(R, G, B) becomes
    C' = min(C * factor, V), and channel n = V - C' clamp(min(k, 4 - k), 0, 1)
    with k = (n + 6 hue) mod 6 for n = 5, 3, 1 (R, G, B). ``None`` skips a step.
    ``rgb`` is (3, H, W) in [0, 1]; a new tensor is returned.
    """
    value = rgb.amax(0)
    chroma = value - rgb.amin(0)
    safe_chroma = chroma.clamp(min=1e-12)
    if shift is None:  # saturation only: move every channel towards or away from V
        return value - (value - rgb) * (value / safe_chroma).clamp_(max=factor)
    red, green, blue = rgb.unbind(0)
    is_red = value == red
    is_green = (value == green) & ~is_red
    is_blue = ~(is_red | is_green)
    hue6 = (is_red * (green - blue) + is_green * (blue - red + 2 * chroma) + is_blue * (red - green + 4 * chroma))
    hue6 = hue6 / safe_chroma + 6 * shift
    new_chroma = chroma if factor is None else torch.minimum(chroma * factor, value)
    k = (torch.tensor(_HSV_OFFSETS, dtype=rgb.dtype).view(3, 1, 1) + hue6).remainder_(6)
    return value - new_chroma * torch.minimum(k, 4 - k).clamp_(0, 1)


# Ours, not v2.RandomPhotometricDistort: v2 scales brightness instead of shifting it and
# shuffles the channels with the same p; ours is also about 3x faster (bench/transforms.py).
@TRANSFORMS.register("photometric_distortion")
class PhotometricDistortion(PairedTransform):
    """mmsegmentation's ``PhotoMetricDistortion`` on [0, 1] images (image only).

    In order: brightness (add a delta drawn from [-brightness, brightness]),
    then contrast (multiply by a factor drawn from ``contrast``) either here
    or last (a fair coin decides), saturation (scale the HSV saturation by a
    factor drawn from ``saturation``) and hue (shift the HSV hue by a fraction
    of the colour circle drawn from [-hue, hue]). Each step happens with
    probability ``p``; values are clamped to [0, 1] after every step, so put
    this before ``normalize``. Saturation and hue are skipped on 1-channel
    images. The defaults are mmsegmentation's: brightness_delta 32 (of 255),
    contrast and saturation ranges (0.5, 1.5), hue_delta 18 (of OpenCV's 180
    hue units, i.e. 0.1 of the circle), each step with probability 0.5.
    (mmsegmentation draws the hue shift as a whole unit, here it is continuous.)

    Args:
        brightness: largest brightness shift on the [0, 1] scale, >= 0.
        contrast: [min, max] contrast factor range, min > 0.
        saturation: [min, max] saturation factor range, min > 0.
        hue: largest hue shift as a fraction of the colour circle, in [0, 0.5].
        p: probability of each of the four steps, in [0, 1].
    """

    def __init__(
        self,
        brightness: float = 32 / 255,
        contrast: List[float] = [0.5, 1.5],
        saturation: List[float] = [0.5, 1.5],
        hue: float = 18 / 180,
        p: float = 0.5,
    ) -> None:
        name = "photometric_distortion"
        self.brightness = check_non_negative(brightness, name, "brightness")
        self.contrast = check_range(contrast, name, "contrast")
        self.saturation = check_range(saturation, name, "saturation")
        self.hue = check_at_most(hue, name, "hue", 0.5)
        self.p = check_probability(p, name)

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        out = image.as_subclass(torch.Tensor)
        if coin(self.p):
            out = (out + uniform(-self.brightness, self.brightness)).clamp_(0.0, 1.0)
        contrast_first = coin(0.5)
        if contrast_first:
            out = self._contrast(out)
        if out.shape[0] == 3:
            out = self._saturation_and_hue(out)
        if not contrast_first:
            out = self._contrast(out)
        return tv_tensors.Image(out), mask

    def _contrast(self, image: torch.Tensor) -> torch.Tensor:
        if not coin(self.p):
            return image
        return (image * uniform(*self.contrast)).clamp_(0.0, 1.0)

    def _saturation_and_hue(self, image: torch.Tensor) -> torch.Tensor:
        """Both steps in one pass (mmsegmentation converts to HSV for each, with the same result)."""
        factor = uniform(*self.saturation) if coin(self.p) else None
        shift = uniform(-self.hue, self.hue) if coin(self.p) else None
        if factor is None and shift is None:
            return image
        return adjust_saturation_hue(image, factor, shift).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return (
            f"PhotometricDistortion(brightness={self.brightness:.4f}, contrast={list(self.contrast)}, "
            f"saturation={list(self.saturation)}, hue={self.hue}, p={self.p})"
        )


# --------------------------------------------------------------------------- #
# Normalisation
# --------------------------------------------------------------------------- #
# Ours around F.normalize: one value serves every channel, and a channel count mismatch says how to fix it.
@TRANSFORMS.register("normalize")
class Normalize(PairedTransform):
    """Subtract ``mean`` and divide by ``std`` per channel (image only).

    Give one value per image channel (e.g. ``mean: [0.5], std: [0.25]`` for
    grayscale); a single value is used for every channel.

    Args:
        mean: per-channel mean; defaults to the ImageNet RGB mean.
        std: per-channel standard deviation, all > 0; defaults to ImageNet's.
    """

    def __init__(self, mean: List[float] = list(IMAGENET_MEAN), std: List[float] = list(IMAGENET_STD)) -> None:
        if len(mean) == 0 or len(mean) != len(std):
            raise ConfigError(f"normalize: mean and std need the same, non-zero length, got {mean!r} and {std!r}")
        if any(s <= 0 for s in std):
            raise ConfigError(f"normalize: std values must be > 0, got {std!r}")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        channels = image.shape[-3]
        if len(self.mean) not in (1, channels):
            raise ConfigError(
                f"normalize: the image has {channels} channel(s) but mean/std have {len(self.mean)} values; "
                f"give {channels}-value mean and std (e.g. mean: [0.5], std: [0.25] for 1-channel images)"
            )
        return F.normalize(image, self.mean, self.std), mask

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"
