"""nnU-Net-style preprocessing of volume cases, and the on-disk cache of its results.

One case goes through (see :func:`preprocess_case`):

1. **crop** to the bounding box of the non-zero voxels of any channel
   (:func:`nonzero_bbox`; an all-zero case is kept whole);
2. **normalise** each channel with its plan scheme (:func:`normalise`):
   ``"ct"`` (clip to the dataset's foreground 0.5/99.5 percentiles, then the
   dataset's foreground mean/std), ``"zscore"`` (the case's own mean/std,
   inside the non-zero mask when the plan says so), ``"percentile"`` (the
   case's 0.5/99.5 percentiles to [0, 1]) or ``"none"``;
3. **resample** to the plan's target spacing (:func:`resample_image`,
   :func:`resample_mask`): third-order splines, except that a case whose
   spacing (or target) has one axis more than ``ANISOTROPY_THRESHOLD`` times
   coarser than the finest is resampled in-plane slice by slice and along that
   axis with order 0 (nnU-Net's "separate z"), so that thick slices are not
   smeared into each other.

"zscore" uses the non-zero region when the plan's ``use_nonzero_mask`` is
set (nnU-Net sets it, for the whole dataset, when cropping removes at least a
quarter of the voxels of the median case).

All resampling is grid-aligned (voxel *edges* map onto voxel edges, scipy's
``grid_mode=True``), so resampling to a shape and back keeps structures in
place; :func:`restore_probabilities` undoes resampling and crop for a
prediction. :class:`PreprocessedCache` keeps the results as ``.npy`` files
that training opens as memory maps.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from datasets.patches import MAX_LOCATIONS
from datasets.volumes.readers import check_same_shape, check_spacing
from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError, DataError
from utils.fileio import atomic_path, write_failure, write_json

log = logging.getLogger(__name__)

#: A spacing with one axis more than this many times coarser than the finest is anisotropic.
ANISOTROPY_THRESHOLD = 3.0
#: Normalisation schemes (see :func:`normalise`).
SCHEMES = ("ct", "zscore", "percentile", "none")
MASK_MODES = ("nearest", "linear")
BBox = List[Tuple[int, int]]


# ------------------------------------------------------------------ crop


def nonzero_bbox(image: np.ndarray) -> BBox:
    """Half-open ``(start, stop)`` per spatial axis of the voxels non-zero in any channel of ``image`` [C, *S]."""
    nonzero = np.any(image != 0, axis=0)
    if not nonzero.any():
        return [(0, int(n)) for n in nonzero.shape]
    bbox = []
    for axis in range(nonzero.ndim):
        others = tuple(a for a in range(nonzero.ndim) if a != axis)
        hits = np.flatnonzero(nonzero.any(axis=others))
        bbox.append((int(hits[0]), int(hits[-1]) + 1))
    return bbox


def crop(array: np.ndarray, bbox: Sequence[Sequence[int]]) -> np.ndarray:
    """``array`` [C, *S] or [*S] cut to ``bbox`` (a view)."""
    window = tuple(slice(int(start), int(stop)) for start, stop in bbox)
    if array.ndim == len(bbox) + 1:
        return array[(slice(None), *window)]
    if array.ndim != len(bbox):
        raise ValueError(f"crop: array of shape {array.shape} does not fit a {len(bbox)}-axis box")
    return array[window]


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels non-zero in any channel of ``image`` [C, *S], holes filled (nnU-Net's region for z-scores)."""
    return ndimage.binary_fill_holes(np.any(image != 0, axis=0))


# ------------------------------------------------------------------ resampling


def anisotropic_axis(spacing: Sequence[float], threshold: float = ANISOTROPY_THRESHOLD) -> Optional[int]:
    """The one axis whose spacing is more than ``threshold`` times the finest, else None (also when two tie)."""
    values = np.asarray(spacing, dtype=np.float64)
    if values.max() / values.min() <= threshold:
        return None
    coarse = np.flatnonzero(values == values.max())
    return int(coarse[0]) if len(coarse) == 1 else None


def new_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> List[int]:
    """``round(shape * spacing / target_spacing)`` per axis, at least 1."""
    return [max(int(round(n * s / t)), 1) for n, s, t in zip(shape, spacing, target_spacing)]


def _zoom(volume: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``volume`` resized to ``shape`` by a grid-aligned spline of ``order`` (edges replicated)."""
    if tuple(volume.shape) == tuple(shape):
        return volume.copy()
    factors = [n / d for n, d in zip(shape, volume.shape)]
    out = ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)
    assert out.shape == tuple(shape), (out.shape, shape)
    return out


def resample_to_shape(array: np.ndarray, shape: Sequence[int], order: int = 1,
                      separate_axis: Optional[int] = None, order_z: int = 0) -> np.ndarray:
    """``array`` [K, *S] (float) resized to [K, *shape], channel by channel, as float32.

    With ``separate_axis``, each slice across that axis is resized with
    ``order`` first, then the stack along the axis with ``order_z``.
    """
    array = np.asarray(array, dtype=np.float32)
    shape = [int(n) for n in shape]
    out = np.empty((array.shape[0], *shape), dtype=np.float32)
    for k, volume in enumerate(array):
        if separate_axis is None:
            out[k] = _zoom(volume, shape, order)
            continue
        moved = np.moveaxis(volume, separate_axis, 0)
        plane = [n for axis, n in enumerate(shape) if axis != separate_axis]
        slices = np.stack([_zoom(piece, plane, order) for piece in moved])
        stacked = _zoom(slices, [shape[separate_axis], *plane], order_z)
        out[k] = np.moveaxis(stacked, 0, separate_axis)
    return out


def separate_axis_for(spacing: Sequence[float], target_spacing: Sequence[float]) -> Optional[int]:
    """The axis to resample on its own: anisotropic in ``spacing``, else in ``target_spacing`` (nnU-Net)."""
    axis = anisotropic_axis(spacing)
    return axis if axis is not None else anisotropic_axis(target_spacing)


def resample_image(image: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float], order: int = 3,
                   order_z: int = 0, shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """``image`` [C, Z, Y, X] from ``spacing`` to ``target_spacing`` (or to ``shape`` when given), float32.

    An anisotropic case (see :func:`separate_axis_for`) is resampled in-plane
    with ``order`` and along its coarse axis with ``order_z``; any other with
    ``order`` on every axis.
    """
    shape = new_shape(image.shape[1:], spacing, target_spacing) if shape is None else shape
    return resample_to_shape(image, shape, order, separate_axis_for(spacing, target_spacing), order_z)


def resample_mask(mask: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float], num_classes: int,
                  mode: str = "nearest", shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """``mask`` [Z, Y, X] of class indices resampled like :func:`resample_image`; same dtype.

    ``"nearest"``: order 0. ``"linear"``: each class (and ``IGNORE_INDEX`` as
    one more) as a 0/1 volume resampled with order 1 (order 0 along the coarse
    axis of an anisotropic case), the voxel taking the class of the largest.
    """
    if mode not in MASK_MODES:
        raise ConfigError(f"mask resampling {mode!r} is not one of {', '.join(MASK_MODES)}")
    shape = new_shape(mask.shape, spacing, target_spacing) if shape is None else [int(n) for n in shape]
    if mode == "nearest":
        return _zoom(mask, shape, 0)
    axis = separate_axis_for(spacing, target_spacing)
    best = np.full(shape, -np.inf, dtype=np.float32)
    out = np.zeros(shape, dtype=mask.dtype)
    for value in [*range(num_classes), IGNORE_INDEX]:
        score = resample_to_shape((mask == value)[None], shape, 1, axis, 0)[0]
        better = score > best
        out[better], best[better] = value, score[better]
    return out


# ------------------------------------------------------------------ normalisation


def _stat(intensity: Optional[Sequence[Optional[Dict[str, float]]]], channel: int, key: str) -> float:
    stats = intensity[channel] if intensity is not None and channel < len(intensity) else None
    if not stats or stats.get(key) is None:
        raise ConfigError(f'normalization "ct" for channel {channel} needs the dataset\'s foreground intensity '
                          f"statistics ({key}), and the plan has none (no labelled foreground voxels?); "
                          'use "zscore" for that channel')
    return float(stats[key])


def normalise(image: np.ndarray, schemes: Sequence[str], intensity: Optional[Sequence[Optional[Dict[str, float]]]],
              nonzero: Optional[np.ndarray] = None) -> np.ndarray:
    """``image`` [C, *S] normalised channel by channel with ``schemes`` (see the module docstring), float32.

    ``intensity`` holds the dataset's per-channel foreground statistics (used
    by "ct"); ``nonzero`` [*S] restricts "zscore" to the region (0 outside).
    """
    if len(schemes) != image.shape[0]:
        raise ConfigError(f"normalization lists {len(schemes)} schemes for {image.shape[0]} channels; "
                          "give one per channel")
    out = np.empty(image.shape, dtype=np.float32)
    for c, scheme in enumerate(schemes):
        x = image[c].astype(np.float32)
        if scheme == "ct":
            low, high = _stat(intensity, c, "percentile_00_5"), _stat(intensity, c, "percentile_99_5")
            mean, std = _stat(intensity, c, "mean"), _stat(intensity, c, "std")
            out[c] = (np.clip(x, low, high) - mean) / max(std, 1e-8)
        elif scheme == "zscore" and nonzero is not None:
            inside = x[nonzero]
            mean, std = (float(inside.mean()), float(inside.std())) if inside.size else (0.0, 1.0)
            out[c] = np.where(nonzero, (x - mean) / max(std, 1e-8), 0.0)
        elif scheme == "zscore":
            out[c] = (x - float(x.mean())) / max(float(x.std()), 1e-8)
        elif scheme == "percentile":
            low, high = np.percentile(x, [0.5, 99.5])
            out[c] = (np.clip(x, low, high) - low) / (high - low) if high > low else 0.0
        elif scheme == "none":
            out[c] = x
        else:
            raise ConfigError(f"normalization {scheme!r} (channel {c}) is not one of {', '.join(SCHEMES)}")
    return out


# ------------------------------------------------------------------ one case


def _check_case(image: np.ndarray, mask: Optional[np.ndarray], properties: Dict[str, Any]) -> Tuple[float, ...]:
    """The case's spacing; wrong ranks, shapes or spacing raise DataError (readers check files as they read)."""
    source = str(properties.get("case", "case"))
    if image.ndim != 4:
        raise DataError(f"{source}: image has shape {tuple(image.shape)}; expected [C, Z, Y, X]")
    if mask is not None and mask.ndim != 3:
        raise DataError(f"{source}: label has shape {tuple(mask.shape)}; expected [Z, Y, X]")
    check_same_shape(image, mask, source)
    if "spacing" not in properties:
        raise DataError(f"{source}: spacing is missing from the case properties; give [z, y, x]")
    return check_spacing(properties["spacing"], source)


def preprocess_case(image: np.ndarray, mask: Optional[np.ndarray], properties: Dict[str, Any],
                    plan: Dict[str, Any], num_classes: int) -> Tuple[np.ndarray, Optional[np.ndarray], Dict[str, Any]]:
    """Crop, normalise and resample one case as ``plan`` says (see the module docstring).

    Returns ``data`` float32 [C, *S'], ``seg`` [*S'] (uint8 for up to 255
    classes, else int64) or None, and a JSON-able ``info`` dict that
    :func:`restore_probabilities` uses to map a prediction back.
    """
    spacing = _check_case(image, mask, properties)
    original = [int(n) for n in image.shape[1:]]
    bbox = nonzero_bbox(image)
    image = crop(image, bbox)
    mask = None if mask is None else crop(mask, bbox)
    region = nonzero_mask(image) if plan.get("use_nonzero_mask") else None
    data = normalise(image, plan["normalization"], plan.get("intensity"), region)
    target, resampling = plan["target_spacing"], plan["resampling"]
    shape = new_shape(image.shape[1:], spacing, target)
    data = resample_image(data, spacing, target, resampling["image_order"], resampling["image_order_z"], shape)
    seg = None
    if mask is not None:
        seg = resample_mask(mask, spacing, target, num_classes, resampling["mask"], shape)
        seg = seg.astype(np.uint8 if num_classes <= IGNORE_INDEX else np.int64)
    info: Dict[str, Any] = {
        "case": str(properties.get("case", "")), "spacing": [float(s) for s in spacing], "shape": original,
        "bbox": [[int(a), int(b)] for a, b in bbox], "shape_after_crop": [int(n) for n in image.shape[1:]],
        "shape_after_resampling": [int(n) for n in data.shape[1:]], "target_spacing": [float(t) for t in target],
    }
    if "format" in properties:
        info["format"] = str(properties["format"])
    if properties.get("affine") is not None:
        info["affine"] = np.asarray(properties["affine"], dtype=np.float64).tolist()
    return data, seg, info


def restore_probabilities(probabilities: Any, info: Dict[str, Any]) -> np.ndarray:
    """Class probabilities [K, *S'] of a preprocessed case back on its original grid, float32 [K, *shape].

    They are resampled (order 1; order 0 along the coarse axis of an
    anisotropic case) to the cropped shape and placed at the crop box; outside
    it the case was empty, so there class 0 has probability 1 (a single
    sigmoid channel, the foreground's, has probability 0).
    """
    if hasattr(probabilities, "detach"):  # a torch tensor
        probabilities = probabilities.detach().float().cpu().numpy()
    probabilities = np.asarray(probabilities, dtype=np.float32)
    expected = [int(n) for n in info["shape_after_resampling"]]
    if probabilities.ndim != len(expected) + 1 or list(probabilities.shape[1:]) != expected:
        raise DataError(f"{info.get('case', 'case')}: prediction has shape {list(probabilities.shape)}; expected "
                        f"[K, {', '.join(map(str, expected))}] (the preprocessed case's shape)")
    axis = separate_axis_for(info["target_spacing"], info["spacing"])
    cropped = resample_to_shape(probabilities, info["shape_after_crop"], 1, axis, 0)
    restored = np.zeros((probabilities.shape[0], *info["shape"]), dtype=np.float32)
    if probabilities.shape[0] > 1:  # softmax: background certain; one sigmoid channel: foreground 0
        restored[0] = 1.0
    restored[(slice(None), *(slice(a, b) for a, b in info["bbox"]))] = cropped
    return restored


def class_locations_np(seg: np.ndarray, num_classes: int, limit: int = MAX_LOCATIONS,
                       seed: int = 0) -> Dict[int, np.ndarray]:
    """Class -> (K, ndim) int64 coordinates of its voxels (K <= ``limit``, a seeded uniform subsample), for
    the foreground classes present (numpy twin of :func:`datasets.patches.class_locations`)."""
    rng = np.random.default_rng(seed)
    found: Dict[int, np.ndarray] = {}
    for cls in range(1, num_classes):
        coords = np.argwhere(np.asarray(seg) == cls).astype(np.int64)
        if len(coords) > limit:
            coords = coords[np.sort(rng.choice(len(coords), limit, replace=False))]
        if len(coords):
            found[cls] = coords
    return found


# ------------------------------------------------------------------ cache


def source_stamp(dataset: Any, index: int) -> Dict[str, Any]:
    """Size and modification time of the files case ``index`` is read from (npz properties included), and
    the dataset's ``spacing`` setting (TIFF stacks take their spacing from it)."""
    paths: List[Path] = []
    for path in dataset.samples[index]:
        if path is None or Path(path) in paths:
            continue
        paths.append(Path(path))
        if Path(path).suffix == ".npz":
            paths += [p for p in (Path(path).with_suffix(".json"), Path(path).with_suffix(".pkl")) if p.is_file()]
    files = {}
    for path in paths:
        try:
            stat = path.stat()
        except OSError as exc:
            raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); was it moved or deleted?") from exc
        files[str(path)] = [int(stat.st_size), int(stat.st_mtime_ns)]
    spacing = getattr(dataset, "spacing", None)
    return {"files": files, "spacing": None if spacing is None else [float(s) for s in spacing]}


class PreprocessedCache:
    """Preprocessed cases of one plan in ``folder`` (``<cache root>/<plan_key>``).

    Per case: ``<case>_data.npy`` (float32 [C, *S]), ``<case>_seg.npy`` (when
    labelled), ``<case>_locations.npz`` (foreground class locations) and
    ``<case>.json`` (the :func:`preprocess_case` info plus the source files'
    sizes and times), written last so that a case is complete once its json
    exists. ``plan.json`` holds the plan. Every file is written to a temp name
    and renamed, so an interrupted run leaves no partial file.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.folder)!r})"

    def paths(self, case: str) -> Dict[str, Path]:
        return {"data": self.folder / f"{case}_data.npy", "seg": self.folder / f"{case}_seg.npy",
                "info": self.folder / f"{case}.json", "locations": self.folder / f"{case}_locations.npz"}

    def cases(self) -> List[str]:
        """Names of the cases present (those whose json was written)."""
        return sorted(p.stem for p in self.folder.glob("*.json") if p.name != "plan.json")

    def ensure(self, dataset: Any, plan: Dict[str, Any], num_classes: int, progress: Optional[bool] = None) -> None:
        """Preprocess every case of ``dataset`` that is missing or older than its source files; reuse the rest."""
        names = [dataset.case_name(i) for i in range(len(dataset))]
        _check_names(names, dataset)
        self._write_plan(plan)
        reused = 0
        show = sys.stderr.isatty() if progress is None else progress
        for index in tqdm(range(len(dataset)), desc="preprocess", unit="case", leave=False, disable=not show):
            source = source_stamp(dataset, index)
            if self._fresh(names[index], source, num_classes):
                reused += 1
                continue
            image, mask, properties = dataset.read_case(index)
            data, seg, info = preprocess_case(image, mask, properties, plan, num_classes)
            info.update(source=source, num_classes=int(num_classes), has_seg=seg is not None)
            self._write(names[index], data, seg, info, class_locations_np(seg, num_classes, seed=index)
                        if seg is not None else {})
        log.info("preprocessed cases in %s: %d reused, %d computed", self.folder, reused, len(dataset) - reused)

    def _write_plan(self, plan: Dict[str, Any]) -> None:
        """Write ``plan.json`` unless it already holds ``plan``."""
        path = self.folder / "plan.json"
        try:
            same = json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(plan))
        except (OSError, ValueError):
            same = False
        if not same:
            write_json(path, plan)

    def _fresh(self, case: str, source: Dict[str, Any], num_classes: int) -> bool:
        paths = self.paths(case)
        try:
            info = json.loads(paths["info"].read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (info.get("source") == source and info.get("num_classes") == num_classes
                and paths["data"].is_file() and paths["locations"].is_file()
                and paths["seg"].is_file() == bool(info.get("has_seg")))

    def _write(self, case: str, data: np.ndarray, seg: Optional[np.ndarray], info: Dict[str, Any],
               locations: Dict[int, np.ndarray]) -> None:
        paths = self.paths(case)
        target = paths["data"]
        try:
            with atomic_path(target) as tmp:
                np.save(tmp, data)
            target = paths["seg"]
            if seg is not None:
                with atomic_path(target) as tmp:
                    np.save(tmp, seg)
            elif target.exists():
                target.unlink()
            target = paths["locations"]
            with atomic_path(target) as tmp:
                np.savez(tmp, **{f"class_{cls}": coords for cls, coords in locations.items()})
        except OSError as exc:
            raise write_failure(target, exc) from exc
        write_json(paths["info"], info)

    def open(self, case: str) -> Tuple[np.ndarray, Optional[np.ndarray], Dict[str, Any], Dict[int, np.ndarray]]:
        """Case ``case`` as ``(data memmap [C, *S], seg memmap [*S] or None, info, class locations)``."""
        paths = self.paths(case)
        if not paths["info"].is_file():
            raise DataError(f"{paths['info']}: no preprocessed case {case!r} in {self.folder}; "
                            "preprocess the dataset first (PreprocessedCache.ensure)")
        try:
            info = json.loads(paths["info"].read_text(encoding="utf-8"))
            data = np.load(paths["data"], mmap_mode="r")
            seg = np.load(paths["seg"], mmap_mode="r") if info.get("has_seg") else None
            with np.load(paths["locations"]) as archive:
                locations = {int(key.split("_", 1)[1]): archive[key] for key in archive.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.folder}: preprocessed case {case!r} is unreadable ({exc}); delete its files "
                            "and preprocess again") from exc
        return data, seg, info, locations


def _check_names(names: List[str], dataset: Any) -> None:
    """Raise when two cases share a name (their files would overwrite each other) or one is called "plan"."""
    seen: Dict[str, int] = {}
    for index, name in enumerate(names):
        if name == "plan" or name in seen:
            other = f" and {dataset.samples[seen[name]][0]}" if name in seen else ""
            raise DataError(f"{dataset.samples[index][0]}{other}: case name {name!r} is "
                            f"{'reserved for plan.json' if name == 'plan' else 'used twice'}; rename the case file")
        seen[name] = index
