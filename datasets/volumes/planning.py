"""nnU-Net-style planning for volumes: a dataset fingerprint, then a plan of spacing, patch and network.

* :func:`fingerprint` reads every case once: spacing, shape, shape after the
  non-zero crop, and a bounded random sample of foreground intensities;
* :func:`target_spacing` picks the spacing to resample to: the median per
  axis, except for a coarse axis with few voxels (nnU-Net's anisotropy rule),
  which gets the 10th percentile of its spacings so that thick-slice cases
  are not blown up by interpolation;
* :func:`plan_topology` picks the patch and the per-level pooling strides of
  the UNet (the format of ``model.strides``) that fit a memory budget;
* :func:`make_plan` puts it together as a JSON-able dict (plus the user's
  overrides), :func:`plan_key` names its preprocessing and
  :func:`format_plan` writes it for the log.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from datasets.volumes.preprocessing import (ANISOTROPY_THRESHOLD, MASK_MODES, SCHEMES, anisotropic_axis, new_shape,
                                            nonzero_bbox)
from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PLAN_VERSION = 1
#: Plan values a user may set (``overrides``) instead of the planned ones.
OVERRIDES = ("target_spacing", "patch_size", "strides", "normalization")
#: Memory beyond the activations and weights: CUDA context, cuDNN workspaces, the allocator's slack.
OVERHEAD_GB = 0.5
#: nnU-Net uses the non-zero mask for z-scores when cropping leaves less than this share of the median case.
NONZERO_MASK_BELOW = 0.75
AXIS_NAMES = ("z", "y", "x")


# ------------------------------------------------------------------ fingerprint


def _intensity_stats(values: np.ndarray) -> Optional[Dict[str, float]]:
    """Mean, std, min, max and 0.5/50/99.5 percentiles of ``values``; None when empty."""
    if values.size == 0:
        return None
    p00_5, p50, p99_5 = np.percentile(values, [0.5, 50.0, 99.5])
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max()), "percentile_00_5": float(p00_5), "percentile_50_0": float(p50),
            "percentile_99_5": float(p99_5)}


def fingerprint(dataset: Any, max_voxels_per_case: int = 10_000, seed: int = 0,
                progress: Optional[bool] = None) -> Dict[str, Any]:
    """Spacings, shapes (whole and after the non-zero crop) and foreground intensity statistics per channel.

    Foreground is ``0 < mask != IGNORE_INDEX``; at most ``max_voxels_per_case``
    of its voxels per case (a seeded uniform sample) enter the statistics, so
    large cases do not dominate. Unlabelled cases count for spacing and shape.
    """
    rng = np.random.default_rng(seed)
    spacings, shapes, cropped, samples = [], [], [], []
    show = sys.stderr.isatty() if progress is None else progress
    for index in tqdm(range(len(dataset)), desc="fingerprint", unit="case", leave=False, disable=not show):
        image, mask, properties = dataset.read_case(index)
        spacings.append([float(s) for s in properties["spacing"]])
        shapes.append([int(n) for n in image.shape[1:]])
        cropped.append([stop - start for start, stop in nonzero_bbox(image)])
        if mask is None:
            continue
        values = image[:, (mask > 0) & (mask != IGNORE_INDEX)]
        if values.shape[1] > max_voxels_per_case:
            values = values[:, np.sort(rng.choice(values.shape[1], max_voxels_per_case, replace=False))]
        samples.append(values)
    channels = dataset.in_channels if not samples else samples[0].shape[0]
    pooled = np.concatenate(samples, axis=1) if samples else np.zeros((channels, 0), np.float32)
    relative = [float(np.prod(c) / np.prod(s)) for c, s in zip(cropped, shapes)]
    return {"num_cases": len(shapes), "spacings": spacings, "shapes": shapes, "shapes_after_crop": cropped,
            "median_relative_size_after_crop": float(np.median(relative)) if relative else 1.0,
            "intensity": [_intensity_stats(channel) for channel in pooled]}


# ------------------------------------------------------------------ spacing


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]],
                   anisotropy_threshold: float = ANISOTROPY_THRESHOLD) -> List[float]:
    """The spacing to resample to: the median per axis, or, for a dataset whose coarsest axis is more than
    ``anisotropy_threshold`` times coarser than the others *and* has fewer than 1/threshold of their (median)
    voxels, that axis at the 10th percentile of its spacings (at least the others' largest spacing + 1e-5).
    ``shapes`` are the shapes after cropping."""
    spacings_arr = np.asarray(spacings, dtype=np.float64)
    sizes = np.median(np.asarray(shapes, dtype=np.float64), axis=0)
    target = np.median(spacings_arr, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    coarse_spacing = target[worst] > anisotropy_threshold * max(target[a] for a in others)
    few_voxels = sizes[worst] * anisotropy_threshold < min(sizes[a] for a in others)
    if coarse_spacing and few_voxels:
        finest_others = max(target[a] for a in others)
        value = float(np.percentile(spacings_arr[:, worst], 10))
        target[worst] = value if value >= finest_others else finest_others + 1e-5
    return [float(t) for t in target]


# ------------------------------------------------------------------ topology


def pooling_strides(spacing: Sequence[float], patch: Sequence[int], min_feature: int = 4,
                    max_depth: int = 6) -> List[List[int]]:
    """Per-level strides for ``patch``: at each level an axis is halved while its feature map stays at least
    ``min_feature`` and its current spacing is under twice the finest current spacing (of the axes still
    long enough), so a coarse z waits until in-plane pooling has caught up (nnU-Net's rule)."""
    current, size = [float(s) for s in spacing], [int(n) for n in patch]
    strides: List[List[int]] = []
    while len(strides) < max_depth:
        fits = [a for a in range(len(size)) if size[a] // 2 >= min_feature]
        if not fits:
            break
        finest = min(current[a] for a in fits)
        stride = [2 if a in fits and current[a] < 2 * finest else 1 for a in range(len(size))]
        for a, s in enumerate(stride):
            current[a], size[a] = current[a] * s, size[a] // s
        strides.append(stride)
    return strides


def divisors(strides: Sequence[Sequence[int]], dims: int = 3) -> List[int]:
    """The total pooling per axis: the product of the strides."""
    return [int(np.prod([level[a] for level in strides])) for a in range(dims)]


def _fit(spacing: Sequence[float], patch: Sequence[int], min_feature: int,
         max_depth: int) -> Tuple[List[int], List[List[int]]]:
    """``patch`` rounded down to multiples of its own pooling, with those strides (repeated until stable)."""
    patch = [int(n) for n in patch]
    while True:
        strides = pooling_strides(spacing, patch, min_feature, max_depth)
        fitted = [n // d * d for n, d in zip(patch, divisors(strides, len(patch)))]
        if fitted == patch:
            return patch, strides
        patch = fitted


def estimate_memory_gb(patch: Sequence[int], strides: Sequence[Sequence[int]], in_channels: int, num_classes: int,
                       base_channels: int = 32, max_channels: int = 320, batch_size: int = 2) -> float:
    """A rough training memory (GB) of a plain UNet on batches of ``patch``.

    Level ``l`` (0 = full resolution, ``depth`` = bottleneck) has
    ``w_l = min(base_channels * 2**l, max_channels)`` channels on ``n_l``
    voxels (the patch divided by the strides so far). Activations: the two
    conv outputs of every encoder level and of every decoder level below the
    bottleneck, plus the input and the logits, each float32 kept with its
    gradient (8 bytes a value), times ``batch_size``. Weights: 3x3x3 convs,
    float32 with gradient and two Adam moments (16 bytes a weight). Plus
    :data:`OVERHEAD_GB`. Norm and activation outputs are not counted; the
    estimate is for ranking patch sizes against a budget, not a promise.
    """
    voxels, activations, weights, previous = float(np.prod(patch)), 0.0, 0.0, in_channels
    for level in range(len(strides) + 1):
        if level:
            voxels /= float(np.prod(strides[level - 1]))
        width = min(base_channels * 2 ** level, max_channels)
        convs = 2 if level == len(strides) else 4  # encoder pair, plus the decoder pair below the bottleneck
        activations += convs * width * voxels
        weights += 27 * (previous * width + width * width) * (1 if level == len(strides) else 2)
        previous = width
    activations += float(np.prod(patch)) * (in_channels + num_classes)
    return (activations * 8 * batch_size + weights * 16) / 1024 ** 3 + OVERHEAD_GB


def _shrunk(spacing: Sequence[float], patch: List[int], median: List[int], min_feature: int,
            max_depth: int) -> Optional[List[int]]:
    """The next smaller patch: the axis largest relative to the median shape cut to the next multiple of its
    pooling (nnU-Net's order), an axis at ``2 * min_feature`` or below (one pooling level left) left alone;
    None when none can shrink."""
    for axis in sorted(range(len(patch)), key=lambda a: -patch[a] / median[a]):
        if patch[axis] > 2 * min_feature:
            smaller = list(patch)
            smaller[axis] -= 1
            return _fit(spacing, smaller, min_feature, max_depth)[0]
    return None


def plan_topology(spacing: Sequence[float], median_shape: Sequence[float], memory_gb: float, in_channels: int,
                  num_classes: int, base_channels: int = 32, max_channels: int = 320, batch_size: int = 2,
                  min_feature: int = 4, max_depth: int = 6) -> Dict[str, Any]:
    """Patch size and per-level strides for a UNet at ``spacing`` (see the module docstring).

    Starts from ``median_shape`` (the median case at the target spacing)
    rounded down to multiples of its pooling, and shrinks it one axis step at
    a time until :func:`estimate_memory_gb` fits ``memory_gb`` (or no axis can
    shrink, with a warning). ``strides`` has ``depth`` entries ``[sz, sy, sx]``.
    """
    median = [max(int(round(n)), 1) for n in median_shape]
    patch, strides = _fit(spacing, median, min_feature, max_depth)
    estimate = estimate_memory_gb(patch, strides, in_channels, num_classes, base_channels, max_channels, batch_size)
    while estimate > memory_gb:
        smaller = _shrunk(spacing, patch, median, min_feature, max_depth)
        if smaller is None:
            log.warning("memory budget %.2f GB is below the %.2f GB estimated for the smallest patch %s; "
                        "training may run out of memory", memory_gb, estimate, patch)
            break
        patch, strides = _fit(spacing, smaller, min_feature, max_depth)
        estimate = estimate_memory_gb(patch, strides, in_channels, num_classes, base_channels, max_channels,
                                      batch_size)
    if not strides:
        raise DataError(f"median case shape {median} at spacing {list(spacing)} is too small to pool even once "
                        f"(each axis needs at least {2 * min_feature} voxels for one level); use a finer "
                        "target spacing or a 2D model")
    return {"patch_size": patch, "strides": strides, "depth": len(strides), "estimated_memory_gb": round(estimate, 3)}


# ------------------------------------------------------------------ the plan


def _schemes(normalization: Any, in_channels: int, source: str) -> List[str]:
    """One normalisation scheme per channel from None ("zscore"), one name, or a list of names."""
    schemes = ["zscore"] * in_channels if normalization is None else (
        [normalization] * in_channels if isinstance(normalization, str) else list(normalization))
    if len(schemes) != in_channels:
        raise ConfigError(f"{source} lists {len(schemes)} schemes for {in_channels} channels; give one name "
                          f"for all or one per channel ({', '.join(SCHEMES)})")
    for scheme in schemes:
        if scheme not in SCHEMES:
            raise ConfigError(f"{source}: {scheme!r} is not one of {', '.join(SCHEMES)} (use \"ct\" for CT "
                              "images, \"zscore\" for MRI and the rest)")
    return schemes


def _positive_list(value: Any, kind: type, source: str) -> List[Any]:
    """``value`` as three positive numbers of ``kind`` (int or float), or a ConfigError naming ``source``."""
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and (kind is float or v == int(v))
        for v in value)
    if not ok:
        raise ConfigError(f"{source} {value!r} must be three positive {kind.__name__}s [z, y, x]")
    return [kind(v) for v in value]


def _override_strides(value: Any) -> List[List[int]]:
    """User strides: one integer or [sz, sy, sx] per level."""
    levels = value if isinstance(value, (list, tuple)) and value else None
    strides = []
    for entry in levels or [None]:
        values = [entry] * 3 if isinstance(entry, int) and not isinstance(entry, bool) else entry
        if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise ConfigError(f"strides {value!r}: give one entry per level, each an integer >= 1 or "
                              "[sz, sy, sx], e.g. [[1, 2, 2], [2, 2, 2]]")
        strides.append([int(v) for v in values])
    return strides


def _check_divisible(patch: List[int], strides: List[List[int]]) -> None:
    total = divisors(strides)
    if any(n % d for n, d in zip(patch, total)):
        fixed = [max(n // d, 1) * d for n, d in zip(patch, total)]
        raise ConfigError(f"patch_size {patch} is not divisible by the pooling of strides {strides} "
                          f"({total} per axis); use e.g. patch_size {fixed}")


def _apply_overrides(plan: Dict[str, Any], overrides: Dict[str, Any]) -> None:
    """Replace the planned patch size and strides by the user's (target spacing and normalisation are
    applied before topology planning)."""
    if "patch_size" in overrides:
        plan["patch_size"] = _positive_list(overrides["patch_size"], int, "patch_size")
        if "strides" not in overrides:
            plan["strides"] = pooling_strides(plan["target_spacing"], plan["patch_size"])
    if "strides" in overrides:
        plan["strides"] = _override_strides(overrides["strides"])
    plan["depth"] = len(plan["strides"])
    if not plan["strides"]:
        raise ConfigError(f"patch_size {plan['patch_size']} is too small to pool once; give a larger patch_size")
    _check_divisible(plan["patch_size"], plan["strides"])


def make_plan(dataset: Any, num_classes: int, in_channels: int, memory_gb: float = 2.0,
              overrides: Optional[Dict[str, Any]] = None, normalization: Any = None, mask_resampling: str = "nearest",
              batch_size: int = 2, base_channels: int = 32, max_channels: int = 320,
              fingerprint_data: Optional[Dict[str, Any]] = None, seed: int = 0,
              anisotropy_threshold: float = 3.0) -> Dict[str, Any]:
    """The plan of ``dataset`` as a JSON-able dict (see the module docstring).

    ``normalization``: None ("zscore" for every channel, nnU-Net's default
    for non-CT), one scheme for all channels, or one per channel.
    ``overrides`` (from YAML) replace planned values: any of
    :data:`OVERRIDES`. ``fingerprint_data`` skips reading the cases again.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ConfigError(f"plan overrides {unknown} are not known; use {', '.join(OVERRIDES)}")
    if mask_resampling not in MASK_MODES:
        raise ConfigError(f"mask resampling {mask_resampling!r} is not one of {', '.join(MASK_MODES)}")
    fp = fingerprint_data if fingerprint_data is not None else fingerprint(dataset, seed=seed)
    if len(fp["intensity"]) != in_channels:
        raise ConfigError(f"in_channels is {in_channels} but the cases have {len(fp['intensity'])} channels; "
                          "set data.in_channels to match the data")
    if "normalization" in overrides:
        normalization = overrides["normalization"]
    schemes = _schemes(normalization, in_channels, "normalization")
    spacing = (_positive_list(overrides["target_spacing"], float, "target_spacing") if "target_spacing" in overrides
               else target_spacing(fp["spacings"], fp["shapes_after_crop"], anisotropy_threshold))
    resampled = [new_shape(shape, s, spacing) for shape, s in zip(fp["shapes_after_crop"], fp["spacings"])]
    median = [int(round(n)) for n in np.median(np.asarray(resampled, dtype=np.float64), axis=0)]
    topology = plan_topology(spacing, median, memory_gb, in_channels, num_classes, base_channels, max_channels,
                             batch_size)
    spacings, cropped = np.asarray(fp["spacings"], dtype=np.float64), np.asarray(fp["shapes_after_crop"])
    plan: Dict[str, Any] = {
        "version": PLAN_VERSION, "num_cases": fp["num_cases"], "num_classes": int(num_classes),
        "in_channels": int(in_channels), "target_spacing": spacing, "anisotropic_axis": anisotropic_axis(spacing),
        "median_shape": median, **topology, "memory_gb": float(memory_gb), "batch_size": int(batch_size),
        "normalization": schemes, "intensity": fp["intensity"],
        "use_nonzero_mask": fp["median_relative_size_after_crop"] < NONZERO_MASK_BELOW, "crop": "nonzero",
        "resampling": {"image_order": 3, "image_order_z": 0, "mask": mask_resampling},
        "spacings": {"median": np.median(spacings, 0).tolist(), "min": spacings.min(0).tolist(),
                     "max": spacings.max(0).tolist()},
        "shapes": {"median_after_crop": np.median(cropped, 0).tolist(), "min_after_crop": cropped.min(0).tolist(),
                   "max_after_crop": cropped.max(0).tolist()},
        "overrides": sorted(overrides),
    }
    if "patch_size" in overrides or "strides" in overrides:
        _apply_overrides(plan, overrides)
        plan["estimated_memory_gb"] = round(estimate_memory_gb(plan["patch_size"], plan["strides"], in_channels,
                                                               num_classes, base_channels, max_channels,
                                                               batch_size), 3)
    return plan


def _rounded(value: Any) -> Any:
    """``value`` with floats rounded to 6 decimals (so that float noise does not change a key)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def plan_key(plan: Dict[str, Any]) -> str:
    """A short stable hash of what changes the preprocessed data (not the patch size or strides)."""
    schemes = plan["normalization"]
    ct_stats = [stats if scheme == "ct" else None for scheme, stats in zip(schemes, plan.get("intensity") or [])]
    parts = {"version": plan["version"], "target_spacing": plan["target_spacing"], "normalization": schemes,
             "ct_intensity": ct_stats, "use_nonzero_mask": bool(plan.get("use_nonzero_mask", False)),
             "resampling": plan["resampling"], "crop": plan.get("crop", "nonzero"),
             "num_classes": plan.get("num_classes")}
    text = json.dumps(_rounded(parts), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _numbers(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def format_plan(plan: Dict[str, Any]) -> str:
    """A readable multi-line summary of ``plan`` for the log."""
    axis = plan.get("anisotropic_axis")
    masked = " (z-score inside the non-zero region)" if plan.get("use_nonzero_mask") else ""
    resampling = plan["resampling"]
    lines = [
        f"volume plan {plan_key(plan)} (version {plan['version']}, {plan.get('num_cases', '?')} cases)",
        f"  target spacing [z, y, x]: {_numbers(plan['target_spacing'])}"
        + (f" (anisotropic axis {AXIS_NAMES[axis]})" if axis is not None else ""),
        f"  median spacing: {_numbers(plan['spacings']['median'])}" if "spacings" in plan else None,
        f"  median shape after resampling: {_numbers(plan['median_shape'])}",
        f"  patch size: {_numbers(plan['patch_size'])}",
        f"  strides ({plan['depth']} levels): {' '.join(str(list(s)) for s in plan['strides'])}",
        f"  normalization: {', '.join(plan['normalization'])}{masked}",
        f"  resampling: image order {resampling['image_order']} (order {resampling['image_order_z']} along a "
        f"coarse axis), mask {resampling['mask']}",
        f"  estimated memory: {plan['estimated_memory_gb']:g} GB of {plan['memory_gb']:g} GB "
        f"(batch {plan['batch_size']})" if "estimated_memory_gb" in plan else None,
        f"  overridden: {', '.join(plan['overrides'])}" if plan.get("overrides") else None,
    ]
    return "\n".join(line for line in lines if line is not None)
