"""Synthetic demo data: textured skin/tissue-like backgrounds with blob-like objects.

``generate`` writes a split-folder dataset (train/ and val/, each with
images/ and masks/) that a small UNet learns in minutes on a CPU; the
``"synthetic"`` dataset generates it on first use. Binary sets (2 classes)
have 0/255 grey masks (use ``mask_mapping: binary``); multiclass sets have
palette PNG masks whose indices are the classes (``mask_mapping: identity``),
and every class has its own shape and colour: 1 round blobs, 2 elongated
ellipses, k >= 3 k-sided polygons (triangles, squares, ...).

Command line::

    python -m datasets.synthetic --out data/demo --num-classes 2
"""
import argparse
import colorsys
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from scipy import ndimage

from datasets.folder import FolderDataset
from utils.registry import DATASETS
from utils.errors import DataError

logger = logging.getLogger(__name__)

#: File written last into a generated dataset, holding the generator arguments.
MARKER = "synthetic.json"

#: Background tints (RGB) mixed per image: skin, pink tissue, pale tissue.
BACKGROUND_TINTS = np.array([[214, 168, 146], [228, 182, 204], [224, 206, 186]], dtype=np.float64)

#: Object colours of classes 1..7; later classes get colours spread around the hue circle.
OBJECT_COLOURS = [(104, 58, 44), (62, 72, 150), (58, 128, 64), (190, 150, 40), (140, 52, 128), (40, 130, 140), (200, 96, 30)]

#: Mask palette colours of classes 1..7 (class 0 black, 255 = ignore white).
MASK_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]

SPLIT_CODES = {"train": 0, "val": 1}


def generate(
    out: Union[str, Path],
    num_classes: int = 2,
    num_train: int = 160,
    num_val: int = 40,
    image_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset to ``out`` and return ``out``.

    Same arguments give byte-identical files. The data is written to a
    temporary folder next to ``out`` that is then renamed, so a half-written
    dataset never appears. If ``out`` already holds a dataset generated with
    the same arguments nothing is done; a non-empty ``out`` holding anything
    else raises ValueError.
    """
    out = Path(out)
    params = {"num_classes": num_classes, "num_train": num_train, "num_val": num_val,
              "image_size": image_size, "seed": seed}
    _check_params(params)
    if _holds_dataset(out, params):
        logger.info("%s already holds the synthetic dataset; nothing to do", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for split, count in (("train", num_train), ("val", num_val)):
            _write_split(tmp / split, count, num_classes, image_size, [seed, SPLIT_CODES[split]])
        (tmp / MARKER).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        _publish(tmp, out, params)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    logger.info("wrote %d train and %d val images (%d classes) to %s", num_train, num_val, num_classes, out)
    return out


def _check_params(params: Dict[str, int]) -> None:
    """Raise ValueError for generator arguments out of range."""
    if params["num_classes"] < 2:
        raise DataError(f"num_classes must be at least 2, got {params['num_classes']}")
    if params["num_train"] < 1 or params["num_val"] < 1:
        raise DataError(f"num_train and num_val must be at least 1, got {params['num_train']}, {params['num_val']}")
    if params["image_size"] < 32:
        raise DataError(f"image_size must be at least 32, got {params['image_size']}")


def _holds_dataset(out: Path, params: Dict[str, int]) -> bool:
    """True if ``out`` holds a dataset made with ``params``; False if missing or empty; else raise."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    marker = out / MARKER
    found = json.loads(marker.read_text()) if marker.is_file() else None
    if found == params:
        return True
    raise DataError(
        f"{out} exists but does not hold a synthetic dataset generated with {params} "
        f"({MARKER}: {found}); delete it or choose another output folder / data.root"
    )


def _publish(tmp: Path, out: Path, params: Dict[str, int]) -> None:
    """Rename ``tmp`` to ``out``; losing a race to a process writing the same data is fine."""
    try:
        os.replace(tmp, out)
    except OSError:
        if not _holds_dataset(out, params):
            raise


def _write_split(folder: Path, count: int, num_classes: int, size: int, seed: List[int]) -> None:
    """Write ``count`` image/mask pairs to ``folder/images`` and ``folder/masks``."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for index in range(count):
        rng = np.random.default_rng(seed + [index])
        image, label = render_sample(rng, num_classes, size)
        name = f"{index:04d}.png"
        Image.fromarray(image).save(folder / "images" / name)
        mask_image(label, num_classes).save(folder / "masks" / name)


def mask_image(label: np.ndarray, num_classes: int) -> Image.Image:
    """A 0/255 grey PNG image for 2 classes, else a palette image whose indices are the classes."""
    if num_classes == 2:
        return Image.fromarray((label * 255).astype(np.uint8))
    image = Image.fromarray(label.astype(np.uint8))
    image.putpalette(_mask_palette(num_classes))
    return image


def _mask_palette(num_classes: int) -> List[int]:
    """A flat 256-entry RGB palette: black, a visible colour per class, white at 255."""
    colours = [(0, 0, 0)] + [_class_colour(MASK_COLOURS, k, value=0.9) for k in range(1, num_classes)]
    colours += [(0, 0, 0)] * (255 - len(colours)) + [(255, 255, 255)]
    return [channel for colour in colours for channel in colour]


def _class_colour(table: Sequence[Tuple[int, int, int]], k: int, value: float) -> Tuple[int, int, int]:
    """Colour of class ``k`` >= 1 from ``table``, or a golden-ratio hue beyond it."""
    if k <= len(table):
        return table[k - 1]
    r, g, b = colorsys.hsv_to_rgb((k * 0.618) % 1.0, 0.7, value)
    return int(r * 255), int(g * 255), int(b * 255)


# ------------------------------------------------------------------ rendering


def render_sample(rng: np.random.Generator, num_classes: int, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """One sample: RGB uint8 image (size, size, 3) and int64 class map (size, size)."""
    scale = size / 128
    image = _background(rng, size)
    if rng.random() < 0.5:
        _add_specks(rng, image, scale)
    label = np.zeros((size, size), dtype=np.int64)
    num_objects = 0 if rng.random() < 0.1 else int(rng.integers(1, 4))
    for _ in range(num_objects):
        cls = int(rng.integers(1, num_classes))
        shape = _object_shape(rng, cls, size)
        _paint(image, shape, _object_layer(rng, cls, shape, size), sigma=rng.uniform(0.7, 1.4) * scale)
        label[shape] = cls
    image += rng.normal(0.0, rng.uniform(3.0, 7.0), image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation (a smooth random field)."""
    sigmas = (sigma, sigma) + (0,) * (len(shape) - 2)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigmas)
    return field / (field.std() + 1e-8)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float (size, size, 3) tissue-like background: tinted, textured, unevenly lit."""
    tint = rng.dirichlet(np.ones(len(BACKGROUND_TINTS))) @ BACKGROUND_TINTS + rng.normal(0, 6, 3)
    luminance = 10 * _smooth_noise(rng, (size, size), size / 10) + 5 * _smooth_noise(rng, (size, size), size / 40)
    colour_drift = 4 * _smooth_noise(rng, (size, size, 3), size / 8)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    lighting = rng.uniform(5, 15) * (np.cos(angle) * xx + np.sin(angle) * yy)
    return tint + (luminance + lighting)[..., None] + colour_drift


def _add_specks(rng: np.random.Generator, image: np.ndarray, scale: float) -> None:
    """Paint a few small unlabelled dark specks of the background's own colour."""
    size = image.shape[0]
    for _ in range(int(rng.integers(1, 6))):
        centre = rng.uniform(0.05, 0.95, 2) * size
        radius = rng.uniform(1.2, 2.8) * scale
        yy, xx = np.mgrid[0:size, 0:size]
        speck = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
        darker = image * rng.uniform(0.6, 0.75)
        _paint(image, speck, darker, sigma=0.6 * scale)


def _object_shape(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """Boolean mask of one star-shaped object whose outline depends on its class."""
    centre = rng.uniform(0.2, 0.8, 2) * size
    radius = rng.uniform(0.09, 0.22) * size
    yy, xx = np.mgrid[0:size, 0:size]
    dy, dx = yy - centre[0], xx - centre[1]
    theta = np.arctan2(dy, dx) - rng.uniform(0, 2 * np.pi)
    distance = np.hypot(dy, dx)
    if cls == 1:
        outline = _ellipse_radius(theta, radius, rng.uniform(1.0, 1.6)) * _wobble(rng, theta, 0.12)
    elif cls == 2:
        outline = _ellipse_radius(theta, radius * 1.3, rng.uniform(2.5, 4.0)) * _wobble(rng, theta, 0.04)
    else:
        outline = _polygon_radius(theta, radius * 1.1, cls) * _wobble(rng, theta, 0.03)
    return distance <= outline


def _ellipse_radius(theta: np.ndarray, radius: float, aspect: float) -> np.ndarray:
    """Polar radius of an ellipse with semi-axes ``radius`` and ``radius / aspect``."""
    a, b = radius, radius / aspect
    return a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)


def _polygon_radius(theta: np.ndarray, radius: float, sides: int) -> np.ndarray:
    """Polar radius of a regular polygon with ``sides`` corners at distance ``radius``."""
    sector = 2 * np.pi / sides
    return radius * np.cos(np.pi / sides) / np.cos(np.mod(theta, sector) - np.pi / sides)


def _wobble(rng: np.random.Generator, theta: np.ndarray, amount: float) -> np.ndarray:
    """Low-frequency angular noise: 1 + a sum of random harmonics 2..5 of size ~``amount``."""
    wobble = np.ones_like(theta)
    for k in range(2, 6):
        wobble += rng.uniform(0, amount) / (k - 1) ** 0.5 * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return wobble


def _object_layer(rng: np.random.Generator, cls: int, shape: np.ndarray, size: int) -> np.ndarray:
    """A float (size, size, 3) colour layer for one object: class colour, texture, darker core."""
    colour = np.array(_class_colour(OBJECT_COLOURS, cls, value=0.6), dtype=np.float64) + rng.normal(0, 10, 3)
    texture = 8 * _smooth_noise(rng, (size, size), size / 30)
    inside = ndimage.distance_transform_edt(shape)
    core = 1.0 - 0.2 * inside / (inside.max() + 1e-8)
    return colour * core[..., None] + texture[..., None]


def _paint(image: np.ndarray, shape: np.ndarray, layer: np.ndarray, sigma: float) -> None:
    """Blend ``layer`` into ``image`` in place where ``shape`` is, with edges blurred by ``sigma``."""
    alpha = ndimage.gaussian_filter(shape.astype(np.float64), sigma)[..., None]
    image *= 1.0 - alpha
    image += alpha * layer


# -------------------------------------------------------------------- dataset


class SyntheticDataset(FolderDataset):
    """A FolderDataset over synthetic demo data, generated into ``root`` on first use.

    Args:
        root: folder of the generated data; created when missing (a folder
            holding data generated with other arguments raises).
        split: "train", "val" or "all" (there is no test split).
        num_classes: number of classes, background included.
        transforms: callable ``(Image, Mask) -> (Image, Mask)``.
        in_channels: channels of the returned image (1 gives grey).
        seed: seed of the generator.
        mask_mapping: None picks the right one for the generated masks
            ("binary" for 2 classes, else "identity").
        intensity: image scaling, see ``FolderDataset``.
        val_fraction: unused (the data has train/ and val/ folders); kept so
            the arguments match ``FolderDataset``.
        cache: keep decoded samples in memory.
        num_train: number of generated training images.
        num_val: number of generated validation images.
        image_size: height and width of the generated images.
    """

    generates_its_files = True

    def __init__(
        self,
        root: str,
        split: str,
        num_classes: int,
        transforms: Any = None,
        in_channels: int = 3,
        seed: int = 0,
        mask_mapping: Optional[Union[str, Dict[Any, int]]] = None,
        intensity: Literal["auto", "percentile", "none"] = "auto",
        val_fraction: float = 0.2,
        cache: bool = False,
        num_train: int = 160,
        num_val: int = 40,
        image_size: int = 128,
    ) -> None:
        generate(root, num_classes, num_train, num_val, image_size, seed)
        if mask_mapping is None:
            mask_mapping = "binary" if num_classes == 2 else "identity"
        super().__init__(
            root=root, split=split, num_classes=num_classes, transforms=transforms, in_channels=in_channels,
            seed=seed, mask_mapping=mask_mapping, intensity=intensity, val_fraction=val_fraction, cache=cache,
        )


# `python -m datasets.synthetic` runs this file a second time, as __main__, after
# `import datasets` has imported and registered it: register only the first copy.
if "synthetic" not in DATASETS:
    DATASETS.register("synthetic")(SyntheticDataset)


def main(argv: Optional[List[str]] = None) -> None:
    """Command line entry point: generate a dataset where ``--out`` says."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--num-classes", type=int, default=2, help="classes including background (default 2)")
    parser.add_argument("--num-train", type=int, default=160, help="training images (default 160)")
    parser.add_argument("--num-val", type=int, default=40, help="validation images (default 40)")
    parser.add_argument("--size", type=int, default=128, help="image height and width (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    generate(args.out, args.num_classes, args.num_train, args.num_val, args.size, args.seed)


if __name__ == "__main__":
    main()
