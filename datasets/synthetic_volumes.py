"""Synthetic demo volumes: an anisotropic MRI-like dataset in the seed's ``.npz`` layout.

Each case is a body (an elliptic cylinder of textured tissue, 0 outside it,
so non-zero cropping has work to do) holding an organ (class 1, an ellipsoid
brighter than the tissue, with its own texture) and a lesion (class 2, a
small darker ellipsoid inside or beside the organ), in Rician-like noise.
Voxels are anisotropic: about 3.5 mm between slices and 1 mm in plane, jittered
per case (z 3-4 mm, in-plane 0.9-1.1 mm), so planning has a spacing to
choose and an anisotropic axis to respect. Shapes vary per case.

Written as ``<out>/train/<case>.npz`` (``data`` [1, Z, Y, X] float32, ``seg``
[Z, Y, X] uint8) with ``<case>.json`` (``{"spacing": [z, y, x]}``), the same
under ``val/``, and unlabelled cases (no ``seg``) under ``test/``.

Command line::

    python -m datasets.synthetic_volumes --out data/volumes_demo
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

#: File written last into a generated dataset, holding the generator arguments.
MARKER = "synthetic_volumes.json"
CLASS_NAMES = ["background", "organ", "lesion"]
#: Sizes in mm of the body, organ and lesion, times this: a small anatomy (about 14 x 66 x 66 voxels a case)
#: that a 3D UNet learns on two CPU cores in minutes.
ANATOMY_SCALE = 0.6


def generate(out: Path, num_train: int = 8, num_val: int = 2, num_test: int = 1, seed: int = 0,
             voxel_scale: float = 1.0) -> Path:
    """Write the dataset to ``out`` unless it already holds one made with these arguments; ``voxel_scale``
    multiplies every voxel size (3: the same anatomy in 27x fewer voxels, for tests)."""
    out = Path(out)
    params = {"num_train": num_train, "num_val": num_val, "num_test": num_test, "seed": seed,
              "voxel_scale": voxel_scale, "version": 1}
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == params:
        log.info("%s already holds the synthetic volumes", out)
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not this generator's output; choose another --out")
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    rng = np.random.default_rng(seed)
    index = 0
    for split, count in (("train", num_train), ("val", num_val), ("test", num_test)):
        (tmp / split).mkdir(parents=True)
        for _ in range(count):
            image, seg, spacing = render_case(rng, voxel_scale)
            arrays = {"data": image} if split == "test" else {"data": image, "seg": seg}
            np.savez_compressed(tmp / split / f"case_{index:03d}.npz", **arrays)
            (tmp / split / f"case_{index:03d}.json").write_text(json.dumps({"spacing": spacing}))
            index += 1
    (tmp / MARKER).write_text(json.dumps(params))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("wrote %d synthetic volumes to %s", index, out)
    return out


def render_case(rng: np.random.Generator, voxel_scale: float = 1.0) -> Tuple[np.ndarray, np.ndarray, List[float]]:
    """One case: image [1, Z, Y, X] float32, labels [Z, Y, X] uint8, spacing [z, y, x] in mm."""
    spacing = [voxel_scale * float(rng.uniform(3.0, 4.0)), *([voxel_scale * float(rng.uniform(0.9, 1.1))] * 2)]
    extent = ANATOMY_SCALE * np.array([rng.uniform(66, 84), rng.uniform(100, 120), rng.uniform(100, 120)])  # mm
    shape = tuple(int(round(e / s)) for e, s in zip(extent, spacing))
    zz, yy, xx = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    centre = extent / 2
    body = ((yy - centre[1]) / (0.44 * extent[1])) ** 2 + ((xx - centre[2]) / (0.46 * extent[2])) ** 2 <= 1
    organ_c = centre + ANATOMY_SCALE * rng.uniform(-8, 8, 3)
    organ_r = ANATOMY_SCALE * np.array([rng.uniform(16, 22), rng.uniform(20, 28), rng.uniform(18, 26)])
    organ = _ellipsoid(zz, yy, xx, organ_c, organ_r)
    lesion_c = organ_c + rng.uniform(-1, 1, 3) * organ_r * 0.7
    lesion_r = ANATOMY_SCALE * np.array([rng.uniform(9, 12), rng.uniform(9, 13), rng.uniform(9, 13)])
    lesion = _ellipsoid(zz, yy, xx, lesion_c, lesion_r) & body
    seg = np.zeros(shape, np.uint8)
    seg[organ & body] = 1
    seg[lesion] = 2
    texture = 1.0 / voxel_scale
    tissue = 300 + 60 * _texture(rng, shape, 2.0 * texture)
    image = np.where(body, tissue, 0.0)
    image = np.where(seg == 1, 520 + 50 * _texture(rng, shape, 1.5 * texture), image)
    image = np.where(seg == 2, 180 + 40 * _texture(rng, shape, 1.0 * texture), image)
    image = ndimage.gaussian_filter(image, sigma=(0.4 / voxel_scale, 0.8 / voxel_scale, 0.8 / voxel_scale))  # partial volume at the borders
    noise = rng.normal(0, 45, (2, *shape))
    image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2) * body  # Rician magnitude, 0 outside the body
    return image[None].astype(np.float32), seg, spacing


def _ellipsoid(zz: np.ndarray, yy: np.ndarray, xx: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2 <= 1


def _texture(rng: np.random.Generator, shape: Tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth noise of unit standard deviation."""
    field = ndimage.gaussian_filter(rng.normal(0, 1, shape), sigma=(sigma / 3, sigma, sigma))
    return field / (field.std() + 1e-8)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--num-train", type=int, default=8)
    parser.add_argument("--num-val", type=int, default=2)
    parser.add_argument("--num-test", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--voxel-scale", type=float, default=1.0, help="multiply every voxel size (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    generate(args.out, args.num_train, args.num_val, args.num_test, args.seed, args.voxel_scale)


if __name__ == "__main__":
    main()
