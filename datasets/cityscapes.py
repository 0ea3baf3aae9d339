"""Cityscapes fine annotations (gtFine) in the official folder layout, as 19 train ids.

Unpack ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` into
one folder, ``data.root``::

    root/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    root/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

Each image is paired with the gtFine files of the same
``<city>_<seq>_<frame>`` prefix. The other gtFine files (``_color.png``,
``_instanceIds.png``, ``_polygons.json``) are not read. When every mask of a
split also has a ``_gtFine_labelTrainIds.png`` (written by the official
``cityscapesscripts`` ``createTrainIdLabelImgs``) those are read as they are;
otherwise the ``_labelIds.png`` files are mapped to train ids with the table
of the official ``cityscapesscripts/helpers/labels.py`` (:data:`LABEL_ID_TO_TRAIN_ID`).

The gtFine test files of the official download hold no labels (every pixel
maps to ``IGNORE_INDEX``); they are read when present, and a test split
without them has no masks. Predictions are train ids 0..18; the benchmark
server expects label ids: :class:`SubmissionWriter` maps each train id back
(:data:`TRAIN_ID_TO_LABEL_ID`) and writes the PNGs the server reads, which
test.py does on the test split (``test.submission``).
"""
import logging
import re
from pathlib import Path
from typing import Any, List, Optional, Union

import numpy as np
from PIL import Image

from datasets.folder import FolderDataset, Sample
from utils.constants import IGNORE_INDEX
from utils.mask_mapping import IdentityMapping, MaskMapping
from utils.registry import DATASETS
from utils.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

NUM_CLASSES = 19

#: The 19 evaluated classes, in train-id order.
CLASS_NAMES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]

#: The label id (``_gtFine_labelIds.png`` value) of each train id.
TRAIN_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]

#: The official colour of each train id.
TRAIN_COLOURS = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]

SPLITS = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"

LAYOUT_HELP = (
    "data.root must hold leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
    "gtFine/<split>/<city>/*_gtFine_labelIds.png: unzip leftImg8bit_trainvaltest.zip and "
    "gtFine_trainvaltest.zip into it"
)


def _label_id_table() -> np.ndarray:
    """A 256-entry uint8 lookup table: label id -> train id, every other value ``IGNORE_INDEX``.

    Label ids 0-6 (void), 9 parking, 10 rail track, 14 guard rail, 15 bridge,
    16 tunnel, 18 polegroup, 29 caravan, 30 trailer, anything from 34 up and
    license plate (id -1, never written to the 8-bit PNGs) are ignored.
    """
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[TRAIN_LABEL_IDS] = np.arange(NUM_CLASSES)
    return table


#: ``LABEL_ID_TO_TRAIN_ID[label_id]`` is the train id (or ``IGNORE_INDEX``) of a labelIds pixel.
LABEL_ID_TO_TRAIN_ID = _label_id_table()

#: ``TRAIN_ID_TO_LABEL_ID[train_id]`` is the label id the benchmark server expects: the inverse of
#: :data:`LABEL_ID_TO_TRAIN_ID`, from the same list (:data:`TRAIN_LABEL_IDS`).
TRAIN_ID_TO_LABEL_ID = np.asarray(TRAIN_LABEL_IDS, dtype=np.uint8)


def _palette() -> np.ndarray:
    """(256, 3) uint8: the official colours of the train ids, black elsewhere (255 = unlabeled)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:NUM_CLASSES] = TRAIN_COLOURS
    return palette


class LabelIdMapping(MaskMapping):
    """Cityscapes label ids (``_gtFine_labelIds.png`` values) to the 19 train ids, the rest ignored."""

    decode = "index"

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        ids = np.clip(pixels.astype(np.int64), 0, 255)
        return LABEL_ID_TO_TRAIN_ID[ids].astype(np.int64)

    def classes(self) -> List[int]:
        return list(range(NUM_CLASSES)) + [IGNORE_INDEX]

    def __repr__(self) -> str:
        return "MaskMapping('cityscapes labelIds -> train ids')"


@DATASETS.register("cityscapes")
class CityscapesDataset(FolderDataset):
    """Cityscapes leftImg8bit images with gtFine masks as the 19 train ids (255 = ignore).

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: "train" (2975 images), "val" (500), "test" (1525, unlabeled)
            or "all" (every split present).
        num_classes: must be 19.
        transforms: callable ``(Image, Mask) -> (Image, Mask)``.
        in_channels: channels of the returned image (3: RGB, 1: luminance).
        seed: unused (the splits are fixed folders); passed by the framework.
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
    ) -> None:
        if num_classes != NUM_CLASSES:
            raise DataError(
                f"cityscapes: num_classes must be {NUM_CLASSES} (the official train ids), got {num_classes}; "
                f"set data.num_classes: {NUM_CLASSES} and model.out_channels: {NUM_CLASSES}"
            )
        super().__init__(root=root, split=split, num_classes=num_classes, transforms=transforms,
                         in_channels=in_channels, seed=seed, mask_mapping=LabelIdMapping())
        masks = [mask for _, mask in self.samples if mask is not None]
        if masks and masks[0].name.endswith(TRAIN_IDS_SUFFIX):
            self.mask_mapping = IdentityMapping()
        logger.info("cityscapes %s: %d images from %s, masks %s", split, len(self),
                    self.root / "leftImg8bit", _describe_masks(masks, len(self)))

    # ------------------------------------------------------------ discovery

    def _find_samples(self, seed: int, val_fraction: float) -> List[Sample]:
        """(image, mask) pairs of ``self.split``, sorted by city, then file name."""
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root} does not exist; {LAYOUT_HELP}")
        splits = [self.split] if self.split != "all" else self._present_splits()
        for split in splits:
            if split != "test" and not (self.root / "gtFine" / split).is_dir():
                raise DataError(f"{self.root / 'gtFine' / split} does not exist; {LAYOUT_HELP}")
        frames = [(image, _gt_prefix(self.root, split, image), split)
                  for split in splits for image in self._images(split)]
        suffix = TRAIN_IDS_SUFFIX if _all_have_train_ids([prefix for _, prefix, _ in frames]) else LABEL_IDS_SUFFIX
        return [(image, _mask_path(image, prefix, suffix, optional=split == "test")) for image, prefix, split in frames]

    def _present_splits(self) -> List[str]:
        """The splits with a leftImg8bit folder (for split "all")."""
        present = [s for s in SPLITS if (self.root / "leftImg8bit" / s).is_dir()]
        if not present:
            raise DataError(f"{self.root / 'leftImg8bit'} holds none of {', '.join(SPLITS)}; {LAYOUT_HELP}")
        return present

    def _images(self, split: str) -> List[Path]:
        """The ``*_leftImg8bit.png`` files of every city folder of ``split``, sorted by city, then name."""
        folder = self.root / "leftImg8bit" / split
        if not folder.is_dir():
            raise DataError(f"{folder} does not exist; {LAYOUT_HELP}")
        cities = sorted(p for p in folder.iterdir() if p.is_dir())
        images = [image for city in cities for image in sorted(city.glob("*" + IMAGE_SUFFIX))]
        if not images:
            raise DataError(f"{folder} holds no <city>/*{IMAGE_SUFFIX} images; {LAYOUT_HELP}")
        return images


def _gt_prefix(root: Path, split: str, image: Path) -> Path:
    """``root/gtFine/<split>/<city>/<city>_<seq>_<frame>``: the gtFine files of ``image`` without their suffix."""
    return root / "gtFine" / split / image.parent.name / image.name[: -len(IMAGE_SUFFIX)]


def _gt_file(prefix: Path, suffix: str) -> Path:
    """The gtFine file ``prefix`` + ``suffix`` (e.g. ``_gtFine_labelIds.png``)."""
    return prefix.with_name(prefix.name + suffix)


def _all_have_train_ids(prefixes: List[Path]) -> bool:
    """Whether every frame that has gtFine masks also has a labelTrainIds file.

    Frames without any mask file (test images without gtFine) are left out.
    A partial set (an interrupted ``createTrainIdLabelImgs``) falls back to
    the labelIds files of every frame, with a warning.
    """
    labelled = [p for p in prefixes
                if _gt_file(p, LABEL_IDS_SUFFIX).is_file() or _gt_file(p, TRAIN_IDS_SUFFIX).is_file()]
    lacking = [p for p in labelled if not _gt_file(p, TRAIN_IDS_SUFFIX).is_file()]
    if lacking and len(lacking) < len(labelled):
        logger.warning(
            "only %d of %d frames have a %s file (%s is missing); reading the %s files of every frame instead. "
            "Rerun cityscapesscripts' createTrainIdLabelImgs to use the labelTrainIds files",
            len(labelled) - len(lacking), len(labelled), TRAIN_IDS_SUFFIX, _gt_file(lacking[0], TRAIN_IDS_SUFFIX),
            LABEL_IDS_SUFFIX,
        )
    return bool(labelled) and not lacking


def _mask_path(image: Path, prefix: Path, suffix: str, optional: bool) -> Optional[Path]:
    """The mask file of ``image``; a missing one is None when ``optional``, else an error."""
    path = _gt_file(prefix, suffix)
    if path.is_file():
        return path
    if optional:
        return None
    raise DataError(
        f"{image}: its mask {path} does not exist; every train/val image needs its gtFine file "
        "(unzip gtFine_trainvaltest.zip into data.root, or remove the image)"
    )


def _describe_masks(masks: List[Path], count: int) -> str:
    """Which mask files a split reads, for the log."""
    if not masks:
        return "none (no gtFine files)"
    kind = "labelTrainIds as they are" if masks[0].name.endswith(TRAIN_IDS_SUFFIX) else "labelIds mapped to train ids"
    return f"{kind} ({len(masks)} of {count} images)"


# ------------------------------------------------------------ benchmark submission

#: The folder of ``<out>`` that test.py fills with the benchmark server's PNGs (zip its files as they are).
SUBMISSION_FOLDER = "cityscapes_submission"
SUBMISSION_SETTINGS = ("auto", "on", "off")
_FRAME = re.compile(r"^([^_]+)_(\d{6})_(\d{6})")  # <city>_<seq>_<frame>, how the server pairs files


def submission_wanted(setting: Union[str, bool], data_name: str, split: Optional[str]) -> bool:
    """Whether test.py writes the benchmark PNGs, for ``test.submission``.

    ``auto``: for Cityscapes on its test split (``split`` None: a ``--input``
    folder, no); ``on``: on any split of Cityscapes; ``off``: never. YAML's
    bare on/off arrive as booleans and count as on/off.
    """
    if isinstance(setting, bool):
        setting = "on" if setting else "off"
    if setting not in SUBMISSION_SETTINGS:
        raise ConfigError(f"test.submission: expected one of {', '.join(SUBMISSION_SETTINGS)}, got {setting!r}")
    if setting == "off":
        return False
    if data_name != "cityscapes":
        if setting == "on":
            raise ConfigError(f"test.submission: on writes Cityscapes benchmark files (label ids), but data.name "
                              f"is {data_name!r}; set test.submission: auto (or off)")
        return False
    return setting == "on" or split == "test"


def label_id_image(train_ids: np.ndarray) -> Image.Image:
    """Predicted train ids (H, W) 0..18 -> the single-channel 8-bit PNG of label ids the server reads."""
    train_ids = np.asarray(train_ids)
    if train_ids.size and (train_ids.min() < 0 or train_ids.max() >= NUM_CLASSES):
        raise ValueError(f"label_id_image: train ids must lie in 0..{NUM_CLASSES - 1}, got values "
                         f"{int(train_ids.min())}..{int(train_ids.max())}")
    return Image.fromarray(TRAIN_ID_TO_LABEL_ID[train_ids], mode="L")


class SubmissionWriter:
    """Writes ``<folder>/<city>_<seq>_<frame>_leftImg8bit.png`` label-id PNGs, flat, for the benchmark server.

    Each PNG has the size of the prediction given (test.py predicts at the
    image's original size, 2048x1024). An image name that does not start with
    ``<city>_<seq>_<frame>`` is written under its own name, with a warning:
    the server pairs files by that prefix.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.count = 0
        self._warned = False

    def write(self, image_name: str, train_ids: np.ndarray) -> Path:
        """Write the label ids of ``train_ids`` (H, W) for the image ``image_name`` (a file name or stem)."""
        stem = image_name[:-len(".png")] if image_name.endswith(".png") else image_name
        match = _FRAME.match(stem)
        if match is None and not self._warned:
            logger.warning("%s: not named <city>_<seq>_<frame>_leftImg8bit; its submission file keeps the name, "
                           "which the benchmark server will not pair with a frame", image_name)
            self._warned = True
        name = f"{match.group(0)}{IMAGE_SUFFIX}" if match else f"{stem}.png"
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        label_id_image(train_ids).save(path)
        self.count += 1
        return path
