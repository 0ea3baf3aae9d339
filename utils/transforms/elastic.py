"""Elastic deformation: a smooth random displacement field moves image and mask alike.

:func:`elastic_displacement` draws the field, :func:`displacement_grid` turns
it into a ``grid_sample`` grid and :func:`warp_pair` reads the image bilinearly
and the mask by nearest neighbour from the same points (outside the image: 0
and IGNORE_INDEX). Ours, not torchvision's ``v2.ElasticTransform``, for speed:
v2 smooths the field at full resolution with a 2-D kernel, about 10x slower
at 512 x 512 on one thread (``python bench/transforms.py``). If a torchvision
release closes the gap, switch to v2 (its ``alpha`` is twice ours) with
``fill=FILL``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torchvision import tv_tensors

from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError
from utils.registry import TRANSFORMS
from utils.transforms.base import Pair, PairedTransform, check_non_negative, check_probability, coin


def warp_pair(image: torch.Tensor, mask: Optional[torch.Tensor], grid: torch.Tensor) -> Pair:
    """Resample at a (1, H, W, 2) ``grid_sample`` grid (normalised, ``align_corners=False``).

    The image is read bilinearly and the mask by nearest neighbour from the
    same points; points outside the input give 0 and IGNORE_INDEX. Volumes
    (C, Z, Y, X) take a (1, Z, Y, X, 3) grid and are read trilinearly.
    """
    sample = torch.nn.functional.grid_sample
    plain = image.as_subclass(torch.Tensor)[None]
    image = sample(plain, grid.to(plain.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    if mask is not None:
        # Classes shifted by one, so that the zeros read outside the input mark IGNORE_INDEX.
        shifted = (mask.as_subclass(torch.Tensor).to(grid.dtype) + 1)[None, None]
        warped = sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0].sub_(1)
        mask = tv_tensors.Mask(warped.masked_fill_(warped < 0, IGNORE_INDEX).to(torch.int64))
    return tv_tensors.Image(image), mask


def _pixel_centres(length: int) -> torch.Tensor:
    """Normalised (``align_corners=False``) coordinates of the pixel centres along an axis."""
    return (torch.arange(length, dtype=torch.float32) * 2 + 1) / length - 1


def _gaussian_smooth(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter (std ``sigma`` pixels, 3-sigma kernel, zero padding) of (N, 1, H, W) maps."""
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=field.dtype)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).view(1, 1, 1, -1)
    field = torch.nn.functional.conv2d(field, kernel, padding=(0, radius))
    return torch.nn.functional.conv2d(field, kernel.view(1, 1, -1, 1), padding=(radius, 0))


def elastic_displacement(height: int, width: int, alpha: float, sigma: float) -> torch.Tensor:
    """A random (2, H, W) displacement field (dx, dy) in pixels, as in Simard et al. (2003).

    Uniform noise in [-1, 1] per pixel, smoothed by a Gaussian of std
    ``sigma`` and scaled by ``alpha``. The noise is smoothed on a grid
    ``step = max(1, int(sigma // 2))`` times coarser (such a smooth field
    holds nothing finer) and upsampled bilinearly; dividing by ``step`` keeps
    the field's spread equal to full-resolution smoothing. Zero padding makes
    the field fade towards the borders.
    """
    step = max(1, int(sigma // 2))
    noise = torch.rand(2, 1, -(-height // step), -(-width // step)) * 2 - 1
    field = _gaussian_smooth(noise, sigma / step).mul_(alpha / step).view(1, 2, *noise.shape[-2:])
    if step > 1:
        field = torch.nn.functional.interpolate(field, size=(height, width), mode="bilinear", align_corners=False)
    return field[0]


def displacement_grid(displacement: torch.Tensor) -> torch.Tensor:
    """The sampling grid reading output pixel (x, y) from input (x + dx, y + dy); ``displacement`` is (2, H, W)."""
    _, height, width = displacement.shape
    grid = torch.empty(1, height, width, 2)
    torch.add(_pixel_centres(width), displacement[0], alpha=2 / width, out=grid[0, :, :, 0])
    torch.add(_pixel_centres(height)[:, None], displacement[1], alpha=2 / height, out=grid[0, :, :, 1])
    return grid


# Ours, not v2.ElasticTransform: about 10x faster (bench/transforms.py), the field smoothed on a coarse grid.
@TRANSFORMS.register("elastic")
class Elastic(PairedTransform):
    """Elastic deformation (Simard et al. 2003, as used by U-Net), with probability ``p``.

    A random displacement field (uniform noise smoothed by a Gaussian of std
    ``sigma``, scaled by ``alpha`` pixels; see :func:`elastic_displacement`)
    moves image (bilinear) and mask (nearest neighbour) alike; pixels read
    from outside the image get 0 and IGNORE_INDEX.

    Args:
        alpha: displacement scale in pixels, >= 0 (0 = identity).
        sigma: smoothness of the field in pixels, > 0 (larger = smoother).
        p: probability of deforming, in [0, 1].
    """

    def __init__(self, alpha: float = 34.0, sigma: float = 4.0, p: float = 0.5) -> None:
        self.alpha = check_non_negative(alpha, "elastic", "alpha")
        if sigma <= 0:
            raise ConfigError(f"elastic: sigma must be > 0, got {sigma!r}")
        self.sigma = float(sigma)
        self.p = check_probability(p, "elastic")

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        if not coin(self.p):
            return image, mask
        displacement = elastic_displacement(*image.shape[-2:], self.alpha, self.sigma)
        return warp_pair(image, mask, displacement_grid(displacement))

    def __repr__(self) -> str:
        return f"Elastic(alpha={self.alpha}, sigma={self.sigma}, p={self.p})"
