"""nnU-Net's training augmentations, for images (C, H, W) and volumes (C, Z, Y, X) alike.

Registered as ``nnunet_*``: the names say whose recipe and defaults they
follow (each ``p`` is nnU-Net v2's), and keep them apart from the 2D
``gaussian_noise`` / ``gaussian_blur`` / ``color_jitter``, which draw their
parameters differently. nnU-Net v2's default pipeline
(``nnUNetTrainer.get_training_transforms``), in its order::

    transforms:
      train:
        - {name: nnunet_spatial}                    # rotation p 0.2 (+-30 deg), scaling p 0.2 (0.7-1.4)
        - {name: nnunet_noise}                      # p 0.1, std drawn from [0, 0.1]
        - {name: nnunet_blur}                       # p 0.2, sigma [0.5, 1], each channel with p 0.5
        - {name: nnunet_brightness}                 # p 0.15, factor [0.75, 1.25]
        - {name: nnunet_contrast}                   # p 0.15, factor [0.75, 1.25], range preserved
        - {name: nnunet_low_resolution}             # p 0.25, zoom [0.5, 1], each channel with p 0.5
        - {name: nnunet_gamma, invert: true, p: 0.1}
        - {name: nnunet_gamma}                      # p 0.3, gamma [0.7, 1.5], mean and std kept
        - {name: nnunet_mirror}                     # every spatial axis flipped with p 0.5

For 2D nnU-Net rotates by up to 180 degrees (15 for patches more than 1.5x
longer than wide): set ``rotation: [-180, 180]``. For anisotropic volumes it
rotates in the (Y, X) plane only: ``in_plane_only: true``.

Differences from nnU-Net, by design: voxels the spatial transform reads from
outside the patch get 0 in the image and IGNORE_INDEX in the mask (nnU-Net
makes them background, having first sampled a larger patch so that few
remain); the mask is read by nearest neighbour (nnU-Net interpolates one-hot
labels linearly); the blur kernel spans 3 sigma of the largest sigma drawn.
Intensity transforms act on the image only and never modify their input.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from utils.errors import ConfigError
from utils.registry import TRANSFORMS
from utils.transforms.base import (Pair, PairedTransform, check_closed, check_flag, check_interval, check_probability,
                                   check_range, coin, uniform)
from utils.transforms.elastic import warp_pair

#: Guards divisions by a flat channel's range or std (nnU-Net's epsilon).
EPS = 1e-7


# --------------------------------------------------------------------------- #
# Draws and shapes
# --------------------------------------------------------------------------- #
def straddling_factors(low: float, high: float, count: int) -> torch.Tensor:
    """``count`` factors drawn as nnU-Net draws contrast, brightness and gamma factors.

    When ``low < 1 < high`` a fair coin picks [low, 1] or [1, high] and the
    factor is uniform there, so that shrinking is as likely as stretching;
    otherwise it is uniform in [low, high].
    """
    u = torch.rand(count)
    if not low < 1.0 < high:
        return low + (high - low) * u
    below = torch.rand(count) < 0.5
    return torch.where(below, low + (1.0 - low) * u, 1.0 + (high - 1.0) * u)


def per_channel(values: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """(C,) values as a (C, 1, ..., 1) view broadcasting over ``image``'s spatial axes, in its dtype."""
    return values.to(image.dtype).view(-1, *[1] * (image.ndim - 1))


# amin / amax / vector_norm: several times faster on CPU than aminmax / std_mean, which take another path.
def row_range(rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of each row of a (C, N) tensor, as (C, 1) columns."""
    return rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)


def row_mean_std(rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation (unbiased, as ``torch.std``) of each row of a (C, N) tensor, as (C, 1) columns."""
    mean = rows.mean(1, keepdim=True)
    std = torch.linalg.vector_norm(rows - mean, dim=1, keepdim=True) / math.sqrt(max(rows.shape[1] - 1, 1))
    return mean, std


# --------------------------------------------------------------------------- #
# Geometry helpers
# --------------------------------------------------------------------------- #
def rotation_matrix(angles: Sequence[float]) -> torch.Tensor:
    """The rotation by ``angles`` (degrees), as a matrix over the spatial axes in their order.

    One angle: 2D, a turn in the (H, W) plane. Three angles: 3D, about axes
    0, 1 and 2 in turn (nnU-Net's ``Rz @ Ry @ Rx``); the angle about axis 0
    turns the (Y, X) plane.
    """
    planes = [(0, 1)] if len(angles) == 1 else [(1, 2), (2, 0), (0, 1)]
    dims = 2 if len(angles) == 1 else 3
    matrix = torch.eye(dims, dtype=torch.float64)
    for angle, (i, j) in zip(angles, planes):
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        turn = torch.eye(dims, dtype=torch.float64)
        turn[i, i], turn[i, j], turn[j, i], turn[j, j] = cos, -sin, sin, cos
        matrix = turn @ matrix
    return matrix


def affine_sampling_grid(matrix: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The (1, *shape, dims) ``grid_sample`` grid reading output voxel p from input voxel ``matrix @ p``.

    ``p`` is in voxels from the patch centre, axes in order, so rotations
    turn physical (voxel) space even on non-cubic patches. Equal to
    ``F.affine_grid`` with ``align_corners=False`` and the matrix rewritten in
    normalised (x, y, z) coordinates, built by broadcasting (4x faster).
    """
    dims = len(shape)
    half = torch.tensor(shape, dtype=torch.float64) / 2
    normalised = (matrix * half[None, :] / half[:, None]).to(torch.float32)  # D^-1 A D on normalised coordinates
    centres = [(torch.arange(n, dtype=torch.float32) * 2 + 1) / n - 1 for n in shape]
    grid = torch.zeros(1, *shape, dims)
    for out_axis in range(dims):  # grid channel 0 is x (the last axis), as grid_sample expects
        channel = grid[0, ..., dims - 1 - out_axis]
        for in_axis in range(dims):
            view = [1] * dims
            view[in_axis] = -1
            channel.add_((centres[in_axis] * normalised[out_axis, in_axis]).view(view))
    return grid


def blur_axis(image: torch.Tensor, sigmas: torch.Tensor, axis: int) -> torch.Tensor:
    """Gaussian filter of (n, *S) ``image`` along spatial ``axis``, channel i with std ``sigmas[i]`` voxels.

    A separable 1D convolution written as a sum of shifted copies (several
    times faster than ``conv1d`` / ``conv3d`` on CPU), over a kernel of radius
    ``ceil(3 * max(sigmas))``, borders mirrored (reflect) as nnU-Net does.
    """
    length = image.shape[axis + 1]
    radius = math.ceil(3 * float(sigmas.max()))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernels = torch.exp(-(taps[None] ** 2) / (2 * sigmas.to(torch.float64)[:, None] ** 2))
    kernels = (kernels / kernels.sum(1, keepdim=True)).to(image.dtype)
    padding = [0] * (2 * (image.ndim - 1))
    padding[2 * (image.ndim - 2 - axis):2 * (image.ndim - 1 - axis)] = [radius, radius]
    padded = F.pad(image[None], padding, mode="reflect" if radius < length else "replicate")[0]
    out = padded.narrow(axis + 1, 0, length) * per_channel(kernels[:, 0], image)
    for tap in range(1, 2 * radius + 1):
        out.addcmul_(padded.narrow(axis + 1, tap, length), per_channel(kernels[:, tap], image))
    return out


# --------------------------------------------------------------------------- #
# Geometry: image and mask
# --------------------------------------------------------------------------- #
@TRANSFORMS.register("nnunet_spatial")
class Spatial(PairedTransform):
    """nnU-Net's rotation and scaling, as one affine map about the patch centre; the patch keeps its size.

    With probability ``p_rotation`` the patch turns by angles drawn from
    ``rotation`` (3D: one about each axis, or about axis 0 only with
    ``in_plane_only``; 2D: one), with probability ``p_scale`` it is scaled by
    one factor drawn from ``scale`` for every axis (above 1 zooms out:
    objects get smaller). The image is read (tri)linearly, the mask by nearest
    neighbour, in one pass each; voxels read from outside the patch get 0 and
    IGNORE_INDEX. Neither drawn: the pair comes back untouched.

    Args:
        rotation: [min, max] angle range in degrees, within [-180, 180].
        scale: [min, max] scale factor range, 0 < min.
        p_rotation: probability of rotating, in [0, 1].
        p_scale: probability of scaling, in [0, 1].
        in_plane_only: volumes turn about axis 0 only, i.e. in the (Y, X)
            plane (nnU-Net's choice for anisotropic data); no effect in 2D.
    """

    volumes = True

    def __init__(self, rotation: List[float] = [-30.0, 30.0], scale: List[float] = [0.7, 1.4],
                 p_rotation: float = 0.2, p_scale: float = 0.2, in_plane_only: bool = False) -> None:
        name = "nnunet_spatial"
        self.rotation = check_closed(rotation, name, "rotation", -180.0, 180.0)
        self.scale = check_range(scale, name, "scale")
        self.p_rotation = check_probability(p_rotation, name)
        self.p_scale = check_probability(p_scale, name)
        self.in_plane_only = check_flag(in_plane_only, name, "in_plane_only")

    def draw_matrix(self, dims: int) -> Optional[torch.Tensor]:
        """A random ``dims`` x ``dims`` map (rotation @ scaling), or None when neither is drawn."""
        rotate, scale = coin(self.p_rotation), coin(self.p_scale)
        if not (rotate or scale):
            return None
        axes = 1 if dims == 2 else 3
        drawn = 1 if self.in_plane_only else axes
        angles = [uniform(*self.rotation) if rotate and axis < drawn else 0.0 for axis in range(axes)]
        factor = uniform(*self.scale) if scale else 1.0
        return rotation_matrix(angles) * factor

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        matrix = self.draw_matrix(image.ndim - 1)
        if matrix is None:
            return image, mask
        return warp_pair(image, mask, affine_sampling_grid(matrix, image.shape[1:]))

    def __repr__(self) -> str:
        return (f"Spatial(rotation={list(self.rotation)}, scale={list(self.scale)}, p_rotation={self.p_rotation}, "
                f"p_scale={self.p_scale}, in_plane_only={self.in_plane_only})")


@TRANSFORMS.register("nnunet_mirror")
class Mirror(PairedTransform):
    """nnU-Net's mirroring: each spatial axis of ``axes`` flipped with probability ``p``, image and mask alike.

    Args:
        axes: spatial axes that may be flipped, counted from 0 (volumes: 0 = Z,
            1 = Y, 2 = X; images: 0 = H, 1 = W); default all of them.
        p: probability of flipping each axis, in [0, 1].
    """

    volumes = True

    def __init__(self, axes: Optional[List[int]] = None, p: float = 0.5) -> None:
        name = "nnunet_mirror"
        if axes is not None and (
            not axes or len(set(axes)) != len(axes)
            or not all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a <= 2 for a in axes)
        ):
            raise ConfigError(f"{name}: axes must be a non-empty list of distinct spatial axes in 0..2 "
                              f"(or left out for all), got {axes!r}")
        self.axes = None if axes is None else [int(a) for a in axes]
        self.p = check_probability(p, name)

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        dims = image.ndim - 1
        axes = list(range(dims)) if self.axes is None else self.axes
        if max(axes) >= dims:
            raise ConfigError(f"nnunet_mirror: axes {axes} name axis {max(axes)} but the samples have {dims} "
                              f"spatial axes {tuple(image.shape[1:])}; list axes below {dims} or leave axes out")
        flipped = [axis for axis in axes if coin(self.p)]
        if not flipped:
            return image, mask
        image = tv_tensors.Image(image.as_subclass(torch.Tensor).flip([axis + 1 for axis in flipped]))
        if mask is not None:
            mask = tv_tensors.Mask(mask.as_subclass(torch.Tensor).flip(flipped))
        return image, mask

    def __repr__(self) -> str:
        return f"Mirror(axes={self.axes}, p={self.p})"


# --------------------------------------------------------------------------- #
# Intensity: image only
# --------------------------------------------------------------------------- #
class _ImageOnly(PairedTransform):
    """Applies ``change`` (a new tensor from the plain image) with probability ``p``; the mask passes through."""

    volumes = True
    p = 1.0

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        if not coin(self.p):
            return image, mask
        return tv_tensors.Image(self.change(image.as_subclass(torch.Tensor))), mask

    def change(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={list(value) if isinstance(value, tuple) else value}"
                         for key, value in vars(self).items())
        return f"{type(self).__name__}({args})"


@TRANSFORMS.register("nnunet_noise")
class Noise(_ImageOnly):
    """Add zero-mean Gaussian noise, one std drawn from ``std`` for all channels, with probability ``p``.

    nnU-Net calls the range ``noise_variance`` (0, 0.1) but uses the drawn
    value as the standard deviation; so does this. Not clamped.

    Args:
        std: [min, max] range of the noise standard deviation, 0 <= min.
        p: probability of adding noise, in [0, 1].
    """

    def __init__(self, std: List[float] = [0.0, 0.1], p: float = 0.1) -> None:
        self.std = check_closed(std, "nnunet_noise", "std", 0.0, float("inf"))
        self.p = check_probability(p, "nnunet_noise")

    def change(self, image: torch.Tensor) -> torch.Tensor:
        return torch.randn_like(image).mul_(uniform(*self.std)).add_(image)


@TRANSFORMS.register("nnunet_blur")
class Blur(_ImageOnly):
    """Gaussian blur, each channel with probability ``p_per_channel``, a sigma drawn per channel and axis.

    Separable: one 1D Gaussian per spatial axis (see :func:`blur_axis`).

    Args:
        sigma: [min, max] range of the standard deviation in voxels, 0 < min.
        p_per_channel: probability of blurring each channel, in [0, 1].
        p: probability of blurring at all, in [0, 1].
    """

    def __init__(self, sigma: List[float] = [0.5, 1.0], p_per_channel: float = 0.5, p: float = 0.2) -> None:
        self.sigma = check_range(sigma, "nnunet_blur", "sigma")
        self.p_per_channel = check_probability(p_per_channel, "nnunet_blur")
        self.p = check_probability(p, "nnunet_blur")

    def change(self, image: torch.Tensor) -> torch.Tensor:
        chosen = (torch.rand(image.shape[0]) < self.p_per_channel).nonzero().flatten()
        low, high = self.sigma
        sigmas = low + (high - low) * torch.rand(len(chosen), image.ndim - 1)
        if len(chosen) == 0:
            return image
        blurred = image[chosen]
        for axis in range(image.ndim - 1):
            blurred = blur_axis(blurred, sigmas[:, axis], axis)
        out = image.clone()
        out[chosen] = blurred
        return out


@TRANSFORMS.register("nnunet_brightness")
class Brightness(_ImageOnly):
    """Multiply each channel by its own factor drawn from ``factor`` (nnU-Net's draw, see
    :func:`straddling_factors`), with probability ``p``.

    Args:
        factor: [min, max] range of the multiplier, 0 < min.
        p: probability of changing the brightness, in [0, 1].
    """

    def __init__(self, factor: List[float] = [0.75, 1.25], p: float = 0.15) -> None:
        self.factor = check_range(factor, "nnunet_brightness", "factor")
        self.p = check_probability(p, "nnunet_brightness")

    def change(self, image: torch.Tensor) -> torch.Tensor:
        return image * per_channel(straddling_factors(*self.factor, image.shape[0]), image)


@TRANSFORMS.register("nnunet_contrast")
class Contrast(_ImageOnly):
    """Scale each channel's deviations from its mean by a factor drawn from ``factor``, with probability ``p``.

    ``(x - mean) * f + mean`` per channel, ``f`` drawn per channel as nnU-Net
    does (:func:`straddling_factors`); with ``preserve_range`` the result is
    clamped to the channel's former [min, max].

    Args:
        factor: [min, max] range of the contrast factor, 0 < min.
        preserve_range: clamp each channel to its range before the change.
        p: probability of changing the contrast, in [0, 1].
    """

    def __init__(self, factor: List[float] = [0.75, 1.25], preserve_range: bool = True, p: float = 0.15) -> None:
        self.factor = check_range(factor, "nnunet_contrast", "factor")
        self.preserve_range = check_flag(preserve_range, "nnunet_contrast", "preserve_range")
        self.p = check_probability(p, "nnunet_contrast")

    def change(self, image: torch.Tensor) -> torch.Tensor:
        flat = image.reshape(image.shape[0], -1)
        mean = per_channel(flat.mean(1), image)
        out = (image - mean).mul_(per_channel(straddling_factors(*self.factor, image.shape[0]), image)).add_(mean)
        if self.preserve_range:
            low, high = row_range(flat)
            out = torch.clamp(out, per_channel(low, image), per_channel(high, image))
        return out


@TRANSFORMS.register("nnunet_low_resolution")
class LowResolution(_ImageOnly):
    """Simulate a coarser scan: each channel with probability ``p_per_channel`` is shrunk and enlarged again.

    The channel is resized by a factor drawn from ``zoom`` (the same on every
    axis) by nearest neighbour, then back to its size (bi/trilinearly), as
    nnU-Net v2 does; the shape never changes.

    Args:
        zoom: [min, max] range of the shrink factor, 0 < min <= max <= 1.
        p_per_channel: probability of degrading each channel, in [0, 1].
        p: probability of degrading at all, in [0, 1].
    """

    def __init__(self, zoom: List[float] = [0.5, 1.0], p_per_channel: float = 0.5, p: float = 0.25) -> None:
        self.zoom = check_interval(zoom, "nnunet_low_resolution", "zoom", 0.0, 1.0)
        self.p_per_channel = check_probability(p_per_channel, "nnunet_low_resolution")
        self.p = check_probability(p, "nnunet_low_resolution")

    def change(self, image: torch.Tensor) -> torch.Tensor:
        chosen = (torch.rand(image.shape[0]) < self.p_per_channel).nonzero().flatten().tolist()
        low, high = self.zoom
        zooms = (low + (high - low) * torch.rand(len(chosen))).tolist()
        if not chosen:
            return image
        size, out = image.shape[1:], image.clone()
        mode = "bilinear" if len(size) == 2 else "trilinear"
        for channel, zoom in zip(chosen, zooms):
            small = F.interpolate(image[channel][None, None], [max(1, round(n * zoom)) for n in size],
                                  mode="nearest-exact")
            out[channel] = F.interpolate(small, size, mode=mode, align_corners=False)[0, 0]
        return out


@TRANSFORMS.register("nnunet_gamma")
class Gamma(_ImageOnly):
    """Gamma correction of each channel on its own [min, max], with probability ``p``.

    Per channel, ``x -> ((x - min) / (max - min)) ** g * (max - min) + min``
    with ``g`` drawn from ``gamma`` as nnU-Net does (:func:`straddling_factors`);
    with ``retain_stats`` the channel's mean and std are restored afterwards.
    ``invert`` applies it to the negated image (bright and dark swap roles);
    nnU-Net runs it once with ``invert: true, p: 0.1``, then without, p 0.3.

    Args:
        gamma: [min, max] range of the exponent, 0 < min.
        invert: correct the negated image, then negate back.
        retain_stats: keep each channel's mean and standard deviation.
        p: probability of the correction, in [0, 1].
    """

    def __init__(self, gamma: List[float] = [0.7, 1.5], invert: bool = False, retain_stats: bool = True,
                 p: float = 0.3) -> None:
        self.gamma = check_range(gamma, "nnunet_gamma", "gamma")
        self.invert = check_flag(invert, "nnunet_gamma", "invert")
        self.retain_stats = check_flag(retain_stats, "nnunet_gamma", "retain_stats")
        self.p = check_probability(p, "nnunet_gamma")

    def change(self, image: torch.Tensor) -> torch.Tensor:
        x = image.reshape(image.shape[0], -1)
        x = -x if self.invert else x
        low, high = row_range(x)
        span = high - low
        out = (x - low).div_(span.clamp(min=EPS))
        for row, gamma in zip(out, straddling_factors(*self.gamma, image.shape[0]).tolist()):
            row.pow_(gamma)  # a float exponent: faster than a tensor of them
        out.mul_(span).add_(low)
        if self.retain_stats:
            (mean, std), (new_mean, new_std) = row_mean_std(x), row_mean_std(out)
            out.sub_(new_mean).mul_(std / new_std.clamp(min=EPS)).add_(mean)
        return (out.neg_() if self.invert else out).view(image.shape)
