"""What the sliding window costs over a volume beyond the model's own work, for a 3D UNet as nnU-Net sets one up.

Prints, for a 3D UNet (instance norm, strides [1, 2, 2] then [2, 2, 2]) and
one volume (N, 1, Z, Y, X) left on the CPU, as test.py keeps a case:

* raw tiles: the forward passes of exactly the (z, y, x) tiles the sliding
  window runs, batched the same way (``--tile-batch`` per pass), already
  stacked on the device: the model's own work;
* sliding window: :func:`utils.inference.predict_probabilities` in ``slide``
  mode: cropping, the copy to the device, softmax, Gaussian weighting (sigma
  1/8 of the tile per axis), stitching and the final division on top of the
  same forward passes;
* their ratio (target <= 1.2), and the window's own work measured apart, with
  a stand-in model that returns stored logits at once;
* with ``--mirror``, the window with mirroring over z, y and x
  (``flips: all``, 8 passes), against the plain window.

Every figure is the fastest of ``--repeats`` timed runs (raw and sliding runs
interleaved), after one untimed warm-up forward of each tile-batch shape.
Defaults: a 64 x 192 x 192 volume, 32 x 64 x 64 tiles (75 of them), 2 threads
(about a minute on the CPU; add ``--mirror`` for 8 times the window).

    python bench/sliding3d.py [--base-channels 16] [--depth 4] [--classes 2] [--size Z Y X] [--tile Z Y X]
                              [--overlap 0.5] [--tile-batch 2] [--batch 1] [--amp off] [--threads 2]
                              [--device auto] [--repeats 1] [--mirror]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.inference import Replay, synchronize, tile_batches, timed  # noqa: E402
from models.unet import UNet  # noqa: E402
from utils.amp import autocast, resolve_amp  # noqa: E402
from utils.config import InferenceConfig  # noqa: E402
from utils.inference import predict_probabilities  # noqa: E402


def strides(depth: int) -> List[List[int]]:
    """nnU-Net's pooling for anisotropic volumes: y, x only at the first level, then every axis."""
    return [[1, 2, 2]] + [[2, 2, 2]] * (depth - 1)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-channels", type=int, default=16, help="width of the first UNet level")
    p.add_argument("--depth", type=int, default=4, help="UNet levels (strides [1, 2, 2], then [2, 2, 2])")
    p.add_argument("--classes", type=int, default=2, help="output channels (1: sigmoid, more: softmax)")
    p.add_argument("--size", type=int, nargs=3, default=[64, 192, 192], metavar=("Z", "Y", "X"),
                   help="volume size")
    p.add_argument("--tile", type=int, nargs=3, default=[32, 64, 64], metavar=("Z", "Y", "X"), help="tile size")
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--tile-batch", type=int, default=2, help="tiles per forward pass")
    p.add_argument("--batch", type=int, default=1, help="volumes per prediction call")
    p.add_argument("--amp", default="off", choices=["bf16", "fp16", "off"])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per figure (the fastest is kept)")
    p.add_argument("--mirror", action="store_true", help="also time mirroring over z, y, x (8 passes)")
    args = p.parse_args(argv)
    if min(args.base_channels, args.depth, args.classes, args.tile_batch, args.batch, args.threads,
           args.repeats, *args.size, *args.tile) < 1:
        p.error("--base-channels, --depth, --classes, --tile-batch, --batch, --threads, --repeats, --size and "
                "--tile must be at least 1")
    if not 0 <= args.overlap < 1:
        p.error("--overlap must lie in [0, 1)")
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    amp = resolve_amp(args.amp, device, warn=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args, device, amp)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace, device: torch.device, amp: str) -> Dict[str, float]:
    torch.manual_seed(0)
    model = UNet(in_channels=1, out_channels=args.classes, base_channels=args.base_channels, depth=args.depth,
                 dims=3, norm="instance", strides=strides(args.depth)).to(device).eval()
    volume = torch.randn(args.batch, 1, *args.size)  # stays on the CPU: only tiles go to the device
    tile = tuple(args.tile)
    batches = tile_batches(volume, tile, args.overlap, args.tile_batch, device)
    slide = InferenceConfig(mode="slide", tile=tile, overlap=args.overlap, tile_batch=args.tile_batch)

    @torch.inference_mode()
    def raw() -> None:
        for batch in batches:
            with autocast(device, amp):
                model(batch)

    def window(settings: InferenceConfig, net: torch.nn.Module = model) -> float:
        return timed(lambda: predict_probabilities(net, volume, amp=amp, settings=settings).cpu(), device)

    with torch.inference_mode(), autocast(device, amp):  # warm-up: every tile-batch shape timed
        for batch in {tuple(b.shape): b for b in batches}.values():
            model(batch)
    synchronize(device)

    raw_s, slide_s = [], []
    for _ in range(args.repeats):
        raw_s.append(timed(raw, device))
        slide_s.append(window(slide))
    with torch.inference_mode(), autocast(device, amp):
        replay = Replay(model(batches[0]).float().clone())
    figures = {"raw": min(raw_s), "slide": min(slide_s)}
    figures["ratio"] = figures["slide"] / figures["raw"]
    figures["window_alone"] = min(window(slide, replay) for _ in range(args.repeats))
    if args.mirror:
        figures["mirror"] = min(window(dataclasses.replace(slide, flips="all")) for _ in range(args.repeats))
    report(args, device, amp, tile, batches, figures)
    return figures


def report(args: argparse.Namespace, device: torch.device, amp: str, tile: Tuple[int, ...], batches: list,
           figures: Dict[str, float]) -> None:
    """Print the settings and the raw-vs-window figures."""
    tiles = sum(b.shape[0] for b in batches)
    where = f"{device}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    size = " x ".join(str(s) for s in args.size)
    print(f"unet 3D (base_channels {args.base_channels}, depth {args.depth}, instance norm), {args.classes} "
          f"classes, amp {amp}, on {where}; volume {args.batch} x 1 x {size}, tile "
          f"{' x '.join(str(t) for t in tile)}, overlap {args.overlap}: {tiles} tiles in {len(batches)} passes "
          f"of <= {args.tile_batch}; fastest of {args.repeats}")
    raw_t = figures["raw"]
    print(f"raw forward of the same tiles:   {raw_t:8.3f} s")
    print(f"sliding window (volume on cpu):  {figures['slide']:8.3f} s")
    print(f"ratio sliding / raw: {figures['ratio']:.3f}  (target <= 1.2)")
    print(f"the window without the model (replayed logits): {figures['window_alone']:.3f} s "
          f"= {figures['window_alone'] / raw_t:.1%} of raw")
    if "mirror" in figures:
        print(f"sliding window + mirroring over z, y, x (8 passes): {figures['mirror']:.3f} s "
              f"= {figures['mirror'] / figures['slide']:.2f} x the plain window")


if __name__ == "__main__":
    main()
