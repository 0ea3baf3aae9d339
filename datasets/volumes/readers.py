"""Readers of one volume case: ``(image float32 [C, Z, Y, X], mask int64 [Z, Y, X] or None, properties)``.

Three formats, one result:

* :func:`read_npz_case` — ``<case>.npz`` with ``data`` and ``seg``; properties
  from ``<case>.json`` or ``<case>.pkl`` (through the restricted unpickler);
* :func:`read_nifti` — a NIfTI file (the Medical Segmentation Decathlon),
  nibabel's ``(x, y, z[, c])`` order turned into ``[C, Z, Y, X]``;
  :func:`write_nifti` writes a prediction back with the case's affine and header;
* :func:`read_tiff_stack` — a multi-page TIFF, one page per z slice.

Every properties dict holds ``"case"`` (the case name), ``"format"``
(``"npz"``, ``"nifti"`` or ``"tiff"``), ``"spacing"`` (a tuple of three
positive floats, z, y, x, in the file's unit, mm for NIfTI) and ``"shape"``
(``(Z, Y, X)``); NIfTI adds ``"affine"`` (4x4 float64) and ``"header"``
(a ``nibabel.Nifti1Header``); npz keeps every other key of its json/pkl.
Intensities are returned as stored (normalisation belongs to the volume plan).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from datasets.volumes.safe_pickle import load_restricted
from utils.constants import IGNORE_INDEX
from utils.errors import DataError

Case = Tuple[np.ndarray, Optional[np.ndarray], Dict[str, Any]]
NIFTI_SUFFIX = ".nii.gz"


def case_name(path: Path) -> str:
    """``x`` for ``x.npz``, ``x.tif`` and ``x.nii.gz``."""
    name = Path(path).name
    for suffix in (NIFTI_SUFFIX, ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


# ------------------------------------------------------------------ checks


def check_spacing(spacing: Any, source: str) -> Tuple[float, float, float]:
    """``spacing`` as three positive floats (z, y, x), or a DataError naming ``source``."""
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise DataError(f"{source}: spacing {spacing!r} is not three positive numbers [z, y, x]")
    return values  # type: ignore[return-value]


def as_image(array: np.ndarray, source: str, channels_first: bool = True) -> np.ndarray:
    """A ``[Z, Y, X]`` or ``[C, Z, Y, X]`` array as float32 ``[C, Z, Y, X]``; NaN/Inf voxels raise."""
    if array.ndim == 3:
        array = array[None]
    elif array.ndim != 4:
        raise DataError(f"{source}: image has shape {tuple(array.shape)}; expected [Z, Y, X] or [C, Z, Y, X]")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise DataError(f"{source}: image has dtype {array.dtype}; store real numbers")
    image = np.ascontiguousarray(array, dtype=np.float32)
    bad = ~np.isfinite(image)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{source}: image has {int(bad.sum())} NaN or Inf voxels (first at [c, z, y, x] = "
                        f"{list(where)}); fill them (e.g. with the background value) before training")
    return image


def as_mask(array: np.ndarray, source: str, num_classes: int) -> np.ndarray:
    """A ``[Z, Y, X]`` label array as int64; other ranks, fractions and values outside the classes raise."""
    if array.ndim != 3:
        raise DataError(f"{source}: label has shape {tuple(array.shape)} ({array.ndim}D); expected [Z, Y, X] "
                        "(3D); save one class index per voxel, e.g. seg[0] for a leading axis of 1")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
            or array.dtype == bool):
        raise DataError(f"{source}: label has dtype {array.dtype}; store integer class indices")
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise DataError(f"{source}: label holds non-integer values; store integer class indices")
    mask = np.ascontiguousarray(array, dtype=np.int64)
    values = np.unique(mask)
    wrong = values[((values < 0) | (values >= num_classes)) & (values != IGNORE_INDEX)]
    if wrong.size:
        raise DataError(f"{source}: label values {wrong[:10].tolist()} are outside the classes 0..{num_classes - 1} "
                        f"({IGNORE_INDEX} = ignore); check num_classes or remap the labels")
    return mask


def check_same_shape(image: np.ndarray, mask: Optional[np.ndarray], source: str) -> None:
    """Raise when the label's [Z, Y, X] differs from the image's."""
    if mask is not None and tuple(mask.shape) != tuple(image.shape[1:]):
        raise DataError(f"{source}: image shape [Z, Y, X] = {list(image.shape[1:])} differs from label shape "
                        f"{list(mask.shape)}; image and label must cover the same voxels")


def check_channels(image: np.ndarray, in_channels: int, source: str) -> None:
    if image.shape[0] != in_channels:
        raise DataError(f"{source}: image has {image.shape[0]} channels but data.in_channels is {in_channels}; "
                        "set data.in_channels to match the data")


# ------------------------------------------------------------------ npz


def read_npz_arrays(path: Path) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """``data`` and ``seg`` (None when absent) of ``path``; never unpickles object arrays."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "data" not in archive.files:
                raise DataError(f"{path}: holds {sorted(archive.files)} but no 'data' array; "
                                "save the image as np.savez(path, data=image, seg=label)")
            data = archive["data"]
            seg = archive["seg"] if "seg" in archive.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz ({exc}); write the case again") from exc
    return data, seg


def npz_has_seg(path: Path) -> bool:
    """Whether ``path`` holds a ``seg`` array (reads only the zip directory)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return "seg" in archive.files
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz ({exc}); write the case again") from exc


def read_npz_properties(path: Path) -> Dict[str, Any]:
    """Properties of the case ``path`` (``x.npz``) from ``x.json``, else ``x.pkl``; neither raises."""
    json_path, pkl_path = path.with_suffix(".json"), path.with_suffix(".pkl")
    if json_path.is_file():
        try:
            properties = json.loads(json_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{json_path}: not valid JSON ({exc})") from exc
        source = json_path
    elif pkl_path.is_file():
        properties, source = load_restricted(pkl_path), pkl_path
    else:
        raise DataError(f"{path}: spacing is missing: no {json_path.name} or {pkl_path.name} next to it; "
                        f'write {json_path.name} holding {{"spacing": [z, y, x]}}')
    if not isinstance(properties, dict) or "spacing" not in properties:
        raise DataError(f'{source}: spacing is missing; it must hold a dict with "spacing": [z, y, x]')
    properties = dict(properties)
    properties["spacing"] = check_spacing(properties["spacing"], str(source))
    return properties


def read_npz_case(path: Path, num_classes: int) -> Case:
    """The case ``<case>.npz`` with its properties (see the module docstring)."""
    path = Path(path)
    data, seg = read_npz_arrays(path)
    properties = read_npz_properties(path)
    image = as_image(data, str(path))
    mask = None if seg is None else as_mask(seg, str(path), num_classes)
    check_same_shape(image, mask, str(path))
    properties.update(case=case_name(path), format="npz", shape=tuple(image.shape[1:]))
    return image, mask, properties


# ------------------------------------------------------------------ NIfTI


def _load_nifti(path: Path) -> Any:
    import nibabel as nib  # imported here: only volume users need nibabel

    if not path.is_file():
        raise DataError(f"{path} does not exist; check the paths in dataset.json")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for a bad file; all mean "unreadable"
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc


def nifti_to_zyx(array: np.ndarray) -> np.ndarray:
    """nibabel's ``(x, y, z)`` -> ``(z, y, x)`` and ``(x, y, z, c)`` -> ``(c, z, y, x)``."""
    return array.transpose(tuple(reversed(range(array.ndim))))


def read_nifti(path: Path, is_label: bool = False) -> Tuple[np.ndarray, Dict[str, Any]]:
    """The array of ``path`` in ``(z, y, x)`` / ``(c, z, y, x)`` order and its properties.

    A label is read without nibabel's intensity scaling (its stored values);
    an image through ``get_fdata`` (scaled, float). Spacing comes from the
    header zooms, reordered to (z, y, x).
    """
    path = Path(path)
    nifti = _load_nifti(path)
    array = np.asarray(nifti.dataobj) if is_label else nifti.get_fdata(dtype=np.float32)
    if array.ndim > 4:
        raise DataError(f"{path}: has {array.ndim} axes {array.shape}; expected (x, y, z) or (x, y, z, c)")
    zooms = nifti.header.get_zooms()[:3]
    properties = {
        "case": case_name(path), "format": "nifti",
        "spacing": check_spacing(tuple(reversed(zooms)), f"{path} (header zooms)"),
        "affine": np.array(nifti.affine, dtype=np.float64), "header": nifti.header.copy(),
    }
    return nifti_to_zyx(array), properties


def read_nifti_case(image_path: Path, label_path: Optional[Path], num_classes: int) -> Case:
    """An MSD case: image (3D or 4D) and label (3D) NIfTI files."""
    array, properties = read_nifti(image_path)
    image = as_image(array, str(image_path))
    mask = None
    if label_path is not None:
        mask = as_mask(read_nifti(label_path, is_label=True)[0], str(label_path), num_classes)
        check_same_shape(image, mask, f"{image_path} and {label_path}")
    properties["shape"] = tuple(image.shape[1:])
    return image, mask, properties


def write_nifti(path: Path, volume: np.ndarray, properties: Dict[str, Any]) -> None:
    """Write a ``[Z, Y, X]`` (or ``[C, Z, Y, X]``) array as NIfTI with the case's affine and header."""
    import nibabel as nib

    array = nifti_to_zyx(np.asarray(volume))  # the reversal is its own inverse
    header = properties["header"].copy()
    header.set_data_dtype(array.dtype)
    nib.save(nib.Nifti1Image(array, properties["affine"], header), str(path))


# ------------------------------------------------------------------ TIFF


def read_tiff_stack(path: Path) -> np.ndarray:
    """The pages of a multi-page TIFF stacked on axis 0: ``[Z, Y, X]`` (grey) or ``[Z, Y, X, C]`` (colour)."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        with Image.open(path) as stack:
            pages = [np.array(page) for page in ImageSequence.Iterator(stack)]
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: not a readable TIFF ({exc})") from exc
    shapes = sorted({page.shape for page in pages})
    if len(shapes) != 1:
        raise DataError(f"{path}: its pages differ in size {shapes}; every z slice must have one size")
    return np.stack(pages)


def read_tiff_case(image_path: Path, mask_path: Optional[Path], num_classes: int,
                   spacing: Optional[Sequence[float]]) -> Case:
    """A TIFF case: ``images/<case>.tif`` and ``masks/<case>.tif``; ``spacing`` comes from the caller."""
    if spacing is None:
        raise DataError(f"{image_path}: spacing is missing: a TIFF stack does not store it; set "
                        "data.spacing: [z, y, x] in the config")
    stack = read_tiff_stack(image_path)
    image = as_image(stack if stack.ndim == 3 else np.moveaxis(stack, -1, 0), str(image_path))
    mask = None if mask_path is None else as_mask(read_tiff_stack(mask_path), str(mask_path), num_classes)
    check_same_shape(image, mask, f"{image_path} and {mask_path}")
    properties = {"case": case_name(image_path), "format": "tiff",
                  "spacing": check_spacing(spacing, "data.spacing"), "shape": tuple(image.shape[1:])}
    return image, mask, properties


def write_tiff_stack(path: Path, volume: np.ndarray) -> None:
    """Write a ``[Z, Y, X]`` array as a multi-page TIFF, one page per z slice."""
    from PIL import Image

    pages = [Image.fromarray(np.ascontiguousarray(page)) for page in np.asarray(volume)]
    pages[0].save(str(path), save_all=True, append_images=pages[1:])
