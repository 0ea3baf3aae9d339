"""How much train.py's loop costs beyond the model's own work.

Times one epoch through ``train.train_one_epoch`` (DataLoader reading PNGs,
paired transforms, loss, optimizer and scheduler steps, tqdm, logging) against
a bare loop of forward + loss + backward + optimizer step over the same
batches preloaded in memory, and prints both and their ratio (target <= 1.15
on a 2-core CPU, AMP off). Data: the synthetic demo generator, written to a
temp dir.

On CUDA it then times the train.py epoch under each speed setting, AMP off /
fp16 / bf16, with and without channels_last, and prints images/s for each
(``--variants`` picks them; on the CPU it can time ``bf16`` too).

    python bench/train_overhead.py [--images 96] [--epochs 2] [--threads 2] [--workers 1]
                                   [--device auto] [--variants off fp16 bf16 off+cl bf16+cl]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from datasets.synthetic import generate  # noqa: E402
from utils.amp import grad_scaler, resolve_amp  # noqa: E402
from utils.builders import (build_criterion, build_datasets, build_loaders, build_model, build_optimizer,  # noqa: E402
                            build_scheduler, prepare_model, resolve_num_workers)
from utils.config import load_config  # noqa: E402
from utils.distributed import DistInfo  # noqa: E402
from utils.losses import build_loss  # noqa: E402
from utils.runtime import StopFlag, seed_everything, select_device  # noqa: E402
from utils.train_state import RoundStats, TrainState  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def raw_epoch(model: torch.nn.Module, batches: list, criterion, optimizer, device: torch.device) -> float:
    """Forward + loss + backward + step over preloaded batches; seconds."""
    model.train()
    synchronize(device)
    start = time.perf_counter()
    for images, masks in batches:
        loss, _ = criterion(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one_epoch(state: TrainState, loader, epoch: int) -> float:
    """One pass over ``loader`` through train.py's step (as many whole accumulation steps as fit); seconds."""
    steps = len(loader) // state.cfg.train.accumulate
    stats = train.train_one_round(state, iter(loader), steps, RoundStats(), StopFlag(), label=f"epoch {epoch}")
    return stats.seconds


def variant_speed(cfg, variant: str, train_ds, val_ds, device: torch.device, epochs: int) -> float:
    """Images/s of train.py's epoch with ``variant`` = amp mode, plus ``+cl`` for channels_last."""
    amp, _, layout = variant.partition("+")
    cfg.train.amp, cfg.train.channels_last = amp, layout == "cl"
    seed_everything(cfg.seed)
    loader, _ = build_loaders(cfg, train_ds, val_ds, device)
    model = prepare_model(cfg, device, DistInfo())
    optimizer = build_optimizer(cfg, model)
    state = TrainState(cfg, device, model, model, build_loss(cfg.loss), optimizer,
                       build_scheduler(cfg, optimizer, len(loader)), grad_scaler(device, resolve_amp(amp, device)), None)
    best = float("inf")
    for epoch in range(epochs + 1):  # the first epoch warms up (cuDNN autotuning, allocator)
        synchronize(device)
        seconds = train_one_epoch(state, loader, epoch)
        if epoch > 0:
            best = min(best, seconds)
    return len(loader) * cfg.train.batch_size / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    p.add_argument("--images", type=int, default=96, help="training images (the epoch length)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per path (the fastest of each is compared)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--workers", default="auto", help="data.num_workers for the train.py path (auto: the config's rule)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--variants", nargs="*", default=None,
                   help="speed settings to time after the overhead ratio: off, fp16, bf16, each optionally +cl "
                        "(channels_last); default: all on CUDA, none on the CPU")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    variants = args.variants if args.variants is not None else (
        ["off", "fp16", "bf16", "off+cl", "fp16+cl", "bf16+cl"] if device.type == "cuda" else [])

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "demo"
        generate(root, num_classes=2, num_train=args.images, num_val=8, image_size=128, seed=0)
        cfg = load_config(args.config, [f"data.root={root}", f"data.num_workers={args.workers}",
                                        "train.progress=true", f"train.checkpoint_dir={tmp}/ckpt", "train.amp=off",
                                        f"device={device}"])
        seed_everything(cfg.seed)
        train_ds, val_ds = build_datasets(cfg)
        loader, _ = build_loaders(cfg, train_ds, val_ds, device)
        model = build_model(cfg).to(device)
        criterion = build_criterion(cfg, train_ds, Path(tmp))
        optimizer = build_optimizer(cfg, model)
        state = TrainState(cfg, device, model, model, criterion, optimizer,
                           build_scheduler(cfg, optimizer, len(loader)), grad_scaler(device, "off"), None)

        batches = [(x.to(device), y.to(device)) for x, y in loader]  # also warms the persistent workers
        raw_epoch(model, batches[:2], criterion, optimizer, device)  # warm-up (allocator, kernels)
        loop_times, raw_times = [], []
        for epoch in range(1, args.epochs + 1):  # interleaved so machine noise hits both alike
            synchronize(device)
            loop_times.append(train_one_epoch(state, loader, epoch))
            raw_times.append(raw_epoch(model, batches, criterion, optimizer, device))

        n = len(batches) * cfg.train.batch_size
        loop, raw = min(loop_times), min(raw_times)
        workers = resolve_num_workers(cfg.data.num_workers, device)
        print(f"config {args.config}: {n} images/epoch at batch {cfg.train.batch_size}, on {device}, "
              f"{args.threads} torch threads, {workers} loader workers, AMP off")
        print(f"train.py epoch (DataLoader + transforms + loss + step + tqdm): {loop:7.2f} s  ({n / loop:6.1f} img/s)")
        print(f"raw forward+backward+step on preloaded batches:           {raw:7.2f} s  ({n / raw:6.1f} img/s)")
        print(f"overhead ratio: {loop / raw:.3f}  (target <= 1.15)")
        if variants:
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
            print(f"train.py epoch speed by setting on {name} (best of {args.epochs} after a warm-up epoch):")
            for variant in variants:
                speed = variant_speed(cfg, variant, train_ds, val_ds, device, args.epochs)
                print(f"  amp {variant.partition('+')[0]:4s} channels_last {str(variant.endswith('+cl')):5s}: "
                      f"{speed:8.1f} img/s")


if __name__ == "__main__":
    main()
