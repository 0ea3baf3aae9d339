"""Train a segmentation model from one YAML config.

    python train.py --config configs/demo.yaml [--set train.epochs=3 --set data.root=/my/data] [--resume | --overwrite]
    python train.py --config configs/demo.yaml --check-data | --preview-augmentations [out.png]
    torchrun --nproc_per_node 4 train.py --config configs/cityscapes.yaml   # DDP (utils/distributed.py)

A *round* is the stretch of training between two validations: an epoch, or ``train.val_interval``
optimizer steps with ``train.iterations``. Rank 0 writes ``<train.checkpoint_dir>/<experiment>/``:
config.yaml, last.pt (to resume), best.pt (to predict), metrics.json, train.log, TensorBoard events.
Ctrl-C saves last.pt and exits 130; ``--resume`` continues from that very step. A user's mistake
ends in one ERROR line and exit status 2 (utils/cli.py).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.check import format_report
from utils.amp import autocast, grad_scaler, resolve_amp
from utils.builders import (build_criterion, build_datasets, build_loaders, build_optimizer, build_scheduler,
                            check_data_at_start, class_names_and_palette, data_report, prepare_model,
                            wrap_for_training, write_preview)
from utils.checkpoint import inference_state, save_checkpoint
from utils.cli import EXIT_INTERRUPTED, add_config_arguments, guarded, log_to_file, setup_logging
from utils.config import Config, load_config, save_config
from utils.distributed import DistInfo, any_rank, init_distributed
from utils.distributed import cleanup as cleanup_distributed
from utils.ema import ModelEMA
from utils.inference import predict_labels
from utils.metrics import ConfusionMatrix
from utils.reporting import (log_tensorboard, open_tensorboard, preview_row, round_line, round_record, run_header,
                             write_metrics)
from utils.run_folder import check_run_folder, open_run_folder, removed_if_failed
from utils.runtime import StopFlag, configure_runtime, restore_runtime, seed_everything, select_device
from utils.sampling import round_batches, round_seed
from utils.train_state import RoundPlan, RoundStats, TrainState, diverged, make_plan, resume_round

log = logging.getLogger("train")
Batches = Iterator[Tuple[torch.Tensor, torch.Tensor]]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Train; exit status 0 when done, 130 after Ctrl-C, 2 for a user's mistake (one ERROR line)."""
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    setup_logging(level=logging.INFO if rank == 0 else logging.WARNING, buffer=rank == 0)
    return guarded(lambda: dispatch(args), log, args.debug)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a segmentation model from a YAML config.")
    add_config_arguments(p)
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default: <run dir>/last.pt)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in a run folder that already holds a trained run, replacing it")
    p.add_argument("--check-data", action="store_true",
                   help="only scan the dataset and report problems (exit status 1 if any), no training")
    p.add_argument("--preview-augmentations", nargs="?", const="results/aug_preview.png", metavar="PNG",
                   help="only write a grid of training samples after the train transforms, each beside its mask "
                        "(default file: %(const)s)")
    p.add_argument("--preview-num", type=int, default=8, metavar="N", help="samples in the preview (default 8)")
    return p.parse_args(argv)


def dispatch(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.check_data:
        report = data_report(cfg, progress=cfg.train.progress)
        sys.stdout.write(format_report(report) + "\n")
        return report.exit_code
    if args.preview_augmentations:
        log.info("wrote %s", write_preview(cfg, args.preview_num, args.preview_augmentations))
        return 0
    summary = run(cfg, resume=args.resume, overwrite=args.overwrite)
    return EXIT_INTERRUPTED if summary["interrupted"] else 0


def run(cfg: Config, resume: Optional[str] = None, overwrite: bool = False) -> Dict[str, Any]:
    """Train per ``cfg`` (one process, or one of a torchrun job); returns a summary."""
    dist, device = init_distributed(select_device(cfg.device))
    previous_runtime = configure_runtime(cfg, device)
    try:
        with removed_if_failed(cfg.run_dir, enabled=dist.is_main):
            state, plan, train_loader, val_loader, interrupted = start(cfg, resume, overwrite, dist, device)
            stop, unfinished_round = train_rounds(state, plan, train_loader, val_loader, interrupted, dist)
    finally:
        restore_runtime(previous_runtime)
        cleanup_distributed()
    if stop.requested:
        where = (f"{unfinished_round.steps}/{plan.steps_in(state.round + 1)} steps into "
                 f"{plan.label(state.round + 1)}" if unfinished_round else f"after {plan.label(state.round)}")
        log.warning("interrupted %s: saved %s; continue with --resume", where, cfg.run_dir / "last.pt")
    elif state.early_stopped:
        log.info("early stop after %s: %s has not improved for %d validations; best %s at round %s",
                 plan.label(state.round), cfg.train.monitor, state.validations_since_best, state.best,
                 state.best_round)
    else:
        log.info("done: best %s %s; checkpoints in %s", cfg.train.monitor, state.best, cfg.run_dir)
    return {"best": state.best, "epoch": state.round, "round": state.round, "step": state.step,
            "interrupted": stop.requested, "early_stopped": state.early_stopped, "run_dir": str(cfg.run_dir)}


def start(cfg: Config, resume: Optional[str], overwrite: bool, dist: DistInfo,
          device: torch.device) -> Tuple[TrainState, RoundPlan, DataLoader, DataLoader, Optional[Dict[str, Any]]]:
    """Check, build and resume everything; only then is the run folder written."""
    seed_everything(round_seed(cfg.seed, 0, dist.rank))
    check_run_folder(cfg.run_dir, resume, overwrite, cfg.source)
    check_data_at_start(cfg, progress=cfg.train.progress and dist.is_main)
    train_ds, val_ds = build_datasets(cfg, dist.world_size)
    train_loader, val_loader = build_loaders(cfg, train_ds, val_ds, device, dist)
    plan = make_plan(cfg, len(train_loader))
    model = prepare_model(cfg, device, dist)
    optimizer = build_optimizer(cfg, model)
    state = TrainState(cfg, device, model, model, build_criterion(cfg, train_ds, cfg.run_dir), optimizer,
                       build_scheduler(cfg, optimizer, plan.steps_per_epoch, plan.total_steps),
                       grad_scaler(device, resolve_amp(cfg.train.amp, device, warn=dist.is_main)),
                       ModelEMA(model, cfg.train.ema) if cfg.train.ema is not None else None)
    interrupted = state.resume(resume, cfg.run_dir) if resume is not None else None
    state.wrapped = wrap_for_training(model, cfg, device, dist)
    if dist.is_main:  # every start check has passed: now the run folder is written
        open_run_folder(cfg.run_dir, overwrite)
        log_to_file(cfg.run_dir / "train.log")
        save_config(cfg, cfg.run_dir / "config.yaml")
    log.info(run_header(cfg, f"{device}" + (f" x {dist.world_size} processes" if dist.distributed else ""),
                        len(getattr(train_ds, "cases", train_ds)), len(val_ds), model, plan.length, resolve_amp(cfg.train.amp, device, warn=False)))
    return state, plan, train_loader, val_loader, interrupted


def train_rounds(state: TrainState, plan: RoundPlan, train_loader: DataLoader, val_loader: DataLoader,
                 interrupted: Optional[Dict[str, Any]], dist: DistInfo) -> Tuple[StopFlag, Optional[RoundStats]]:
    """The loop: train a round, validate when due, save; returns the stop flag and a round Ctrl-C cut short."""
    cfg, run_dir = state.cfg, state.cfg.run_dir
    writer = open_tensorboard(run_dir) if cfg.train.tensorboard and dist.is_main else None
    stop = StopFlag().install()
    state.start_clock()
    log.info("training started; Ctrl-C saves %s and stops", run_dir / "last.pt")
    try:
        while state.round < plan.rounds and not state.early_stopped and not stop.requested:
            index = state.round + 1
            seed_everything(round_seed(cfg.seed, index, dist.rank))
            batches = round_batches(train_loader, cfg.seed, index)
            stats, interrupted = resume_round(interrupted, index, batches, cfg.train.accumulate), None
            if cfg.train.freeze_encoder_epochs:
                state.model.set_encoder_frozen(state.step < cfg.train.freeze_encoder_epochs * plan.steps_per_epoch)
            stats = train_one_round(state, batches, plan.steps_in(index), stats, stop, plan.label(index),
                                    dist.is_main)
            if stats.steps < plan.steps_in(index):  # Ctrl-C mid-round
                if dist.is_main:
                    save_checkpoint(state.checkpoint(interrupted=stats), run_dir / "last.pt")
                return stop, stats
            record, preview_rows, new_best = validate(state, plan, index, stats, val_loader, dist)
            if dist.is_main:
                save(state, record, new_best, writer, preview_rows)
        if stop.requested and dist.is_main:
            save_checkpoint(state.checkpoint(), run_dir / "last.pt")
        return stop, None
    finally:
        stop.restore()
        if writer is not None:
            writer.close()


def train_one_round(state: TrainState, batches: Batches, steps: int, stats: RoundStats, stop: StopFlag,
                    label: str = "", show_progress: bool = True) -> RoundStats:
    """Optimizer steps until ``stats.steps == steps``, or until Ctrl-C (then fewer).

    Each step takes ``train.accumulate`` batches, their losses divided by it
    and their gradients summed (under DDP only the last one all-reduces);
    then clipping, the optimizer, the scheduler and the EMA step once.
    """
    cfg, device = state.cfg, state.device
    state.wrapped.train()
    bar = tqdm(total=steps, initial=stats.steps, desc=label, leave=False, dynamic_ncols=True,
               disable=not (cfg.train.progress and show_progress), mininterval=1.0)
    start_time = time.perf_counter() - stats.seconds
    while stats.steps < steps:
        state.optimizer.zero_grad(set_to_none=True)
        loss, loss_terms, seen, bad_loss = accumulate_gradients(state, batches)
        if any_rank(bad_loss is not None, device):  # every process stops at this step, before it
            raise diverged(label, stats.steps + 1, bad_loss)
        if cfg.train.grad_clip is not None:
            state.scaler.unscale_(state.optimizer)
            torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.train.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        if state.ema is not None:
            state.ema.update(state.model)
        stats.add_step(loss, loss_terms, seen, time.perf_counter() - start_time)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{stats.images_per_s():.1f}", refresh=False)
        if any_rank(stop.requested, device) and stats.steps < steps:
            stop.requested = True
            break
    bar.close()
    return stats


def accumulate_gradients(state: TrainState, batches: Batches) -> Tuple[float, Dict[str, float], int, Any]:
    """Forward and backward over ``train.accumulate`` batches: (loss, loss terms, images, first non-finite
    loss with its terms or None)."""
    cfg, device = state.cfg, state.device
    accumulate = cfg.train.accumulate
    ddp = getattr(state.wrapped, "_orig_mod", state.wrapped)  # under torch.compile
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    amp = resolve_amp(cfg.train.amp, device, warn=False)
    total, terms, seen, bad_loss = 0.0, {}, 0, None
    for micro in range(accumulate):
        images, masks = next(batches)
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        masks = masks.to(device, non_blocking=True)
        last = micro == accumulate - 1
        sync = ddp.no_sync() if isinstance(ddp, DistributedDataParallel) and not last else contextlib.nullcontext()
        with sync:
            with autocast(device, amp):
                outputs = state.wrapped(images)
            loss, loss_terms = state.criterion(outputs, masks)  # float32 losses, the CGM "cls" term included
            state.scaler.scale(loss / accumulate).backward()
        value = loss.item()
        if not np.isfinite(value) and bad_loss is None:
            bad_loss = (value, loss_terms)
        total += value / accumulate
        for key, part in loss_terms.items():
            terms[key] = terms.get(key, 0.0) + part / accumulate
        seen += images.shape[0]
    return total, terms, seen, bad_loss


def validate(state: TrainState, plan: RoundPlan, index: int, stats: RoundStats, val_loader: DataLoader,
             dist: DistInfo) -> Tuple[Dict[str, Any], List[np.ndarray], bool]:
    """After round ``index``: its record (with validation metrics when due), preview rows, and whether best."""
    cfg = state.cfg
    state.round, state.step = index, state.step + stats.steps
    loss, loss_terms = stats.means_over_ranks(state.device)
    record = round_record(index, state.step, loss, loss_terms, state.optimizer.param_groups[0]["lr"],
                          stats.images_per_s(dist.world_size), not plan.iteration_mode)
    preview_rows, new_best = [], False
    if plan.validates_after(index):
        state.share_buffers()
        names, palette = class_names_and_palette(cfg)
        record["val"], preview_rows = evaluate(state.eval_model(), val_loader, cfg, state.device, names, palette,
                                               cfg.train.log_images if dist.is_main else 0,
                                               cfg.train.progress and dist.is_main)
        new_best = state.record_validation(record["val"].get(cfg.train.monitor))
    state.history.append(record)
    log.info(round_line(plan.label(index), record, state.progress(plan.total_steps), cfg.train.monitor, new_best))
    return record, preview_rows, new_best


def save(state: TrainState, record: Dict[str, Any], new_best: bool, writer: Any,
         preview_rows: List[np.ndarray]) -> None:
    """Rank 0 after a round: TensorBoard, then best.pt (inference state) if improved, last.pt, metrics.json."""
    cfg, run_dir = state.cfg, state.cfg.run_dir
    log_tensorboard(writer, state.step, record, preview_rows)
    state.check_finite(f"round {state.round}")
    checkpoint = state.checkpoint()
    if new_best:
        save_checkpoint(inference_state(checkpoint), run_dir / "best.pt")
    save_checkpoint(checkpoint, run_dir / "last.pt")
    write_metrics(run_dir / "metrics.json", cfg.experiment, cfg.train.monitor, state.best, state.best_round,
                  state.early_stopped, state.history)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: DataLoader, cfg: Config, device: torch.device,
             class_names: Optional[List[str]] = None, palette: Optional[np.ndarray] = None, num_images: int = 0,
             progress: bool = False) -> Tuple[Dict[str, Any], List[np.ndarray]]:
    """Metrics over the whole split from one confusion matrix (summed over processes under DDP), and up to
    ``num_images`` (image | ground truth | prediction) rows for TensorBoard. Predictions come from
    :func:`utils.inference.predict_labels`, the prediction path test.py uses too."""
    model.eval()
    cm = ConfusionMatrix(cfg.data.num_classes, class_names=class_names)
    preview_rows: List[np.ndarray] = []
    # The bar shows only when validation takes more than a few seconds.
    for images, masks in tqdm(loader, desc="validate", leave=False, disable=not progress, delay=3.0,
                              mininterval=1.0, dynamic_ncols=True):
        preds = predict_labels(model, images, cfg.inference, cfg.model.threshold, cfg.train.amp,
                               cfg.train.channels_last, device=device)
        cm.update(preds, masks.to(preds.device, non_blocking=True))
        for i in range(min(num_images - len(preview_rows), images.shape[0])):
            preview_rows.append(preview_row(images[i], masks[i], preds[i], palette, cfg.data.num_classes))
    cm.reduce_from_all_processes()
    return cm.compute(), preview_rows


if __name__ == "__main__":
    sys.exit(main())
