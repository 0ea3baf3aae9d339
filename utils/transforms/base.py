"""What every paired transform shares: the call contract, input checks, argument checks, random draws.

A transform is called as ``image, mask = t(image, mask)`` and subclasses
:class:`PairedTransform`, implementing ``apply`` on tv_tensors: images
(C, H, W) with masks (H, W), and volumes (C, Z, Y, X) with masks (Z, Y, X)
for the transforms that say ``volumes = True`` (the others refuse them). A
torchvision v2 transform becomes a paired one through :class:`TorchvisionAdapter`.
Argument checks raise :class:`~utils.errors.ConfigError` naming the transform
and the argument. Random draws use torch's global generator (seeded per
DataLoader worker).
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError
from utils.registry import TRANSFORMS

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Fill for pixels uncovered by padding, rotation or warping, per tv_tensor type.
FILL = {tv_tensors.Image: 0.0, tv_tensors.Mask: IGNORE_INDEX}
BILINEAR = v2.InterpolationMode.BILINEAR
# NEAREST_EXACT uses the same half-pixel centres as bilinear resizing, so the
# mask stays aligned with the image (plain NEAREST shifts it when shrinking).
MASK_RESIZE = v2.InterpolationMode.NEAREST_EXACT

Pair = Tuple[tv_tensors.Image, Optional[tv_tensors.Mask]]


# --------------------------------------------------------------------------- #
# Inputs and base classes
# --------------------------------------------------------------------------- #
def as_tv_tensors(image: torch.Tensor, mask: Optional[torch.Tensor]) -> Pair:
    """Wrap plain tensors as ``Image`` / ``Mask`` (no copy) and check them.

    The image is (C, H, W) or a volume (C, Z, Y, X); the mask has the image's
    spatial shape.
    """
    if not isinstance(image, tv_tensors.Image):
        image = tv_tensors.Image(image)
    if not image.is_floating_point() or image.ndim not in (3, 4):
        raise TypeError(
            f"transforms expect a float image of shape (C, H, W) or (C, Z, Y, X), got {image.dtype} "
            f"{tuple(image.shape)}; convert uint8 images with image.float() / 255"
        )
    if mask is None:
        return image, None
    if not isinstance(mask, tv_tensors.Mask):
        mask = tv_tensors.Mask(mask)
    if mask.dtype != torch.int64 or mask.ndim != image.ndim - 1:
        raise TypeError(f"transforms expect an int64 mask of shape {'(H, W)' if image.ndim == 3 else '(Z, Y, X)'}, "
                        f"got {mask.dtype} {tuple(mask.shape)}")
    if image.shape[1:] != mask.shape:
        raise ValueError(f"image size {tuple(image.shape[1:])} differs from mask size {tuple(mask.shape)}")
    return image, mask


def _registered_name(cls: type) -> str:
    """The name ``cls`` is registered under in ``TRANSFORMS`` (its class name if none)."""
    return next((name for name in TRANSFORMS.names() if TRANSFORMS.get(name) is cls), cls.__name__)


class PairedTransform:
    """Base class: ``image, mask = t(image, mask)``; subclasses implement ``apply``.

    ``volumes = True`` marks a transform that also takes volumes
    (C, Z, Y, X); the others take (C, H, W) images only and refuse volumes.
    """

    volumes = False

    def __call__(self, image: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Pair:
        image, mask = as_tv_tensors(image, mask)
        if image.ndim != 3 and not self.volumes:
            raise ConfigError(
                f"transform {_registered_name(type(self))!r} takes 2D images (C, H, W), got a volume "
                f"{tuple(image.shape)}; for volumes list the nnunet_* transforms (utils/transforms/nnunet.py)"
            )
        return self.apply(image, mask)

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        raise NotImplementedError


class TorchvisionAdapter(PairedTransform):
    """A torchvision v2 transform used as a paired one, applied with probability ``p``.

    Geometric ops see image and mask in one call (one random draw for both;
    v2 resamples ``Mask`` by nearest neighbour and fills it per type, see
    :data:`FILL`). With ``image_only`` (colour ops) the mask comes back as it
    came, whatever the op does.
    """

    image_only = False

    def __init__(self, op: v2.Transform, p: float = 1.0) -> None:
        self.op = op
        self.p = p

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        if not coin(self.p):
            return image, mask
        if self.image_only or mask is None:
            return self.op(image), mask
        return self.op(image, mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, op={self.op!r})"


# --------------------------------------------------------------------------- #
# Argument checks: ``name`` is the transform's registered name
# --------------------------------------------------------------------------- #
def size_hw(size: Union[int, List[int]], name: str, arg: str = "size") -> List[int]:
    """``size`` as ``[h, w]``: an int means a square, a list is ``[h, w]``; ``arg`` names it in errors."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ConfigError(f"{name}: {arg} must be a positive int or a list [h, w] of two positive ints, got {size!r}")
    return list(size)


def check_probability(p: float, name: str) -> float:
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name}: p must be in [0, 1], got {p!r}")
    return float(p)


def check_interval(values: List[float], name: str, arg: str, low: float, high: float) -> Tuple[float, float]:
    """A ``[min, max]`` pair with ``low < min <= max <= high``."""
    if len(values) != 2 or not low < values[0] <= values[1] <= high:
        raise ConfigError(f"{name}: {arg} must be [min, max] with {low} < min <= max <= {high}, got {values!r}")
    return float(values[0]), float(values[1])


def check_range(values: List[float], name: str, arg: str) -> Tuple[float, float]:
    """A ``[min, max]`` pair with ``0 < min <= max`` (scale factors, ratios)."""
    return check_interval(values, name, arg, 0.0, float("inf"))


def check_closed(values: List[float], name: str, arg: str, low: float, high: float) -> Tuple[float, float]:
    """A ``[min, max]`` pair with ``low <= min <= max <= high``."""
    if len(values) != 2 or not low <= values[0] <= values[1] <= high:
        raise ConfigError(f"{name}: {arg} must be [min, max] with {low} <= min <= max <= {high}, got {values!r}")
    return float(values[0]), float(values[1])


def check_flag(value: bool, name: str, arg: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: {arg} must be true or false, got {value!r}")
    return value


def check_non_negative(value: float, name: str, arg: str) -> float:
    if value < 0:
        raise ConfigError(f"{name}: {arg} must be >= 0, got {value!r}")
    return float(value)


def check_at_most(value: float, name: str, arg: str, high: float) -> float:
    """A value in ``[0, high]`` (angles, hue shifts)."""
    if not 0 <= value <= high:
        raise ConfigError(f"{name}: {arg} must be in [0, {high}], got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- #
# Random draws (torch's global generator)
# --------------------------------------------------------------------------- #
def coin(p: float) -> bool:
    """True with probability ``p``."""
    return p >= 1.0 or torch.rand(()).item() < p


def uniform(low: float, high: float) -> float:
    """A float drawn uniformly from [low, high]."""
    return low + (high - low) * torch.rand(()).item()


def randint(low: int, high: int) -> int:
    """An int drawn uniformly from [low, high], both included."""
    return int(torch.randint(low, high + 1, ()).item())
