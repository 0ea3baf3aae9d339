"""Geometric transforms: resize, crops, padding, flips, rotation, affine; one random draw moves image and mask.

The image is resampled bilinearly, the mask by nearest neighbour, so no new
class values appear; padding, rotation and affine maps fill the image with 0
and the mask with IGNORE_INDEX. Flips, rotation and affine are torchvision
v2's; the resizes and crops are ours where v2 lacks a behaviour (each says
which). The elastic deformation is in ``elastic.py``.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError
from utils.registry import TRANSFORMS
from utils.transforms.base import (BILINEAR, FILL, MASK_RESIZE, Pair, PairedTransform, TorchvisionAdapter,
                                   check_at_most, check_interval, check_probability, check_range, randint, size_hw,
                                   uniform)

# --------------------------------------------------------------------------- #
# Crop windows and resizing, shared by the crop and resize transforms
# --------------------------------------------------------------------------- #
#: Where a crop window falls along one axis: source ``[start, stop)`` and the
#: padding before and after it (non-zero only when the window is longer).
Span = Tuple[int, int, int, int]


def _random_span(length: int, size: int) -> Span:
    """A window of ``size`` at a random offset along an axis of ``length``.

    A shorter axis is taken whole and placed at a random offset in the window,
    the rest padded.
    """
    offset = randint(min(0, length - size), max(0, length - size))
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


def resize_pair(image: torch.Tensor, mask: Optional[torch.Tensor], size: List[int], antialias: bool = True) -> Pair:
    """Resize to ``size`` [h, w]: image bilinear, mask NEAREST_EXACT; nothing is done at that size already."""
    if list(image.shape[-2:]) == list(size):
        return tv_tensors.Image(image), None if mask is None else tv_tensors.Mask(mask)
    image = F.resize(tv_tensors.Image(image), size, interpolation=BILINEAR, antialias=antialias)
    if mask is not None:
        mask = F.resize(tv_tensors.Mask(mask), size, interpolation=MASK_RESIZE)
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
        raise ConfigError(f"{name}: cat_max_ratio must be in (0, 1] (1 = off), got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- #
# Resizes and crops
# --------------------------------------------------------------------------- #
# Ours, not v2.Resize / v2.RandomResizedCrop: v2 resizes a Mask with NEAREST,
# half a pixel off the bilinear image when shrinking; we pass NEAREST_EXACT.
@TRANSFORMS.register("resize")
class Resize(PairedTransform):
    """Resize to a fixed size: image bilinear, mask nearest-neighbour.

    Args:
        size: output size; an int gives a square (size, size), a list is [h, w].
        antialias: low-pass the image when shrinking (recommended).
    """

    def __init__(self, size: Union[int, List[int]], antialias: bool = True) -> None:
        self.size = size_hw(size, "resize")
        self.antialias = antialias

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        return resize_pair(image, mask, self.size, self.antialias)

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, antialias={self.antialias})"


# Ours around v2's box sampler: v2.RandomResizedCrop would resize the mask with NEAREST (see Resize).
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
        self.size = size_hw(size, "random_resized_crop")
        scale = check_interval(scale, "random_resized_crop", "scale", 0.0, 1.0)
        ratio = check_interval(ratio, "random_resized_crop", "ratio", 0.0, float("inf"))
        # Used only to draw the crop box (torchvision's sampling rule).
        self._sampler = v2.RandomResizedCrop(self.size, scale=scale, ratio=ratio)

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        box = self._sampler.make_params([image])
        image = F.resized_crop(image, **box, size=self.size, interpolation=BILINEAR, antialias=True)
        if mask is not None:
            mask = F.resized_crop(mask, **box, size=self.size, interpolation=MASK_RESIZE)
        return image, mask

    def __repr__(self) -> str:
        return f"RandomResizedCrop(size={self.size}, scale={self._sampler.scale}, ratio={self._sampler.ratio})"


# Ours, not v2.RandomCrop: v2 lacks mmsegmentation's cat_max_ratio redraws.
@TRANSFORMS.register("random_crop")
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
        self.size = size_hw(size, "random_crop")
        self.pad_if_needed = pad_if_needed
        self.cat_max_ratio = _check_cat_max_ratio(cat_max_ratio, "random_crop")

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        height, width = image.shape[-2:]
        if not self.pad_if_needed and (height < self.size[0] or width < self.size[1]):
            raise ConfigError(
                f"random_crop: image size {height}x{width} is smaller than the crop {self.size[0]}x{self.size[1]}; "
                "set pad_if_needed: true or resize the images first"
            )
        rows, cols = _draw_window(
            lambda: (_random_span(height, self.size[0]), _random_span(width, self.size[1])), mask, self.cat_max_ratio
        )
        return _pad_pair(_crop(image, rows, cols), None if mask is None else _crop(mask, rows, cols), rows, cols)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, pad_if_needed={self.pad_if_needed}, cat_max_ratio={self.cat_max_ratio})"


# Ours, not v2.RandomResize: v2 draws a short-side length; this is mmsegmentation's
# ratio-of-a-base-size rule (and resizes the mask with NEAREST_EXACT, see Resize).
@TRANSFORMS.register("random_resize")
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
        self.scale = size_hw(scale, "random_resize", "scale")
        self.ratio_range = check_range(ratio_range, "random_resize", "ratio_range")
        self.keep_ratio = keep_ratio

    def output_size(self, height: int, width: int, ratio: float) -> List[int]:
        """The [h, w] an image of ``height`` x ``width`` is resized to for ``ratio``."""
        target = [int(self.scale[0] * ratio), int(self.scale[1] * ratio)]
        if not self.keep_ratio:
            return [max(1, s) for s in target]
        factor = min(max(target) / max(height, width), min(target) / min(height, width))
        return [max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))]

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        size = self.output_size(*image.shape[-2:], uniform(*self.ratio_range))
        return resize_pair(image, mask, size)

    def __repr__(self) -> str:
        return f"RandomResize(scale={self.scale}, ratio_range={list(self.ratio_range)}, keep_ratio={self.keep_ratio})"


# Ours, no v2 equivalent: random_resize + random_crop in one step, resizing only what lands in the crop.
@TRANSFORMS.register("random_scale_crop")
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
        self.size = size_hw(size, "random_scale_crop")
        self.scale = check_range(scale, "random_scale_crop", "scale")
        self.cat_max_ratio = _check_cat_max_ratio(cat_max_ratio, "random_scale_crop")

    @staticmethod
    def _span(length: int, size: int, factor: float) -> Span:
        """The source span of one axis; its padding is what the scaled axis lacks to fill ``size``."""
        scaled = max(1, round(length * factor))
        if scaled <= size:  # the whole axis fits: pad it at a random offset
            before = randint(0, size - scaled)
            return 0, length, before, size - scaled - before
        window = min(length, max(1, round(size / factor)))
        start = randint(0, length - window)
        return start, start + window, 0, 0

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        factor = uniform(*self.scale)
        (height, width), (out_h, out_w) = image.shape[-2:], self.size
        rows, cols = _draw_window(
            lambda: (self._span(height, out_h, factor), self._span(width, out_w, factor)), mask, self.cat_max_ratio
        )
        resized = [out_h - rows[2] - rows[3], out_w - cols[2] - cols[3]]
        image, mask = resize_pair(_crop(image, rows, cols), None if mask is None else _crop(mask, rows, cols), resized)
        return _pad_pair(image, mask, rows, cols)

    def __repr__(self) -> str:
        return f"RandomScaleCrop(size={self.size}, scale={list(self.scale)}, cat_max_ratio={self.cat_max_ratio})"


# Ours, not v2.Pad: v2 pads by fixed amounts; this pads up to a size or a multiple, as mmsegmentation's Pad.
@TRANSFORMS.register("pad")
class Pad(PairedTransform):
    """Pad at the bottom and right up to ``size``, then to a multiple of ``size_divisor`` (mmsegmentation's ``Pad``).

    The image is filled with ``pad_val`` on its own scale (images are floats
    in [0, 1] before ``normalize``; after it, 0 is the mean), the mask with
    ``seg_pad_val`` (IGNORE_INDEX, mmsegmentation's 255, so the padding is
    never learnt). Give ``size``, ``size_divisor`` or both; an image larger
    than ``size`` raises (crop it first), one as large is returned as it is.

    Args:
        size: size to pad to; an int gives a square (size, size), a list is [h, w].
        size_divisor: pad each side up to a multiple of this (e.g. 32).
        pad_val: image fill value.
        seg_pad_val: mask fill value (a class index or IGNORE_INDEX).
    """

    def __init__(self, size: Optional[Union[int, List[int]]] = None, size_divisor: Optional[int] = None,
                 pad_val: float = 0.0, seg_pad_val: int = IGNORE_INDEX) -> None:
        if size is None and size_divisor is None:
            raise ConfigError("pad: give size ([h, w] to pad to) or size_divisor (pad to a multiple), or both")
        self.size = None if size is None else size_hw(size, "pad")
        if size_divisor is not None and size_divisor < 1:
            raise ConfigError(f"pad: size_divisor must be a positive int, got {size_divisor!r}")
        if not 0 <= seg_pad_val <= IGNORE_INDEX:
            raise ConfigError(f"pad: seg_pad_val must be a class index or {IGNORE_INDEX} (ignore), got {seg_pad_val!r}")
        self.size_divisor, self.pad_val, self.seg_pad_val = size_divisor, float(pad_val), int(seg_pad_val)

    def output_size(self, height: int, width: int) -> List[int]:
        """The [h, w] an image of ``height`` x ``width`` is padded to."""
        out = [height, width]
        if self.size is not None:
            if height > self.size[0] or width > self.size[1]:
                raise ConfigError(
                    f"pad: image size {height}x{width} is larger than size {self.size[0]}x{self.size[1]}; "
                    "put a crop (random_crop) before pad or raise its size"
                )
            out = list(self.size)
        if self.size_divisor is not None:
            out = [-(-s // self.size_divisor) * self.size_divisor for s in out]
        return out

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        height, width = image.shape[-2:]
        out_h, out_w = self.output_size(height, width)
        padding = [0, out_w - width, 0, out_h - height]
        if not any(padding):
            return image, mask
        image = tv_tensors.Image(torch.nn.functional.pad(image.as_subclass(torch.Tensor), padding, value=self.pad_val))
        if mask is not None:
            mask = tv_tensors.Mask(torch.nn.functional.pad(mask.as_subclass(torch.Tensor), padding,
                                                           value=self.seg_pad_val))
        return image, mask

    def __repr__(self) -> str:
        return (f"Pad(size={self.size}, size_divisor={self.size_divisor}, pad_val={self.pad_val}, "
                f"seg_pad_val={self.seg_pad_val})")


# --------------------------------------------------------------------------- #
# Flips, rotation, affine: torchvision v2
# --------------------------------------------------------------------------- #
@TRANSFORMS.register("hflip")
class HorizontalFlip(TorchvisionAdapter):
    """Flip left-right with probability ``p``.

    Args:
        p: probability of flipping, in [0, 1].
    """

    def __init__(self, p: float = 0.5) -> None:
        # The coin is tossed by the adapter; the v2 op then always flips.
        super().__init__(v2.RandomHorizontalFlip(p=1.0), check_probability(p, "hflip"))


@TRANSFORMS.register("vflip")
class VerticalFlip(TorchvisionAdapter):
    """Flip top-bottom with probability ``p``.

    Args:
        p: probability of flipping, in [0, 1].
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(v2.RandomVerticalFlip(p=1.0), check_probability(p, "vflip"))


@TRANSFORMS.register("rotate")
class Rotate(TorchvisionAdapter):
    """Rotate by an angle drawn uniformly from [-degrees, degrees] about the centre.

    The image is resampled bilinearly, the mask by nearest neighbour; corners
    uncovered by the rotation get 0 in the image and IGNORE_INDEX in the mask.

    Args:
        degrees: largest absolute angle in degrees, in [0, 180].
        p: probability of rotating at all, in [0, 1].
    """

    def __init__(self, degrees: float, p: float = 1.0) -> None:
        degrees = check_at_most(degrees, "rotate", "degrees", 180)
        op = v2.RandomRotation([-degrees, degrees], interpolation=BILINEAR, fill=FILL)
        super().__init__(op, check_probability(p, "rotate"))


@TRANSFORMS.register("affine")
class Affine(TorchvisionAdapter):
    """Random affine map (rotation, shift, zoom, shear) about the centre, with probability ``p``.

    One draw moves image and mask; the image is resampled bilinearly, the
    mask by nearest neighbour, and pixels coming from outside the image get
    0 in the image and IGNORE_INDEX in the mask.

    Args:
        degrees: rotation angle drawn from [-degrees, degrees], in [0, 180].
        translate: [x, y] largest shift as a fraction of the width and the
            height, each in [0, 1] (whole pixels).
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
        degrees = check_at_most(degrees, name, "degrees", 180)
        if len(translate) != 2 or not all(0.0 <= t <= 1.0 for t in translate):
            raise ConfigError(f"{name}: translate must be [x, y] with each fraction in [0, 1], got {translate!r}")
        if not 0 <= shear < 90:
            raise ConfigError(f"{name}: shear must be in [0, 90) degrees, got {shear!r}")
        op = v2.RandomAffine([-degrees, degrees], translate=[float(t) for t in translate],
                             scale=check_range(scale, name, "scale"), shear=[-float(shear), float(shear)],
                             interpolation=BILINEAR, fill=FILL)
        super().__init__(op, check_probability(p, name))
