"""ISIC 2018 Task 1 (skin lesion boundary segmentation) in the official folder layout.

Download the Task 1 zips from https://challenge.isic-archive.com/data/#2018
and unpack each into one folder, ``data.root``, as published (nothing
renamed)::

    root/ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg ...          (2594 images)
    root/ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png ...
    root/ISIC2018_Task1-2_Validation_Input/     + ISIC2018_Task1_Validation_GroundTruth/  (100)
    root/ISIC2018_Task1-2_Test_Input/           + ISIC2018_Task1_Test_GroundTruth/        (1000)

Image ``X.jpg`` is paired with mask ``X_segmentation.png`` (0 = background,
255 = lesion); the ``ATTRIBUTION.txt`` and ``LICENSE.txt`` files of every
folder are skipped. A test split without its GroundTruth folder has no masks
(prediction only).

The images are large JPEGs (about 1000x750 to 6000x4000 pixels), so decoding them at
full size is what limits training speed. Two options make it cheap; both
change only :meth:`ISIC2018Dataset.load_sample` (training and validation),
never :meth:`~datasets.folder.FolderDataset.read_sample`, which test.py uses
to predict and score at the original size:

* ``decode_size``: decode each JPEG with Pillow's draft mode at the smallest
  DCT scale (1/2, 1/4 or 1/8) whose shorter side is still >= decode_size; the
  mask is resized to the decoded size with nearest-neighbour lookups.
* ``cache_dir`` + ``cache_size``: on its first load, a sample is written
  resized (shorter side ``cache_size``) as two PNGs under ``cache_dir``; later
  loads, in any epoch, process or run, read those small files.
"""
import glob
import hashlib
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np
import torch
from PIL import Image

from datasets.folder import FolderDataset, Sample
from datasets.io import LUMA_WEIGHTS, match_channels, list_images
from utils.constants import IGNORE_INDEX, IMAGE_SUFFIXES
from utils.fileio import atomic_open
from utils.registry import DATASETS
from utils.errors import DataError

logger = logging.getLogger(__name__)

NUM_CLASSES = 2
CLASS_NAMES = ["background", "lesion"]

#: Overlay colour of the lesion class: cyan stands out on skin and on brown lesions.
LESION_COLOUR = (0, 200, 255)

#: The official (input folder, ground-truth folder) of each split.
SPLIT_FOLDERS = {
    "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
}

#: Mask file of image ``X.jpg``: ``X_segmentation.png``.
MASK_SUFFIX = "_segmentation"

#: JPEG DCT scale denominators Pillow's draft mode can decode at, largest first.
DCT_SCALES = (8, 4, 2)

#: Smallest decode_size / cache_size accepted.
MIN_SIZE = 16

DOWNLOAD_HELP = (
    "download the ISIC 2018 Task 1 zips from https://challenge.isic-archive.com/data/#2018 and unpack "
    "each into data.root as published, without renaming folders"
)


def _palette() -> np.ndarray:
    """(256, 3) uint8: background black, lesion cyan, ignore (255) white."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[1] = LESION_COLOUR
    palette[IGNORE_INDEX] = (255, 255, 255)
    return palette


@DATASETS.register("isic2018")
class ISIC2018Dataset(FolderDataset):
    """ISIC 2018 Task 1 dermoscopy images with 0/255 lesion masks, read from the official folders.

    Args:
        root: folder the official zips were unpacked into.
        split: "train" (Training), "val" (Validation), "test" (Test) or "all"
            (every split whose input folder is present).
        num_classes: must be 2 (background, lesion).
        transforms: callable ``(Image, Mask) -> (Image, Mask)``.
        in_channels: channels of the returned image (3: RGB, 1: luminance).
        seed: unused (the splits are fixed folders); passed by the framework.
        decode_size: when set, training/validation decode each JPEG at the
            smallest DCT scale (1/2, 1/4, 1/8) whose shorter side is still
            >= decode_size, and resize its mask to match (nearest). At least 16.
        cache_dir: when set, training/validation read samples from a resized
            copy kept in this folder, written on first use (a relative path
            resolves against the current directory). A fast local disk is
            best, e.g. ``<root>/.cache_512``. Takes the place of decode_size.
        cache_size: shorter side of the cached copies in pixels (images
            smaller than that are kept at their size). At least 16.
    """

    class_names = CLASS_NAMES
    palette = _palette()

    def __init__(
        self,
        root: str,
        split: str,
        num_classes: int = NUM_CLASSES,
        transforms: Any = None,
        in_channels: int = 3,
        seed: int = 0,
        decode_size: Optional[int] = None,
        cache_dir: Optional[str] = None,
        cache_size: int = 512,
    ) -> None:
        if num_classes != NUM_CLASSES:
            raise DataError(
                f"isic2018: num_classes must be {NUM_CLASSES} (background, lesion), got {num_classes}; set "
                f"data.num_classes: {NUM_CLASSES} and model.out_channels: 1 (sigmoid) or 2 (softmax)"
            )
        for name, value in (("decode_size", decode_size), ("cache_size", cache_size)):
            if value is not None and value < MIN_SIZE:
                raise DataError(f"isic2018: {name} must be at least {MIN_SIZE} pixels (or null), got {value}")
        super().__init__(root=root, split=split, num_classes=num_classes, transforms=transforms,
                         in_channels=in_channels, seed=seed, mask_mapping="binary")
        self.decode_size = decode_size
        self.cache_size = cache_size
        self.resized_cache = None if cache_dir is None else ResizedCache(Path(cache_dir), cache_size)
        logger.info("isic2018 %s: %d images from %s, %s", split, len(self), self.root, self._loading())

    def _loading(self) -> str:
        """How load_sample reads, for the log."""
        if self.resized_cache is not None:
            unused = f" (decode_size {self.decode_size} not used)" if self.decode_size is not None else ""
            return f"training reads a {self.cache_size}-pixel cache in {self.resized_cache.folder}{unused}"
        if self.decode_size is not None:
            return f"training decodes JPEGs at reduced scale (shorter side >= {self.decode_size})"
        return "training decodes images at full size"

    # ------------------------------------------------------------ loading

    def load_sample(self, index: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Sample ``index`` as training and validation see it: from the cache, draft-decoded, or full size."""
        image_path, mask_path = self.samples[index]
        if self.resized_cache is not None:
            return self._tensors(*self.resized_cache.load(image_path, mask_path), image_path)
        if self.decode_size is None:
            return self.read_sample(index)
        image, full_size = open_reduced(image_path, self.decode_size)
        mask = None if mask_path is None else read_resized_mask(mask_path, image.size, full_size, image_path)
        return self._tensors(image, mask, image_path)

    def _tensors(self, image: Image.Image, mask: Optional[Image.Image],
                 image_path: Path) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Decoded PIL image and grey mask -> float (C, H, W) image and int64 (H, W) classes."""
        tensor = image_tensor(np.asarray(image), self.in_channels, image_path)
        if mask is None:
            return tensor, None
        return tensor, torch.from_numpy(self.mask_mapping(np.asarray(mask)))

    # ------------------------------------------------------------ discovery

    def _find_samples(self, seed: int, val_fraction: float) -> List[Sample]:
        """(image, mask) pairs of ``self.split`` (every present split for "all"), sorted by image id."""
        if not self.root.is_dir():
            raise DataError(
                f"dataset root {self.root} does not exist; it must hold the official folders "
                f"{', '.join(name for pair in SPLIT_FOLDERS.values() for name in pair)}: {DOWNLOAD_HELP}"
            )
        if self.split != "all":
            return self._split_samples(self.split)
        present = [s for s, (input_name, _) in SPLIT_FOLDERS.items() if (self.root / input_name).is_dir()]
        if not present:
            return self._split_samples("train")  # raises, naming the missing training folder
        return [pair for split in present for pair in self._split_samples(split)]

    def _split_samples(self, split: str) -> List[Sample]:
        """Pairs of one split; its GroundTruth folder may be absent only for "test"."""
        input_dir, truth_dir = (self.root / name for name in SPLIT_FOLDERS[split])
        if not input_dir.is_dir():
            raise DataError(_missing_folder_message(input_dir, split, "images"))
        images = _images_by_id(input_dir)
        if not truth_dir.is_dir():
            if split == "test":
                logger.info("%s does not exist: the test split has no masks (prediction only)", truth_dir)
                return [(images[i], None) for i in sorted(images)]
            raise DataError(_missing_folder_message(truth_dir, split, "masks"))
        masks = _masks_by_id(truth_dir)
        _check_paired(images, masks, input_dir, truth_dir)
        return [(images[i], masks[i]) for i in sorted(images)]


# ------------------------------------------------------------------ cache


class ResizedCache:
    """Resized copies of samples as PNG files in ``folder``, written on first use.

    A sample's files are ``<image stem>_<size>_<key>.png`` and
    ``<image stem>_<size>_<key>_segmentation.png``, where the key hashes the
    source files' names, byte sizes and modification times: a changed source
    gets new files (and its old ones are removed). Files are written to a
    temp name and renamed, so DataLoader workers and parallel runs sharing the
    folder never read half a file.

    Args:
        folder: the cache folder (created).
        size: shorter side of the cached copies; smaller images keep their size.
    """

    def __init__(self, folder: Path, size: int) -> None:
        self.folder = _make_cache_dir(folder)
        self.size = size

    def files(self, image_path: Path, mask_path: Optional[Path]) -> Tuple[Path, Optional[Path]]:
        """The cache files of a sample (the mask file None when it has no mask)."""
        parts: List[Any] = [self.size]
        for path in (image_path, mask_path):
            if path is not None:
                stat = path.stat()
                parts += [path.name, stat.st_size, stat.st_mtime_ns]
        key = hashlib.sha1(repr(parts).encode("utf-8")).hexdigest()[:16]
        base = f"{self._prefix(image_path)}{key}"
        mask_file = None if mask_path is None else self.folder / f"{base}{MASK_SUFFIX}.png"
        return self.folder / f"{base}.png", mask_file

    def load(self, image_path: Path, mask_path: Optional[Path]) -> Tuple[Image.Image, Optional[Image.Image]]:
        """The cached image (RGB or grey) and grey mask of a sample, writing them first if missing."""
        image_file, mask_file = self.files(image_path, mask_path)
        if image_file.is_file() and (mask_file is None or mask_file.is_file()):
            return _open_cached(image_file), None if mask_file is None else _open_cached(mask_file)
        image, full_size = open_reduced(image_path, self.size)
        target = cache_target_size(full_size, self.size)
        if image.size != target:
            image = image.resize(target, Image.BILINEAR)
        mask = None if mask_path is None else read_resized_mask(mask_path, target, full_size, image_path)
        if mask is not None and mask_file is not None:
            _save_png(mask, mask_file)
        _save_png(image, image_file)  # last: its presence marks the entry complete
        self._remove_stale(image_path, {image_file, mask_file})
        return image, mask

    def _prefix(self, image_path: Path) -> str:
        """``<image stem>_<size>_``: the start of every cache file name of this sample at this size."""
        return f"{image_path.stem}_{self.size}_"

    def _remove_stale(self, image_path: Path, keep: Set[Optional[Path]]) -> None:
        """Delete this sample's cache files of earlier source versions."""
        for old in self.folder.glob(glob.escape(self._prefix(image_path)) + "*.png"):
            if old not in keep:
                old.unlink(missing_ok=True)


# ------------------------------------------------------------------ decoding


def dct_scale(size: Tuple[int, int], min_side: int) -> int:
    """The largest JPEG DCT scale denominator (8, 4, 2, else 1) that keeps the shorter side >= ``min_side``.

    A scale ``s`` decodes a ``W x H`` JPEG to ``ceil(W / s) x ceil(H / s)``.
    """
    shorter = min(size)
    for scale in DCT_SCALES:
        if -(-shorter // scale) >= min_side:
            return scale
    return 1


def open_reduced(path: Path, min_side: int) -> Tuple[Image.Image, Tuple[int, int]]:
    """Decode image ``path`` at the smallest JPEG scale keeping its shorter side >= ``min_side``.

    Returns the decoded 8-bit RGB (or grey) image and the file's full
    ``(width, height)``. Non-JPEG files are decoded at full size.
    """
    try:
        with Image.open(path) as pil:
            full_size = pil.size
            scale = dct_scale(full_size, min_side)
            if scale > 1:
                # Pillow picks the largest scale s with s <= full // requested; asking for
                # full // scale makes that exactly ``scale``.
                pil.draft("RGB", (full_size[0] // scale, full_size[1] // scale))
            pil.load()
            return (pil if pil.mode in ("RGB", "L") else pil.convert("RGB")), full_size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (moved or deleted after the dataset was listed?)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; is it a valid image? (re-download it)") from exc


def read_resized_mask(path: Path, size: Tuple[int, int], full_size: Tuple[int, int], image_path: Path) -> Image.Image:
    """Mask ``path`` as an 8-bit grey image resized to ``size`` (width, height) with nearest-neighbour lookups.

    The mask must have the full size of its image, ``full_size``.
    """
    try:
        with Image.open(path) as pil:
            if pil.size != full_size:
                raise DataError(
                    f"{path}: size {pil.size[0]}x{pil.size[1]} differs from image {image_path} "
                    f"{full_size[0]}x{full_size[1]}; re-download the ground truth"
                )
            grey = pil.convert("L") if pil.mode != "L" else pil
            return grey.resize(size, Image.NEAREST)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (moved or deleted after the dataset was listed?)") from None
    except (OSError, SyntaxError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}; is it a valid image? (re-download it)") from exc


def image_tensor(pixels: np.ndarray, in_channels: int, path: Path) -> torch.Tensor:
    """8-bit ``(H, W)`` or ``(H, W, 3)`` pixels -> float32 ``(C, H, W)`` in [0, 1].

    The same values ``datasets.io.read_image(path, "auto", in_channels)``
    gives for the file: RGB to luminance for ``in_channels`` 1, grey
    repeated for 3.
    """
    array = pixels.astype(np.float32).reshape(pixels.shape[:2] + (-1,))
    if in_channels == 1 and array.shape[2] == 3:
        array = (array.astype(np.float64) @ LUMA_WEIGHTS).astype(np.float32)[..., None]
    array = match_channels(array / 255.0, in_channels, path)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))


def cache_target_size(size: Tuple[int, int], cache_size: int) -> Tuple[int, int]:
    """(width, height) with the shorter side ``cache_size``, aspect kept; smaller images keep their size."""
    width, height = size
    shorter = min(width, height)
    if shorter <= cache_size:
        return size
    if width <= height:
        return cache_size, max(1, round(height * cache_size / width))
    return max(1, round(width * cache_size / height)), cache_size


def _open_cached(path: Path) -> Image.Image:
    """A cache PNG, loaded; an unreadable one names the file and how to rebuild it."""
    try:
        with Image.open(path) as pil:
            pil.load()
            return pil
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(
            f"cannot read cache file {path}: {exc}; delete it (or the whole data.cache_dir) and it is rebuilt"
        ) from exc


def _save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` as PNG via a temp file and ``os.replace``: readers never see half a file."""
    with atomic_open(path, "wb") as fh:
        image.save(fh, format="PNG", compress_level=1)


def _make_cache_dir(folder: Path) -> Path:
    """Create the cache folder; failure names it and the fix."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create data.cache_dir {folder}: {exc}; set data.cache_dir to a writable folder "
            "(a fast local disk) or to null"
        ) from exc
    return folder


# ------------------------------------------------------------------ layout


def _missing_folder_message(folder: Path, split: str, what: str) -> str:
    """Why ``folder`` is needed and how to get it, with hints for common unpacking mistakes."""
    message = (
        f"{folder} does not exist: the ISIC 2018 {split!r} split reads its {what} from the official folder "
        f"{folder.name}/ in data.root; {DOWNLOAD_HELP}"
    )
    root = folder.parent
    if (root / f"{folder.name}.zip").is_file():
        message += f". {root / (folder.name + '.zip')} is there: unpack it"
    nested = sorted(root.glob(f"*/{glob.escape(folder.name)}"))
    if nested:
        message += f". Found {nested[0]}: set data.root to {nested[0].parent}"
    return message


def _images_by_id(folder: Path) -> Dict[str, Path]:
    """Images of an input folder keyed by id (file stem); text files are skipped, duplicates raise."""
    images: Dict[str, Path] = {}
    for path in list_images(folder):
        if path.stem in images:
            raise DataError(
                f"{folder}: {images[path.stem].name} and {path.name} are the same image id; keep only one"
            )
        images[path.stem] = path
    if not images:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); {DOWNLOAD_HELP}")
    return images


def _masks_by_id(folder: Path) -> Dict[str, Path]:
    """``<id>_segmentation`` masks of a GroundTruth folder keyed by image id; other image files raise."""
    masks: Dict[str, Path] = {}
    strays = []
    for path in list_images(folder):
        if path.stem.endswith(MASK_SUFFIX):
            masks[path.stem[: -len(MASK_SUFFIX)]] = path
        else:
            strays.append(path.name)
    if strays:
        raise DataError(
            f"{folder}: {_first(strays)} not named <image id>{MASK_SUFFIX}.png; the ground-truth folder "
            f"must hold only the official masks (move other files elsewhere)"
        )
    return masks


def _check_paired(images: Dict[str, Path], masks: Dict[str, Path], input_dir: Path, truth_dir: Path) -> None:
    """Raise listing images without a mask and masks without an image."""
    problems = []
    lonely_images = sorted(images.keys() - masks.keys())
    lonely_masks = sorted(masks.keys() - images.keys())
    if lonely_images:
        expected = [f"{i}{MASK_SUFFIX}.png" for i in lonely_images]
        problems.append(f"{len(expected)} image(s) in {input_dir} have no mask in {truth_dir} "
                        f"(expected {_first(expected)})")
    if lonely_masks:
        names = [masks[i].name for i in lonely_masks]
        problems.append(f"{len(names)} mask(s) in {truth_dir} have no image in {input_dir}: {_first(names)}")
    if problems:
        raise DataError(
            "; ".join(problems) + f". Image X.jpg is paired with mask X{MASK_SUFFIX}.png; the input and "
            "ground-truth zips of one split must both be unpacked complete (re-download the incomplete one)"
        )


def _first(names: List[str], limit: int = 5) -> str:
    """The first ``limit`` names, comma-separated, with a count of the rest."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
