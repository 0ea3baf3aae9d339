"""``FolderDataset``: image/mask pairs read from an image folder and a mask folder, in one of three layouts."""
import logging
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from datasets.io import INTENSITY_MODES, Sample, list_images, read_image, read_mask
from utils.constants import IGNORE_INDEX, IMAGE_SUFFIXES
from utils.mask_mapping import parse_mask_mapping
from utils.registry import DATASETS
from utils.errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "all")

#: mmsegmentation's folder names, found by themselves when data.image_dir and data.mask_dir keep their defaults.
MMSEG_DIRS = ("img_dir", "ann_dir")


def layout_help(image_dir: str = "images", mask_dir: str = "masks") -> str:
    """The three layouts, with the folder names in use, for error messages."""
    return (
        f"expected either split folders root/train/{image_dir} + root/train/{mask_dir} (and val/, test/), "
        f"mmsegmentation's root/{image_dir}/train + root/{mask_dir}/train (and val/, test/; "
        f"{MMSEG_DIRS[0]}/ + {MMSEG_DIRS[1]}/ are found without settings), or a flat root/{image_dir} + "
        f"root/{mask_dir} split into train/val by val_fraction; data.image_dir and data.mask_dir name the "
        "two folders"
    )


LAYOUT_HELP = layout_help()


@DATASETS.register("folder")
class FolderDataset(Dataset):
    """Image/mask pairs from an image folder and a mask folder, in one of three layouts.

    Layouts, detected in this order (``images``/``masks`` stand for
    ``image_dir``/``mask_dir``), stored as ``layout``:

    * "split": ``root/<split>/images`` + ``root/<split>/masks``;
    * "mmseg": mmsegmentation's ``root/images/<split>`` + ``root/masks/<split>``;
      its own names ``img_dir/`` + ``ann_dir/`` are found when ``image_dir``
      and ``mask_dir`` keep their defaults;
    * "flat": ``root/images`` + ``root/masks``, shuffled with ``seed`` and
      split into train and val by ``val_fraction``.

    In the first two ``split`` picks the folder; ``split="all"`` takes every
    pair. Images and masks are paired by file stem (``images/a.JPG`` with
    ``masks/a.png``), or by stem plus ``mask_suffix`` (``ISIC_0001.jpg``
    with ``ISIC_0001_segmentation.png``). A test split may have no mask
    folder: its masks are then all ``IGNORE_INDEX``. Masks are validated as
    they are loaded.

    ``root``, ``split``, ``num_classes``, ``mask_mapping`` and ``samples``
    are public: they are the ``datasets.io.FileDataset`` protocol through
    which the data check and the class statistics read the files.

    Args:
        root: dataset folder.
        split: "train", "val", "test" or "all".
        num_classes: number of classes, background included (2 for binary).
        transforms: callable ``(Image, Mask) -> (Image, Mask)`` applied in
            ``__getitem__``; None for no transforms.
        in_channels: channels of the returned image (3: grey repeated to RGB,
            1: RGB converted to luminance).
        seed: seed of the flat-layout train/val split.
        mask_mapping: how mask pixels become classes: "identity", "binary",
            "nonzero", a ``{value: class}`` or a ``{"R,G,B": class}`` mapping.
        intensity: image scaling, "auto", "percentile" or "none" (see
            ``datasets.io.read_image``).
        val_fraction: share of a flat layout used for val (ignored with split
            folders).
        cache: keep decoded samples in memory (one copy per DataLoader worker).
        image_dir: name of the image folder (e.g. "image", "img_dir").
        mask_dir: name of the mask folder (e.g. "label", "ann_dir").
        mask_suffix: what a mask's file stem adds to its image's
            (e.g. "_segmentation"); "" pairs equal stems.
    """

    #: Whether the dataset creates ``root`` itself (the config layer then skips its existence check).
    generates_its_files = False
    #: Official class names and (256, 3) uint8 colour palette of a named dataset; None for generic folders.
    class_names: Optional[List[str]] = None
    palette: Optional[np.ndarray] = None

    def __init__(
        self,
        root: str,
        split: str,
        num_classes: int,
        transforms: Any = None,
        in_channels: int = 3,
        seed: int = 0,
        mask_mapping: Union[str, Dict[Any, int]] = "identity",
        intensity: Literal["auto", "percentile", "none"] = "auto",
        val_fraction: float = 0.2,
        cache: bool = False,
        image_dir: str = "images",
        mask_dir: str = "masks",
        mask_suffix: str = "",
    ) -> None:
        _check_arguments(split, num_classes, in_channels, intensity, val_fraction)
        _check_folder_names(image_dir, mask_dir, mask_suffix)
        self.root = Path(root)
        self.image_dir, self.mask_dir, self.mask_suffix = image_dir, mask_dir, mask_suffix
        self.layout = ""  # "split", "mmseg" or "flat", set by _find_samples
        self.split = split
        self.num_classes = num_classes
        self.class_names: Optional[List[str]] = type(self).class_names
        self.transforms = transforms
        self.in_channels = in_channels
        self.intensity = intensity
        self.mask_mapping = parse_mask_mapping(mask_mapping)
        _check_mapping_classes(self.mask_mapping.classes(), num_classes)
        self.samples: List[Sample] = self._find_samples(seed, val_fraction)
        if hasattr(transforms, "bind_source"):  # pipelines with multi-sample transforms (mosaic)
            transforms.bind_source(self.random_sample)
        self._cache: Optional[Dict[int, Tuple[torch.Tensor, Optional[torch.Tensor]]]] = {} if cache else None
        logger.debug("%r", self)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"{len(self)} samples, num_classes={self.num_classes}, mask_mapping={self.mask_mapping!r})"
        )

    def read_sample(self, index: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The raw sample ``index``: image float32 (C,H,W) and mask int64 (H,W) or None."""
        if self._cache is not None and index in self._cache:
            image, mask = self._cache[index]
            return image.clone(), None if mask is None else mask.clone()
        image_path, mask_path = self.samples[index]
        image = read_image(image_path, self.intensity, self.in_channels)
        mask = None
        if mask_path is not None:
            mask = read_mask(mask_path, self.mask_mapping, self.num_classes)
            _check_same_size(image, image_path, mask, mask_path)
        if self._cache is not None:
            self._cache[index] = (image.clone(), None if mask is None else mask.clone())
        return image, mask

    def load_sample(self, index: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The raw sample that training and validation use, before transforms.

        Defaults to :meth:`read_sample` (full resolution). Datasets of large
        images override it to decode at reduced size or read a resized cache;
        ``read_sample`` stays full-size for test.py and the data check.
        """
        return self.read_sample(index)

    def __getitem__(self, index: int) -> Tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Sample ``index`` after ``transforms``, as tv_tensors; a missing mask is all ``IGNORE_INDEX``."""
        image, mask = self._as_tv_tensors(*self.load_sample(index))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return tv_tensors.Image(image), tv_tensors.Mask(mask)

    def random_sample(self) -> Tuple[tv_tensors.Image, tv_tensors.Mask]:
        """A uniformly drawn raw sample (torch's RNG), for multi-sample transforms such as mosaic."""
        index = int(torch.randint(len(self), ()).item())
        return self._as_tv_tensors(*self.load_sample(index))

    @staticmethod
    def _as_tv_tensors(image: torch.Tensor, mask: Optional[torch.Tensor]) -> Tuple[tv_tensors.Image, tv_tensors.Mask]:
        if mask is None:
            mask = torch.full(image.shape[-2:], IGNORE_INDEX, dtype=torch.int64)
        return tv_tensors.Image(image), tv_tensors.Mask(mask)

    @property
    def has_masks(self) -> bool:
        """Whether every sample has a mask file (False for a test split without masks/)."""
        return all(mask is not None for _, mask in self.samples)

    # ------------------------------------------------------------ discovery

    def _find_samples(self, seed: int, val_fraction: float) -> List[Sample]:
        """All (image, mask) pairs of ``self.split`` in this root's layout."""
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root} does not exist; {self._help()}")
        self.layout = self._detect_layout()
        if self.layout == "flat":
            return self._flat_samples(seed, val_fraction)
        return self._split_folder_samples()

    def _detect_layout(self) -> str:
        """"split", "mmseg" or "flat"; mmsegmentation's img_dir/ + ann_dir/ replace default folder names."""
        images = self.image_dir
        if (self.root / "train" / images).is_dir():
            return "split"
        if (self.root / images / "train").is_dir():
            return "mmseg"
        defaults = (self.image_dir, self.mask_dir) == ("images", "masks")
        if defaults and not (self.root / images).is_dir() and (self.root / MMSEG_DIRS[0] / "train").is_dir():
            self.image_dir, self.mask_dir = MMSEG_DIRS
            return "mmseg"
        if (self.root / images).is_dir():
            return "flat"
        raise DataError(f"{self.root} has none of train/{images}/, {images}/train/ and {images}/; {self._help()}")

    def _help(self) -> str:
        return layout_help(self.image_dir, self.mask_dir)

    def _folders(self, split: Optional[str]) -> Tuple[Path, Path]:
        """(image folder, mask folder) of ``split`` in this layout (None: the flat layout's)."""
        if split is None:
            return self.root / self.image_dir, self.root / self.mask_dir
        if self.layout == "mmseg":
            return self.root / self.image_dir / split, self.root / self.mask_dir / split
        return self.root / split / self.image_dir, self.root / split / self.mask_dir

    def _pairs(self, split: Optional[str], masks_optional: bool) -> List[Sample]:
        image_folder, mask_folder = self._folders(split)
        return pair_dirs(image_folder, mask_folder, masks_optional, self.mask_suffix, self._help())

    def _split_folder_samples(self) -> List[Sample]:
        """Pairs from the split folders (every split folder for "all")."""
        present = [s for s in SPLITS[:3] if self._folders(s)[0].is_dir()]
        if self.split == "all":
            return [pair for s in present for pair in self._pairs(s, masks_optional=s == "test")]
        if self.split not in present:
            raise DataError(
                f"{self._folders(self.split)[0]} does not exist; this dataset has the splits {', '.join(present)}"
            )
        return _non_empty(self._pairs(self.split, masks_optional=self.split == "test"), self)

    def _flat_samples(self, seed: int, val_fraction: float) -> List[Sample]:
        """Pairs from the flat image + mask folders, split into train/val by a seeded shuffle."""
        if self.split == "test":
            raise DataError(
                f"{self.root} has the flat layout {self.image_dir}/ + {self.mask_dir}/, which has no test split "
                f"(only train, val and all); put test data in test/{self.image_dir} + test/{self.mask_dir} folders"
            )
        pairs = self._pairs(None, masks_optional=self.split == "all")
        if self.split == "all":
            return pairs
        train, val = split_indices(len(pairs), val_fraction, seed)
        chosen = train if self.split == "train" else val
        return _non_empty([pairs[i] for i in chosen], self)


def pair_folder(folder: Path, masks_optional: bool = False) -> List[Sample]:
    """Pair ``folder/images/*`` with ``folder/masks/*`` by file stem (see :func:`pair_dirs`)."""
    return pair_dirs(folder / "images", folder / "masks", masks_optional)


def pair_dirs(image_dir: Path, mask_dir: Path, masks_optional: bool = False, mask_suffix: str = "",
              help_text: str = LAYOUT_HELP) -> List[Sample]:
    """Pair the images of ``image_dir`` with the masks of ``mask_dir``, sorted by image stem.

    The mask of ``a.jpg`` is ``<a + mask_suffix>.<any image suffix>``.
    Without ``mask_dir`` and ``masks_optional`` every mask is None. Unpaired
    files, duplicate stems and an empty image folder raise DataError
    (``help_text`` describes the expected layout).
    """
    images = _by_stem(image_dir)
    if not images:
        raise DataError(f"{image_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}); {help_text}")
    if masks_optional and not mask_dir.is_dir():
        return [(images[stem], None) for stem in sorted(images)]
    if not mask_dir.is_dir():
        raise DataError(f"{mask_dir} does not exist: every image in {image_dir} needs a mask there")
    masks = _masks_by_image_stem(mask_dir, mask_suffix)
    _check_paired(images, masks, image_dir, mask_dir, mask_suffix)
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def split_indices(count: int, val_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Seeded disjoint (train, val) index lists covering ``range(count)``, each sorted.

    val gets ``round(count * val_fraction)`` indices, at least 1 when
    ``val_fraction > 0`` and ``count >= 2``, and never all of them.
    """
    num_val = round(count * val_fraction)
    if val_fraction > 0 and count >= 2:
        num_val = min(max(num_val, 1), count - 1)
    order = np.random.default_rng(seed).permutation(count)
    return sorted(order[num_val:].tolist()), sorted(order[:num_val].tolist())


def _by_stem(folder: Path) -> Dict[str, Path]:
    """Image files of ``folder`` keyed by stem; two files with one stem raise."""
    files: Dict[str, Path] = {}
    for path in list_images(folder):
        if path.stem in files:
            raise DataError(
                f"{folder}: {files[path.stem].name} and {path.name} have the same stem "
                f"{path.stem!r}; images and masks are paired by stem, so keep only one"
            )
        files[path.stem] = path
    return files


def _masks_by_image_stem(mask_dir: Path, mask_suffix: str) -> Dict[str, Path]:
    """Masks of ``mask_dir`` keyed by their image's stem (theirs less ``mask_suffix``).

    A mask whose stem lacks the suffix gets a key no image stem has (a
    ``/``), so it is reported as a mask without an image.
    """
    masks = _by_stem(mask_dir)
    if not mask_suffix:
        return masks
    return {(stem[:-len(mask_suffix)] if stem.endswith(mask_suffix) else f"/{stem}"): path
            for stem, path in masks.items()}


def _check_paired(images: Dict[str, Path], masks: Dict[str, Path], image_dir: Path, mask_dir: Path,
                  mask_suffix: str = "") -> None:
    """Raise listing (up to 5 per side) images without a mask and masks without an image."""
    lonely_images = sorted(images.keys() - masks.keys())
    lonely_masks = sorted(masks.keys() - images.keys())
    if not lonely_images and not lonely_masks:
        return
    problems = []
    if lonely_images:
        names = [images[stem].name for stem in lonely_images]
        problems.append(f"{len(names)} image(s) in {image_dir} without a mask: {_first(names)}")
    if lonely_masks:
        names = [masks[stem].name for stem in lonely_masks]
        problems.append(f"{len(names)} mask(s) in {mask_dir} without an image: {_first(names)}")
    if mask_suffix:
        example = lonely_images[0] if lonely_images else "case1"
        rule = (f"a mask named after its stem plus data.mask_suffix {mask_suffix!r} in {mask_dir} "
                f"(expected {mask_dir / (example + mask_suffix)}.png, or another image suffix)")
    else:
        rule = (f"a mask with the same file stem in {mask_dir} "
                f"(e.g. {image_dir.name}/case1.jpg and {mask_dir.name}/case1.png; data.mask_suffix adds to it)")
    raise DataError(f"{'; '.join(problems)}. Every image in {image_dir} needs {rule}")


def _first(names: List[str], limit: int = 5) -> str:
    """The first ``limit`` names, comma-separated, with a count of the rest."""
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _non_empty(samples: List[Sample], dataset: "FolderDataset") -> List[Sample]:
    """``samples``, or a ValueError when the requested split has none."""
    if not samples:
        raise DataError(
            f"{dataset.root}: the {dataset.split!r} split is empty; with a flat {dataset.image_dir}/ + "
            f"{dataset.mask_dir}/ layout raise val_fraction above 0 or add images"
        )
    return samples


def _check_same_size(image: torch.Tensor, image_path: Path, mask: torch.Tensor, mask_path: Path) -> None:
    """Raise when a mask's height and width differ from its image's."""
    if image.shape[-2:] != mask.shape:
        ih, iw = image.shape[-2:]
        mh, mw = mask.shape
        raise DataError(f"{mask_path}: size {mw}x{mh} differs from image {image_path} {iw}x{ih}")


def _check_arguments(split: str, num_classes: int, in_channels: int, intensity: str, val_fraction: float) -> None:
    """Raise ValueError for arguments outside their valid range."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if num_classes < 2:
        raise DataError(
            f"num_classes must be at least 2 (background included; binary segmentation is 2), got {num_classes}"
        )
    if in_channels < 1:
        raise DataError(f"in_channels must be at least 1, got {in_channels}")
    if intensity not in INTENSITY_MODES:
        raise DataError(f"intensity must be one of {', '.join(INTENSITY_MODES)}, got {intensity!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")


def _check_folder_names(image_dir: str, mask_dir: str, mask_suffix: str) -> None:
    """Raise for folder names that are empty, paths or equal, and for a mask suffix with a path separator."""
    for arg, name in (("image_dir", image_dir), ("mask_dir", mask_dir)):
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise DataError(f"data.{arg} must be a folder name inside data.root (e.g. images), got {name!r}")
    if image_dir == mask_dir:
        raise DataError(f"data.image_dir and data.mask_dir must differ, both are {image_dir!r}")
    if "/" in mask_suffix or "\\" in mask_suffix:
        raise DataError(f"data.mask_suffix is added to a file stem (e.g. _segmentation), without a path "
                        f"separator; got {mask_suffix!r}")


def _check_mapping_classes(classes: List[int], num_classes: int) -> None:
    """Raise when an explicit mask mapping targets a class outside ``0..num_classes-1``."""
    bad = [c for c in classes if not (c < num_classes or c == IGNORE_INDEX)]
    if bad:
        raise DataError(
            f"data.mask_mapping maps to class(es) {bad} but num_classes={num_classes} allows "
            f"0..{num_classes - 1} (and {IGNORE_INDEX} = ignore); raise num_classes or fix the mapping"
        )
