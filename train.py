"""Train a segmentation model from one YAML config.

    python train.py --config configs/demo.yaml [--set train.epochs=3 data.root=/my/data] [--resume]
    python train.py --config configs/demo.yaml --check-data    # scan the data, report problems, no training

Writes to ``<train.checkpoint_dir>/<experiment>/``: ``config.yaml`` (the
resolved config), ``last.pt`` and ``best.pt`` (plain-typed, written
atomically), ``metrics.json`` (per-epoch history), ``train.log`` and
TensorBoard events. Ctrl-C finishes the current iteration, saves ``last.pt``
and exits with status 130; ``--resume`` continues at the next epoch.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets.check import check_dataset, format_report
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.class_stats import CLASS_STATS_FILE, cached_class_counts, class_weights, format_weights
from utils.config import Config, ConfigError, load_config, save_config
from utils.constants import IGNORE_INDEX
from utils.fileio import write_json
from utils.amp import autocast, grad_scaler, resolve_amp
from utils.inference import labels_from_logits
from utils.losses import CombinedLoss, build_loss
from utils.metrics import ConfusionMatrix, format_metrics
from utils.registry import DATASETS, MODELS
from utils.schedulers import build_scheduler as build_lr_scheduler
from utils.transforms import build_transforms
from utils.visualize import colorize, default_palette, make_grid, to_display

log = logging.getLogger("train")


# ----------------------------------------------------------------- setup


def setup_logging(log_file: Optional[Path] = None) -> None:
    """Log lines to stderr and, when given, to ``log_file``."""
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", handlers=handlers, force=True)


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for but CUDA is not available; use device: auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    """Distinct, reproducible numpy/random seeds per worker; Ctrl-C is the main process's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def collate(batch: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack (image, mask) pairs; different sizes get a message saying what to change."""
    sizes = {tuple(img.shape[-2:]) for img, _ in batch}
    if len(sizes) > 1:
        raise ValueError(
            f"cannot batch images of different sizes {sorted(sizes)}: add a resize or crop to the "
            "transforms of this split, or use batch size 1 (train.val_batch_size: 1 for validation)")
    images = torch.stack([img.as_subclass(torch.Tensor) for img, _ in batch])
    masks = torch.stack([m.as_subclass(torch.Tensor) for _, m in batch])
    return images, masks


def build_datasets(cfg: Config) -> Tuple[Dataset, Dataset]:
    kwargs = cfg.dataset_kwargs()
    train_ds = DATASETS.build(cfg.data.name, split="train", transforms=build_transforms(cfg.transforms.train), **kwargs)
    val_ds = DATASETS.build(cfg.data.name, split="val", transforms=build_transforms(cfg.transforms.val), **kwargs)
    return train_ds, val_ds


def resolve_num_workers(setting: Any, device: torch.device) -> int:
    """``auto``: 0 on the CPU, where the model's threads already use every core and
    loader processes would only preempt them; on CUDA half the cores, at most 8."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def build_loaders(cfg: Config, train_ds: Dataset, val_ds: Dataset, device: torch.device) -> Tuple[DataLoader, DataLoader]:
    if len(train_ds) < cfg.train.batch_size:
        raise ValueError(f"{cfg.data.root}: the train split has {len(train_ds)} images, fewer than "
                         f"train.batch_size={cfg.train.batch_size}; lower the batch size")
    workers = resolve_num_workers(cfg.data.num_workers, device)
    common: Dict[str, Any] = dict(num_workers=workers, pin_memory=device.type == "cuda",
                                  collate_fn=collate, worker_init_fn=_worker_init,
                                  persistent_workers=workers > 0)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_ds, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                              generator=generator, **common)
    val_loader = DataLoader(val_ds, batch_size=cfg.train.val_batch_size, shuffle=False, **common)
    return train_loader, val_loader


def class_info(cfg: Config) -> Tuple[Optional[List[str]], np.ndarray]:
    """Class names (config first, then the dataset's official ones) and the (256, 3) palette."""
    dataset_cls = DATASETS.get(cfg.data.name)
    names = cfg.data.class_names or getattr(dataset_cls, "class_names", None)
    palette = getattr(dataset_cls, "palette", None)
    return names, (palette if palette is not None else default_palette(cfg.data.num_classes))


def resolve_class_weights(cfg: Config, train_ds: Dataset, run_dir: Path) -> List[Dict[str, Any]]:
    """``cfg.loss`` with ``class_weights: inverse | median_frequency`` replaced by one number per class,
    computed from the training masks (counted once, cached in ``<run_dir>/class_stats.json``)."""
    specs = [dict(spec) for spec in cfg.loss]
    named = [spec for spec in specs if isinstance(spec.get("class_weights"), str)]
    if not named:
        return specs
    counts = cached_class_counts(train_ds, cfg.data.name, run_dir / CLASS_STATS_FILE, progress=cfg.train.progress)
    names = class_info(cfg)[0] or [f"class {k}" for k in range(cfg.data.num_classes)]
    for spec in named:
        method = spec["class_weights"]
        spec["class_weights"] = class_weights(counts, method)
        log.info("%s class weights (%s): %s", spec["name"], method, format_weights(spec["class_weights"], names))
    return specs


def build_model(cfg: Config) -> torch.nn.Module:
    return MODELS.build(cfg.model.name, **cfg.model_kwargs())


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW/Adam/SGD; weight decay on weights of rank >= 2 only (not on norms and biases)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    o = cfg.optimizer
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(groups, lr=o.lr, betas=tuple(o.betas))


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    s = cfg.scheduler
    return build_lr_scheduler(optimizer, s.name, cfg.train.epochs * iters_per_epoch, iters_per_epoch,
                              s.warmup_epochs, s.warmup_start_factor, s.power, s.min_lr, s.step_epochs, s.gamma)


# ----------------------------------------------------------------- loops


class StopFlag:
    """Set by the first Ctrl-C; the loops finish the current step and return."""

    def __init__(self) -> None:
        self.stop = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("interrupt received: finishing this step, saving last.pt (Ctrl-C again to abort)")
        self.stop = True
        signal.signal(signal.SIGINT, self._previous)

    def install(self) -> "StopFlag":
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def classification_guidance_loss(model: torch.nn.Module, masks: torch.Tensor) -> Optional[torch.Tensor]:
    """BCE for a classification-guided head (UNet 3+ CGM): does the image hold any foreground?

    Models with such a head expose the (N, 2) [absent, present] logits of the last
    forward as ``last_cls_logits``; others return None here.
    """
    cls_logits = getattr(model, "last_cls_logits", None)
    if cls_logits is None:
        return None
    present = ((masks > 0) & (masks != IGNORE_INDEX)).flatten(1).any(dim=1).long()
    target = torch.nn.functional.one_hot(present, 2).to(cls_logits.dtype)
    return torch.nn.functional.binary_cross_entropy_with_logits(cls_logits.float(), target)


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, criterion: CombinedLoss,
                    optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
                    device: torch.device, epoch: int, cfg: Config, stop: StopFlag) -> Dict[str, Any]:
    """One pass over ``loader``; returns mean loss, its parts, images/s and whether it was cut short."""
    model.train()
    amp = resolve_amp(cfg.train.amp, device, warn=False)
    total_loss, parts_sum, seen, steps = 0.0, {}, 0, 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.train.epochs}", leave=False, dynamic_ncols=True,
               disable=not cfg.train.progress, mininterval=1.0)
    for images, masks in bar:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, amp):
            outputs = model(images)
        outputs = [o.float() for o in outputs] if isinstance(outputs, (list, tuple)) else outputs.float()
        loss, parts = criterion(outputs, masks)
        cls_loss = classification_guidance_loss(model, masks)
        if cls_loss is not None:
            loss = loss + cls_loss
            parts = {**parts, "cls": cls_loss.item()}
        if not torch.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch}: loss is {loss.item()} (parts {parts}); lower optimizer.lr "
                                     "or check the masks with the data check")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.train.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        value = loss.item()
        total_loss += value
        for key, part in parts.items():
            parts_sum[key] = parts_sum.get(key, 0.0) + part
        seen += images.shape[0]
        steps += 1
        bar.set_postfix(loss=f"{value:.4f}", img_s=f"{seen / (time.perf_counter() - start):.1f}", refresh=False)
        if stop.stop:
            break
    bar.close()
    elapsed = time.perf_counter() - start
    steps = max(steps, 1)
    return {"loss": total_loss / steps, "loss_parts": {k: v / steps for k, v in parts_sum.items()},
            "images_per_s": seen / elapsed if elapsed > 0 else 0.0, "seconds": elapsed,
            "lr": optimizer.param_groups[0]["lr"], "interrupted": stop.stop}


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device, num_classes: int,
             threshold: float = 0.5, class_names: Optional[List[str]] = None, amp: str = "off",
             num_images: int = 0, palette: Optional[np.ndarray] = None) -> Tuple[Dict[str, Any], List[np.ndarray]]:
    """Metrics over the whole split from one confusion matrix, and up to
    ``num_images`` (image | ground truth | prediction) strips for TensorBoard."""
    model.eval()
    cm = ConfusionMatrix(num_classes, class_names=class_names)
    palette = default_palette(num_classes) if palette is None else palette
    strips: List[np.ndarray] = []
    for images, masks in loader:
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        with autocast(device, resolve_amp(amp, device, warn=False)):
            logits = model(images)
        preds = labels_from_logits(logits.float(), threshold)
        cm.update(preds, masks)
        for i in range(min(num_images - len(strips), images.shape[0])):
            tiles = [to_display(images[i]), colorize(masks[i].cpu().numpy(), palette),
                     colorize(preds[i].cpu().numpy(), palette)]
            strips.append(np.concatenate(tiles, axis=1))
    cm.reduce_from_all_processes()
    return cm.compute(), strips


# ----------------------------------------------------------------- main


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a segmentation model from a YAML config.")
    p.add_argument("--config", required=True, help="experiment YAML, e.g. configs/demo.yaml")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override config keys, e.g. --set train.epochs=3 data.root=/data/x")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default: <run dir>/last.pt)")
    p.add_argument("--check-data", action="store_true",
                   help="only scan the dataset and report problems (exit status 1 if any), no training")
    return p.parse_args(argv)


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
           epoch: int, best: Optional[float], history: List[Dict[str, Any]], cfg: Config) -> Dict[str, Any]:
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "best_metric": best, "monitor": cfg.train.monitor,
            "history": history, "config": cfg.to_dict()}


def _is_better(value: Optional[float], best: Optional[float], mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def _log_tensorboard(writer: Any, epoch: int, train_stats: Dict[str, Any], metrics: Optional[Dict[str, Any]],
                     strips: List[np.ndarray]) -> None:
    if writer is None:
        return
    writer.add_scalar("train/loss", train_stats["loss"], epoch)
    for key, value in train_stats["loss_parts"].items():
        writer.add_scalar(f"train/loss_{key}", value, epoch)
    writer.add_scalar("train/lr", train_stats["lr"], epoch)
    writer.add_scalar("train/images_per_s", train_stats["images_per_s"], epoch)
    if metrics is not None:
        for key, value in metrics.items():
            if isinstance(value, float):
                writer.add_scalar(f"val/{key}", value, epoch)
    if strips:
        grid = make_grid(strips, columns=1)
        writer.add_image("val/image_truth_prediction", grid, epoch, dataformats="HWC")
    writer.flush()


def run(cfg: Config, resume: Optional[str] = None) -> Dict[str, Any]:
    """Train per ``cfg``; returns a summary (best metric, epochs done, interrupted)."""
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = select_device(cfg.device)
    save_config(cfg, run_dir / "config.yaml")

    train_ds, val_ds = build_datasets(cfg)
    train_loader, val_loader = build_loaders(cfg, train_ds, val_ds, device)
    model = build_model(cfg).to(device)
    if cfg.train.freeze_encoder_epochs:
        try:
            model.set_encoder_frozen(False)
        except (AttributeError, ValueError) as exc:
            raise ConfigError(f"{cfg.source}: train.freeze_encoder_epochs: model {cfg.model.name!r} has no "
                              f"encoder to freeze ({exc}); set it to 0") from None
    criterion = build_loss(resolve_class_weights(cfg, train_ds, run_dir), cfg.train.deep_supervision_weights)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, len(train_loader))
    scaler = grad_scaler(device, resolve_amp(cfg.train.amp, device))
    class_names, palette = class_info(cfg)

    start_epoch, best, history = 1, None, []
    if resume is not None:
        path = Path(resume) if resume else run_dir / "last.pt"
        state = load_checkpoint(path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best, history = state["epoch"] + 1, state["best_metric"], list(state["history"])
        log.info("resumed from %s at epoch %d (best %s so far: %s)", path, start_epoch, cfg.train.monitor, best)

    n_params = sum(p.numel() for p in model.parameters())
    log.info("experiment %s | %s on %s | %d train / %d val images | model %s (%.2fM params) | %d epochs",
             cfg.experiment, cfg.data.name, device, len(train_ds), len(val_ds), cfg.model.name, n_params / 1e6,
             cfg.train.epochs)
    writer = None
    if cfg.train.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(log_dir=str(run_dir))

    stop = StopFlag().install()
    log.info("training started; Ctrl-C saves %s and stops", run_dir / "last.pt")
    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            if cfg.train.freeze_encoder_epochs:
                model.set_encoder_frozen(epoch <= cfg.train.freeze_encoder_epochs)
            stats = train_one_epoch(model, train_loader, criterion, optimizer, scheduler, scaler, device,
                                    epoch, cfg, stop)
            if stats["interrupted"]:
                epoch -= 1  # the cut-short epoch is repeated on --resume
                break
            record: Dict[str, Any] = {"epoch": epoch, "train_loss": stats["loss"], "loss_parts": stats["loss_parts"],
                                      "lr": stats["lr"], "images_per_s": stats["images_per_s"]}
            metrics, strips = None, []
            if epoch % cfg.train.val_interval == 0 or epoch == cfg.train.epochs:
                metrics, strips = evaluate(model, val_loader, device, cfg.data.num_classes, cfg.model.threshold,
                                           class_names, cfg.train.amp, cfg.train.log_images, palette)
                record["val"] = metrics
            history.append(record)
            _log_tensorboard(writer, epoch, stats, metrics, strips)
            line = f"epoch {epoch}/{cfg.train.epochs} | loss {stats['loss']:.4f} | lr {stats['lr']:.2e} | " \
                   f"{stats['images_per_s']:.1f} img/s"
            if metrics is not None:
                line += " | val " + format_metrics(metrics)
                value = metrics.get(cfg.train.monitor)
                if _is_better(value, best, cfg.train.monitor_mode):
                    best = value
                    save_checkpoint(_state(model, optimizer, scheduler, scaler, epoch, best, history, cfg),
                                    run_dir / "best.pt")
                    line += f" | new best {cfg.train.monitor} {best:.4f}"
            log.info(line)
            save_checkpoint(_state(model, optimizer, scheduler, scaler, epoch, best, history, cfg), run_dir / "last.pt")
            write_json(run_dir / "metrics.json", {"experiment": cfg.experiment, "monitor": cfg.train.monitor,
                                                  "best": best, "history": history})
            if stop.stop:
                break
    finally:
        stop.restore()
        if writer is not None:
            writer.close()
    if stop.stop:
        save_checkpoint(_state(model, optimizer, scheduler, scaler, epoch, best, history, cfg), run_dir / "last.pt")
        log.warning("interrupted: saved %s (epoch %d complete); continue with --resume", run_dir / "last.pt", epoch)
    else:
        log.info("done: best %s %s; checkpoints in %s", cfg.train.monitor, best, run_dir)
    return {"best": best, "epoch": epoch, "interrupted": stop.stop, "run_dir": str(run_dir)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if args.check_data:
        report = check_dataset(cfg, progress=cfg.train.progress)
        sys.stdout.write(format_report(report) + "\n")
        return report.exit_code
    setup_logging(cfg.run_dir / "train.log")
    try:
        summary = run(cfg, resume=args.resume)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 130 if summary["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
