"""Class pixel statistics of a dataset's training masks, and class weights derived from them.

A config asks for computed weights with a method name instead of numbers::

    loss:
      - {name: ce, class_weights: median_frequency}   # or: inverse, or [0.5, 2.0, ...]

train.py resolves the name once per run directory: :func:`cached_class_counts`
scans the training masks (the first time, or when the dataset changed) and
keeps the counts in ``<run_dir>/class_stats.json``; :func:`class_weights` turns
them into one weight per class:

* ``inverse``: ``w_c = N / (C * n_c)``, with ``n_c`` the pixels of class c,
  ``N`` all labelled pixels and ``C`` the number of classes (a class with the
  average share gets 1);
* ``median_frequency`` (Eigen & Fergus, ICCV 2015): ``freq_c = n_c / P_c``
  with ``P_c`` the labelled pixels of the images in which class c occurs, and
  ``w_c = median(freq) / freq_c``, the median taken over the classes that occur.

Pixels equal to ``IGNORE_INDEX`` are counted nowhere. A class that never
occurs gets weight 0 and a warning.

A dataset is read through the ``datasets.io.FileDataset`` protocol (``root``,
``split``, ``num_classes``, ``mask_mapping``, ``samples``) and each mask is
counted by ``datasets.io.count_mask``, the counting the data check uses.
"""
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from datasets.io import FileDataset, count_mask
from utils.constants import IGNORE_INDEX
from utils.errors import DataError
from utils.fileio import write_json

log = logging.getLogger(__name__)

WEIGHT_METHODS = ("inverse", "median_frequency")
CLASS_STATS_FILE = "class_stats.json"


@dataclass
class ClassCounts:
    """Per-class pixel counts of a set of masks (ignored pixels left out).

    Attributes:
        pixels: (C,) int64, pixels of each class.
        image_pixels: (C,) int64, labelled pixels of the images in which the
            class occurs (what median frequency balancing divides by).
        num_images: masks counted.
    """

    pixels: np.ndarray
    image_pixels: np.ndarray
    num_images: int

    def to_dict(self) -> Dict[str, Any]:
        return {"pixels": self.pixels.tolist(), "image_pixels": self.image_pixels.tolist(),
                "num_images": self.num_images}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ClassCounts":
        return cls(np.asarray(data["pixels"], dtype=np.int64), np.asarray(data["image_pixels"], dtype=np.int64),
                   int(data["num_images"]))


def class_pixel_counts(dataset: FileDataset, progress: bool = False) -> ClassCounts:
    """Count the classes of every mask of ``dataset``, read at full resolution.

    Masks are read with the dataset's mask mapping and validated as in
    training (values outside the classes raise DataError naming the file);
    samples without a mask are skipped.
    """
    num_classes = dataset.num_classes
    pixels = np.zeros(num_classes, dtype=np.int64)
    image_pixels = np.zeros(num_classes, dtype=np.int64)
    masks = [(i, mask) for i, (_, mask) in enumerate(dataset.samples) if mask is not None]
    volumetric = getattr(dataset, "volumetric", False)  # a volume's labels come from its case reader
    for index, path in tqdm(masks, desc="class statistics", unit="mask", leave=False, disable=not progress):
        if volumetric:
            labels = dataset.load_sample(index)[1].flatten()
            counts = np.bincount(labels[labels != IGNORE_INDEX].numpy(), minlength=num_classes)[:num_classes]
        else:
            mask = count_mask(path, dataset.mask_mapping, num_classes)
            mask.raise_problem(path)
            counts = mask.class_pixels
        pixels += counts
        image_pixels[counts > 0] += counts.sum()
    return ClassCounts(pixels, image_pixels, len(masks))


def class_weights(counts: ClassCounts, method: str) -> List[float]:
    """One loss weight per class from ``counts`` by ``method`` ("inverse" or "median_frequency").

    Classes with no pixel get 0 (with a logged warning); no labelled pixel at
    all raises ValueError.
    """
    if method not in WEIGHT_METHODS:
        raise ValueError(f"unknown class weight method {method!r}; valid: {', '.join(WEIGHT_METHODS)}")
    pixels = counts.pixels.astype(np.float64)
    present = pixels > 0
    if not present.any():
        raise DataError("cannot compute class weights: the training masks hold no labelled pixel; "
                         "check them with `python train.py --config CONFIG --check-data`")
    absent = np.flatnonzero(~present).tolist()
    if absent:
        log.warning("class(es) %s never occur in the training masks: weight 0", absent)
    weights = np.zeros_like(pixels)
    if method == "inverse":
        weights[present] = pixels.sum() / (len(pixels) * pixels[present])
    else:
        freq = pixels[present] / counts.image_pixels[present]
        weights[present] = np.median(freq) / freq
    return weights.tolist()


def cache_key(dataset: FileDataset, dataset_name: str) -> Dict[str, Any]:
    """What the counts depend on; a cache with another key is recomputed."""
    return {"dataset": dataset_name, "root": str(Path(dataset.root).resolve()), "split": dataset.split,
            "num_classes": dataset.num_classes,
            "mask_mapping": repr(getattr(dataset, "mask_mapping", "volume labels")), "num_samples": len(dataset.samples)}


def cached_class_counts(dataset: FileDataset, dataset_name: str, path: Path, progress: bool = False) -> ClassCounts:
    """The class counts of ``dataset``, from the JSON cache ``path`` when its key matches, else
    counted and written there (atomically) with the weights of every method."""
    key = cache_key(dataset, dataset_name)
    cached = _read_cache(path)
    if cached is not None and cached.get("key") == key:
        log.info("class statistics from %s", path)
        return ClassCounts.from_dict(cached["counts"])
    log.info("counting class pixels in %d %s masks (cached in %s)", len(dataset.samples), dataset.split, path)
    counts = class_pixel_counts(dataset, progress=progress)
    weights = {method: class_weights(counts, method) for method in WEIGHT_METHODS}
    write_json(path, {"key": key, "counts": counts.to_dict(), "weights": weights})
    return counts


def _read_cache(path: Path) -> Optional[Dict[str, Any]]:
    """The cache file's content, or None when it is missing or unreadable (with a warning)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable class statistics cache (%s); counting again", path, exc)
        return None
    return data if isinstance(data, dict) else None


def format_weights(weights: Sequence[float], class_names: Sequence[str]) -> str:
    """``"background 0.512, lesion 3.871"``."""
    return ", ".join(f"{name} {weight:.4g}" for name, weight in zip(class_names, weights))
