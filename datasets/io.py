"""Reading images and masks from disk into tensors.

``read_image`` returns a float32 ``(C, H, W)`` tensor, ``read_mask`` an int64
``(H, W)`` tensor of class indices that has been checked against
``num_classes`` (values outside ``0..num_classes-1`` other than
``IGNORE_INDEX`` raise with the file name and a suggested fix).

How raw mask pixels become classes is set by a *mask mapping*, the value of
``data.mask_mapping`` (see utils/mask_mapping.py). ``load_array``,
``drop_alpha`` and ``decode_mask`` are shared with the data check, which
must decode files exactly as training does.

:func:`count_mask` counts the raw values and the classes of one mask file;
the data check (datasets/check.py) and the class statistics behind computed
class weights (utils/class_stats.py) both count with it. They read a dataset
through the :class:`FileDataset` protocol only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from utils.constants import IGNORE_INDEX, IMAGE_SUFFIXES
from utils.errors import DataError
from utils.mask_mapping import (IdentityMapping, MaskMapping, format_colour_counts, format_values, pack_rgb,
                                parse_mask_mapping)

INTENSITY_MODES = ("auto", "percentile", "none")

#: Percentiles an image is clipped to before scaling to [0, 1] (nnU-Net style).
PERCENTILE_RANGE = (0.5, 99.5)

#: ITU-R 601 luminance weights for R, G, B.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)

PathLike = Union[str, Path]

#: An image file and its mask file (None for an unlabelled image).
Sample = Tuple[Path, Optional[Path]]


class FileDataset(Protocol):
    """What the data check and the class statistics read of a dataset whose samples are files.

    FolderDataset and the datasets built on it (isic2018, cityscapes,
    synthetic) provide it; a dataset without ``samples`` is not checked.

    Attributes:
        root: the dataset folder (named in messages and cache keys).
        split: the split the samples belong to.
        num_classes: classes, background included.
        mask_mapping: how mask pixels become classes, as the dataset decodes them.
        samples: every (image file, mask file or None) of the split, in order.
    """

    root: Path
    split: str
    num_classes: int
    mask_mapping: MaskMapping
    samples: Sequence[Sample]


# --------------------------------------------------------------------- files


def list_images(folder: PathLike) -> List[Path]:
    """Image files in ``folder`` (suffix in ``IMAGE_SUFFIXES``, any case), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_array(path: PathLike, mode: str) -> np.ndarray:
    """Decode ``path`` with PIL into an ``(H, W)`` or ``(H, W, C)`` array.

    ``mode`` "index" keeps palette indices and other values as stored,
    "colour" turns palette/CMYK/YCbCr images into RGB (RGBA when the palette
    has transparency) and 1-bit into 8-bit grey, "grey" turns every 8-bit
    image into luminance. 16-bit, 32-bit and float images are never converted.
    Unreadable and missing files raise DataError naming the file.
    """
    try:
        with Image.open(path) as pil:
            pil.load()
            return np.asarray(_convert(pil, mode))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (moved or deleted after the dataset was listed?)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; is it a valid image?") from exc


def _convert(pil: Image.Image, mode: str) -> Image.Image:
    """Apply the conversion ``mode`` of ``load_array`` to an opened image."""
    if pil.mode.startswith("I") or pil.mode == "F":
        return pil
    if mode == "grey":
        return pil.convert("L")
    if mode == "index" and pil.mode in ("P", "1"):
        return pil
    if pil.mode == "1":
        return pil.convert("L")
    if pil.mode in ("L", "LA", "RGB", "RGBA"):
        return pil
    return pil.convert("RGBA" if "transparency" in pil.info else "RGB")


def drop_alpha(array: np.ndarray) -> np.ndarray:
    """Remove the alpha channel of an ``(H, W, 2)`` grey+alpha or ``(H, W, 4)`` RGBA array."""
    if array.ndim == 3 and array.shape[2] in (2, 4):
        return array[..., :-1]
    return array


# -------------------------------------------------------------------- images


def read_image(path: PathLike, intensity: str = "auto", in_channels: int = 3) -> torch.Tensor:
    """Read an image file into a float32 ``(C, H, W)`` tensor.

    Args:
        path: an 8-bit RGB/RGBA/grey/palette image, a 16-bit grey PNG or TIFF,
            or a 32-bit integer/float TIFF.
        intensity: "auto" divides 8-bit images by 255 and clips other bit
            depths to their own 0.5/99.5 percentiles, scaled to [0, 1];
            "percentile" does the percentile scaling for every image;
            "none" keeps the raw values.
        in_channels: 3 repeats grey images to RGB; 1 converts RGB to luminance
            (ITU-R 601); any other value requires exactly that many channels.
            An alpha channel is dropped unless ``in_channels`` is 4.
    """
    if intensity not in INTENSITY_MODES:
        raise DataError(f"intensity must be one of {', '.join(INTENSITY_MODES)}, got {intensity!r}")
    array = load_array(path, mode="colour")
    check_finite(array, path)
    eight_bit = array.dtype == np.uint8
    if in_channels != 4:
        array = drop_alpha(array)
    array = array.astype(np.float32).reshape(array.shape[:2] + (-1,))
    if in_channels == 1 and array.shape[2] == 3:
        array = (array.astype(np.float64) @ LUMA_WEIGHTS).astype(np.float32)[..., None]
    if intensity == "percentile" or (intensity == "auto" and not eight_bit):
        array = percentile_scale(array)
    elif intensity == "auto":
        array = array / 255.0
    array = match_channels(array, in_channels, path)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))


def non_finite_pixels(array: np.ndarray) -> int:
    """How many NaN or infinite values a float image holds (integer images cannot hold any)."""
    return 0 if array.dtype.kind != "f" else int(array.size - np.count_nonzero(np.isfinite(array)))


def check_finite(array: np.ndarray, path: PathLike) -> None:
    """Raise DataError when a float image holds NaN or infinite pixels."""
    bad = non_finite_pixels(array)
    if bad:
        raise DataError(f"{path}: {bad} pixel(s) are NaN or infinite; they would make the loss NaN. "
                        "Replace them (e.g. with 0 or the image's mean) or remove the image")


def match_channels(array: np.ndarray, in_channels: int, path: PathLike) -> np.ndarray:
    """Return an ``(H, W, C)`` array with ``in_channels`` channels, repeating grey to 3 if asked."""
    channels = array.shape[2]
    if channels == in_channels:
        return array
    if in_channels == 3 and channels == 1:
        return np.repeat(array, 3, axis=2)
    raise DataError(
        f"{path}: has {channels} channel(s) but in_channels={in_channels}; "
        f"set in_channels to {channels} (or 1 or 3 for grey/RGB images)"
    )


def percentile_scale(array: np.ndarray) -> np.ndarray:
    """Clip ``array`` to its own 0.5/99.5 percentiles and scale that range to [0, 1].

    A constant image (both percentiles equal) gives zeros.
    """
    low, high = np.percentile(array, PERCENTILE_RANGE)
    if high <= low:
        return np.zeros_like(array, dtype=np.float32)
    clipped = np.clip(array.astype(np.float64), low, high)
    return ((clipped - low) / (high - low)).astype(np.float32)


# --------------------------------------------------------------------- masks


def read_mask(path: PathLike, mask_mapping: Any, num_classes: int) -> torch.Tensor:
    """Read a mask file into an int64 ``(H, W)`` tensor of class indices.

    Args:
        path: the mask image.
        mask_mapping: a ``data.mask_mapping`` value or a ``MaskMapping``.
        num_classes: every class must lie in ``0..num_classes-1`` or be
            ``IGNORE_INDEX``; otherwise a ValueError names the file, the values
            and a likely fix.
    """
    mapping = parse_mask_mapping(mask_mapping)
    pixels = decode_mask(path, mapping)
    try:
        classes = mapping(pixels)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from exc
    _check_classes(path, pixels, classes, mapping, num_classes)
    return torch.from_numpy(np.ascontiguousarray(classes))


def decode_mask(path: PathLike, mapping: MaskMapping) -> np.ndarray:
    """Read the pixels ``mapping`` expects: ``(H, W, 3)`` for "colour", ``(H, W)`` otherwise."""
    if mapping.decode == "colour":
        pixels = drop_alpha(load_array(path, mode="colour"))
        if pixels.dtype != np.uint8:
            raise DataError(
                f"{path}: is a {pixels.dtype} grey mask but data.mask_mapping is a colour mapping; "
                "map grey values with data.mask_mapping: {value: class}"
            )
        return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels
    pixels = drop_alpha(load_array(path, mode=mapping.decode))
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 3:
        if not (pixels == pixels[..., :1]).all():
            message, fix = colour_mask_problem(pixels, mapping)
            raise DataError(f"{path}: {message}; {fix}")
        pixels = pixels[..., 0]
    if pixels.dtype.kind == "f" and not np.array_equal(pixels, np.round(pixels)):
        raise DataError(f"{path}: holds non-integer values; masks must hold integer class values")
    return pixels


def colour_mask_problem(pixels: np.ndarray, mapping: MaskMapping) -> Tuple[str, str]:
    """(what is wrong, the fix) for an ``(H, W, 3)`` colour mask read with a one-value-per-pixel mapping."""
    colours, counts = np.unique(pack_rgb(pixels), return_counts=True)
    listed = format_colour_counts([(int(c), int(n)) for c, n in zip(colours, counts)])
    top = sorted(zip(counts, colours), reverse=True)[:3]
    example = ", ".join(f'"{c >> 16},{(c >> 8) & 255},{c & 255}": {i}' for i, (_, c) in enumerate(top))
    return (
        f"is an RGB colour mask (colours {listed}) but {mapping!r} needs one value per pixel",
        f"map each colour to a class, e.g. data.mask_mapping: {{{example}}}",
    )


def _check_classes(
    path: PathLike, pixels: np.ndarray, classes: np.ndarray, mapping: MaskMapping, num_classes: int
) -> None:
    """Raise if ``classes`` holds values outside ``0..num_classes-1`` other than ``IGNORE_INDEX``."""
    problem = class_range_problem(pixels, classes, mapping, num_classes)
    if problem is not None:
        message, fix = problem
        raise DataError(f"{path}: {message}. {fix}")


def class_range_problem(
    pixels: np.ndarray, classes: np.ndarray, mapping: MaskMapping, num_classes: int
) -> Optional[Tuple[str, str]]:
    """(what is wrong, the fix) when ``classes`` hold values outside ``0..num_classes-1``
    other than ``IGNORE_INDEX``; None when every class fits.

    ``pixels`` are the raw values the classes were mapped from (read only to
    suggest a fix). With the identity mapping and two classes, a mask holding
    255 is also a problem: it is far more likely a 0/255 binary mask than a
    mask whose foreground is all "ignore".
    """
    present = _distinct_values(classes)
    bad = [v for v in present if not (0 <= v < num_classes or v == IGNORE_INDEX)]
    if bad:
        raw = [int(v) for v in np.unique(pixels)]
        return (
            f"holds values {format_values(bad)} but data.num_classes={num_classes} allows "
            f"0..{num_classes - 1} (and {IGNORE_INDEX} = ignore)",
            _range_hint(raw, mapping, num_classes),
        )
    if isinstance(mapping, IdentityMapping) and num_classes == 2 and IGNORE_INDEX in present:
        return (
            f"holds values {format_values(present)} but data.num_classes=2 allows 0..1 "
            f"(and {IGNORE_INDEX} = ignore, so this mask has no foreground)",
            f"If these are 0/255 binary masks set data.mask_mapping: binary; if {IGNORE_INDEX} really marks "
            f"unlabelled pixels say so with data.mask_mapping: {{0: 0, 1: 1, {IGNORE_INDEX}: {IGNORE_INDEX}}}",
        )
    return None


def _distinct_values(array: np.ndarray) -> List[int]:
    """The sorted distinct values of an integer array.

    Small non-negative values (class indices) are found with ``bincount``,
    several times faster than ``np.unique``'s sort on a full-size mask.
    """
    flat = array.reshape(-1)
    if flat.size and flat.dtype.kind in "iu" and flat.min() >= 0 and flat.max() < 65536:
        return np.flatnonzero(np.bincount(flat)).tolist()
    return [int(v) for v in np.unique(flat)]


def _looks_binary(values: List[int]) -> bool:
    """0/255 masks, possibly with JPEG noise: every value near 0 or near 255, some above 127."""
    return any(v > 127 for v in values) and all(0 <= v < 64 or 192 <= v <= 255 for v in values)


def _range_hint(values: List[int], mapping: MaskMapping, num_classes: int) -> str:
    """A likely fix for a mask whose classes fall outside ``0..num_classes-1``."""
    if not isinstance(mapping, IdentityMapping):
        return f"Check that data.mask_mapping {mapping!r} maps to classes below data.num_classes."
    if _looks_binary(values):
        return "If these are 0/255 binary masks set data.mask_mapping: binary"
    labels = [v for v in values if v not in (0, IGNORE_INDEX)]
    if len(labels) > max(num_classes, 8):
        return (
            f"{len(labels)} distinct labels look like instance labels: set data.mask_mapping: nonzero "
            f"for object-vs-background, or data.num_classes: {max(values) + 1} if each value is a class"
        )
    return (
        f"Increase data.num_classes to {max(values) + 1} or map the values with "
        "data.mask_mapping: {value: class}"
    )


# ------------------------------------------------------------------ counting


class MaskProblem(NamedTuple):
    """Why a mask's pixels do not become classes: a short kind, what is wrong, and the fix ("" when
    ``message`` already says it)."""

    kind: str
    message: str
    fix: str


@dataclass
class MaskCounts:
    """The raw values and the classes of one mask file, as :func:`count_mask` found them.

    Attributes:
        size: (width, height) of the mask.
        values: the distinct raw values ``(K,)``, or colours ``(K, 3)`` of an RGB mask.
        value_pixels: ``(K,)`` int64, pixels of each raw value.
        class_pixels: ``(num_classes,)`` int64, pixels of each class after the mapping
            (all zero when ``problem`` is set).
        ignore_pixels: pixels mapped to ``IGNORE_INDEX``.
        problem: None, or why the values do not map to the classes.
    """

    size: Tuple[int, int]
    values: np.ndarray
    value_pixels: np.ndarray
    class_pixels: np.ndarray
    ignore_pixels: int = 0
    problem: Optional[MaskProblem] = field(default=None)

    def raise_problem(self, path: PathLike) -> None:
        """Raise DataError naming ``path``, what is wrong and the fix, when there is a problem."""
        if self.problem is not None:
            fix = f"; {self.problem.fix}" if self.problem.fix else ""
            raise DataError(f"{path}: {self.problem.message}{fix}")


def count_mask(path: PathLike, mapping: MaskMapping, num_classes: int) -> MaskCounts:
    """Count the raw values of the mask file ``path`` and, mapped by ``mapping``, its classes.

    Values that do not become classes in ``0..num_classes-1`` (or
    ``IGNORE_INDEX``) are not raised but returned as ``problem``, with the
    fix training's error would give; so is an RGB colour mask under a
    one-value-per-pixel mapping (its colours are counted). A file that
    cannot be decoded raises DataError.
    """
    pixels = _decode_counted(path, mapping)
    values, value_pixels = distinct_pixels(pixels)
    counts = MaskCounts((pixels.shape[1], pixels.shape[0]), values, value_pixels,
                        np.zeros(num_classes, dtype=np.int64))
    if values.ndim == 2 and mapping.decode != "colour":
        counts.problem = MaskProblem("RGB colour mask", *colour_mask_problem(pixels, mapping))
        return counts
    try:
        # Mappings are per-pixel lookups: map each distinct value once, as a (K, 1) "image".
        classes = np.asarray(mapping(values.reshape(len(values), 1, *values.shape[1:]))).reshape(-1)
    except ValueError as exc:
        counts.problem = MaskProblem("unmapped mask values", str(exc), "")
        return counts
    out_of_range = class_range_problem(values, classes, mapping, num_classes)
    if out_of_range is not None:
        counts.problem = MaskProblem("mask values outside the classes", *out_of_range)
        return counts
    labelled = classes != IGNORE_INDEX
    np.add.at(counts.class_pixels, classes[labelled], value_pixels[labelled])
    counts.ignore_pixels = int(value_pixels[~labelled].sum())
    return counts


def _decode_counted(path: PathLike, mapping: MaskMapping) -> np.ndarray:
    """The mask's pixels as training decodes them: ``(H, W)`` values, or ``(H, W, 3)`` colours.

    Unlike :func:`decode_mask`, an RGB colour mask under a one-value-per-pixel
    mapping comes back as its colours (to be counted and reported) instead of
    raising.
    """
    try:
        return decode_mask(path, mapping)
    except ValueError:
        if mapping.decode == "colour":
            raise
        pixels = drop_alpha(load_array(path, mode="colour"))
        if pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8:
            return pixels
        raise


def distinct_pixels(pixels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Distinct values ``(K,)`` of an ``(H, W)`` mask, or colours ``(K, 3)`` of an ``(H, W, 3)`` one, sorted,
    and their pixel counts ``(K,)`` int64."""
    if pixels.ndim == 3:
        packed, counts = np.unique(pack_rgb(pixels), return_counts=True)
        colours = np.stack([packed >> 16, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)
        return colours, counts.astype(np.int64)
    flat = pixels.reshape(-1)
    if flat.dtype in (np.uint8, np.uint16):  # bincount is several times faster than unique here
        histogram = np.bincount(flat)
        values = np.flatnonzero(histogram)
        return values.astype(flat.dtype), histogram[values].astype(np.int64)
    values, counts = np.unique(flat, return_counts=True)
    return values, counts.astype(np.int64)
