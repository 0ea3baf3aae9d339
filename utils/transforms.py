"""Paired image + mask augmentations, registered in ``TRANSFORMS`` by name.

Every transform is called as ``image, mask = t(image, mask)``:

* ``image`` is a float ``tv_tensors.Image`` of shape (C, H, W), C = 1 or 3;
* ``mask`` is an int64 ``tv_tensors.Mask`` of shape (H, W), or ``None`` when
  there is no label (then ``(image, None)`` comes back).

Geometric transforms make one random draw and apply it to both. The mask is
only ever resampled with nearest-neighbour lookups, so no new class values
appear except ``IGNORE_INDEX`` where padding, rotation or warping uncovers
pixels (the image gets 0 there). Colour transforms and ``normalize`` touch the
image only. Random draws use torch's global generator (seeded per DataLoader
worker).

A pipeline is built from a list of flat specs, as written in a config::

    pipeline = build_transforms([
        {"name": "random_resized_crop", "size": 256},
        {"name": "hflip"},
        {"name": "normalize"},
    ])
    image, mask = pipeline(image, mask)

``mosaic`` combines the current sample with three more drawn from the
dataset: a dataset calls ``pipeline.bind_source(dataset.random_sample)``, and
:meth:`Compose.bind_source` hands each multi-sample transform a source whose
samples already went through the transforms before it in the list.

Preview what a config's training pipeline produces::

    python -m utils.transforms --config configs/demo.yaml --out results/aug_preview.png --num 8
"""
import argparse
import inspect
import logging
import math
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from utils.cli import add_config_arguments, guarded, setup_logging
from utils.constants import IGNORE_INDEX
from utils.registry import DATASETS, TRANSFORMS
from utils.visualize import make_grid, overlay, save_png, to_display

logger = logging.getLogger(__name__)

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
def _size_hw(size: Union[int, List[int]], name: str, arg: str = "size") -> List[int]:
    """``size`` as ``[h, w]``: an int means a square, a list is ``[h, w]``; ``arg`` names it in errors."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise ValueError(f"{name}: {arg} must be a positive int or a list [h, w] of two positive ints, got {size!r}")
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


def _check_range(values: List[float], name: str, arg: str) -> Tuple[float, float]:
    """A ``[min, max]`` pair with ``0 < min <= max`` (scale factors, ratios)."""
    return _check_interval(values, name, arg, 0.0, float("inf"))


def _coin(p: float) -> bool:
    """True with probability ``p`` (drawn from torch's global generator)."""
    return p >= 1.0 or torch.rand(()).item() < p


def _uniform(low: float, high: float) -> float:
    """A float drawn uniformly from [low, high] (torch's global generator)."""
    return low + (high - low) * torch.rand(()).item()


def _randint(low: int, high: int) -> int:
    """An int drawn uniformly from [low, high], both included (torch's global generator)."""
    return int(torch.randint(low, high + 1, ()).item())


def _register(name: str) -> Callable[[type], type]:
    """``TRANSFORMS.register(name)``, except in the copy of this file run as ``__main__``.

    ``python -m utils.transforms`` executes this file as ``__main__`` and the
    config layer imports it again as ``utils.transforms``; only the imported
    module registers its classes (registering a name twice raises).
    """
    if __name__ == "__main__":
        return lambda cls: cls
    return TRANSFORMS.register(name)


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
# Geometry helpers shared by the crop and resize transforms
# --------------------------------------------------------------------------- #
#: Where a crop window falls along one axis: source ``[start, stop)`` and the
#: padding before and after it (non-zero only when the window is longer).
Span = Tuple[int, int, int, int]


def _random_span(length: int, size: int) -> Span:
    """A window of ``size`` at a random offset along an axis of ``length``.

    A shorter axis is taken whole and placed at a random offset in the window,
    the rest padded.
    """
    offset = _randint(min(0, length - size), max(0, length - size))
    start, stop = max(offset, 0), min(offset + size, length)
    return start, stop, start - offset, offset + size - stop


def _crop(tensor: torch.Tensor, rows: Span, cols: Span) -> torch.Tensor:
    """The source part of a window: a view, no copy."""
    return tensor[..., rows[0]:rows[1], cols[0]:cols[1]]


def _pad_pair(image: torch.Tensor, mask: Optional[torch.Tensor], rows: Span, cols: Span) -> Pair:
    """Pad by the spans' padding (image 0, mask IGNORE_INDEX); no copy when there is none."""
    padding = [cols[2], cols[3], rows[2], rows[3]]
    if any(padding):
        image = torch.nn.functional.pad(image, padding, value=0.0)
        if mask is not None:
            mask = torch.nn.functional.pad(mask, padding, value=IGNORE_INDEX)
    return tv_tensors.Image(image), None if mask is None else tv_tensors.Mask(mask)


def _resize_pair(image: torch.Tensor, mask: Optional[torch.Tensor], size: List[int], antialias: bool = True) -> Pair:
    """Resize to ``size`` [h, w]: image bilinear, mask nearest; nothing is done at that size already."""
    if list(image.shape[-2:]) == list(size):
        return tv_tensors.Image(image), None if mask is None else tv_tensors.Mask(mask)
    image = F.resize(tv_tensors.Image(image), size, interpolation=_BILINEAR, antialias=antialias)
    if mask is not None:
        mask = F.resize(tv_tensors.Mask(mask), size, interpolation=_MASK_RESIZE)
    return image, mask


def _class_ratio_below(mask: torch.Tensor, max_ratio: float) -> bool:
    """Whether ``mask`` holds two or more classes, the largest under ``max_ratio`` of the labelled pixels."""
    counts = torch.bincount(mask.reshape(-1), minlength=IGNORE_INDEX + 1)
    counts[IGNORE_INDEX] = 0
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max().item() / counts.sum().item() < max_ratio


#: Extra crop draws allowed by ``cat_max_ratio`` (mmsegmentation's number).
MAX_CROP_REDRAWS = 10


def _draw_window(draw: Callable[[], Tuple[Span, Span]], mask: Optional[torch.Tensor],
                 cat_max_ratio: float) -> Tuple[Span, Span]:
    """``draw()`` a (rows, cols) window, drawing again while one class dominates it.

    With a mask and ``cat_max_ratio`` < 1 the window is drawn again, at most
    ``MAX_CROP_REDRAWS`` times, until its part of the mask holds two or more
    classes, none covering ``cat_max_ratio`` of the labelled pixels; the last
    draw is kept either way (mmsegmentation's ``RandomCrop`` rule).
    """
    rows, cols = draw()
    if mask is not None and cat_max_ratio < 1.0:
        for _ in range(MAX_CROP_REDRAWS):
            if _class_ratio_below(_crop(mask, rows, cols), cat_max_ratio):
                break
            rows, cols = draw()
    return rows, cols


def _check_cat_max_ratio(value: float, name: str) -> float:
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name}: cat_max_ratio must be in (0, 1] (1 = off), got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- #
# Geometric transforms (image and mask)
# --------------------------------------------------------------------------- #
@_register("resize")
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
        return _resize_pair(image, mask, self.size, self.antialias)

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, antialias={self.antialias})"


@_register("random_resized_crop")
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


@_register("random_crop")
class RandomCrop(PairedTransform):
    """Crop a random window of ``size``; padding fills image 0, mask IGNORE_INDEX.

    An image smaller than ``size`` along an axis is placed at a random offset
    in the window and padded. With ``cat_max_ratio`` < 1 the window is drawn
    again (up to 10 times, as mmsegmentation's ``RandomCrop``) while a single
    class covers ``cat_max_ratio`` or more of the crop's labelled pixels or
    the crop holds fewer than two classes; the last draw is kept.

    Args:
        size: crop size; an int gives a square (size, size), a list is [h, w].
        pad_if_needed: pad images smaller than ``size`` (otherwise they raise).
        cat_max_ratio: largest share of the labelled pixels one class may
            cover, in (0, 1]; 1 turns the check off.
    """

    def __init__(self, size: Union[int, List[int]], pad_if_needed: bool = True, cat_max_ratio: float = 1.0) -> None:
        self.size = _size_hw(size, "random_crop")
        self.pad_if_needed = pad_if_needed
        self.cat_max_ratio = _check_cat_max_ratio(cat_max_ratio, "random_crop")

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        height, width = image.shape[-2:]
        if not self.pad_if_needed and (height < self.size[0] or width < self.size[1]):
            raise ValueError(
                f"random_crop: image size {height}x{width} is smaller than the crop {self.size[0]}x{self.size[1]}; "
                "set pad_if_needed: true or resize the images first"
            )
        rows, cols = _draw_window(
            lambda: (_random_span(height, self.size[0]), _random_span(width, self.size[1])), mask, self.cat_max_ratio
        )
        return _pad_pair(_crop(image, rows, cols), None if mask is None else _crop(mask, rows, cols), rows, cols)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, pad_if_needed={self.pad_if_needed}, cat_max_ratio={self.cat_max_ratio})"


@_register("random_resize")
class RandomResize(PairedTransform):
    """Resize to a random multiple of ``scale`` (mmsegmentation's ``RandomResize``).

    A ratio is drawn uniformly from ``ratio_range`` and the target is
    ``[int(h * ratio), int(w * ratio)]`` for ``scale = [h, w]``. With
    ``keep_ratio`` the image is scaled by ``min(max(target) / max(H, W),
    min(target) / min(H, W))``: its long edge fits the target's long edge and
    its short edge the short one, whatever the orientation. Otherwise it is
    resized to the target exactly.

    Args:
        scale: base size [h, w], e.g. [1024, 2048] for Cityscapes.
        ratio_range: [min, max] range the ratio is drawn from, min > 0.
        keep_ratio: keep the aspect ratio (fit within the target).
    """

    def __init__(self, scale: List[int], ratio_range: List[float] = [0.5, 2.0], keep_ratio: bool = True) -> None:
        self.scale = _size_hw(scale, "random_resize", "scale")
        self.ratio_range = _check_range(ratio_range, "random_resize", "ratio_range")
        self.keep_ratio = keep_ratio

    def output_size(self, height: int, width: int, ratio: float) -> List[int]:
        """The [h, w] an image of ``height`` x ``width`` is resized to for ``ratio``."""
        target = [int(self.scale[0] * ratio), int(self.scale[1] * ratio)]
        if not self.keep_ratio:
            return [max(1, s) for s in target]
        factor = min(max(target) / max(height, width), min(target) / min(height, width))
        return [max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))]

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        size = self.output_size(*image.shape[-2:], _uniform(*self.ratio_range))
        return _resize_pair(image, mask, size)

    def __repr__(self) -> str:
        return f"RandomResize(scale={self.scale}, ratio_range={list(self.ratio_range)}, keep_ratio={self.keep_ratio})"


@_register("random_scale_crop")
class RandomScaleCrop(PairedTransform):
    """Scale by a random factor, then crop a random window of ``size``, in one step.

    Equivalent to resizing the whole image by a factor drawn from ``scale``
    and taking a random ``size`` crop (padded with 0 / IGNORE_INDEX where the
    scaled image is smaller), but only the source part that lands in the crop
    is resized, so large factors cost no more than small ones. For images of
    the size ``random_resize``'s ``scale`` names, it does what
    ``random_resize`` + ``random_crop`` do, several times faster.

    Args:
        size: output size; an int gives a square (size, size), a list is [h, w].
        scale: [min, max] range the scale factor is drawn from, min > 0.
        cat_max_ratio: as for ``random_crop`` (checked on the source window;
            the factor is drawn once), in (0, 1]; 1 turns the check off.
    """

    def __init__(
        self, size: Union[int, List[int]], scale: List[float] = [0.5, 2.0], cat_max_ratio: float = 1.0
    ) -> None:
        self.size = _size_hw(size, "random_scale_crop")
        self.scale = _check_range(scale, "random_scale_crop", "scale")
        self.cat_max_ratio = _check_cat_max_ratio(cat_max_ratio, "random_scale_crop")

    @staticmethod
    def _span(length: int, size: int, factor: float) -> Span:
        """The source span of one axis; its padding is what the scaled axis lacks to fill ``size``."""
        scaled = max(1, round(length * factor))
        if scaled <= size:  # the whole axis fits: pad it at a random offset
            before = _randint(0, size - scaled)
            return 0, length, before, size - scaled - before
        window = min(length, max(1, round(size / factor)))
        start = _randint(0, length - window)
        return start, start + window, 0, 0

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        factor = _uniform(*self.scale)
        (height, width), (out_h, out_w) = image.shape[-2:], self.size
        rows, cols = _draw_window(
            lambda: (self._span(height, out_h, factor), self._span(width, out_w, factor)), mask, self.cat_max_ratio
        )
        resized = [out_h - rows[2] - rows[3], out_w - cols[2] - cols[3]]
        image, mask = _resize_pair(_crop(image, rows, cols), None if mask is None else _crop(mask, rows, cols), resized)
        return _pad_pair(image, mask, rows, cols)

    def __repr__(self) -> str:
        return f"RandomScaleCrop(size={self.size}, scale={list(self.scale)}, cat_max_ratio={self.cat_max_ratio})"


@_register("hflip")
class HorizontalFlip(_V2Transform):
    """Flip left-right with probability ``p``.

    Args:
        p: probability of flipping, in [0, 1].
    """

    def __init__(self, p: float = 0.5) -> None:
        # The coin is tossed by the base class; the v2 op then always flips.
        super().__init__(v2.RandomHorizontalFlip(p=1.0), _check_probability(p, "hflip"))


@_register("vflip")
class VerticalFlip(_V2Transform):
    """Flip top-bottom with probability ``p``.

    Args:
        p: probability of flipping, in [0, 1].
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(v2.RandomVerticalFlip(p=1.0), _check_probability(p, "vflip"))


@_register("rotate")
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
# Warps: affine and elastic (one sampling grid for image and mask)
# --------------------------------------------------------------------------- #
def warp_pair(image: torch.Tensor, mask: Optional[torch.Tensor], grid: torch.Tensor) -> Pair:
    """Resample at a (1, H, W, 2) ``grid_sample`` grid (normalised, ``align_corners=False``).

    The image is read bilinearly and the mask by nearest neighbour from the
    same points; points outside the input give 0 and IGNORE_INDEX.
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


def affine_grid(height: int, width: int, matrix: torch.Tensor, shift: Tuple[float, float]) -> torch.Tensor:
    """The sampling grid of the map ``p -> matrix @ p + shift`` about the image centre.

    ``matrix`` is 2x2 and acts on (x, y) pixel offsets from the centre
    (y pointing down); ``shift`` is (x, y) in pixels. Each output pixel reads
    the input at the inverse image of its position.
    """
    to_unit = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64)
    inverse = torch.linalg.inv(matrix.to(torch.float64))
    # The inverse map in normalised coordinates: source = linear @ output + offset.
    linear = (to_unit[:, None] * inverse / to_unit[None, :]).tolist()
    offset = (-to_unit * (inverse @ torch.tensor(shift, dtype=torch.float64))).tolist()
    xs, ys = _pixel_centres(width), _pixel_centres(height)
    grid = torch.empty(1, height, width, 2)
    for axis in range(2):
        torch.add(xs * linear[axis][0], (ys * linear[axis][1] + offset[axis])[:, None], out=grid[0, :, :, axis])
    return grid


@_register("affine")
class Affine(PairedTransform):
    """Random affine map (rotation, shift, zoom, shear) about the centre, with probability ``p``.

    One draw moves image and mask; the image is resampled bilinearly, the
    mask by nearest neighbour, and pixels coming from outside the image get
    0 in the image and IGNORE_INDEX in the mask.

    Args:
        degrees: rotation angle drawn from [-degrees, degrees], in [0, 180].
        translate: [x, y] largest shift as a fraction of the width and the
            height, each in [0, 1].
        scale: [min, max] range the zoom factor is drawn from, min > 0.
        shear: horizontal shear angle drawn from [-shear, shear] degrees, in [0, 90).
        p: probability of transforming at all, in [0, 1].
    """

    def __init__(
        self,
        degrees: float = 0.0,
        translate: List[float] = [0.0, 0.0],
        scale: List[float] = [1.0, 1.0],
        shear: float = 0.0,
        p: float = 1.0,
    ) -> None:
        name = "affine"
        if not 0 <= degrees <= 180:
            raise ValueError(f"{name}: degrees must be in [0, 180], got {degrees!r}")
        if len(translate) != 2 or not all(0.0 <= t <= 1.0 for t in translate):
            raise ValueError(f"{name}: translate must be [x, y] with each fraction in [0, 1], got {translate!r}")
        if not 0 <= shear < 90:
            raise ValueError(f"{name}: shear must be in [0, 90) degrees, got {shear!r}")
        self.degrees = float(degrees)
        self.translate = (float(translate[0]), float(translate[1]))
        self.scale = _check_range(scale, name, "scale")
        self.shear = float(shear)
        self.p = _check_probability(p, name)

    def draw(self, height: int, width: int) -> Tuple[torch.Tensor, Tuple[float, float]]:
        """A random 2x2 matrix (zoom * rotation * shear) and (x, y) shift in pixels."""
        angle = math.radians(_uniform(-self.degrees, self.degrees))
        shift = (_uniform(-1, 1) * self.translate[0] * width, _uniform(-1, 1) * self.translate[1] * height)
        zoom = _uniform(*self.scale)
        shear = math.tan(math.radians(_uniform(-self.shear, self.shear)))
        cos, sin = math.cos(angle), math.sin(angle)
        rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
        return zoom * rotation @ torch.tensor([[1.0, shear], [0.0, 1.0]], dtype=torch.float64), shift

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        if not _coin(self.p):
            return image, mask
        height, width = image.shape[-2:]
        return warp_pair(image, mask, affine_grid(height, width, *self.draw(height, width)))

    def __repr__(self) -> str:
        return (
            f"Affine(degrees={self.degrees}, translate={list(self.translate)}, scale={list(self.scale)}, "
            f"shear={self.shear}, p={self.p})"
        )


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


@_register("elastic")
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
        self.alpha = _check_non_negative(alpha, "elastic", "alpha")
        if sigma <= 0:
            raise ValueError(f"elastic: sigma must be > 0, got {sigma!r}")
        self.sigma = float(sigma)
        self.p = _check_probability(p, "elastic")

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        if not _coin(self.p):
            return image, mask
        displacement = elastic_displacement(*image.shape[-2:], self.alpha, self.sigma)
        return warp_pair(image, mask, displacement_grid(displacement))

    def __repr__(self) -> str:
        return f"Elastic(alpha={self.alpha}, sigma={self.sigma}, p={self.p})"


# --------------------------------------------------------------------------- #
# Photometric transforms (image only)
# --------------------------------------------------------------------------- #
@_register("color_jitter")
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


@_register("gaussian_blur")
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


@_register("photometric_distortion")
class PhotometricDistortion(PairedTransform):
    """mmsegmentation's ``PhotoMetricDistortion`` on [0, 1] images (image only).

    In order: brightness (add a delta drawn from [-brightness, brightness]),
    then contrast (multiply by a factor drawn from ``contrast``) either here
    or last (a fair coin decides), saturation (scale the HSV saturation by a
    factor drawn from ``saturation``) and hue (shift the HSV hue by a fraction
    of the colour circle drawn from [-hue, hue]). Each step happens with
    probability ``p``; values are clamped to [0, 1] after every step, so put
    this before ``normalize``. Saturation and hue are skipped on 1-channel
    images. (mmsegmentation's defaults are brightness_delta=32 of 255, ranges
    0.5-1.5 and hue_delta=18 OpenCV units, i.e. hue 0.1 here.)

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
        hue: float = 0.05,
        p: float = 0.5,
    ) -> None:
        name = "photometric_distortion"
        self.brightness = _check_non_negative(brightness, name, "brightness")
        self.contrast = _check_range(contrast, name, "contrast")
        self.saturation = _check_range(saturation, name, "saturation")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"{name}: hue must be in [0, 0.5], got {hue!r}")
        self.hue = float(hue)
        self.p = _check_probability(p, name)

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        out = image.as_subclass(torch.Tensor)
        if _coin(self.p):
            out = (out + _uniform(-self.brightness, self.brightness)).clamp_(0.0, 1.0)
        contrast_first = _coin(0.5)
        if contrast_first:
            out = self._contrast(out)
        if out.shape[0] == 3:
            out = self._saturation_and_hue(out)
        if not contrast_first:
            out = self._contrast(out)
        return tv_tensors.Image(out), mask

    def _contrast(self, image: torch.Tensor) -> torch.Tensor:
        if not _coin(self.p):
            return image
        return (image * _uniform(*self.contrast)).clamp_(0.0, 1.0)

    def _saturation_and_hue(self, image: torch.Tensor) -> torch.Tensor:
        """Both steps in one pass (mmsegmentation converts to HSV for each, with the same result)."""
        factor = _uniform(*self.saturation) if _coin(self.p) else None
        shift = _uniform(-self.hue, self.hue) if _coin(self.p) else None
        if factor is None and shift is None:
            return image
        return adjust_saturation_hue(image, factor, shift).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return (
            f"PhotometricDistortion(brightness={self.brightness:.4f}, contrast={list(self.contrast)}, "
            f"saturation={list(self.saturation)}, hue={self.hue}, p={self.p})"
        )


@_register("gaussian_noise")
class GaussianNoise(PairedTransform):
    """Add zero-mean Gaussian noise of std ``std`` to the image, with probability ``p``.

    The std is on the [0, 1] intensity scale, so put this before ``normalize``;
    the result is not clamped.

    Args:
        std: noise standard deviation, >= 0.
        p: probability of adding noise, in [0, 1].
    """

    def __init__(self, std: float = 0.03, p: float = 0.5) -> None:
        self.std = _check_non_negative(std, "gaussian_noise", "std")
        self.p = _check_probability(p, "gaussian_noise")

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        if not _coin(self.p):
            return image, mask
        plain = image.as_subclass(torch.Tensor)
        return tv_tensors.Image(torch.randn_like(plain).mul_(self.std).add_(plain)), mask

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std}, p={self.p})"


@_register("normalize")
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
# Multi-sample transforms
# --------------------------------------------------------------------------- #
def _anchored(span: Tuple[int, int, bool], length: int) -> Tuple[slice, slice]:
    """Canvas and source slices that put a sample axis of ``length`` in the canvas span ``(start, stop, at_stop)``.

    The sample touches ``stop`` (``at_stop``) or ``start``; what does not fit
    is cut off on the far side.
    """
    start, stop, at_stop = span
    n = min(length, stop - start)
    if at_stop:
        return slice(stop - n, stop), slice(length - n, length)
    return slice(start, start + n), slice(0, n)


@_register("mosaic")
class Mosaic(PairedTransform):
    """Four samples around a random centre of a ``size`` canvas (YOLO / mmsegmentation mosaic), with probability ``p``.

    The current sample fills the top-left quadrant, three samples drawn from
    the dataset the top-right, bottom-left and bottom-right ones; the extra
    samples first go through the transforms listed before ``mosaic``. Each
    sample touches the centre with its inner corner and is cut where it
    leaves its quadrant; uncovered canvas is 0 in the image and IGNORE_INDEX
    in the mask. Skipped samples (``p`` < 1) keep their size, so follow with
    a crop or resize when batching. Needs a pipeline given to a dataset
    (which calls ``bind_source``); a lone call raises.

    Args:
        size: canvas size; an int gives a square (size, size), a list is [h, w].
        p: probability of making a mosaic, in [0, 1].
        center_range: [min, max] range of the centre's position as a fraction
            of the canvas height and width, 0 < min <= max < 1.
    """

    def __init__(
        self,
        size: Union[int, List[int]],
        p: float = 1.0,
        center_range: List[float] = [0.25, 0.75],
    ) -> None:
        self.size = _size_hw(size, "mosaic")
        self.p = _check_probability(p, "mosaic")
        if len(center_range) != 2 or not 0.0 < center_range[0] <= center_range[1] < 1.0:
            raise ValueError(f"mosaic: center_range must be [min, max] with 0 < min <= max < 1, got {center_range!r}")
        self.center_range = (float(center_range[0]), float(center_range[1]))
        self._source: Optional[Callable[[], Pair]] = None

    def bind_source(self, source: Callable[[], Pair]) -> None:
        """Set the function returning the extra samples (``Compose.bind_source`` does this)."""
        self._source = source

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        if not _coin(self.p):
            return image, mask
        if self._source is None:
            raise RuntimeError(
                "mosaic draws three more samples from the dataset, but this pipeline has no sample source: "
                "use it as the transforms of a dataset (which calls pipeline.bind_source(dataset.random_sample)) "
                "or remove mosaic (or set its p: 0) for single-image use"
            )
        height, width = self.size
        cy = round(_uniform(*self.center_range) * height)
        cx = round(_uniform(*self.center_range) * width)
        canvas = torch.zeros((image.shape[0], height, width), dtype=image.dtype)
        canvas_mask = None if mask is None else torch.full((height, width), IGNORE_INDEX, dtype=torch.int64)
        samples = [(image, mask)] + [as_tv_tensors(*self._source()) for _ in range(3)]
        quadrants = [((0, cy, True), (0, cx, True)), ((0, cy, True), (cx, width, False)),
                     ((cy, height, False), (0, cx, True)), ((cy, height, False), (cx, width, False))]
        for (sample, sample_mask), (rows, cols) in zip(samples, quadrants):
            if sample.shape[0] != canvas.shape[0]:
                raise ValueError(
                    f"mosaic: samples have {canvas.shape[0]} and {sample.shape[0]} channels; "
                    "every image of the dataset must have the same number of channels (set model.in_channels)"
                )
            dst_rows, src_rows = _anchored(rows, sample.shape[-2])
            dst_cols, src_cols = _anchored(cols, sample.shape[-1])
            canvas[:, dst_rows, dst_cols] = sample[:, src_rows, src_cols]
            if canvas_mask is not None and sample_mask is not None:
                canvas_mask[dst_rows, dst_cols] = sample_mask[src_rows, src_cols]
        return tv_tensors.Image(canvas), None if canvas_mask is None else tv_tensors.Mask(canvas_mask)

    def __repr__(self) -> str:
        return f"Mosaic(size={self.size}, p={self.p}, center_range={list(self.center_range)})"


# --------------------------------------------------------------------------- #
# Pipelines
# --------------------------------------------------------------------------- #
class _PrefixSource:
    """Draws a sample from ``source`` and runs it through ``transforms`` (those before a multi-sample transform)."""

    def __init__(self, source: Callable[[], Pair], transforms: Sequence[Callable[..., Pair]]) -> None:
        self.source = source
        self.transforms = list(transforms)

    def __call__(self) -> Pair:
        image, mask = as_tv_tensors(*self.source())
        for transform in self.transforms:
            image, mask = transform(image, mask)
        return image, mask


class Compose:
    """Apply paired transforms in order; plain tensors are wrapped as tv_tensors."""

    def __init__(self, transforms: Sequence[Callable[..., Pair]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Pair:
        image, mask = as_tv_tensors(image, mask)
        for transform in self.transforms:
            image, mask = transform(image, mask)
        return image, mask

    def bind_source(self, source: Callable[[], Pair]) -> None:
        """Let multi-sample transforms (``mosaic``) draw more samples.

        ``source()`` returns a raw ``(image, mask)`` sample, e.g.
        ``dataset.random_sample``. Every transform with a ``bind_source``
        method gets a source whose samples have been through the transforms
        before it in this pipeline, so all the pieces it combines are alike.
        """
        for index, transform in enumerate(self.transforms):
            if hasattr(transform, "bind_source"):
                transform.bind_source(_PrefixSource(source, self.transforms[:index]))

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


# --------------------------------------------------------------------------- #
# Command line: preview the training augmentations of a config
# --------------------------------------------------------------------------- #
def preview_grid(dataset: Any, num: int, palette: np.ndarray, per_row: int = 4) -> np.ndarray:
    """A (H, W, 3) uint8 sheet of ``num`` samples of ``dataset``, each beside its mask overlay.

    Samples are taken in a random order (torch's generator), repeating when
    ``num`` exceeds the dataset; ``per_row`` pairs go on a row.
    """
    order = torch.randperm(len(dataset)).tolist()
    tiles = []
    for i in range(num):
        image, mask = dataset[order[i % len(order)]]
        shown = to_display(image)
        tiles += [shown, overlay(shown, mask.numpy(), palette)]
    return make_grid(tiles, columns=2 * min(num, per_row))


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m utils.transforms",
        description="Write a grid of training samples after a config's train transforms, "
        "each image beside its mask overlaid in the dataset's colours (ignored pixels white).",
    )
    add_config_arguments(parser)
    parser.add_argument("--out", default="results/aug_preview.png", help="PNG to write (default %(default)s)")
    parser.add_argument("--num", type=int, default=8, help="number of samples (default %(default)s)")
    parser.add_argument("--split", default="train",
                        help="dataset split to draw from; the train transforms are used whatever the split "
                        "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the draws (default %(default)s)")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f"--num must be at least 1, got {args.num}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point: write the augmentation preview; returns the exit status."""
    args = _parse_args(argv)
    setup_logging()
    return guarded(lambda: _preview(args), logger, args.debug)


def _preview(args: argparse.Namespace) -> int:
    # Imported here, not at the top: both modules import this one.
    from utils.builders import class_names_and_palette as class_info
    from utils.config import load_config

    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(args.seed)
    dataset = DATASETS.build(cfg.data.name, split=args.split, transforms=build_transforms(cfg.transforms.train),
                             **cfg.dataset_kwargs())
    _, palette = class_info(cfg)
    path = save_png(preview_grid(dataset, args.num, palette), args.out)
    logger.info("wrote %d %s samples after the train transforms of %s to %s", args.num, args.split, args.config, path)
    return 0


if __name__ == "__main__":
    # This copy registered nothing (see _register): run the CLI of the imported, registered module.
    from utils.transforms import main as _registered_main

    sys.exit(_registered_main())
