"""A tiny Cityscapes tree in the official layout and file formats, for tests.

``write_cityscapes_tree(root)`` writes what unzipping
``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip`` gives, at a
small size: per frame an 8-bit RGB ``_leftImg8bit.png`` and the four gtFine
files, ``_gtFine_labelIds.png`` (8-bit grey label ids), ``_gtFine_color.png``
(RGBA), ``_gtFine_instanceIds.png`` (16-bit grey: ``id * 1000 + n`` for
instance classes, else the label id) and ``_gtFine_polygons.json``. Optionally
also ``_gtFine_labelTrainIds.png`` as cityscapesscripts' createTrainIdLabelImgs
writes it. The label table below is written from the official label
definitions, independently of ``datasets/cityscapes.py``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

#: (name, label id, train id, colour) of the official label definitions (license plate, id -1, left out).
LABELS: List[Tuple[str, int, int, Tuple[int, int, int]]] = [
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
]

#: Label ids with instances (person .. bicycle): their instanceIds pixels are ``id * 1000 + n``.
INSTANCE_IDS = range(24, 34)

#: Label ids painted into train/val frames: evaluated classes and ignored ones (0, 1, 4, 9, 14, 29, ...).
PAINTED_IDS = [7, 8, 11, 21, 23, 26, 24, 0, 1, 4, 9, 14, 29, 17, 13, 33]

DEFAULT_CITIES: Dict[str, List[str]] = {"train": ["aachen", "bochum"], "val": ["frankfurt"], "test": ["berlin"]}


def write_cityscapes_tree(
    root: Path,
    cities: Optional[Dict[str, Sequence[str]]] = None,
    per_city: int = 2,
    size: Tuple[int, int] = (64, 32),
    train_ids_files: bool = False,
) -> Dict[str, List[str]]:
    """Write ``root/leftImg8bit/<split>/<city>/...`` and ``root/gtFine/<split>/<city>/...``.

    Args:
        root: output folder (created).
        cities: split -> city names; default train aachen + bochum, val
            frankfurt, test berlin.
        per_city: frames per city; frame ``k`` is ``<city>_<seq>_000019``
            with sequence numbers written in descending order.
        size: (width, height) of every frame, like Cityscapes' 2048 x 1024.
        train_ids_files: also write ``_gtFine_labelTrainIds.png`` files.

    Returns:
        split -> the ``<city>_<seq>_<frame>`` prefixes written, sorted as the
        dataset lists them (by city, then name).
    """
    cities = DEFAULT_CITIES if cities is None else cities
    rng = np.random.default_rng(7)
    written: Dict[str, List[str]] = {}
    for split, names in cities.items():
        written[split] = []
        for city in sorted(names):
            prefixes = [f"{city}_{seq:06d}_000019" for seq in reversed(range(per_city))]
            for prefix in prefixes:
                label_ids = _test_label_ids(size) if split == "test" else _scene_label_ids(size, rng)
                _write_frame(Path(root), split, city, prefix, label_ids, rng, train_ids_files)
            written[split] += sorted(prefixes)
    return written


def _scene_label_ids(size: Tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint8 label ids in a 4 x 4 grid of blocks, every id of ``PAINTED_IDS`` once, shuffled."""
    width, height = size
    ids = rng.permutation(PAINTED_IDS).reshape(4, 4)
    rows = np.repeat(np.arange(4), -(-height // 4))[:height]
    cols = np.repeat(np.arange(4), -(-width // 4))[:width]
    return ids[rows[:, None], cols[None, :]].astype(np.uint8)


def _test_label_ids(size: Tuple[int, int]) -> np.ndarray:
    """The dummy labels of the official test split: unlabeled, ego vehicle at the bottom, a border."""
    width, height = size
    ids = np.zeros((height, width), dtype=np.uint8)
    ids[-max(1, height // 8):] = 1
    ids[:, :1] = 2
    return ids


def _write_frame(root: Path, split: str, city: str, prefix: str, label_ids: np.ndarray,
                 rng: np.random.Generator, train_ids_files: bool) -> None:
    """The leftImg8bit image and the gtFine files of one frame."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    train_ids = np.full(256, 255, dtype=np.uint8)
    for _, label_id, train_id, colour in LABELS:
        colours[label_id] = colour
        train_ids[label_id] = train_id
    image_dir = root / "leftImg8bit" / split / city
    gt_dir = root / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    noise = rng.integers(-20, 21, label_ids.shape + (3,))
    image = np.clip(colours[label_ids].astype(np.int64) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(image).save(image_dir / f"{prefix}_leftImg8bit.png")
    Image.fromarray(label_ids).save(gt_dir / f"{prefix}_gtFine_labelIds.png")
    rgba = np.concatenate([colours[label_ids], np.full(label_ids.shape + (1,), 255, np.uint8)], axis=2)
    Image.fromarray(rgba).save(gt_dir / f"{prefix}_gtFine_color.png")
    Image.fromarray(_instance_ids(label_ids)).save(gt_dir / f"{prefix}_gtFine_instanceIds.png")
    (gt_dir / f"{prefix}_gtFine_polygons.json").write_text(json.dumps(_polygons(label_ids), indent=4))
    if train_ids_files:
        Image.fromarray(train_ids[label_ids]).save(gt_dir / f"{prefix}_gtFine_labelTrainIds.png")


def _instance_ids(label_ids: np.ndarray) -> np.ndarray:
    """uint16 instance ids: ``id * 1000`` (+ 0, one instance per block) for instance classes, else the id."""
    ids = label_ids.astype(np.uint16)
    has_instances = np.isin(label_ids, list(INSTANCE_IDS))
    ids[has_instances] *= 1000
    return ids


def _polygons(label_ids: np.ndarray) -> Dict[str, object]:
    """The polygons JSON: one rectangle per label id, as the bounding box of its pixels."""
    names = {label_id: name for name, label_id, _, _ in LABELS}
    objects = []
    for label_id in np.unique(label_ids):
        ys, xs = np.nonzero(label_ids == label_id)
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
        objects.append({"label": names[int(label_id)], "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]})
    height, width = label_ids.shape
    return {"imgHeight": height, "imgWidth": width, "objects": objects}
