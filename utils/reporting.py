"""What a person reads about a run: the round's log line, TensorBoard, ``metrics.json``, and
test.py's ``per_image.csv`` with the per-image means of ``summary.json``."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from utils.constants import IGNORE_INDEX
from utils.fileio import atomic_open, write_failure, write_json
from utils.metrics import format_metrics
from utils.visualize import colorize, default_palette, make_grid, to_display


def run_header(cfg: Any, where: str, num_train: int, num_val: int, model: Any, length: str, amp: str) -> str:
    """The line that opens a run: experiment, data, device, split sizes, model and size, length, AMP."""
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return (f"experiment {cfg.experiment} | {cfg.data.name} on {where} | {num_train} train / {num_val} val images | "
            f"model {cfg.model.name} ({params:.2f}M params) | {length} | amp {amp}")


def round_record(index: int, step: int, loss: float, loss_terms: Dict[str, float], lr: float,
                 images_per_s: float, epoch_mode: bool) -> Dict[str, Any]:
    """One entry of ``metrics.json``'s history (``val`` is added when the round validated)."""
    record: Dict[str, Any] = {"round": index, "iteration": step, "train_loss": loss, "loss_parts": loss_terms,
                              "lr": lr, "images_per_s": images_per_s}
    if epoch_mode:
        record["epoch"] = index
    return record


def round_line(label: str, record: Dict[str, Any], progress: str, monitor: str, new_best: bool) -> str:
    """``epoch 3/50 | loss 0.2113 | lr 1.0e-03 | 12.3 img/s | run 6% done, ETA 0:12:34 | val ... | new best``."""
    line = (f"{label} | loss {record['train_loss']:.4f} | lr {record['lr']:.2e} | "
            f"{record['images_per_s']:.1f} img/s | {progress}")
    metrics = record.get("val")
    if metrics is not None:
        line += " | val " + format_metrics(metrics)
        if new_best:
            line += f" | new best {monitor} {metrics[monitor]:.4f}"
    return line


def open_tensorboard(run_dir: Path) -> Any:
    """A TensorBoard writer into the run folder (imported here: only rank 0 with train.tensorboard needs it)."""
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=str(run_dir))


def preview_row(image: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor, palette: Optional[np.ndarray],
                num_classes: int) -> np.ndarray:
    """One (image | ground truth | prediction) row for TensorBoard, masks in the class colours; for a volume,
    the slice (along Z) with the most labelled foreground."""
    if mask.ndim == 3:
        foreground = ((mask > 0) & (mask != IGNORE_INDEX)).flatten(1).sum(dim=1)
        z = int(foreground.argmax()) if foreground.any() else mask.shape[0] // 2
        image, mask, pred = image[:, z], mask[z], pred[z]
    palette = default_palette(num_classes) if palette is None else palette
    tiles = [to_display(image), colorize(mask.cpu().numpy(), palette), colorize(pred.cpu().numpy(), palette)]
    return np.concatenate(tiles, axis=1)


def log_tensorboard(writer: Any, step: int, record: Dict[str, Any], preview_rows: List[np.ndarray]) -> None:
    """Training curves, validation metrics and (image | truth | prediction) rows of one round."""
    if writer is None:
        return
    writer.add_scalar("train/loss", record["train_loss"], step)
    for key, value in record["loss_parts"].items():
        writer.add_scalar(f"train/loss_{key}", value, step)
    writer.add_scalar("train/lr", record["lr"], step)
    writer.add_scalar("train/images_per_s", record["images_per_s"], step)
    for key, value in (record.get("val") or {}).items():
        if isinstance(value, float):
            writer.add_scalar(f"val/{key}", value, step)
    if preview_rows:
        writer.add_image("val/image_truth_prediction", make_grid(preview_rows, columns=1), step, dataformats="HWC")
    writer.flush()


def write_metrics(path: Path, experiment: str, monitor: str, best: Optional[float], best_round: Optional[int],
                  early_stopped: bool, history: List[Dict[str, Any]]) -> None:
    """``metrics.json``: the monitored metric, the best value and round, and every round's record."""
    write_json(path, {"experiment": experiment, "monitor": monitor, "best": best, "best_round": best_round,
                      "early_stopped": early_stopped, "history": history})


def csv_row(name: str, scores: Dict[str, Any]) -> Dict[str, Any]:
    """One ``per_image.csv`` row: the image's scalar scores, and its per-class Dice and IoU as columns."""
    row: Dict[str, Any] = {"image": name}
    for key, value in scores.items():
        if isinstance(value, float) or value is None:
            row[key] = value
        elif isinstance(value, dict) and key in ("dice_per_class", "iou_per_class"):
            for cls, v in value.items():
                row[f"{key.split('_')[0]}_{cls}"] = v
    return row


def write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    """The rows as CSV (columns in order of first appearance; floats with 6 decimals), atomically."""
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    try:
        with atomic_open(path, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, restval="")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else (f"{v:.6f}" if isinstance(v, float) else v))
                                 for k, v in row.items()})
    except OSError as exc:
        raise write_failure(path, exc) from exc


def per_image_means(rows: List[Dict[str, Any]], num_classes: int) -> Dict[str, Any]:
    """The mean over images of each image's own score (nnU-Net's per-case averaging), named as such."""
    keys = ["dice_foreground", "iou_foreground"] if num_classes == 2 else ["mean_dice", "miou"]
    out: Dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), float)]
        out[key] = float(np.mean(values)) if values else None
    out["definition"] = ("mean over images of each image's own score (per-case averaging, as nnU-Net reports); "
                         "images where the score is undefined (class absent from both prediction and truth) "
                         "are left out. Differs from the dataset-level figures in 'metrics'.")
    return out
