"""Time every paired transform, and torchvision v2 against our own where we keep ours.

First table: each transform of ``SPECS`` built with ``build_transforms`` and
called on one sample, a ``--size`` RGB float image with its int64 mask.
Second table: the transforms we implement ourselves although torchvision v2
has one doing much the same job, each beside that v2 transform with the same
ranges (geometry: bilinear image, nearest mask, fill image 0 / mask 255).
Their ratio is part of the reason written beside the kept code; if a
torchvision release closes the gap, switch to v2.

Figures are the best of ``--repeats`` rounds of ``--calls`` calls, in ms per
call, on ``--threads`` torch threads (default 1: one DataLoader worker). They
include the draws; random streams differ, so every timed call makes its own.

    python bench/transforms.py [--size 512 512] [--calls 20] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.constants import IGNORE_INDEX  # noqa: E402
from utils.transforms import build_transforms  # noqa: E402

AFFINE = {"name": "affine", "degrees": 20, "translate": [0.1, 0.1], "scale": [0.8, 1.2], "shear": 10}
ELASTIC = {"name": "elastic", "alpha": 34.0, "sigma": 4.0, "p": 1.0}
PHOTOMETRIC = {"name": "photometric_distortion", "p": 1.0}
SPECS: List[dict] = [
    {"name": "resize", "size": [256, 256]},
    {"name": "random_resized_crop", "size": 256},
    {"name": "random_crop", "size": 256},
    {"name": "random_crop", "size": 256, "cat_max_ratio": 0.75},
    {"name": "random_resize", "scale": [512, 1024], "ratio_range": [0.5, 2.0]},
    {"name": "random_scale_crop", "size": 256, "scale": [0.5, 2.0]},
    {"name": "hflip", "p": 1.0},
    {"name": "rotate", "degrees": 30},
    AFFINE,
    ELASTIC,
    {"name": "color_jitter", "brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05},
    PHOTOMETRIC,
    {"name": "gaussian_blur", "p": 1.0},
    {"name": "gaussian_noise", "p": 1.0},
    {"name": "normalize"},
]

FILL = {tv_tensors.Image: 0.0, tv_tensors.Mask: IGNORE_INDEX}
BILINEAR = v2.InterpolationMode.BILINEAR

#: Our transform spec -> the v2 transform doing the same job (elastic: v2's
#: alpha is twice the displacement in pixels, ours is the displacement).
KEPT_VERSUS_V2: List[Tuple[dict, Callable[[], v2.Transform]]] = [
    (ELASTIC, lambda: v2.ElasticTransform(alpha=68.0, sigma=4.0, interpolation=BILINEAR, fill=FILL)),
    (PHOTOMETRIC, lambda: v2.RandomPhotometricDistort(p=1.0)),
]


def ms_per_call(call: Callable[[], object], calls: int, repeats: int) -> float:
    """Best of ``repeats`` rounds of ``calls`` calls, in milliseconds per call, after one warm-up call."""
    call()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e3


def spec_label(spec: Dict[str, object]) -> str:
    args = ", ".join(f"{key}={value}" for key, value in spec.items() if key != "name")
    return f"{spec['name']}({args})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"), help="sample size")
    p.add_argument("--calls", type=int, default=20, help="calls per timed round")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (the fastest is reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.rand(3, *args.size))
    mask = tv_tensors.Mask(torch.randint(0, 5, tuple(args.size)))
    print(f"sample 3x{args.size[0]}x{args.size[1]} float image + int64 mask; torch threads {args.threads}; "
          f"best of {args.repeats} x {args.calls} calls\n")
    print(f"{'transform':72s} {'ms/call':>8s}")
    for spec in SPECS:
        pipeline = build_transforms([spec])
        print(f"{spec_label(spec):72s} {ms_per_call(lambda: pipeline(image, mask), args.calls, args.repeats):8.2f}")
    print(f"\n{'kept (ours) vs torchvision v2':50s} {'ours ms':>8s} {'v2 ms':>8s} {'v2/ours':>8s}")
    for spec, make_v2 in KEPT_VERSUS_V2:
        ours, theirs = build_transforms([spec]), make_v2()
        ours_ms = ms_per_call(lambda: ours(image, mask), args.calls, args.repeats)
        v2_ms = ms_per_call(lambda: theirs(image, mask), args.calls, args.repeats)
        print(f"{spec['name'] + ' vs ' + type(theirs).__name__:50s} {ours_ms:8.2f} {v2_ms:8.2f} "
              f"{v2_ms / ours_ms:7.1f}x")


if __name__ == "__main__":
    main()
