"""Train a segmentation model from one YAML config.

    python train.py --config configs/demo.yaml [--set train.epochs=3 data.root=/my/data] [--resume]
    python train.py --config configs/demo.yaml --check-data    # scan the data, report problems, no training
    torchrun --nproc_per_node 4 train.py --config configs/cityscapes.yaml   # DDP (see utils/distributed.py)

Training runs in rounds (:class:`Plan`): epochs, or ``train.val_interval``
iterations with ``train.iterations``; each round reseeds from (seed, round,
rank) and may end with a validation. Writes to
``<train.checkpoint_dir>/<experiment>/`` (rank 0 only): ``config.yaml`` (the
resolved config), ``last.pt`` and ``best.pt`` (plain-typed, written
atomically), ``metrics.json`` (per-round history), ``train.log`` and
TensorBoard events. Ctrl-C finishes the current optimizer step, saves
``last.pt`` and exits with status 130; ``--resume`` continues from exactly
that step.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler
from tqdm import tqdm

from datasets.check import (DATA_CHECK_CACHE, SPLITS, TRAINING_SPLITS, check_before_training, check_dataset,
                            format_report)
from utils.builders import build_check_splits, build_model, class_info
from utils.checkpoint import inference_state, load_checkpoint, load_weights, require_resumable, save_checkpoint
from utils.cli import EXIT_INTERRUPTED, add_config_arguments, guarded, log_to_file, setup_logging
from utils.class_stats import CLASS_STATS_FILE, cached_class_counts, class_weights, format_weights
from utils.config import Config, load_config, save_config
from utils.errors import ConfigError, DataError, TrainingDiverged
from utils.constants import IGNORE_INDEX
from utils.distributed import (DistInfo, ShardSampler, any_rank, broadcast_buffers, init_distributed,
                               mean_over_ranks)
from utils.distributed import cleanup as cleanup_distributed
from utils.ema import ModelEMA
from utils.fileio import write_json
from utils.amp import autocast, grad_scaler, resolve_amp
from utils.inference import is_plain, labels_from_logits, labels_from_probabilities, predict_probabilities
from utils.losses import CombinedLoss, build_loss
from utils.metrics import ConfusionMatrix, format_metrics
from utils.registry import DATASETS
from utils.run_folder import check_run_folder, open_run_folder, removed_if_failed
from utils.runtime import (StopFlag, capture_rng, configure_runtime, restore_rng, restore_runtime, seed_everything,
                           select_device)
from utils.schedulers import build_scheduler as build_lr_scheduler
from utils.transforms import build_transforms
from utils.visualize import colorize, default_palette, make_grid, to_display

log = logging.getLogger("train")


# ----------------------------------------------------------------- setup


def _worker_init(worker_id: int) -> None:
    """Distinct, reproducible numpy/random seeds per worker; Ctrl-C is the main process's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class SeededSampler(Sampler):
    """Wraps the training sampler to yield ``(index, seed)``: every sample draws its augmentations from a
    seed of its own, a function of the round, the pass over the data, the position and the rank.

    The augmentations then do not depend on which process runs them: the same
    with 0 or 8 loader workers, persistent or not, and the same when
    ``--resume`` replays part of a round in fresh workers. :meth:`start_round`
    is called by :func:`round_batches` before each round.
    """

    def __init__(self, sampler: Sampler, rank: int = 0) -> None:
        self.sampler, self.rank = sampler, rank
        self.round_index, self.round_seed, self.passes = 0, 0, 0

    def start_round(self, round_index: int, seed: int) -> None:
        """Fix this round's orders and seeds. The order comes from the sampler's own generator (or
        ``set_epoch``), never from the loader's, whose draws differ between a fresh and a reused iterator."""
        self.round_index, self.round_seed, self.passes = round_index, seed, 0
        generator = getattr(self.sampler, "generator", None)
        if generator is not None:
            generator.manual_seed(seed)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(self.round_index * 1000 + self.passes)
        entropy = [self.round_seed, self.passes, self.rank]
        self.passes += 1
        for position, index in enumerate(self.sampler):
            yield index, int(np.random.SeedSequence([*entropy, position]).generate_state(1)[0])

    def __len__(self) -> int:
        return len(self.sampler)


class SeededDataset(Dataset):
    """Reads ``(index, seed)`` from :class:`SeededSampler`: the sample is drawn with torch, numpy and
    ``random`` seeded by ``seed``, inside a fork, so the caller's RNG streams are left as they were."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: Tuple[int, int]) -> Any:
        index, seed = item
        numpy_state, python_state = np.random.get_state(), random.getstate()
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed also seeds every device, ~100x slower.
            torch.default_generator.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                np.random.set_state(numpy_state)
                random.setstate(python_state)


def collate(batch: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack (image, mask) pairs; different sizes get a message saying what to change."""
    sizes = {tuple(img.shape[-2:]) for img, _ in batch}
    if len(sizes) > 1:
        raise DataError(
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


def build_loaders(cfg: Config, train_ds: Dataset, val_ds: Dataset, device: torch.device,
                  info: Optional[DistInfo] = None) -> Tuple[DataLoader, DataLoader]:
    """Shuffled training batches (``train.batch_size`` per process) and the validation split in order.

    Under DDP the training set is split by a ``DistributedSampler`` (same seed on
    every process, reshuffled each round) and the validation set by a
    :class:`ShardSampler`, which never repeats a sample.
    """
    info = info or DistInfo()
    per_process = len(train_ds) // info.world_size
    if per_process < cfg.train.batch_size:
        share = "" if info.world_size == 1 else f", {per_process} per process for {info.world_size} processes"
        raise DataError(f"{cfg.data.root}: the train split has {len(train_ds)} images{share}, fewer than "
                         f"train.batch_size={cfg.train.batch_size}; lower the batch size")
    workers = resolve_num_workers(cfg.data.num_workers, device)
    common: Dict[str, Any] = dict(num_workers=workers, pin_memory=device.type == "cuda",
                                  collate_fn=collate, worker_init_fn=_worker_init,
                                  persistent_workers=workers > 0)
    generator = torch.Generator().manual_seed(cfg.seed)  # reseeded each round by round_batches
    if info.distributed:
        order: Sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                            seed=cfg.seed, drop_last=True)
        val_loader = DataLoader(val_ds, batch_size=cfg.train.val_batch_size,
                                sampler=ShardSampler(val_ds, info.rank, info.world_size), **common)
    else:
        order = RandomSampler(train_ds, generator=torch.Generator().manual_seed(cfg.seed))
        val_loader = DataLoader(val_ds, batch_size=cfg.train.val_batch_size, shuffle=False, **common)
    train_loader = DataLoader(SeededDataset(train_ds), batch_size=cfg.train.batch_size,
                              sampler=SeededSampler(order, info.rank), drop_last=True, generator=generator, **common)
    return train_loader, val_loader


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


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    total_steps: Optional[int] = None) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule over ``total_steps`` optimizer steps (default: every epoch's)."""
    s = cfg.scheduler
    total = total_steps if total_steps is not None else cfg.train.epochs * steps_per_epoch
    warmup_epochs = s.warmup_epochs if s.warmup_iters is None else s.warmup_iters / max(steps_per_epoch, 1)
    return build_lr_scheduler(optimizer, s.name, total, steps_per_epoch, warmup_epochs, s.warmup_start_factor,
                              s.power, s.min_lr, s.step_epochs, s.gamma)


# ----------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """How a run is cut into rounds: the stretch of training between two validations.

    Epoch mode (``train.epochs``): round r is epoch r, ``steps_per_epoch``
    optimizer steps; validation after every ``val_interval``-th round and the
    last. Iteration mode (``train.iterations``): ``val_interval`` optimizer
    steps per round (the last may be shorter), validation after each. An
    optimizer step takes ``train.accumulate`` batches.
    """

    iteration_mode: bool
    total_steps: int
    steps_per_epoch: int
    val_interval: int

    @property
    def rounds(self) -> int:
        if self.iteration_mode:
            return math.ceil(self.total_steps / self.val_interval)
        return self.total_steps // self.steps_per_epoch

    def steps_in(self, round_index: int) -> int:
        """Optimizer steps in round ``round_index`` (1-based)."""
        if self.iteration_mode:
            return min(self.val_interval, self.total_steps - (round_index - 1) * self.val_interval)
        return self.steps_per_epoch

    def validates_after(self, round_index: int) -> bool:
        return self.iteration_mode or round_index % self.val_interval == 0 or round_index == self.rounds

    def label(self, round_index: int) -> str:
        if self.iteration_mode:
            done = min(round_index * self.val_interval, self.total_steps)
            return f"iteration {done}/{self.total_steps}"
        return f"epoch {round_index}/{self.rounds}"


def make_plan(cfg: Config, batches_per_epoch: int) -> Plan:
    steps_per_epoch = batches_per_epoch // cfg.train.accumulate
    if steps_per_epoch < 1:
        raise ConfigError(f"{cfg.source}: train.accumulate={cfg.train.accumulate} is more than the "
                          f"{batches_per_epoch} batches of an epoch; lower it or the batch size")
    if cfg.train.iterations is not None:
        return Plan(True, cfg.train.iterations, steps_per_epoch, cfg.train.val_interval)
    return Plan(False, cfg.train.epochs * steps_per_epoch, steps_per_epoch, cfg.train.val_interval)


def round_seed(seed: int, round_index: int, rank: int = 0) -> int:
    """The seed of round ``round_index`` on process ``rank``: a function of the three only, so a resumed
    run draws the same shuffles and augmentations as one never stopped."""
    return (seed * 1_000_003 + round_index * 9_973 + rank * 7_919) % 2**31


def round_batches(loader: DataLoader, seed: int, round_index: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Batches for one round: passes over ``loader`` as many as needed, each reshuffled, all fixed by the seed."""
    if loader.generator is not None:
        loader.generator.manual_seed(round_seed(seed, round_index))
    if isinstance(loader.sampler, SeededSampler):
        loader.sampler.start_round(round_index, round_seed(seed, round_index))
    while True:
        yield from loader


# ----------------------------------------------------------------- loops


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


@dataclass
class RoundStats:
    """Running sums of a round; saved in ``last.pt`` when Ctrl-C cuts the round short."""

    loss: float = 0.0
    parts: Dict[str, float] = field(default_factory=dict)
    seen: int = 0
    steps: int = 0
    seconds: float = 0.0

    def summary(self, lr: float, world_size: int = 1) -> Dict[str, Any]:
        steps = max(self.steps, 1)
        return {"loss": self.loss / steps, "loss_parts": {k: v / steps for k, v in self.parts.items()},
                "images_per_s": self.seen * world_size / self.seconds if self.seconds > 0 else 0.0,
                "seconds": self.seconds, "lr": lr}


def train_round(model: torch.nn.Module, batches: Iterator[Tuple[torch.Tensor, torch.Tensor]], steps: int,
                criterion: CombinedLoss, optimizer: torch.optim.Optimizer, scheduler: Any,
                scaler: torch.amp.GradScaler, device: torch.device, cfg: Config, stop: StopFlag,
                stats: Optional[RoundStats] = None, ema: Optional[ModelEMA] = None,
                raw_model: Optional[torch.nn.Module] = None, label: str = "", show_progress: bool = True,
                ) -> Tuple[RoundStats, bool]:
    """Optimizer steps until ``stats.steps == steps``; returns the stats and whether Ctrl-C cut it short.

    ``model`` is what runs the forward (possibly DDP-wrapped or compiled);
    ``raw_model`` is the plain module underneath (classification head, EMA).
    Each step takes ``train.accumulate`` batches, their losses divided by it
    and their gradients summed (under DDP only the last one all-reduces); then
    clipping, the optimizer, the scheduler and the EMA step once.
    """
    raw_model = model if raw_model is None else raw_model
    inner = getattr(model, "_orig_mod", model)  # under torch.compile
    ddp = inner if isinstance(inner, DistributedDataParallel) else None
    stats = RoundStats() if stats is None else stats
    accumulate = cfg.train.accumulate
    amp = resolve_amp(cfg.train.amp, device, warn=False)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model.train()
    interrupted = False
    bar = tqdm(total=steps, initial=stats.steps, desc=label, leave=False, dynamic_ncols=True,
               disable=not (cfg.train.progress and show_progress), mininterval=1.0)
    start = time.perf_counter() - stats.seconds
    while stats.steps < steps:
        optimizer.zero_grad(set_to_none=True)
        step_loss, step_parts, bad_loss = 0.0, {}, None
        for micro in range(accumulate):
            images, masks = next(batches)
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            masks = masks.to(device, non_blocking=True)
            last = micro == accumulate - 1
            sync = ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with autocast(device, amp):
                    outputs = model(images)
                outputs = [o.float() for o in outputs] if isinstance(outputs, (list, tuple)) else outputs.float()
                loss, parts = criterion(outputs, masks)
                cls_loss = classification_guidance_loss(raw_model, masks)
                if cls_loss is not None:
                    loss = loss + cls_loss
                    parts = {**parts, "cls": cls_loss.item()}
                scaler.scale(loss / accumulate).backward()
            value = loss.item()
            if not math.isfinite(value) and bad_loss is None:
                bad_loss = (value, parts)
            step_loss += value / accumulate
            for key, part in parts.items():
                step_parts[key] = step_parts.get(key, 0.0) + part / accumulate
            stats.seen += images.shape[0]
        if any_rank(bad_loss is not None, device):  # every process stops at the same step, before it
            raise diverged(label, stats.steps + 1, bad_loss)
        if cfg.train.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            ema.update(raw_model)
        stats.loss += step_loss
        for key, part in step_parts.items():
            stats.parts[key] = stats.parts.get(key, 0.0) + part
        stats.steps += 1
        stats.seconds = time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", img_s=f"{stats.seen / stats.seconds:.1f}", refresh=False)
        if any_rank(stop.stop, device) and stats.steps < steps:
            stop.stop = interrupted = True
            break
    bar.close()
    return stats, interrupted


def diverged(label: str, step: int, bad_loss: Optional[Tuple[float, Dict[str, float]]]) -> TrainingDiverged:
    """The error that stops a run whose loss became NaN or Inf (``bad_loss`` is None on the other processes)."""
    what = f"the loss is {bad_loss[0]} (terms {bad_loss[1]})" if bad_loss else "the loss is not finite on another process"
    return TrainingDiverged(f"{label}, step {step}: {what}; the run stopped before this step changed the weights "
                            "and last.pt holds the last completed round. Lower optimizer.lr, set "
                            "train.grad_clip, or check the data with --check-data; then continue with --resume "
                            "or start again with --overwrite")


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, criterion: CombinedLoss,
                    optimizer: torch.optim.Optimizer, scheduler: Any, scaler: torch.amp.GradScaler,
                    device: torch.device, epoch: int, cfg: Config, stop: StopFlag) -> Dict[str, Any]:
    """One pass over ``loader`` (as many whole accumulation steps as fit); the loop the benchmark times."""
    steps = len(loader) // cfg.train.accumulate
    stats, interrupted = train_round(model, iter(loader), steps, criterion, optimizer, scheduler, scaler, device,
                                     cfg, stop, label=f"epoch {epoch}")
    return {**stats.summary(optimizer.param_groups[0]["lr"]), "interrupted": interrupted}


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device, num_classes: int,
             threshold: float = 0.5, class_names: Optional[List[str]] = None, amp: str = "off",
             num_images: int = 0, palette: Optional[np.ndarray] = None, inference: Any = None,
             channels_last: bool = False, progress: bool = False) -> Tuple[Dict[str, Any], List[np.ndarray]]:
    """Metrics over the whole split from one confusion matrix (summed over processes under DDP), and up
    to ``num_images`` (image | ground truth | prediction) strips for TensorBoard.

    ``inference`` (``cfg.inference``) picks a plain forward or the sliding window
    with TTA of :func:`utils.inference.predict_probabilities`; with the sliding
    window the images stay on the CPU and only tiles go to the device.
    """
    model.eval()
    amp = resolve_amp(amp, device, warn=False)
    whole = is_plain(inference)
    cm = ConfusionMatrix(num_classes, class_names=class_names)
    palette = default_palette(num_classes) if palette is None else palette
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    strips: List[np.ndarray] = []
    # The bar shows only when validation takes more than a few seconds.
    for images, masks in tqdm(loader, desc="validate", leave=False, disable=not progress, delay=3.0,
                              mininterval=1.0, dynamic_ncols=True):
        if whole:
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            masks = masks.to(device, non_blocking=True)
            with autocast(device, amp):
                logits = model(images)
            preds = labels_from_logits(logits.float(), threshold)
        else:
            if inference.mode == "whole":
                images = images.to(device, non_blocking=True)
            probs = predict_probabilities(model, images, amp=amp, settings=inference)
            preds = labels_from_probabilities(probs, threshold).to(masks.device)
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
    add_config_arguments(p)
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default: <run dir>/last.pt)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in a run folder that already holds a trained run, replacing it")
    p.add_argument("--check-data", action="store_true",
                   help="only scan the dataset and report problems (exit status 1 if any), no training")
    return p.parse_args(argv)


def _is_better(value: Optional[float], best: Optional[float], mode: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def _log_tensorboard(writer: Any, step: int, train_stats: Dict[str, Any], metrics: Optional[Dict[str, Any]],
                     strips: List[np.ndarray]) -> None:
    if writer is None:
        return
    writer.add_scalar("train/loss", train_stats["loss"], step)
    for key, value in train_stats["loss_parts"].items():
        writer.add_scalar(f"train/loss_{key}", value, step)
    writer.add_scalar("train/lr", train_stats["lr"], step)
    writer.add_scalar("train/images_per_s", train_stats["images_per_s"], step)
    if metrics is not None:
        for key, value in metrics.items():
            if isinstance(value, float):
                writer.add_scalar(f"val/{key}", value, step)
    if strips:
        grid = make_grid(strips, columns=1)
        writer.add_image("val/image_truth_prediction", grid, step, dataformats="HWC")
    writer.flush()


def prepare_model(cfg: Config, device: torch.device, info: DistInfo) -> torch.nn.Module:
    """The model on ``device``: SyncBatchNorm when asked and possible, channels_last when asked."""
    model = build_model(cfg)
    if cfg.train.sync_bn:
        if info.distributed and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            log.info("train.sync_bn: BatchNorm statistics synchronised over %d processes", info.world_size)
        else:
            why = "it runs on CUDA only" if info.distributed else "this is a single process (no process group)"
            log.warning("train.sync_bn: keeping plain BatchNorm, because %s", why)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def wrap_for_training(model: torch.nn.Module, cfg: Config, device: torch.device, info: DistInfo) -> torch.nn.Module:
    """DDP under torchrun, then ``torch.compile`` when asked; the plain module stays what is saved."""
    wrapped = model
    if info.distributed:
        # Frozen encoder epochs leave parameters without gradients; DDP must be told to expect that.
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=cfg.train.freeze_encoder_epochs > 0)
    if cfg.train.compile:
        wrapped = torch.compile(wrapped)
    return wrapped


class Run:
    """Everything ``train.py`` keeps between rounds, and the checkpoint it writes."""

    def __init__(self, cfg: Config, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 scaler: torch.amp.GradScaler, ema: Optional[ModelEMA]) -> None:
        self.cfg, self.model, self.optimizer, self.scheduler, self.scaler, self.ema = \
            cfg, model, optimizer, scheduler, scaler, ema
        self.round = 0              # rounds completed
        self.step = 0               # optimizer steps completed
        self.best: Optional[float] = None
        self.best_round: Optional[int] = None
        self.history: List[Dict[str, Any]] = []
        self.stale = 0              # validations since the best one (early stopping)
        self.early_stopped = False
        self._clock: Optional[Tuple[float, int]] = None   # (time, step) when this process started training

    def progress(self, total_steps: int) -> str:
        """"run 40% done, ETA 0:12:34": the whole run's share done, and the time left at this process's pace
        (training and validation together)."""
        now = time.perf_counter()
        if self._clock is None:
            self._clock = (now, 0)
            return f"run {100 * self.step / total_steps:.0f}% done"
        start, first_step = self._clock
        done = self.step - first_step
        left = (now - start) / done * (total_steps - self.step) if done > 0 else 0.0
        return f"run {100 * self.step / total_steps:.0f}% done, ETA {datetime.timedelta(seconds=round(left))}"

    def start_clock(self) -> None:
        """Mark the start of training in this process (after a resume, its steps do not count)."""
        self._clock = (time.perf_counter(), self.step)

    def state(self, partial: Optional[RoundStats] = None) -> Dict[str, Any]:
        """The checkpoint: plain types and tensors only. ``partial`` marks a round cut short by Ctrl-C."""
        cfg = self.cfg
        state: Dict[str, Any] = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None, "ema_eval": cfg.train.ema_eval,
            "round": self.round, "step": self.step,
            "epoch": None if cfg.train.iterations is not None else self.round,
            "best_metric": self.best, "best_round": self.best_round, "stale": self.stale,
            "monitor": cfg.train.monitor, "history": self.history, "config": cfg.to_dict(),
            "partial": None,
        }
        if partial is not None:
            state["partial"] = {"round": self.round + 1, "loss": partial.loss, "parts": partial.parts,
                                "seen": partial.seen, "steps": partial.steps, "seconds": partial.seconds,
                                "rng": capture_rng()}
        return state

    def load(self, state: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Restore from a checkpoint; returns its ``partial`` round, if any."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                log.warning("the checkpoint has no EMA weights; the EMA starts from the current weights")
        self.round = int(state.get("round", state.get("epoch") or 0))
        self.step = int(state.get("step", 0))
        self.best, self.best_round = state["best_metric"], state.get("best_round")
        self.stale = int(state.get("stale", 0))
        self.history = list(state["history"])
        return state.get("partial")

    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated: the EMA copy with ``train.ema_eval``, else the live model."""
        return self.ema.module if self.ema is not None and self.cfg.train.ema_eval else self.model


def run(cfg: Config, resume: Optional[str] = None, overwrite: bool = False) -> Dict[str, Any]:
    """Train per ``cfg`` (one process, or one of a torchrun job); returns a summary."""
    info, device = init_distributed(select_device(cfg.device))
    previous_runtime = configure_runtime(cfg, device)
    try:
        with removed_if_failed(cfg.run_dir, enabled=info.is_main):
            return _run(cfg, resume, overwrite, info, device)
    finally:
        restore_runtime(previous_runtime)
        cleanup_distributed()


def resume_from(state: "Run", resume: str, run_dir: Path, device: torch.device) -> Optional[Dict[str, Any]]:
    """Load ``--resume [PATH]`` into ``state``; returns the checkpoint's cut-short round, if any."""
    path = Path(resume) if resume else run_dir / "last.pt"
    checkpoint = load_checkpoint(path, map_location=device, missing_hint=(
        "start without --resume, or name a checkpoint: --resume PATH"))
    require_resumable(checkpoint, path)
    load_weights(state.model, checkpoint["model"], path, checkpoint, state.cfg.to_dict(),
                 f"resume with the config it was trained with (saved as {path.parent / 'config.yaml'}), "
                 "or start a new run with --overwrite or --set experiment=NAME")
    return state.load(checkpoint)


def _run(cfg: Config, resume: Optional[str], overwrite: bool, info: DistInfo, device: torch.device) -> Dict[str, Any]:
    run_dir = cfg.run_dir
    seed_everything(round_seed(cfg.seed, 0, info.rank))
    check_run_folder(run_dir, resume, overwrite, cfg.source)
    splits, failures = build_check_splits(cfg, TRAINING_SPLITS if cfg.data.check != "off" else ())
    check_before_training(splits, failures, cfg.data.check, Path(cfg.train.checkpoint_dir) / DATA_CHECK_CACHE,
                          f"python train.py --config {cfg.source} --check-data", root=cfg.data.root,
                          dataset_name=cfg.data.name, num_classes=cfg.data.num_classes,
                          class_names=class_info(cfg)[0] or [f"class {k}" for k in range(cfg.data.num_classes)],
                          progress=cfg.train.progress and info.is_main)

    train_ds, val_ds = build_datasets(cfg)
    train_loader, val_loader = build_loaders(cfg, train_ds, val_ds, device, info)
    plan = make_plan(cfg, len(train_loader))
    model = prepare_model(cfg, device, info)
    if cfg.train.freeze_encoder_epochs:
        try:
            model.set_encoder_frozen(False)
        except (AttributeError, ValueError) as exc:
            raise ConfigError(f"{cfg.source}: train.freeze_encoder_epochs: model {cfg.model.name!r} has no "
                              f"encoder to freeze ({exc}); set it to 0") from None
    criterion = build_loss(resolve_class_weights(cfg, train_ds, run_dir), cfg.train.deep_supervision_weights)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, plan.steps_per_epoch, plan.total_steps)
    amp = resolve_amp(cfg.train.amp, device, warn=info.is_main)
    scaler = grad_scaler(device, amp)
    ema = ModelEMA(model, cfg.train.ema) if cfg.train.ema is not None else None
    state = Run(cfg, model, optimizer, scheduler, scaler, ema)
    class_names, palette = class_info(cfg)

    partial = resume_from(state, resume, run_dir, device) if resume is not None else None
    if resume is not None:
        log.info("resumed from %s after %s (best %s so far: %s)", resume or run_dir / "last.pt",
                 plan.label(state.round), cfg.train.monitor, state.best)
    train_model = wrap_for_training(model, cfg, device, info)
    if info.is_main:  # every start check has passed: now the run folder is written
        open_run_folder(run_dir, overwrite)
        log_to_file(run_dir / "train.log")
        save_config(cfg, run_dir / "config.yaml")

    n_params = sum(p.numel() for p in model.parameters())
    log.info("experiment %s | %s on %s%s | %d train / %d val images | model %s (%.2fM params) | %s | amp %s",
             cfg.experiment, cfg.data.name, device, f" x {info.world_size} processes" if info.distributed else "",
             len(train_ds), len(val_ds), cfg.model.name, n_params / 1e6,
             f"{plan.total_steps} iterations" if plan.iteration_mode else f"{plan.rounds} epochs", amp)
    writer = None
    if cfg.train.tensorboard and info.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(log_dir=str(run_dir))

    stop = StopFlag().install()
    state.start_clock()
    log.info("training started; Ctrl-C saves %s and stops", run_dir / "last.pt")
    cut_short: Optional[RoundStats] = None
    try:
        while state.round < plan.rounds and not state.early_stopped:
            index = state.round + 1
            seed_everything(round_seed(cfg.seed, index, info.rank))
            batches = round_batches(train_loader, cfg.seed, index)
            stats = RoundStats()
            if partial is not None and partial["round"] == index:
                # Resume inside a round: replay its batches without training, then the RNGs as they were.
                for _ in range(partial["steps"] * cfg.train.accumulate):
                    next(batches)
                stats = RoundStats(partial["loss"], dict(partial["parts"]), partial["seen"], partial["steps"],
                                   partial["seconds"])
                restore_rng(partial["rng"])
            partial = None
            if cfg.train.freeze_encoder_epochs:
                model.set_encoder_frozen(state.step < cfg.train.freeze_encoder_epochs * plan.steps_per_epoch)
            stats, interrupted = train_round(train_model, batches, plan.steps_in(index), criterion, optimizer,
                                             scheduler, scaler, device, cfg, stop, stats, ema, model,
                                             plan.label(index), info.is_main)
            if interrupted:
                cut_short = stats
                break
            finish_round(state, plan, index, stats, val_loader, device, class_names, palette, writer, info)
            if stop.stop:
                break
    finally:
        stop.restore()
        if writer is not None:
            writer.close()
    if stop.stop:
        if info.is_main:
            save_checkpoint(state.state(cut_short), run_dir / "last.pt")
        where = f"{cut_short.steps}/{plan.steps_in(state.round + 1)} steps into " \
                f"{plan.label(state.round + 1)}" if cut_short else f"after {plan.label(state.round)}"
        log.warning("interrupted %s: saved %s; continue with --resume", where, run_dir / "last.pt")
    elif state.early_stopped:
        log.info("early stop after %s: %s has not improved for %d validations; best %s at round %s",
                 plan.label(state.round), cfg.train.monitor, state.stale, state.best, state.best_round)
    else:
        log.info("done: best %s %s; checkpoints in %s", cfg.train.monitor, state.best, run_dir)
    return {"best": state.best, "epoch": state.round, "round": state.round, "step": state.step,
            "interrupted": stop.stop, "early_stopped": state.early_stopped, "run_dir": str(run_dir)}


def finish_round(state: Run, plan: Plan, index: int, stats: RoundStats, val_loader: DataLoader,
                 device: torch.device, class_names: Optional[List[str]], palette: np.ndarray, writer: Any,
                 info: DistInfo) -> None:
    """After a round: validate if due, keep the best, early stopping, checkpoints, logs."""
    cfg = state.cfg
    state.round = index
    state.step += stats.steps
    lr = state.optimizer.param_groups[0]["lr"]
    means = mean_over_ranks({"loss": stats.loss / max(stats.steps, 1),
                             **{f"part/{k}": v / max(stats.steps, 1) for k, v in stats.parts.items()}}, device)
    summary = stats.summary(lr, info.world_size)
    summary["loss"] = means.pop("loss")
    summary["loss_parts"] = {k[len("part/"):]: v for k, v in means.items()}
    record: Dict[str, Any] = {"round": index, "iteration": state.step, "train_loss": summary["loss"],
                              "loss_parts": summary["loss_parts"], "lr": lr, "images_per_s": summary["images_per_s"]}
    if not plan.iteration_mode:
        record["epoch"] = index
    metrics, strips = None, []
    line = f"{plan.label(index)} | loss {summary['loss']:.4f} | lr {lr:.2e} | {summary['images_per_s']:.1f} img/s" \
           f" | {state.progress(plan.total_steps)}"
    improved = False
    if plan.validates_after(index):
        broadcast_buffers(state.model)
        if state.ema is not None:
            broadcast_buffers(state.ema.module)
        metrics, strips = evaluate(state.eval_model(), val_loader, device, cfg.data.num_classes, cfg.model.threshold,
                                   class_names, cfg.train.amp, cfg.train.log_images if info.is_main else 0, palette,
                                   cfg.inference, cfg.train.channels_last, cfg.train.progress and info.is_main)
        record["val"] = metrics
        line += " | val " + format_metrics(metrics)
        value = metrics.get(cfg.train.monitor)
        if _is_better(value, state.best, cfg.train.monitor_mode):
            state.best, state.best_round, state.stale, improved = value, index, 0, True
            line += f" | new best {cfg.train.monitor} {state.best:.4f}"
        else:
            state.stale += 1
            if cfg.train.early_stop is not None and state.stale >= cfg.train.early_stop:
                state.early_stopped = True
    state.history.append(record)
    log.info(line)
    if not info.is_main:
        return
    _log_tensorboard(writer, state.step, summary, metrics, strips)
    check_finite_weights(state, plan.label(index))
    checkpoint = state.state()
    if improved:
        save_checkpoint(inference_state(checkpoint), cfg.run_dir / "best.pt")
    save_checkpoint(checkpoint, cfg.run_dir / "last.pt")
    write_json(cfg.run_dir / "metrics.json", {"experiment": cfg.experiment, "monitor": cfg.train.monitor,
                                              "best": state.best, "best_round": state.best_round,
                                              "early_stopped": state.early_stopped, "history": state.history})


def check_finite_weights(state: "Run", label: str) -> None:
    """Raise TrainingDiverged before a checkpoint would record NaN or Inf weights or statistics."""
    for owner, module in (("model", state.model), ("EMA", state.ema.module if state.ema is not None else None)):
        if module is None:
            continue
        bad = [name for name, t in module.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise TrainingDiverged(f"{label}: the {owner} weights hold NaN or Inf ({', '.join(bad[:3])}); nothing "
                                   "was saved, last.pt holds the last good round. Lower optimizer.lr or set "
                                   "train.grad_clip, then --resume or start again with --overwrite")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Train; exit status 0 when done, 130 after Ctrl-C, 2 for a user's mistake (one ERROR line)."""
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    setup_logging(level=logging.INFO if rank == 0 else logging.WARNING, buffer=rank == 0)
    return guarded(lambda: _main(args), log, args.debug)


def _main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.check_data:
        report = check_dataset(*build_check_splits(cfg, SPLITS), cfg.data.root, cfg.data.name, cfg.data.num_classes,
                               class_info(cfg)[0] or [f"class {k}" for k in range(cfg.data.num_classes)],
                               progress=cfg.train.progress)
        sys.stdout.write(format_report(report) + "\n")
        return report.exit_code
    summary = run(cfg, resume=args.resume, overwrite=args.overwrite)
    return EXIT_INTERRUPTED if summary["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
