"""``VolumeDataset`` ("volumes"): 3D cases in one of three layouts, read as ``[C, Z, Y, X]`` / ``[Z, Y, X]``.

Layouts, detected in this order:

* **MSD** — ``root/dataset.json`` (Medical Segmentation Decathlon) listing
  ``"training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]``
  and ``"test": ["./imagesTs/y.nii.gz"]``; train/val from ``val_fraction``;
* **npz** — ``root/<case>.npz`` (``data``, ``seg``) with ``<case>.json`` or
  ``<case>.pkl`` properties, or split folders ``root/train/``, ``root/val/``
  (and ``root/test/``);
* **TIFF** — ``root/images/<case>.tif`` + ``root/masks/<case>.tif`` (or
  ``root/train/images`` ...), spacing from the ``spacing`` argument;
* **NIfTI folder** — ``root/*.nii.gz`` images without labels (an MSD
  ``imagesTs/``, or any scans to predict with ``test.py --input``): split
  ``test`` and ``all`` list them all.

Without split folders the cases are shuffled with ``seed`` and split by
``val_fraction`` (``datasets.folder.split_indices``). The cases are readers'
results (see ``datasets.volumes.readers``); the dataset does not resample or
normalise. It has ``samples`` (``(image file, label file or None)`` per case)
but no ``mask_mapping``: the 2D data check and class statistics do not read
volumes (``volumetric = True`` marks it).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from datasets.folder import pair_folder, split_indices
from datasets.volumes.readers import (NIFTI_SUFFIX, Case, case_name, check_channels, check_spacing,
                                      npz_has_seg, read_nifti_case, read_npz_case, read_tiff_case, write_nifti)
from utils.constants import IGNORE_INDEX
from utils.errors import DataError
from utils.registry import DATASETS

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "all")
LAYOUT_HELP = ("expected root/dataset.json (MSD), root/<case>.npz (or root/train/ and root/val/ of them), "
               "root/images + root/masks of .tif stacks (or root/train/images ...), or unlabelled root/*.nii.gz")
Sample = Tuple[Path, Optional[Path]]

__all__ = ["VolumeDataset", "write_nifti"]


@DATASETS.register("volumes")
class VolumeDataset(Dataset):
    """3D cases from an MSD, npz or TIFF layout (see the module docstring).

    Args:
        root: dataset folder.
        split: "train", "val", "test" or "all".
        num_classes: classes, background included; label values must be
            ``0..num_classes-1`` or ``IGNORE_INDEX``.
        transforms: callable ``(Image, Mask) -> (Image, Mask)`` for ``__getitem__``.
        in_channels: channels every image must have (MSD modalities, npz ``data`` C).
        seed: seed of the val_fraction split.
        spacing: ``[z, y, x]`` voxel size for TIFF stacks (ignored, with a
            warning, by layouts that store their own).
        val_fraction: share of the cases for val without split folders.
    """

    generates_its_files = False
    volumetric = True
    class_names: Optional[List[str]] = None
    palette: Optional[np.ndarray] = None

    def __init__(self, root: str, split: str, num_classes: int, transforms: Any = None, in_channels: int = 1,
                 seed: int = 0, spacing: Optional[Sequence[float]] = None, val_fraction: float = 0.2) -> None:
        if split not in SPLITS:
            raise DataError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        if not 0 <= val_fraction < 1:
            raise DataError(f"data.val_fraction {val_fraction} must be in [0, 1)")
        self.root, self.split, self.num_classes = Path(root), split, num_classes
        self.transforms, self.in_channels = transforms, in_channels
        self.spacing = None if spacing is None else check_spacing(spacing, "data.spacing")
        self.layout = detect_layout(self.root)
        if self.spacing is not None and self.layout != "tiff":
            log.warning("%s: data.spacing is ignored: %s cases store their own spacing", self.root, self.layout)
        self.samples: List[Sample] = self._find_samples(seed, val_fraction)
        if not self.samples:
            raise DataError(f"{self.root}: no {split} cases in the {self.layout} layout; {LAYOUT_HELP}")

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, layout={self.layout!r}, "
                f"{len(self)} cases, num_classes={self.num_classes})")

    def case_name(self, index: int) -> str:
        return case_name(self.samples[index][0])

    def read_case(self, index: int) -> Case:
        """Case ``index`` as numpy: image float32 [C, Z, Y, X], mask int64 [Z, Y, X] or None, properties."""
        image_path, mask_path = self.samples[index]
        if self.layout == "npz":
            image, mask, properties = read_npz_case(image_path, self.num_classes)
            mask = mask if mask_path is not None else None
        elif self.layout in ("msd", "nifti"):
            image, mask, properties = read_nifti_case(image_path, mask_path, self.num_classes)
        else:
            image, mask, properties = read_tiff_case(image_path, mask_path, self.num_classes, self.spacing)
        check_channels(image, self.in_channels, str(image_path))
        return image, mask, properties

    def load_sample(self, index: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Case ``index`` as tensors: image float32 (C, Z, Y, X), mask int64 (Z, Y, X) or None."""
        image, mask, _ = self.read_case(index)
        return torch.from_numpy(image), None if mask is None else torch.from_numpy(mask)

    def read_properties(self, index: int) -> Dict[str, Any]:
        """The properties of case ``index`` (case, format, spacing, shape; affine and header for NIfTI)."""
        return self.read_case(index)[2]

    def __getitem__(self, index: int) -> Tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Case ``index`` after ``transforms``; a missing mask is all ``IGNORE_INDEX``."""
        image, mask = self.load_sample(index)
        if mask is None:
            mask = torch.full(image.shape[1:], IGNORE_INDEX, dtype=torch.int64)
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return tv_tensors.Image(image), tv_tensors.Mask(mask)

    # ------------------------------------------------------------ discovery

    def _find_samples(self, seed: int, val_fraction: float) -> List[Sample]:
        finders = {"msd": self._msd_samples, "npz": self._npz_samples, "tiff": self._tiff_samples,
                   "nifti": self._nifti_samples}
        return finders[self.layout](seed, val_fraction)

    def _pick(self, cases: List[Sample], seed: int, val_fraction: float) -> List[Sample]:
        """The ``split`` share of a flat list of labelled cases ("test" has none in a flat layout)."""
        if self.split == "all":
            return cases
        if self.split == "test":
            return []
        train, val = split_indices(len(cases), val_fraction, seed)
        return [cases[i] for i in (train if self.split == "train" else val)]

    def _npz_samples(self, seed: int, val_fraction: float) -> List[Sample]:
        if (self.root / "train").is_dir():
            folders = ["train", "val", "test"] if self.split == "all" else [self.split]
            return [case for name in folders for case in _npz_folder(self.root / name)]
        return self._pick(_npz_folder(self.root), seed, val_fraction)

    def _tiff_samples(self, seed: int, val_fraction: float) -> List[Sample]:
        if (self.root / "train" / "images").is_dir():
            folders = ["train", "val", "test"] if self.split == "all" else [self.split]
            return [case for name in folders if (self.root / name / "images").is_dir()
                    for case in pair_folder(self.root / name, masks_optional=name == "test")]
        return self._pick(pair_folder(self.root), seed, val_fraction)

    def _nifti_samples(self, seed: int, val_fraction: float) -> List[Sample]:
        if self.split not in ("test", "all"):
            return []
        return [(path, None) for path in sorted(self.root.iterdir()) if path.name.endswith((NIFTI_SUFFIX, ".nii"))]

    def _msd_samples(self, seed: int, val_fraction: float) -> List[Sample]:
        training, test = read_msd_lists(self.root)
        if self.split == "test":
            return test
        return self._pick(training, seed, val_fraction) + (test if self.split == "all" else [])


def detect_layout(root: Path) -> str:
    """"msd", "npz", "tiff" or "nifti" for the folder ``root``; anything else raises."""
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist; {LAYOUT_HELP}")
    if (root / "dataset.json").is_file():
        return "msd"
    if any(root.glob("*.npz")) or any(root.glob("train/*.npz")):
        return "npz"
    if (root / "images").is_dir() or (root / "train" / "images").is_dir():
        return "tiff"
    if any(root.glob(f"*{NIFTI_SUFFIX}")) or any(root.glob("*.nii")):
        return "nifti"
    raise DataError(f"{root}: no volume layout found; {LAYOUT_HELP}")


def _npz_folder(folder: Path) -> List[Sample]:
    """``(case.npz, case.npz or None)`` for each case of ``folder`` (None when it has no ``seg``)."""
    if not folder.is_dir():
        return []
    return [(path, path if npz_has_seg(path) else None) for path in sorted(folder.glob("*.npz"))]


def read_msd_lists(root: Path) -> Tuple[List[Sample], List[Sample]]:
    """The training ``(image, label)`` and test ``(image, None)`` cases listed in ``root/dataset.json``."""
    path = root / "dataset.json"
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(description, dict) or not isinstance(description.get("training"), list):
        raise DataError(f'{path}: needs a "training" list of {{"image": ..., "label": ...}} entries')
    training = []
    for entry in description["training"]:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(f'{path}: training entry {entry!r} needs "image" and "label" paths')
        training.append((_msd_path(root, entry["image"]), _msd_path(root, entry["label"])))
    test = [(_msd_path(root, entry if isinstance(entry, str) else entry.get("image", "")), None)
            for entry in description.get("test", [])]
    return training, test


def _msd_path(root: Path, relative: Any) -> Path:
    """A dataset.json path (``./imagesTr/x.nii.gz``) under ``root``; absolute or escaping paths raise."""
    if not isinstance(relative, str) or not relative.endswith((NIFTI_SUFFIX, ".nii")):
        raise DataError(f"{root / 'dataset.json'}: {relative!r} is not a .nii.gz path")
    path = (root / relative).resolve()
    if root.resolve() not in path.parents:
        raise DataError(f"{root / 'dataset.json'}: {relative!r} points outside {root}; list paths like ./imagesTr/x.nii.gz")
    return root / Path(relative)
