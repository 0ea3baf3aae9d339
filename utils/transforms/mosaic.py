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
        self.size = size_hw(size, "mosaic")
        self.p = check_probability(p, "mosaic")
        if len(center_range) != 2 or not 0.0 < center_range[0] <= center_range[1] < 1.0:
            raise ConfigError(f"mosaic: center_range must be [min, max] with 0 < min <= max < 1, got {center_range!r}")
        self.center_range = (float(center_range[0]), float(center_range[1]))
        self._source: Optional[Callable[[], Pair]] = None

    def bind_source(self, source: Callable[[], Pair]) -> None:
        """Set the function returning the extra samples (``Compose.bind_source`` does this)."""
        self._source = source

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
        cy = round(uniform(*self.center_range) * height)
        cx = round(uniform(*self.center_range) * width)
        canvas = torch.zeros((image.shape[0], height, width), dtype=image.dtype)
        canvas_mask = None if mask is None else torch.full((height, width), IGNORE_INDEX, dtype=torch.int64)
        samples = [(image, mask)] + [as_tv_tensors(*self._source()) for _ in range(3)]
        quadrants = [((0, cy, True), (0, cx, True)), ((0, cy, True), (cx, width, False)),
                     ((cy, height, False), (0, cx, True)), ((cy, height, False), (cx, width, False))]
        for (sample, sample_mask), (rows, cols) in zip(samples, quadrants):
            if sample.shape[0] != canvas.shape[0]:
                raise DataError(
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

