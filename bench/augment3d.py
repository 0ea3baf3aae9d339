"""Can one loader worker augment fast enough? nnU-Net's default pipeline in samples/s, on a volume and an image.

Times ``PIPELINE`` (the default list of ``utils/transforms/nnunet.py``, each
transform with nnU-Net's probability) on ``--samples`` calls with a
``--volume`` patch (default (1, 64, 128, 128)) and a ``--image`` (default
(3, 512, 512)), each with an int64 mask of 3 classes, on ``--threads`` torch
threads (default 1: one DataLoader worker). Then each transform alone, forced
to act (every ``p`` set to 1), in ms per call, best of ``--repeats`` rounds of
``--calls`` calls. The loader should stay at least 2x faster than the model's
training step; compare with ``bench/patches.py`` for the model's side.

    python bench/augment3d.py [--volume 1 64 128 128] [--image 3 512 512] [--samples 40] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.transforms import ms_per_call  # noqa: E402
from utils.transforms import build_transforms  # noqa: E402

#: nnU-Net v2's default training augmentation, as the nnunet.py docstring lists it.
PIPELINE: List[dict] = [
    {"name": "nnunet_spatial"},
    {"name": "nnunet_noise"},
    {"name": "nnunet_blur"},
    {"name": "nnunet_brightness"},
    {"name": "nnunet_contrast"},
    {"name": "nnunet_low_resolution"},
    {"name": "nnunet_gamma", "invert": True, "p": 0.1},
    {"name": "nnunet_gamma"},
    {"name": "nnunet_mirror"},
]


def forced(spec: dict) -> dict:
    """``spec`` with every probability set to 1 (the mirror flips every axis)."""
    keys = {"nnunet_spatial": ("p_rotation", "p_scale"), "nnunet_blur": ("p", "p_per_channel"),
            "nnunet_low_resolution": ("p", "p_per_channel")}.get(spec["name"], ("p",))
    return {**spec, **{key: 1.0 for key in keys}}


def label(spec: dict) -> str:
    args = ", ".join(f"{key}={value}" for key, value in spec.items() if key not in ("name", "p"))
    return f"{spec['name']}({args})"


def make_sample(shape: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(*shape), torch.randint(0, 3, tuple(shape[1:]))


def samples_per_second(call: Callable[[], object], samples: int) -> float:
    """Calls per second over ``samples`` calls, after one warm-up call."""
    call()
    start = time.perf_counter()
    for _ in range(samples):
        call()
    return samples / (time.perf_counter() - start)


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volume", type=int, nargs=4, default=[1, 64, 128, 128], metavar=("C", "Z", "Y", "X"))
    p.add_argument("--image", type=int, nargs=3, default=[3, 512, 512], metavar=("C", "H", "W"))
    p.add_argument("--samples", type=int, default=40, help="timed pipeline calls per shape")
    p.add_argument("--calls", type=int, default=5, help="calls per timed round of one transform")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per transform (the fastest is reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        torch.manual_seed(0)
        shapes = {"3D": args.volume, "2D": args.image}
        pairs = {dims: make_sample(shape) for dims, shape in shapes.items()}
        pipeline = build_transforms(PIPELINE)
        speed = {dims: samples_per_second(lambda: pipeline(*pair), args.samples) for dims, pair in pairs.items()}
        rows = []
        for spec in PIPELINE:
            alone = build_transforms([forced(spec)])
            rows.append((label(spec), [ms_per_call(lambda: alone(*pair), args.calls, args.repeats)
                                       for pair in pairs.values()]))
    finally:
        torch.set_num_threads(threads)
    print(f"nnU-Net default augmentations, {args.threads} threads, {args.samples} samples per shape")
    for dims, shape in shapes.items():
        print(f"{dims} {str(tuple(shape)):20s} {speed[dims]:9.1f} samples/s")
    print(f"{'transform, forced to act':40s} {'3D ms':>8s} {'2D ms':>8s}")
    for name, times in rows:
        print(f"{name:40s} {times[0]:8.2f} {times[1]:8.2f}")
    return {"3d": speed["3D"], "2d": speed["2D"]}


if __name__ == "__main__":
    main()
