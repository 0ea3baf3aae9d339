"""Paired image + mask augmentations, registered in ``TRANSFORMS`` by name.

Every transform is called as ``image, mask = t(image, mask)``:

* ``image`` is a float ``tv_tensors.Image`` of shape (C, H, W), C = 1 or 3;
* ``mask`` is an int64 ``tv_tensors.Mask`` of shape (H, W), or ``None`` when
  there is no label (then ``(image, None)`` comes back).

Geometric transforms make one random draw and apply it to both. The mask is
only ever resampled with nearest-neighbour lookups, so no new class values
appear except ``IGNORE_INDEX`` where padding or rotation uncovers pixels (the
image gets 0 there). Colour transforms and ``normalize`` touch the image only.

A pipeline is built from a list of flat specs, as written in a config::

    pipeline = build_transforms([
        {"name": "random_resized_crop", "size": 256},
        {"name": "hflip"},
        {"name": "normalize"},
    ])
    image, mask = pipeline(image, mask)
"""
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from utils.constants import IGNORE_INDEX
from utils.registry import TRANSFORMS

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Fill for pixels uncovered by padding or rotation, per tv_tensor type.
_FILL = {tv_tensors.Image: 0.0, tv_tensors.Mask: IGNORE_INDEX}
_BILINEAR = v2.InterpolationMode.BILINEAR
# NEAREST_EXACT uses the same half-pixel centres as bilinear resizing, so the
# mask stays aligned with the image (plain NEAREST shifts it when shrinking).
_MASK_RESIZE = v2.InterpolationMode.NEAREST_EXACT

Pair = Tuple[tv_tensors.Image, Optional[tv_tensors.Mask]]


# --------------------------------------------------------------------------- #
# Argument checks
# --------------------------------------------------------------------------- #
def _size_hw(size: Union[int, List[int]], name: str) -> List[int]:
    """``size`` as ``[h, w]``: an int means a square, a list is ``[h, w]``."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"{name}: size must be a positive int or a list [h, w] of two positive ints, got {size!r}")
    return list(size)


def _check_probability(p: float, name: str) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: p must be in [0, 1], got {p!r}")
    return float(p)


def _check_interval(values: List[float], name: str, arg: str, low: float, high: float) -> Tuple[float, float]:
    """A ``[min, max]`` pair with ``low < min <= max <= high``."""
    if len(values) != 2 or not low < values[0] <= values[1] <= high:
        raise ValueError(f"{name}: {arg} must be [min, max] with {low} < min <= max <= {high}, got {values!r}")
    return float(values[0]), float(values[1])


def _check_non_negative(value: float, name: str, arg: str) -> float:
    if value < 0:
        raise ValueError(f"{name}: {arg} must be >= 0, got {value!r}")
    return float(value)


def _coin(p: float) -> bool:
    """True with probability ``p`` (drawn from torch's global generator)."""
    return p >= 1.0 or torch.rand(()).item() < p


# --------------------------------------------------------------------------- #
# Input handling and base classes
# --------------------------------------------------------------------------- #
def as_tv_tensors(image: torch.Tensor, mask: Optional[torch.Tensor]) -> Pair:
    """Wrap plain tensors as ``Image`` / ``Mask`` (no copy) and check them."""
    if not isinstance(image, tv_tensors.Image):
        image = tv_tensors.Image(image)
    if not image.is_floating_point() or image.ndim != 3:
        raise TypeError(
            f"transforms expect a float image of shape (C, H, W), got {image.dtype} {tuple(image.shape)}; "
            "convert uint8 images with image.float() / 255"
        )
    if mask is None:
        return image, None
    if not isinstance(mask, tv_tensors.Mask):
        mask = tv_tensors.Mask(mask)
    if mask.dtype != torch.int64 or mask.ndim != 2:
        raise TypeError(f"transforms expect an int64 mask of shape (H, W), got {mask.dtype} {tuple(mask.shape)}")
    if image.shape[-2:] != mask.shape:
        raise ValueError(f"image size {tuple(image.shape[-2:])} differs from mask size {tuple(mask.shape)}")
    return image, mask


class PairedTransform:
    """Base class: ``image, mask = t(image, mask)``; subclasses implement ``apply``."""

    def __call__(self, image: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Pair:
        return self.apply(*as_tv_tensors(image, mask))

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        raise NotImplementedError


class _V2Transform(PairedTransform):
    """Runs a torchvision v2 transform with probability ``p``.

    Geometric ops see image and mask in one call (one random draw for both);
    with ``image_only`` the mask is returned as it came, whatever the op does.
    """

    image_only = False

    def __init__(self, op: v2.Transform, p: float = 1.0) -> None:
        self.op = op
        self.p = p

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        if not _coin(self.p):
            return image, mask
        if self.image_only or mask is None:
            return self.op(image), mask
        return self.op(image, mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, op={self.op!r})"


# --------------------------------------------------------------------------- #
# Geometric transforms (image and mask)
# --------------------------------------------------------------------------- #
@TRANSFORMS.register("resize")
class Resize(PairedTransform):
    """Resize to a fixed size: image bilinear, mask nearest-neighbour.

    Args:
        size: output size; an int gives a square (size, size), a list is [h, w].
        antialias: low-pass the image when shrinking (recommended).
    """

    def __init__(self, size: Union[int, List[int]], antialias: bool = True) -> None:
        self.size = _size_hw(size, "resize")
        self.antialias = antialias

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        image = F.resize(image, self.size, interpolation=_BILINEAR, antialias=self.antialias)
        if mask is not None:
            mask = F.resize(mask, self.size, interpolation=_MASK_RESIZE)
        return image, mask

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, antialias={self.antialias})"


@TRANSFORMS.register("random_resized_crop")
class RandomResizedCrop(PairedTransform):
    """Crop a random area and aspect ratio, then resize it to ``size``.

    Args:
        size: output size; an int gives a square (size, size), a list is [h, w].
        scale: [min, max] fraction of the image area to crop, within (0, 1].
        ratio: [min, max] aspect ratio (width / height) of the crop.
    """

    def __init__(
        self,
        size: Union[int, List[int]],
        scale: List[float] = [0.5, 1.0],
        ratio: List[float] = [0.75, 1.3333],
    ) -> None:
        self.size = _size_hw(size, "random_resized_crop")
        scale = _check_interval(scale, "random_resized_crop", "scale", 0.0, 1.0)
        ratio = _check_interval(ratio, "random_resized_crop", "ratio", 0.0, float("inf"))
        # Used only to draw the crop box (torchvision's sampling rule).
        self._sampler = v2.RandomResizedCrop(self.size, scale=scale, ratio=ratio)

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        box = self._sampler.make_params([image])
        image = F.resized_crop(image, **box, size=self.size, interpolation=_BILINEAR, antialias=True)
        if mask is not None:
            mask = F.resized_crop(mask, **box, size=self.size, interpolation=_MASK_RESIZE)
        return image, mask

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self._sampler.scale}, ratio={self._sampler.ratio})"


@TRANSFORMS.register("random_crop")
class RandomCrop(_V2Transform):
    """Crop a random window of ``size``; padding fills image 0, mask IGNORE_INDEX.

    Args:
        size: crop size; an int gives a square (size, size), a list is [h, w].
        pad_if_needed: pad images smaller than ``size`` (otherwise they raise).
    """

    def __init__(self, size: Union[int, List[int]], pad_if_needed: bool = True) -> None:
        size = _size_hw(size, "random_crop")
        super().__init__(v2.RandomCrop(size, pad_if_needed=pad_if_needed, fill=_FILL, padding_mode="constant"))


@TRANSFORMS.register("hflip")
class HorizontalFlip(_V2Transform):
    """Flip left-right with probability ``p``.

    Args:
        p: probability of flipping, in [0, 1].
    """

    def __init__(self, p: float = 0.5) -> None:
        # The coin is tossed by the base class; the v2 op then always flips.
        super().__init__(v2.RandomHorizontalFlip(p=1.0), _check_probability(p, "hflip"))


@TRANSFORMS.register("vflip")
class VerticalFlip(_V2Transform):
    """Flip top-bottom with probability ``p``.

    Args:
        p: probability of flipping, in [0, 1].
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(v2.RandomVerticalFlip(p=1.0), _check_probability(p, "vflip"))


@TRANSFORMS.register("rotate")
class Rotate(_V2Transform):
    """Rotate by an angle drawn uniformly from [-degrees, degrees] about the centre.

    The image is resampled bilinearly, the mask by nearest neighbour; corners
    uncovered by the rotation get 0 in the image and IGNORE_INDEX in the mask.

    Args:
        degrees: largest absolute angle in degrees, in [0, 180].
        p: probability of rotating at all, in [0, 1].
    """

    def __init__(self, degrees: float, p: float = 1.0) -> None:
        if not 0 <= degrees <= 180:
            raise ValueError(f"rotate: degrees must be in [0, 180], got {degrees!r}")
        op = v2.RandomRotation([-float(degrees), float(degrees)], interpolation=_BILINEAR, fill=_FILL)
        super().__init__(op, _check_probability(p, "rotate"))


# --------------------------------------------------------------------------- #
# Photometric transforms (image only)
# --------------------------------------------------------------------------- #
@TRANSFORMS.register("color_jitter")
class ColorJitter(_V2Transform):
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
        if not 0 <= hue <= 0.5:
            raise ValueError(f"{name}: hue must be in [0, 0.5], got {hue!r}")
        op = v2.ColorJitter(
            brightness=_check_non_negative(brightness, name, "brightness"),
            contrast=_check_non_negative(contrast, name, "contrast"),
            saturation=_check_non_negative(saturation, name, "saturation"),
            hue=float(hue),
        )
        super().__init__(op, _check_probability(p, name))


@TRANSFORMS.register("gaussian_blur")
class GaussianBlur(_V2Transform):
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
            raise ValueError(f"{name}: kernel_size must be a positive odd int, got {kernel_size!r}")
        sigma = _check_interval(sigma, name, "sigma", 0.0, float("inf"))
        super().__init__(v2.GaussianBlur(kernel_size, sigma=sigma), _check_probability(p, name))


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
            raise ValueError(f"normalize: mean and std need the same, non-zero length, got {mean!r} and {std!r}")
        if any(s <= 0 for s in std):
            raise ValueError(f"normalize: std values must be > 0, got {std!r}")
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        channels = image.shape[-3]
        if len(self.mean) not in (1, channels):
            raise ValueError(
                f"normalize: the image has {channels} channel(s) but mean/std have {len(self.mean)} values; "
                f"give {channels}-value mean and std (e.g. mean: [0.5], std: [0.25] for 1-channel images)"
            )
        return F.normalize(image, self.mean, self.std), mask

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


# --------------------------------------------------------------------------- #
# Pipelines
# --------------------------------------------------------------------------- #
class Compose:
    """Apply paired transforms in order; plain tensors are wrapped as tv_tensors."""

    def __init__(self, transforms: Sequence[Callable[..., Pair]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Pair:
        image, mask = as_tv_tensors(image, mask)
        for transform in self.transforms:
            image, mask = transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


def _check_kwargs(name: str, cls: Callable[..., Any], kwargs: Dict[str, Any]) -> None:
    """Raise naming the accepted arguments when a spec has unknown keys."""
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"transform {name!r}: unknown argument(s) {unknown}; accepted: {accepted}")


def build_transforms(specs: List[Dict[str, Any]]) -> Compose:
    """Build a pipeline from flat specs like ``{"name": "resize", "size": [128, 128]}``.

    An empty list gives the identity pipeline. Unknown names raise the
    registry's ``KeyError`` listing the valid ones.
    """
    transforms = []
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"transform #{index}: expected a dict with a 'name' key, got {spec!r}")
        kwargs = {key: value for key, value in spec.items() if key != "name"}
        cls = TRANSFORMS.get(spec["name"])
        _check_kwargs(spec["name"], cls, kwargs)
        transforms.append(cls(**kwargs))
    return Compose(transforms)
