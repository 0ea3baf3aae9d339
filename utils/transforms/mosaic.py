"""Multi-sample transforms: ``mosaic`` builds one sample out of four.

The three extra samples come from a source bound by the pipeline
(:meth:`utils.transforms.compose.Compose.bind_source`); torchvision v2 has no
such transform.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union

import torch
from torchvision import tv_tensors

from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError, DataError
from utils.registry import TRANSFORMS
from utils.transforms.base import Pair, PairedTransform, as_tv_tensors, check_probability, coin, size_hw, uniform
from utils.transforms.geometry import resize_pair


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


@TRANSFORMS.register("mosaic")
class Mosaic(PairedTransform):
    """Four samples around a random centre of a ``size`` canvas with probability ``p`` (mmseg's ``RandomMosaic``).

    The current sample fills the top-left quadrant, three samples drawn from
    the dataset the top-right, bottom-left and bottom-right ones; the extra
    samples first go through the transforms listed before ``mosaic``. With
    ``resize`` each sample is first resized, keeping its aspect ratio, to fit
    half the canvas (enlarged or shrunk: scale ``min(h / 2 / H, w / 2 / W)``).
    Each sample touches the centre with its inner corner and is cut where it
    leaves its quadrant; uncovered canvas is ``pad_val`` in the image and
    ``seg_pad_val`` in the mask. Skipped samples (``p`` < 1) keep their
    size, so follow with a crop or resize when batching. Needs a pipeline
    given to a dataset (which calls ``bind_source``); a lone call raises.

    mmsegmentation's ``img_scale`` is half the canvas here: ``RandomMosaic(prob=0.5,
    img_scale=(512, 512))`` is ``{name: mosaic, size: 1024}`` with the defaults, whose
    ``center_range`` [0.25, 0.75] of the canvas is its ``center_ratio_range``
    (0.5, 1.5) of ``img_scale``. ``pad_val`` is on the image's scale, [0, 1]
    before ``normalize``: mmsegmentation's default 0 is 0 here; YOLOX's 114
    of 255 would be 0.447.

    Args:
        size: canvas size; an int gives a square (size, size), a list is [h, w].
        p: probability of making a mosaic, in [0, 1].
        center_range: [min, max] range of the centre's position as a fraction
            of the canvas height and width, 0 < min <= max < 1.
        resize: resize each sample to fit half the canvas, keeping its aspect
            ratio (mmsegmentation); false pastes samples at their own size.
        pad_val: image value of the canvas not covered by a sample.
        seg_pad_val: mask value of the canvas not covered (IGNORE_INDEX: not learnt).
    """

    def __init__(
        self,
        size: Union[int, List[int]],
        p: float = 0.5,
        center_range: List[float] = [0.25, 0.75],
        resize: bool = True,
        pad_val: float = 0.0,
        seg_pad_val: int = IGNORE_INDEX,
    ) -> None:
        self.size = size_hw(size, "mosaic")
        self.p = check_probability(p, "mosaic")
        if len(center_range) != 2 or not 0.0 < center_range[0] <= center_range[1] < 1.0:
            raise ConfigError(f"mosaic: center_range must be [min, max] with 0 < min <= max < 1, got {center_range!r}")
        if not 0 <= seg_pad_val <= IGNORE_INDEX:
            raise ConfigError(f"mosaic: seg_pad_val must be a class index or {IGNORE_INDEX} (ignore), "
                              f"got {seg_pad_val!r}")
        self.center_range = (float(center_range[0]), float(center_range[1]))
        self.resize, self.pad_val, self.seg_pad_val = resize, float(pad_val), int(seg_pad_val)
        self._source: Optional[Callable[[], Pair]] = None

    def bind_source(self, source: Callable[[], Pair]) -> None:
        """Set the function returning the extra samples (``Compose.bind_source`` does this)."""
        self._source = source

    def _fit(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        """The sample resized, keeping its ratio, to fit half the canvas (as it is without ``resize``)."""
        if not self.resize:
            return image, mask
        height, width = image.shape[-2:]
        scale = min(self.size[0] / 2 / height, self.size[1] / 2 / width)
        # the small epsilon keeps int() from rounding an exact fit such as 19.999999 down
        target = [max(1, int(height * scale + 1e-6)), max(1, int(width * scale + 1e-6))]
        return resize_pair(image, mask, target)

    def apply(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask]) -> Pair:
        if not coin(self.p):
            return image, mask
        if self._source is None:
            raise RuntimeError(
                "mosaic draws three more samples from the dataset, but this pipeline has no sample source: "
                "use it as the transforms of a dataset (which calls pipeline.bind_source(dataset.random_sample)) "
                "or remove mosaic (or set its p: 0) for single-image use"
            )
        height, width = self.size
        cy = int(uniform(*self.center_range) * height)
        cx = int(uniform(*self.center_range) * width)
        canvas = torch.full((image.shape[0], height, width), self.pad_val, dtype=image.dtype)
        canvas_mask = None if mask is None else torch.full((height, width), self.seg_pad_val, dtype=torch.int64)
        samples = [(image, mask)] + [as_tv_tensors(*self._source()) for _ in range(3)]
        quadrants = [((0, cy, True), (0, cx, True)), ((0, cy, True), (cx, width, False)),
                     ((cy, height, False), (0, cx, True)), ((cy, height, False), (cx, width, False))]
        for (sample, sample_mask), (rows, cols) in zip(samples, quadrants):
            if sample.shape[0] != canvas.shape[0]:
                raise DataError(
                    f"mosaic: samples have {canvas.shape[0]} and {sample.shape[0]} channels; "
                    "every image of the dataset must have the same number of channels (set model.in_channels)"
                )
            sample, sample_mask = self._fit(sample, sample_mask)
            dst_rows, src_rows = _anchored(rows, sample.shape[-2])
            dst_cols, src_cols = _anchored(cols, sample.shape[-1])
            canvas[:, dst_rows, dst_cols] = sample[:, src_rows, src_cols]
            if canvas_mask is not None and sample_mask is not None:
                canvas_mask[dst_rows, dst_cols] = sample_mask[src_rows, src_cols]
        return tv_tensors.Image(canvas), None if canvas_mask is None else tv_tensors.Mask(canvas_mask)

    def __repr__(self) -> str:
        return (f"Mosaic(size={self.size}, p={self.p}, center_range={list(self.center_range)}, resize={self.resize}, "
                f"pad_val={self.pad_val}, seg_pad_val={self.seg_pad_val})")
