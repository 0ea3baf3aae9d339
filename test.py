"""Predict with a trained checkpoint and write results a person can look at.

    python test.py --config configs/demo.yaml [--set ...] [--checkpoint PATH] [--input DIR] [--output DIR]
    python test.py --checkpoint checkpoint/demo/best.pt          # config read from the checkpoint
    python test.py --checkpoint checkpoint/demo/best.pt --export onnx   # torchscript | export | onnx
    python test.py                    # the most recent run: the newest checkpoint/*/best.pt

Writes ``<test.output_dir>/<experiment>/`` (or ``--output``):

* ``masks/<name>.png``    binary: 0/255 grayscale; multiclass: palette PNG of class indices
* ``overlays/<name>.png`` the image with the prediction blended in, its contours in the
                          class colour (binary: cyan or yellow, to stand out on red
                          tissue) and the ground-truth contour in white
* ``overview.png``        a grid of the first images beside their overlays
* ``per_image.csv``       Dice and IoU per image (when masks exist)
* ``summary.json``        dataset-level metrics from one confusion matrix, the per-image
                          means, the predicted pixels per class, and the checkpoint used
* ``qc.png``              with ``--qc N``: per image a row of image, truth, prediction and
                          each class's probability map (utils/qc.py)
* ``cityscapes_submission/<city>_<seq>_<frame>_leftImg8bit.png``  label ids for the
                          benchmark server (``test.submission``; auto: Cityscapes' test split)

On a volume config (``data.name: volumes``) each case is predicted with the checkpoint's plan and written
in its own format with QC slice grids, ``per_case.csv`` and ``summary.json`` (utils/volume_predict.py).

Predictions are made at the size the validation transforms give and then
resized (bilinear, on probabilities) to each image's original size, so every
mask lines up with its image. A class present in the ground truth but never
predicted is logged as a WARNING.

With neither ``--config`` nor ``--checkpoint``, the newest ``best.pt`` (by
modification time) of ``checkpoint/*/`` is used (``last.pt`` files are not
considered: they may be a run cut short).

``--export FORMAT`` predicts nothing: it writes the model (``model.torchscript.pt``,
``model.pt2`` or ``model.onnx`` beside the checkpoint, in ``--output``, or at
``--export-path``), loads it back, checks its logits against the PyTorch model's at
two input sizes, and writes ``<file>.json`` with what a deployer needs (channels,
classes, sigmoid/threshold or softmax, normalisation, checkpoint). See utils/export.py.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from datasets import list_images, read_image
from datasets.cityscapes import SUBMISSION_FOLDER, SubmissionWriter, submission_wanted
from utils.builders import build_model, class_names_and_palette
from utils.checkpoint import inference_weights, load_checkpoint, load_weights, saved_config
from utils.cli import add_config_arguments, guarded, setup_logging
from utils.config import Config, TrainConfig, apply_overrides, config_from_dict, load_config
from utils.constants import IGNORE_INDEX, IMAGE_SUFFIXES
from utils.errors import CheckpointError, ConfigError, DataError
from utils.export import FORMATS as EXPORT_FORMATS
from utils.export import ExportError, default_export_path, export_model, sidecar_path
from utils.fileio import write_json
from utils.inference import labels_from_probabilities, predict_labels, predict_probabilities
from utils.metrics import ConfusionMatrix, format_metrics, per_image_scores
from utils.qc import QCGrid, column_titles, count_pixels, warn_never_predicted
from utils.reporting import csv_row, per_image_means, write_csv
from utils.registry import DATASETS
from utils.run_folder import most_recent_best
from utils.runtime import select_device
from utils.transforms import build_transforms
from utils.visualize import make_grid, mask_image, overlay, save_png, to_display
from utils.volume_plan import apply_plan, is_volumetric, plan_of_checkpoint
from utils.volume_predict import predict_volumes

log = logging.getLogger("test")

Sample = Tuple[str, torch.Tensor, Optional[torch.Tensor]]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Predict with a trained segmentation checkpoint.")
    add_config_arguments(p, config_required=False)
    p.add_argument("--checkpoint", help="checkpoint file (default: <run dir>/<test.checkpoint>); alone, the "
                                        "model and data are rebuilt from the config saved in it")
    p.add_argument("--split", help="the dataset split to predict (default: test.split from the config)")
    p.add_argument("--input", help="a folder of images (no masks needed) to predict instead of a split")
    p.add_argument("--output", help="output folder (default: <test.output_dir>/<experiment>)")
    p.add_argument("--export", choices=list(EXPORT_FORMATS),
                   help="write the model as TorchScript, a torch.export program (.pt2) or ONNX, "
                        "check it against the PyTorch model, and predict nothing")
    p.add_argument("--export-path", help="file for --export (default: model.<ext> in --output if given, "
                                         "else beside the checkpoint)")
    p.add_argument("--qc", type=int, default=0, metavar="N",
                   help="write qc.png: for the first N images, image | truth | prediction | each class's "
                        "probability map")
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> Tuple[Config, Path, Dict[str, Any]]:
    """The config (from --config, else from the checkpoint), the checkpoint path and its state."""
    if args.qc < 0:
        raise ConfigError(f"--qc {args.qc}: the number of images in qc.png must be 0 or more")
    check_paths = args.input is None and not args.export
    overrides = [*args.overrides, *([f"test.split={args.split}"] if args.split else [])]
    if args.config:
        cfg = load_config(args.config, overrides, check_paths=check_paths)
        ckpt_path = Path(args.checkpoint) if args.checkpoint else cfg.run_dir / cfg.test.checkpoint
        state = load_checkpoint(ckpt_path, missing_hint=f"train first (python train.py --config {args.config}) "
                                                        "or pass --checkpoint PATH")
    else:
        ckpt_path = Path(args.checkpoint) if args.checkpoint else most_recent_best(Path(TrainConfig.checkpoint_dir))
        if not args.checkpoint:
            log.info("no --config/--checkpoint given: using %s, the most recent run", ckpt_path)
        state = load_checkpoint(ckpt_path)
        raw = saved_config(state)
        if raw is None:
            raise CheckpointError(f"{ckpt_path}: holds no config; pass --config too")
        keys = apply_overrides(raw, overrides)
        cfg = config_from_dict(raw, source=f"{ckpt_path} (saved config)", overridden=keys, check_paths=check_paths)
    if args.output and Path(args.output).exists() and not Path(args.output).is_dir():
        raise ConfigError(f"--output {args.output}: is a file, not a folder; name a folder (it is created "
                          "if missing)")
    return cfg, ckpt_path, state


def load_model(cfg: Config, ckpt_path: Path, state: Dict[str, Any], from_config: bool) -> torch.nn.Module:
    """The config's model with the checkpoint's inference weights; a mismatch says what each holds."""
    model = build_model(cfg)
    fix = (f"predict with the checkpoint's own config: python test.py --checkpoint {ckpt_path}" if from_config
           else "drop the --set overrides of model.* and data.num_classes")
    load_weights(model, inference_weights(state), ckpt_path, state, cfg.to_dict(), fix)
    return model


def iter_samples(cfg: Config, input_dir: Optional[str]) -> Tuple[int, Iterator[Sample]]:
    """(count, iterator of (name, raw image (C,H,W) float, raw mask (H,W) or None))."""
    if input_dir is not None:
        if not Path(input_dir).is_dir():
            raise DataError(f"--input {input_dir}: folder does not exist")
        paths = list_images(Path(input_dir))
        if not paths:
            raise DataError(f"--input {input_dir}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
        intensity = cfg.data.options.get("intensity", "auto")

        def from_folder() -> Iterator[Sample]:
            for path in paths:
                yield path.stem, read_image(path, intensity=intensity, in_channels=cfg.model.in_channels), None
        return len(paths), from_folder()

    try:
        dataset = DATASETS.build(cfg.data.name, split=cfg.test.split, transforms=None, **cfg.dataset_kwargs())
    except DataError as exc:
        raise DataError(f"test.split={cfg.test.split!r} (--split): {exc}") from exc

    def from_dataset() -> Iterator[Sample]:
        for i, (image_path, _) in enumerate(dataset.samples):
            image, mask = dataset.read_sample(i)
            yield Path(image_path).stem, image, mask
    return len(dataset), from_dataset()


def predict(model: torch.nn.Module, image: torch.Tensor, transforms: Callable, cfg: Config,
            device: torch.device) -> np.ndarray:
    """(H, W) int64 class indices at the image's original size (probabilities resized, bilinear)."""
    x, _ = transforms(image, None)
    labels = predict_labels(model, x.as_subclass(torch.Tensor).unsqueeze(0), cfg.inference, cfg.model.threshold,
                            cfg.train.amp, out_size=tuple(image.shape[-2:]), device=device)
    return labels[0].cpu().numpy()


@torch.inference_mode()
def predict_with_probabilities(model: torch.nn.Module, image: torch.Tensor, transforms: Callable, cfg: Config,
                               device: torch.device) -> Tuple[np.ndarray, torch.Tensor]:
    """:func:`predict`'s labels and the (K, H, W) probabilities they come from (the same path and settings)."""
    x, _ = transforms(image, None)
    x = x.as_subclass(torch.Tensor).unsqueeze(0)
    if cfg.inference is None or cfg.inference.mode != "slide":  # a sliding window sends only its tiles
        x = x.to(device)
    probs = predict_probabilities(model, x, out_size=tuple(image.shape[-2:]), amp=cfg.train.amp,
                                  settings=cfg.inference)
    return labels_from_probabilities(probs, cfg.model.threshold)[0].cpu().numpy(), probs[0].cpu()


class Tally:
    """What the loop over the images gathers for summary.json, per_image.csv and overview.png."""

    def __init__(self, cm: ConfusionMatrix) -> None:
        self.cm = cm
        self.predicted = np.zeros(cm.num_classes, np.int64)  # predicted pixels per class, every image
        self.rows: List[Dict[str, Any]] = []                 # per_image.csv
        self.thumbs: List[np.ndarray] = []                   # overview.png: image | overlay


def run(cfg: Config, ckpt_path: Path, state: Dict[str, Any], input_dir: Optional[str] = None,
        output: Optional[str] = None, from_config: bool = True, qc: int = 0) -> Dict[str, Any]:
    device = select_device(cfg.device)
    if is_volumetric(cfg):  # the planned patch size, strides and tile the checkpoint was trained with
        apply_plan(cfg, plan_of_checkpoint(state, ckpt_path))
    model = load_model(cfg, ckpt_path, state, from_config)
    model.to(device).eval()
    out_dir = Path(output) if output else Path(cfg.test.output_dir) / cfg.experiment
    num_classes = cfg.data.num_classes
    class_names, palette = class_names_and_palette(cfg)
    if is_volumetric(cfg):
        return run_volumes(cfg, model, ckpt_path, state, input_dir, out_dir)
    transforms = build_transforms(cfg.transforms.val)
    count, samples = iter_samples(cfg, input_dir)
    wanted = submission_wanted(cfg.test.submission, cfg.data.name, None if input_dir else cfg.test.split)
    submission = SubmissionWriter(out_dir / SUBMISSION_FOLDER) if wanted else None
    qc_grid = QCGrid(qc, palette, column_titles(class_names, cfg.binary_sigmoid))
    log.info("predicting %d images with %s (epoch %s) -> %s", count, ckpt_path, state.get("epoch"), out_dir)

    tally = Tally(ConfusionMatrix(num_classes, class_names=class_names))
    for name, image, mask in tqdm(samples, total=count, desc="predict", disable=not cfg.train.progress):
        if qc_grid.wants_more():
            pred, probs = predict_with_probabilities(model, image, transforms, cfg, device)
        else:
            pred, probs = predict(model, image, transforms, cfg, device), None
        save_png(mask_image(pred, num_classes, palette), out_dir / "masks" / f"{name}.png")
        if submission is not None:
            submission.write(name, pred)
        tally.predicted += count_pixels(pred, num_classes)
        target = None
        if mask is not None:
            target = mask.numpy()
            pred_t = torch.from_numpy(pred)
            tally.cm.update(pred_t, mask)
            tally.rows.append(csv_row(name, per_image_scores(pred_t, mask, num_classes, IGNORE_INDEX, class_names)))
        if probs is not None:
            qc_grid.add(image, target, pred, probs)
        if cfg.test.save_overlays:
            save_overlay(cfg, name, image, pred, target, palette, out_dir, tally.thumbs)
    if tally.thumbs:
        height = 192
        box = (height, round(tally.thumbs[0].shape[1] * height / tally.thumbs[0].shape[0]))
        save_png(make_grid(tally.thumbs, columns=3, tile_size=box), out_dir / "overview.png")
    if qc_grid.save(out_dir / "qc.png"):
        log.info("qc.png: %d rows of %s", qc_grid.rows, " | ".join(qc_grid.titles))
    if submission is not None:
        log.info("%d label-id PNGs for the Cityscapes benchmark server in %s (zip its files as they are)",
                 submission.count, submission.folder)
    return write_summary(cfg, ckpt_path, state, input_dir or f"split {cfg.test.split}", count, tally, out_dir)


def save_overlay(cfg: Config, name: str, image: torch.Tensor, pred: np.ndarray, target: Optional[np.ndarray],
                 palette: np.ndarray, out_dir: Path, thumbs: List[np.ndarray]) -> None:
    """``overlays/<name>.png``; the first 12 (image | overlay) pairs are kept for overview.png."""
    display = to_display(image)
    shown = overlay(display, pred, palette, cfg.test.overlay_alpha, target,
                    binary=cfg.data.num_classes == 2, color=cfg.test.overlay_color)
    save_png(shown, out_dir / "overlays" / f"{name}.png")
    if len(thumbs) < 12:
        thumbs.append(np.concatenate([display, shown], axis=1))


def write_summary(cfg: Config, ckpt_path: Path, state: Dict[str, Any], source: str, count: int, tally: Tally,
                  out_dir: Path) -> Dict[str, Any]:
    """``summary.json`` (and ``per_image.csv`` when masks exist); warns of classes never predicted."""
    num_classes, class_names = cfg.data.num_classes, tally.cm.class_names
    summary: Dict[str, Any] = {"experiment": cfg.experiment, "checkpoint": str(ckpt_path),
                               "checkpoint_epoch": state.get("epoch"), "source": source,
                               "num_images": count, "num_classes": num_classes,
                               "prediction": ("sigmoid > %.3f" % cfg.model.threshold) if cfg.binary_sigmoid
                               else "argmax of softmax",
                               "predicted_pixels_per_class": dict(zip(class_names, tally.predicted.tolist()))}
    if tally.rows:
        write_csv(out_dir / "per_image.csv", tally.rows)
        metrics = tally.cm.compute()
        summary["metrics"] = metrics
        summary["per_image_mean"] = per_image_means(tally.rows, num_classes)
        log.info("%s: %s", source, format_metrics(metrics))
        warn_never_predicted(tally.predicted, tally.cm.mat.sum(dim=1).tolist(), class_names, log)
    write_json(out_dir / "summary.json", summary)
    log.info("results written to %s", out_dir)
    return summary


def run_volumes(cfg: Config, model: torch.nn.Module, ckpt_path: Path, state: Dict[str, Any],
                input_dir: Optional[str], out_dir: Path) -> Dict[str, Any]:
    """Volumes: each case preprocessed with the checkpoint's plan, predicted, restored (utils/volume_predict.py)."""
    plan = cfg.volume_plan  # set by run() from the checkpoint (apply_plan), with the patch size as tile
    log.info("predicting volumes with %s (epoch %s) -> %s", ckpt_path, state.get("epoch"), out_dir)
    class_names, palette = class_names_and_palette(cfg)
    summary = {"experiment": cfg.experiment, "checkpoint": str(ckpt_path), "checkpoint_epoch": state.get("epoch"),
               "source": input_dir or f"split {cfg.test.split}", "num_classes": cfg.data.num_classes,
               **predict_volumes(model, cfg, plan, out_dir, class_names, palette, input_dir)}
    write_json(out_dir / "summary.json", summary)
    log.info("results written to %s", out_dir)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Predict (or export); exit status 0 when done, 2 for a user's mistake (one ERROR line)."""
    args = parse_args(argv)
    setup_logging()
    return guarded(lambda: _main(args), log, args.debug)


def _main(args: argparse.Namespace) -> int:
    cfg, ckpt_path, state = resolve(args)
    if args.export:
        folder = Path(args.output) if args.output else ckpt_path.parent
        out_path = Path(args.export_path) if args.export_path else default_export_path(folder, args.export)
        model = load_model(cfg, ckpt_path, state, bool(args.config))
        try:
            export_model(model, cfg, args.export, out_path, checkpoint=ckpt_path, epoch=state.get("epoch"),
                         class_names=class_names_and_palette(cfg)[0])
        except ExportError as exc:
            log.error("%s", exc)
            return 1
        log.info("%s model written to %s (facts for deployment in %s)", args.export, out_path,
                 sidecar_path(out_path))
        return 0
    run(cfg, ckpt_path, state, args.input, args.output, from_config=bool(args.config), qc=args.qc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
