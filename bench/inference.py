"""What the sliding window costs beyond the model's own work, and whole-image throughput per inference mode.

Prints, for one model and one image size:

* raw tiles: the forward passes of exactly the tiles the sliding window runs,
  batched the same way (``--tile-batch`` per pass, tiles of every image of the
  batch together), already stacked on the device: the model's own work;
* sliding window: :func:`utils.inference.predict_probabilities` in ``slide``
  mode with the image left on the CPU, as ``test.py`` and validation keep it:
  cropping, the copy to the device, sigmoid/softmax, Gaussian weighting,
  stitching and the final division on top of the same forward passes;
* their ratio (target <= 1.2), and the window's own work measured apart:
  the same call with a stand-in model that returns stored logits at once
  (cropping, copies, softmax, weighting, stitching, division), which machine
  noise cannot hide inside the forward passes;
* images/s of whole-image and sliding-window prediction, each without and
  with horizontal-flip TTA (two passes), from an image on the CPU to its
  probabilities on the CPU (copies to and from the device included).

Every figure is the fastest of ``--repeats`` timed runs (raw and sliding runs
interleaved, so machine noise hits both alike), after one untimed warm-up
forward of each tile-batch shape and of the whole image. Defaults: 1024x2048 (a
Cityscapes frame) with 512x1024 tiles on CUDA; 512x1024 with 256x512 tiles on
the CPU (about 2 minutes on 2 threads).

    python bench/inference.py [--model unet] [--base-channels 16] [--classes 19] [--size H W] [--tile H W]
                              [--overlap 0.5] [--tile-batch 4] [--batch 1] [--amp off] [--threads 2]
                              [--device auto] [--repeats 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402,F401 - fills the registry
from utils.amp import autocast, resolve_amp  # noqa: E402
from utils.config import InferenceConfig  # noqa: E402
from utils.inference import predict_probabilities, tile_origins  # noqa: E402
from utils.registry import MODELS  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def tile_batches(image: torch.Tensor, tile: Tuple[int, ...], overlap: float, tile_batch: int,
                 device: torch.device) -> List[torch.Tensor]:
    """The stacked tile batches the sliding window runs (zero-padded to the tile, as it does), on ``device``.

    ``image`` (N, C, H, W) with ``tile`` (h, w), or a volume (N, C, Z, Y, X) with (z, y, x).
    """
    shape = tuple(image.shape[2:])
    size = tuple(max(s, t) for s, t in zip(shape, tile))
    pads: List[int] = []
    for s, p in reversed(list(zip(shape, size))):  # F.pad lists the last axis first
        pads += [(p - s) // 2, p - s - (p - s) // 2]
    padded = torch.nn.functional.pad(image, pads)
    jobs = [(i, tuple(slice(o, o + t) for o, t in zip(origin, tile)))
            for i in range(image.shape[0]) for origin in tile_origins(size, tile, overlap)]
    return [torch.stack([padded[(i, slice(None), *window)] for i, window in jobs[s:s + tile_batch]]).to(device)
            for s in range(0, len(jobs), tile_batch)]


class Replay(torch.nn.Module):
    """Returns one stored logits tile batch (cut to the batch size): the window's own work without a model."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[:x.shape[0]]


def build_model(name: str, base_channels: int, classes: int) -> torch.nn.Module:
    cls = MODELS.get(name)
    kwargs: Dict[str, int] = {"in_channels": 3, "out_channels": classes}
    if "base_channels" in inspect.signature(cls).parameters:
        kwargs["base_channels"] = base_channels
    return cls(**kwargs)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="unet", help="registered model name")
    p.add_argument("--base-channels", type=int, default=16, help="base_channels, for models that take it")
    p.add_argument("--classes", type=int, default=19, help="output channels (1: sigmoid, more: softmax)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="image size (default 1024 2048 on CUDA, 512 1024 on the CPU)")
    p.add_argument("--tile", type=int, nargs=2, metavar=("H", "W"), help="tile size (default: half the image)")
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--tile-batch", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--batch", type=int, default=1, help="images per prediction call")
    p.add_argument("--amp", default="off", choices=["bf16", "fp16", "off"])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per figure (the fastest is kept)")
    args = p.parse_args(argv)
    if min(args.base_channels, args.classes, args.tile_batch, args.batch, args.threads, args.repeats) < 1:
        p.error("--base-channels, --classes, --tile-batch, --batch, --threads and --repeats must be at least 1")
    if not 0 <= args.overlap < 1:
        p.error("--overlap must lie in [0, 1)")
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    args = parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    size = tuple(args.size) if args.size else ((1024, 2048) if device.type == "cuda" else (512, 1024))
    tile = tuple(args.tile) if args.tile else (max(1, size[0] // 2), max(1, size[1] // 2))
    amp = resolve_amp(args.amp, device, warn=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return run(args, device, size, tile, amp)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace, device: torch.device, size: Tuple[int, int], tile: Tuple[int, int],
        amp: str) -> Dict[str, float]:
    torch.manual_seed(0)
    model = build_model(args.model, args.base_channels, args.classes).to(device).eval()
    image = torch.randn(args.batch, 3, *size)  # stays on the CPU, as test.py keeps it for the sliding window
    batches = tile_batches(image, tile, args.overlap, args.tile_batch, device)
    slide = InferenceConfig(mode="slide", tile=tile, overlap=args.overlap, tile_batch=args.tile_batch)
    whole = InferenceConfig(mode="whole")

    @torch.inference_mode()
    def raw() -> None:
        for batch in batches:
            with autocast(device, amp):
                model(batch)

    def predict(settings: InferenceConfig) -> Callable[[], object]:
        def call() -> object:
            x = image if settings.mode == "slide" else image.to(device)
            return predict_probabilities(model, x, amp=amp, settings=settings).cpu()
        return call

    with torch.inference_mode():  # warm-up: allocator, kernels, oneDNN primitives for every shape timed
        with autocast(device, amp):
            for batch in {tuple(b.shape): b for b in batches}.values():  # a full and a last, partial batch
                model(batch)
            model(image.to(device))
    synchronize(device)

    raw_s, slide_s = [], []
    for _ in range(args.repeats):
        raw_s.append(timed(raw, device))
        slide_s.append(timed(predict(slide), device))
    cases = [("whole", whole), ("slide", slide),
             ("whole + flip h", InferenceConfig(mode="whole", flips=["h"])),
             ("slide + flip h", dataclasses.replace(slide, flips=["h"]))]
    if device.type == "cuda":
        cases.insert(2, ("slide, stitched on cpu", dataclasses.replace(slide, stitch_device="cpu")))
    seconds: Dict[str, float] = {"slide": min(slide_s)}
    for name, settings in cases:
        if name not in seconds:
            seconds[name] = min(timed(predict(settings), device) for _ in range(args.repeats))

    with torch.inference_mode(), autocast(device, amp):
        replay = Replay(model(batches[0]).float().clone())
    alone = min(timed(lambda: predict_probabilities(replay, image, amp=amp, settings=slide).cpu(), device)
                for _ in range(args.repeats))

    raw_t, slide_t = min(raw_s), min(slide_s)
    report(args, device, size, tile, amp, batches, raw_t, slide_t, alone, cases, seconds)
    return {"raw": raw_t, "ratio": slide_t / raw_t, "window_alone": alone, **seconds}


def report(args: argparse.Namespace, device: torch.device, size: Tuple[int, int], tile: Tuple[int, int], amp: str,
           batches: list, raw_t: float, slide_t: float, alone: float, cases: list, seconds: Dict[str, float]) -> None:
    """Print the settings, the raw-vs-window figures and the table of inference modes."""
    tiles = sum(b.shape[0] for b in batches)
    where = f"{device}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    print(f"{args.model} (base_channels {args.base_channels}), {args.classes} classes, amp {amp}, on {where}; "
          f"batch {args.batch} x 3 x {size[0]} x {size[1]}, tile {tile[0]} x {tile[1]}, overlap {args.overlap}: "
          f"{tiles} tiles in {len(batches)} passes of <= {args.tile_batch}; fastest of {args.repeats}")
    print(f"raw forward of the same tiles:  {raw_t:8.3f} s")
    print(f"sliding window (image on cpu):  {slide_t:8.3f} s")
    print(f"ratio sliding / raw: {slide_t / raw_t:.3f}  (target <= 1.2)")
    print(f"the window without the model (replayed logits): {alone:.3f} s = {alone / raw_t:.1%} of raw")
    print()
    print("| mode | s / call | img/s |")
    print("|---|---:|---:|")
    for name, _ in cases:
        print(f"| {name} | {seconds[name]:.3f} | {args.batch / seconds[name]:.3f} |")


if __name__ == "__main__":
    main()
