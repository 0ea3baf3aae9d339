"""Patch sampling: training samples are random patches of the cases, drawn with replacement.

For few large images (microscopy, pathology, satellite tiles) and volumes: any
batch size works with any number of cases, and an epoch is a number of steps
(``train.iterations_per_epoch``), not a pass over the cases. nnU-Net's recipe:

* a patch is drawn from a case chosen uniformly at random;
* a share of the samples (``data.foreground_oversampling``, 0.33 by default)
  is centred on a pixel/voxel of a foreground class present in the case (the
  class chosen uniformly among those present); the class locations are
  computed once per case (at most :data:`MAX_LOCATIONS` per class), not
  searched per sample; a case without foreground is sampled at random (with
  a warning);
* where the patch reaches beyond the case, the image is padded with 0 and
  the mask with ``IGNORE_INDEX``.

The patch then goes through the train transforms. Any number of spatial axes
works: ``(C, H, W)`` images or ``(C, Z, Y, X)`` volumes. The randomness comes
from torch's global generator, which ``utils.sampling.SeededDataset`` seeds
per sample, so the same seed gives the same patches and a resumed run draws
what an uninterrupted one would.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors

from utils.constants import IGNORE_INDEX
from utils.errors import DataError

log = logging.getLogger(__name__)

#: Locations kept per class and case (a uniform subsample beyond that), as nnU-Net keeps 10,000.
MAX_LOCATIONS = 10_000


Array = Union[torch.Tensor, np.ndarray]


def crop_with_padding(image: Array, mask: Array, start: Sequence[int],
                      size: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The window ``[start, start + size)`` of an image ``(C, *S)`` and its mask ``(*S)`` as float32 / int64
    tensors; where the window leaves the case the image is padded with 0 and the mask with ``IGNORE_INDEX``.
    Numpy arrays (memory maps of preprocessed cases) are read only inside the window."""
    spatial = tuple(mask.shape)
    inside = tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, spatial))
    pads: List[int] = []
    for s, n, d in reversed(list(zip(start, size, spatial))):  # F.pad lists the last axis first
        pads += [max(-s, 0), max(s + n - d, 0)]
    image_patch = F.pad(_tensor(image[(slice(None), *inside)], torch.float32), pads, value=0.0)
    mask_patch = F.pad(_tensor(mask[inside], torch.int64), pads, value=IGNORE_INDEX)
    return image_patch, mask_patch


def _tensor(window: Array, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(window, np.ndarray):
        return torch.from_numpy(np.array(window)).to(dtype)  # a copy: the window leaves the memory map
    return window.to(dtype)


def class_locations(mask: torch.Tensor, num_classes: int, seed: int,
                    limit: int = MAX_LOCATIONS) -> Dict[int, torch.Tensor]:
    """Class -> (K, ndim) int64 coordinates of its pixels (K <= ``limit``), for the foreground classes present."""
    generator = torch.Generator().manual_seed(seed)
    found: Dict[int, torch.Tensor] = {}
    for cls in range(1, num_classes):
        coords = (mask == cls).nonzero()
        if len(coords) > limit:
            coords = coords[torch.randperm(len(coords), generator=generator)[:limit]]
        if len(coords):
            found[cls] = coords
    return found


def window_start(spatial: Sequence[int], size: Sequence[int], centre: Optional[torch.Tensor]) -> List[int]:
    """Where a window of ``size`` starts: random, or around ``centre``; kept inside the case along each axis
    where the case is at least as long as the window, else placed so the case lies inside the window."""
    start = []
    for axis, (d, n) in enumerate(zip(spatial, size)):
        low, high = min(0, d - n), max(0, d - n)
        if centre is None:
            start.append(int(torch.randint(low, high + 1, ()).item()))
        else:
            start.append(min(max(int(centre[axis]) - n // 2, low), high))
    return start


class PatchDataset(Dataset):
    """``length`` random patches of ``patch_size`` from the cases of ``cases`` (drawn with replacement).

    ``cases`` is a dataset whose ``load_sample(i)`` gives the raw case
    ``(image (C, *S) float32, mask (*S) int64)`` (the folder datasets do),
    or whose ``open_case(i)`` gives memory-mapped arrays with the foreground
    locations precomputed (preprocessed volumes: only each patch is read).
    Sample ``i`` is forced onto the foreground when its position in its batch
    of ``batch_size`` is among the last ``k`` of that batch, with ``k`` chosen
    so that the share over batches is ``foreground_share`` exactly (nnU-Net
    forces the last samples of each batch). Cases are kept once read (in
    memory, or as memory maps).
    """

    def __init__(self, cases: Any, patch_size: Sequence[int], length: int, batch_size: int,
                 num_classes: int, foreground_share: float = 0.33, transforms: Any = None) -> None:
        if len(cases) == 0:
            raise DataError(f"{getattr(cases, 'root', 'the dataset')}: no training cases to draw patches from")
        self.cases, self.patch_size, self.length = cases, [int(n) for n in patch_size], int(length)
        self.batch_size, self.num_classes, self.foreground_share = batch_size, num_classes, foreground_share
        self.transforms = transforms
        self._loaded: Dict[int, Tuple[torch.Tensor, torch.Tensor, Dict[int, torch.Tensor]]] = {}

    def __len__(self) -> int:
        return self.length

    def forced_foreground(self, index: int) -> bool:
        """Whether sample ``index`` is centred on foreground: the last ``k_b`` of batch ``b``, where
        ``k_b = floor((b + 1) f B) - floor(b f B)`` averages to ``f B`` exactly."""
        b, position = divmod(index, self.batch_size)
        share = self.foreground_share * self.batch_size
        forced = int((b + 1) * share + 1e-9) - int(b * share + 1e-9)
        return position >= self.batch_size - forced

    def case(self, index: int) -> Tuple[torch.Tensor, torch.Tensor, Dict[int, torch.Tensor]]:
        """Case ``index`` (image, mask, foreground locations), read once and kept."""
        if index not in self._loaded:
            name = self.cases.samples[index][0] if hasattr(self.cases, "samples") else f"case {index}"
            if hasattr(self.cases, "open_case"):
                image, mask, found = self.cases.open_case(index)
                locations = {int(c): torch.from_numpy(np.asarray(xyz, dtype=np.int64)) for c, xyz in found.items()
                             if len(xyz)}
            else:
                image, mask = self.cases.load_sample(index)
                locations = None
            if mask is None:
                raise DataError(f"{name}: has no mask; patch sampling needs a mask for every training case")
            if len(self.patch_size) != mask.ndim:
                raise DataError(f"data.patch_size {self.patch_size} has {len(self.patch_size)} axes but {name} "
                                f"has {mask.ndim} spatial axes {tuple(mask.shape)}; give one size per axis")
            if locations is None:
                locations = class_locations(mask, self.num_classes, seed=index)
            if not locations and self.foreground_share > 0:
                log.warning("%s: no foreground pixel; its patches are drawn at random", name)
            self._loaded[index] = (image, mask, locations)
        return self._loaded[index]

    def __getitem__(self, index: int) -> Tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, mask, locations = self.case(int(torch.randint(len(self.cases), ()).item()))
        centre = None
        if locations and self.forced_foreground(index):
            classes = sorted(locations)
            coords = locations[classes[int(torch.randint(len(classes), ()).item())]]
            centre = coords[int(torch.randint(len(coords), ()).item())]
        start = window_start(mask.shape, self.patch_size, centre)
        image_patch, mask_patch = crop_with_padding(image, mask, start, self.patch_size)
        pair = tv_tensors.Image(image_patch), tv_tensors.Mask(mask_patch)
        return self.transforms(*pair) if self.transforms is not None else pair
