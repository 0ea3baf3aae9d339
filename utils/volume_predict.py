"""test.py for volumes: predict each case as nnU-Net does and write what a person checks.

Per case: the raw case is preprocessed with the checkpoint's plan (crop,
normalise, resample to the target spacing), predicted with the configured
inference (a 3D sliding window of the patch size, Gaussian-weighted, step
``1 - overlap``, mirrored over the axes in ``inference.flips``), the
probabilities resampled back to the original spacing and un-cropped to the
original shape, and the labels taken once. Written under the output folder:

* ``<case>.npz`` (key ``seg``, with ``<case>.json`` holding the spacing),
  ``<case>.nii.gz`` (the input's affine and header) or ``<case>.tif``: the
  labels in the input's own format;
* ``qc/<case>.png``: slices through the foreground extent: image, ground
  truth contour, prediction overlay;
* ``per_case.csv``: Dice and IoU per class for each labelled case;
* ``summary.json``: the dataset-level scores of one confusion matrix, and the
  per-case means by class with their foreground mean (nnU-Net's convention).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from datasets.volumes.preprocessing import preprocess_case, restore_probabilities
from datasets.volumes.readers import write_nifti, write_tiff_stack
from utils.config import Config
from utils.constants import IGNORE_INDEX
from utils.errors import DataError
from utils.fileio import write_json
from utils.inference import labels_from_probabilities, predict_probabilities
from utils.metrics import ConfusionMatrix, format_metrics
from utils.registry import DATASETS
from utils.reporting import write_csv
from utils.visualize import save_png, volume_qc_grid

log = logging.getLogger("test")

FOREGROUND_MEAN = ("nnU-Net's foreground mean: for each foreground class the mean over cases of the case's Dice "
                   "(a case where the class is absent from both prediction and ground truth is left out), then "
                   "the mean over the foreground classes")


def volume_cases(cfg: Config, input_dir: Optional[str]) -> Any:
    """The cases to predict: ``--input`` (any volume layout, all its cases) or the ``test.split`` cases."""
    kwargs = cfg.dataset_kwargs()
    if input_dir is not None:
        if not Path(input_dir).is_dir():
            raise DataError(f"--input {input_dir}: folder does not exist")
        kwargs["root"] = input_dir
        return DATASETS.build(cfg.data.name, split="all", transforms=None, **kwargs)
    try:
        return DATASETS.build(cfg.data.name, split=cfg.test.split, transforms=None, **kwargs)
    except DataError as exc:
        raise DataError(f"test.split={cfg.test.split!r} (--split): {exc}") from exc


def predict_case(model: torch.nn.Module, image: np.ndarray, properties: Dict[str, Any], plan: Dict[str, Any],
                 cfg: Config) -> np.ndarray:
    """Labels (Z, Y, X) of one raw case at its original spacing and shape."""
    data, _, info = preprocess_case(image, None, properties, plan, cfg.data.num_classes)
    probs = predict_probabilities(model, torch.from_numpy(np.ascontiguousarray(data))[None], amp=cfg.train.amp,
                                  settings=cfg.inference)[0]
    restored = restore_probabilities(probs.float().cpu().numpy(), info)
    labels = labels_from_probabilities(torch.from_numpy(restored)[None], cfg.model.threshold)[0]
    return labels.numpy().astype(np.uint8 if cfg.data.num_classes <= 255 else np.int32)


def write_prediction(labels: np.ndarray, properties: Dict[str, Any], out_dir: Path) -> Path:
    """The labels in the input's format: .nii.gz (affine, header), .tif, else .npz + .json (spacing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    case, kind = properties["case"], properties.get("format")
    if kind == "nifti":
        path = out_dir / f"{case}.nii.gz"
        write_nifti(path, labels, properties)
    elif kind == "tiff":
        path = out_dir / f"{case}.tif"
        write_tiff_stack(path, labels)
    else:
        path = out_dir / f"{case}.npz"
        np.savez_compressed(path, seg=labels)
        write_json(out_dir / f"{case}.json", {"spacing": [float(s) for s in properties["spacing"]]})
    return path


def case_scores(pred: np.ndarray, target: np.ndarray, class_names: List[str]) -> Dict[str, Any]:
    """One ``per_case.csv`` row: Dice and IoU per class (None where the class is absent from both)."""
    cm = ConfusionMatrix(len(class_names), IGNORE_INDEX, class_names)
    cm.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(target))
    scores = cm.compute()
    row: Dict[str, Any] = {}
    for name in class_names[1:]:
        row[f"dice_{name}"] = scores["dice_per_class"][name]
        row[f"iou_{name}"] = scores["iou_per_class"][name]
    row["dice_foreground_mean"] = _mean([row[f"dice_{name}"] for name in class_names[1:]])
    return row


def _mean(values: List[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


def per_case_means(rows: List[Dict[str, Any]], class_names: List[str]) -> Dict[str, Any]:
    """nnU-Net's summary: per class the mean over cases, then the foreground mean over classes."""
    by_class = {name: _mean([row.get(f"dice_{name}") for row in rows]) for name in class_names[1:]}
    return {"dice_per_class": by_class, "foreground_mean": _mean(list(by_class.values())),
            "definition": FOREGROUND_MEAN}


def predict_volumes(model: torch.nn.Module, cfg: Config, plan: Dict[str, Any], out_dir: Path,
                    class_names: List[str], palette: np.ndarray, input_dir: Optional[str] = None) -> Dict[str, Any]:
    """Predict every case (see the module docstring); returns the summary."""
    cases = volume_cases(cfg, input_dir)
    cm = ConfusionMatrix(cfg.data.num_classes, IGNORE_INDEX, class_names)
    rows: List[Dict[str, Any]] = []
    for i in tqdm(range(len(cases)), desc="predict", disable=not cfg.train.progress):
        image, target, properties = cases.read_case(i)
        labels = predict_case(model, image, properties, plan, cfg)
        write_prediction(labels, properties, out_dir)
        save_png(volume_qc_grid(image, labels, palette, target), out_dir / "qc" / f"{properties['case']}.png")
        if target is not None:
            cm.update(torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(target))
            rows.append({"case": properties["case"], **case_scores(labels, target, class_names)})
            log.info("%s: foreground Dice %s", properties["case"], _fmt(rows[-1]["dice_foreground_mean"]))
    summary: Dict[str, Any] = {"num_cases": len(cases), "predictions": str(out_dir), "qc": str(out_dir / "qc")}
    if rows:
        write_csv(out_dir / "per_case.csv", rows)
        summary["metrics"] = cm.compute()
        summary["per_case_mean"] = per_case_means(rows, class_names)
        log.info("%d cases: %s; per-case foreground mean Dice %s", len(rows), format_metrics(summary["metrics"]),
                 _fmt(summary["per_case_mean"]["foreground_mean"]))
    log.info("QC grids (image, ground truth, prediction) in %s", out_dir / "qc")
    return summary


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"
