"""``PreparedVolumes``: the preprocessed cases of one split, read from the cache as memory maps.

Planning and preprocessing (``planning.py``, ``preprocessing.py``) write each
case once, cropped, normalised and resampled, as ``<case>_data.npy`` /
``<case>_seg.npy`` with its foreground locations. This dataset serves them:

* ``open_case(i)`` gives the memory-mapped arrays and the locations, so the
  patch sampler (``datasets.patches.PatchDataset``) reads only the voxels of
  the patch it draws, never a whole volume;
* ``__getitem__(i)`` gives the whole preprocessed case (validation predicts
  it with a sliding window and scores it at the target spacing, as nnU-Net's
  validation during training does; test.py scores at the original spacing).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from utils.constants import IGNORE_INDEX

Opened = Tuple[np.ndarray, Optional[np.ndarray], Dict[int, np.ndarray]]


class PreparedVolumes(Dataset):
    """The cases ``names`` of a preprocessed cache (``PreprocessedCache``), in that order."""

    volumetric = True

    def __init__(self, cache: Any, names: List[str], num_classes: int, transforms: Any = None,
                 root: Optional[str] = None) -> None:
        self.cache, self.names, self.num_classes, self.transforms = cache, list(names), num_classes, transforms
        self.root = root if root is not None else str(cache.folder)
        self.samples: List[Tuple[Path, Optional[Path]]] = [
            (Path(cache.folder) / f"{name}_data.npy", Path(cache.folder) / f"{name}_seg.npy") for name in self.names]

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cache.folder}, {len(self)} cases)"

    def case_name(self, index: int) -> str:
        return self.names[index]

    def open_case(self, index: int) -> Opened:
        """Memory-mapped image (C, *S) and labels (*S) (None when unlabelled), foreground locations by class."""
        data, seg, _, locations = self.cache.open(self.names[index])
        return data, seg, locations

    def load_sample(self, index: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The whole case as tensors: image float32 (C, *S), labels int64 (*S) or None."""
        data, seg, _ = self.open_case(index)
        image = torch.from_numpy(np.array(data, dtype=np.float32))
        return image, None if seg is None else torch.from_numpy(np.array(seg, dtype=np.int64))

    def __getitem__(self, index: int) -> Tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, mask = self.load_sample(index)
        if mask is None:
            mask = torch.full(image.shape[1:], IGNORE_INDEX, dtype=torch.int64)
        pair = tv_tensors.Image(image), tv_tensors.Mask(mask)
        return self.transforms(*pair) if self.transforms is not None else pair
