"""Experiment configuration: the only place YAML is read.

A config is one self-contained YAML file with the sections ``experiment``,
``seed``, ``device``, ``data``, ``plan`` (volumes), ``transforms``, ``model``, ``loss``,
``optimizer``, ``scheduler``, ``train`` and ``test``. :func:`load_config`
reads it with ``yaml.safe_load``, applies ``--set key.path=value`` overrides
(values parsed as YAML scalars), fills defaults and validates everything
before any work starts:

* an unknown key fails naming the file, the key path and the closest valid
  key (``data.num_clases`` -> "did you mean 'num_classes'?");
* a wrong type fails naming the key, the expected type and what was given;
* registered names (dataset, model, losses, transforms) must exist, and the
  keyword arguments given to them are checked against their constructors'
  type annotations, so a misspelled model option fails at start too;
* ``data.root`` must exist, ``data.num_classes`` and ``model.out_channels``
  must agree, ``train.monitor`` must be a metric that evaluation produces.

The result is a tree of plain dataclasses (:class:`Config`); ``to_dict``
turns it back into the YAML form, which is what gets saved beside the
checkpoints.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import yaml

from utils.errors import ConfigError
from utils.fileio import write_json, write_text
from utils.mask_mapping import parse_mask_mapping
from utils.typecheck import TypeMismatch, check_type, describe_type, describe_value  # noqa: F401 (re-exported)
from utils.registry import (DATASETS, LOSSES, MODELS, TRANSFORMS, ArgumentError, Registry, check_arguments,
                            signature_params)

log = logging.getLogger(__name__)

# ConfigError (utils/errors.py) is re-exported here: callers validating configs import it from this module.


# --------------------------------------------------------------------------
# Schema. Fixed keys live in dataclasses; the open sections (data, model,
# each transform and each loss) also accept the keyword arguments of the
# registered class they name, checked against its signature.
# --------------------------------------------------------------------------


Normalization = Literal["ct", "zscore", "percentile", "none"]


@dataclass
class DataConfig:
    name: str = "folder"
    root: str = ""
    num_classes: int = 2
    class_names: Optional[List[str]] = None
    num_workers: Union[int, Literal["auto"]] = "auto"
    # train.py's data check at start: quick (pairing, sizes, readable files, NaN pixels, mask values;
    # cached per file), full (the whole --check-data report), off
    check: Union[Literal["quick", "full", "off"], bool] = "quick"   # YAML reads a bare off as false
    # image: a sample is a whole image after the transforms; patch: a random data.patch_size patch of a random
    # case (with replacement), data.foreground_oversampling of them centred on foreground (datasets/patches.py)
    sampling: Literal["image", "patch"] = "image"
    patch_size: Optional[List[int]] = None
    foreground_oversampling: float = 0.33
    # volumes (planned from the data when not given; see datasets/volumes/planning.py): voxel size to resample
    # to, [z, y, x] mm; normalisation per modality (ct | zscore | percentile | none); labels resampled by
    # nearest or per-class linear; where the preprocessed cases go (default: <data.root>/.preprocessed)
    target_spacing: Optional[List[float]] = None
    normalization: Optional[Union[Normalization, List[Normalization]]] = None
    mask_resampling: Literal["nearest", "linear"] = "nearest"
    cache_dir: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PlanConfig:
    """Volumes: what planning may spend (the patch size and pooling it picks fit ``memory_gb`` of training
    activations) and when an axis counts as anisotropic (its spacing over ``anisotropy_threshold`` x the others)."""
    memory_gb: float = 2.0
    anisotropy_threshold: float = 3.0


@dataclass
class TransformsConfig:
    train: List[Dict[str, Any]] = field(default_factory=list)
    val: List[Dict[str, Any]] = field(default_factory=list)


@dataclass
class ModelConfig:
    name: str = "unet"
    in_channels: int = 3
    out_channels: int = 1
    threshold: float = 0.5
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerConfig:
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    betas: Tuple[float, float] = (0.9, 0.999)


@dataclass
class SchedulerConfig:
    name: Literal["poly", "cosine", "step", "none"] = "poly"
    warmup_epochs: float = 0.0
    warmup_iters: Optional[int] = None       # set: warmup in optimizer steps, instead of warmup_epochs
    warmup_start_factor: float = 0.1
    power: float = 0.9
    min_lr: float = 0.0
    step_epochs: int = 30
    gamma: float = 0.1


@dataclass
class TrainConfig:
    epochs: int = 50
    iterations: Optional[int] = None          # set: iteration-based, val_interval counts iterations
    iterations_per_epoch: int = 250           # data.sampling: patch: optimizer steps an epoch (nnU-Net: 250)
    batch_size: int = 8
    val_batch_size: int = 1
    val_interval: int = 1
    # bf16 | fp16 | off. YAML 1.1 reads a bare `off` as false, so false means off
    # and true means fp16 (the meaning amp: true had before the modes existed).
    amp: Union[Literal["bf16", "fp16", "off"], bool] = "off"
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = True
    sync_bn: bool = False
    accumulate: int = 1                       # optimizer step every N batches
    ema: Optional[float] = None               # EMA decay of the weights, e.g. 0.999
    ema_eval: bool = True                     # with ema: validate and save best.pt from the EMA weights
    early_stop: Optional[int] = None          # stop after N validations without improvement
    monitor: str = "miou"
    monitor_mode: Literal["max", "min"] = "max"
    grad_clip: Optional[float] = None
    freeze_encoder_epochs: int = 0
    # deep supervision: one weight per output (main first), or halving (nnU-Net: 1, 1/2, 1/4, ... normalised);
    # targets: upsample_logits (each output resized to the mask) or downsample_targets (nnU-Net: the mask
    # resized, nearest, to each output)
    deep_supervision_weights: Optional[Union[List[float], Literal["halving"]]] = None
    deep_supervision_targets: Literal["upsample_logits", "downsample_targets"] = "upsample_logits"
    checkpoint_dir: str = "checkpoint"
    log_images: int = 4
    tensorboard: bool = True
    progress: bool = True


@dataclass
class InferenceConfig:
    """How validation and test.py predict: whole image or sliding window, with TTA."""
    mode: Literal["whole", "slide"] = "whole"
    # slide: tile (h, w), (z, y, x) for volumes, or one side for every axis, in network-input pixels
    tile: Optional[Union[int, Tuple[int, int], Tuple[int, int, int]]] = None
    overlap: float = 0.5                     # slide: fraction of a tile shared with its neighbour
    gaussian: bool = True                    # slide: weight tiles by a Gaussian centred on each tile
    tile_batch: int = 4                      # slide: tiles per forward pass
    # TTA flips: h (width), v (height), z (depth), e.g. [h, v]; all: every spatial axis (8 passes for volumes)
    flips: Union[Literal["all"], List[Literal["h", "v", "z"]]] = field(default_factory=list)
    scales: List[float] = field(default_factory=lambda: [1.0])      # TTA scales, e.g. [0.75, 1.0, 1.25]
    stitch_device: Literal["auto", "cpu", "device"] = "auto"        # where the probability map is summed


@dataclass
class TestConfig:
    split: str = "val"
    checkpoint: str = "best.pt"
    output_dir: str = "results"
    overlay_alpha: float = 0.35
    overlay_color: Optional[Tuple[int, int, int]] = None   # binary: RGB of the predicted foreground
    save_overlays: bool = True
    # benchmark files (Cityscapes: label-id PNGs in <out>/cityscapes_submission/): auto = on the test split
    submission: Union[Literal["auto", "on", "off"], bool] = "auto"


@dataclass
class Config:
    experiment: str = "experiment"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    transforms: TransformsConfig = field(default_factory=TransformsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: List[Dict[str, Any]] = field(default_factory=lambda: [{"name": "bce", "weight": 1.0}])
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    test: TestConfig = field(default_factory=TestConfig)
    deterministic: bool = False
    source: str = field(default="<dict>", compare=False)
    # volumes: the plan computed from the data (utils/volume_plan.py); saved as plan.json and in checkpoints
    volume_plan: Optional[Dict[str, Any]] = field(default=None, compare=False)

    @property
    def binary_sigmoid(self) -> bool:
        """True when the model has one output channel (sigmoid + threshold)."""
        return self.model.out_channels == 1

    @property
    def run_dir(self) -> Path:
        """``<train.checkpoint_dir>/<experiment>``: checkpoints, config, logs."""
        return Path(self.train.checkpoint_dir) / self.experiment

    def dataset_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for the dataset class, split and transforms aside."""
        return dict(
            root=self.data.root,
            num_classes=self.data.num_classes,
            in_channels=self.model.in_channels,
            seed=self.seed,
            **self.data.options,
        )

    def model_kwargs(self) -> Dict[str, Any]:
        return dict(
            in_channels=self.model.in_channels,
            out_channels=self.model.out_channels,
            **self.model.options,
        )

    def to_dict(self) -> Dict[str, Any]:
        """The config in its YAML form (open sections flattened again)."""
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("source", "volume_plan"):
                continue
            out[f.name] = _to_plain(getattr(self, f.name))
        return out


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if f.name == "options":
                out.update(_to_plain(item))
            else:
                out[f.name] = _to_plain(item)
        return out
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


# Arguments the framework passes itself; a YAML may not set them.
_DATASET_PROVIDED = {"root", "split", "num_classes", "transforms", "in_channels", "seed"}
_MODEL_PROVIDED = {"in_channels", "out_channels"}


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


class _Context:
    """Where values came from, so errors can name the file or the --set flag."""

    def __init__(self, source: str, overridden: Sequence[str] = ()) -> None:
        self.source = source
        self.overridden = list(overridden)

    def where(self, keypath: str) -> str:
        for key in self.overridden:
            if keypath == key or keypath.startswith(key + ".") or key.startswith(keypath + "."):
                return f"--set {key}"
        return self.source

    def error(self, keypath: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where(keypath)}: {keypath}: {message}")


def _suggest(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_key(ctx: _Context, keypath: str, key: str, valid: Sequence[str]) -> ConfigError:
    # The source is looked up for the key itself, so that of two --set flags
    # under one section the one that brought the unknown key is named.
    source = ctx.where(f"{keypath}.{key}" if keypath and not keypath.startswith("<") else str(key))
    return ConfigError(f"{source}: {keypath}: unknown key {key!r}{_suggest(key, valid)}; "
                       f"valid keys here: {', '.join(sorted(valid))}")


def _checked(ctx: _Context, keypath: str, value: Any, tp: Any) -> Any:
    try:
        return check_type(value, tp)
    except TypeMismatch as exc:
        where = keypath + exc.subpath
        raise ctx.error(where, f"expected {exc.expected}, got {describe_value(exc.value)}") from None


def _check_kwargs(ctx: _Context, keypath: str, given: Dict[str, Any], obj: Any,
                  provided: set, fixed: Sequence[str], what: str) -> Dict[str, Any]:
    """Validate ``given`` keyword arguments against ``obj``'s constructor (utils.registry.check_arguments),
    type-checking each against its annotation; errors name the source and the key path."""
    def check_value(key: str, value: Any, annotation: Any) -> Any:
        return _checked(ctx, f"{keypath}.{key}", value, annotation)

    try:
        return check_arguments(obj, given, what, provided, check_value)
    except ArgumentError as exc:
        if exc.problem == "provided":
            raise ctx.error(f"{keypath}.{exc.key}", f"is set by the framework for {what}; remove it") from None
        if exc.problem == "unknown":
            raise _unknown_key(ctx, keypath, exc.key, list(fixed) + exc.accepted) from None
        raise ctx.error(keypath, f"{what} needs the key {exc.key!r} ({describe_type(exc.annotation)})") from None


def _build_dataclass(ctx: _Context, cls: Any, keypath: str, raw: Any,
                     extra_valid: Sequence[str] = ()) -> Tuple[Any, Dict[str, Any]]:
    """Fill dataclass ``cls`` from mapping ``raw``; returns (instance, unclaimed keys)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ctx.error(keypath, f"expected a mapping, got {describe_value(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in ("options", "source", "volume_plan")]
    values: Dict[str, Any] = {}
    rest: Dict[str, Any] = {}
    for key, value in raw.items():
        if key in names:
            sub = f"{keypath}.{key}" if keypath else str(key)
            if dataclasses.is_dataclass(hints[key]):
                continue  # nested sections are built by the caller
            values[key] = _checked(ctx, sub, value, hints[key])
        elif "options" in [f.name for f in dataclasses.fields(cls)]:
            rest[key] = value
        else:
            raise _unknown_key(ctx, keypath or "<top level>", key, list(names) + list(extra_valid))
    return cls(**values), rest


def _check_named_list(ctx: _Context, keypath: str, items: Any, registry: Registry,
                      fixed: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Validate a list of ``{name: ..., <fixed keys>, **kwargs}`` items."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise ctx.error(keypath, f"expected a list of mappings with a 'name' key, got {describe_value(items)}")
    out = []
    for i, item in enumerate(items):
        path = f"{keypath}[{i}]"
        if not isinstance(item, dict) or "name" not in item:
            raise ctx.error(path, f"expected a mapping with a 'name' key, got {describe_value(item)}")
        name = item["name"]
        if name not in registry:
            raise ctx.error(f"{path}.name", registry.unknown_message(str(name)))
        entry = {"name": name}
        for key, tp in fixed.items():
            if key in item:
                entry[key] = _checked(ctx, f"{path}.{key}", item[key], tp)
        given = {k: v for k, v in item.items() if k != "name" and k not in fixed}
        entry.update(_check_kwargs(ctx, path, given, registry.get(name), set(),
                                   ["name", *fixed], f"{registry.kind} {name!r}"))
        out.append(entry)
    return out


def config_from_dict(raw: Any, source: str = "<dict>", overridden: Sequence[str] = (),
                     check_paths: bool = True) -> Config:
    """Validate a raw (YAML-shaped) dict and return a :class:`Config`."""
    ctx = _Context(source, overridden)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a mapping of sections, got {describe_value(raw)}")
    cfg, _ = _build_dataclass(ctx, Config, "", raw)
    cfg.source = source

    data, data_rest = _build_dataclass(ctx, DataConfig, "data", raw.get("data"))
    if data.name not in DATASETS:
        raise ctx.error("data.name", DATASETS.unknown_message(data.name))
    dataset_cls = DATASETS.get(data.name)
    data.options = _check_kwargs(ctx, "data", data_rest, dataset_cls, _DATASET_PROVIDED,
                                 [f.name for f in dataclasses.fields(DataConfig) if f.name != "options"],
                                 f"dataset {data.name!r}")
    cfg.data = data

    transforms, _ = _build_dataclass(ctx, TransformsConfig, "transforms", raw.get("transforms"))
    transforms.train = _check_named_list(ctx, "transforms.train", transforms.train, TRANSFORMS, {})
    transforms.val = _check_named_list(ctx, "transforms.val", transforms.val, TRANSFORMS, {})
    cfg.transforms = transforms

    model, model_rest = _build_dataclass(ctx, ModelConfig, "model", raw.get("model"))
    if model.name not in MODELS:
        raise ctx.error("model.name", MODELS.unknown_message(model.name))
    model.options = _check_kwargs(ctx, "model", model_rest, MODELS.get(model.name), _MODEL_PROVIDED,
                                  [f.name for f in dataclasses.fields(ModelConfig) if f.name != "options"],
                                  f"model {model.name!r}")
    cfg.model = model

    if "loss" in raw:
        cfg.loss = raw["loss"]
    cfg.loss = _check_named_list(ctx, "loss", cfg.loss, LOSSES, {"weight": float})
    if not cfg.loss:
        raise ctx.error("loss", "needs at least one loss, e.g. [{name: bce}]")

    cfg.plan, _ = _build_dataclass(ctx, PlanConfig, "plan", raw.get("plan"))
    cfg.optimizer, _ = _build_dataclass(ctx, OptimizerConfig, "optimizer", raw.get("optimizer"))
    cfg.scheduler, _ = _build_dataclass(ctx, SchedulerConfig, "scheduler", raw.get("scheduler"))
    cfg.train, _ = _build_dataclass(ctx, TrainConfig, "train", raw.get("train"))
    cfg.inference, _ = _build_dataclass(ctx, InferenceConfig, "inference", raw.get("inference"))
    cfg.test, _ = _build_dataclass(ctx, TestConfig, "test", raw.get("test"))

    _check_consistency(ctx, cfg, dataset_cls, check_paths)
    return cfg


def _check_consistency(ctx: _Context, cfg: Config, dataset_cls: Any, check_paths: bool) -> None:
    """Cross-field checks: classes vs channels, metric names, ranges, paths."""
    _check_classes(ctx, cfg)
    _check_training(ctx, cfg)
    _check_inference(ctx, cfg.inference, int(cfg.model.options.get("dims", 2)),
                     planned=getattr(dataset_cls, "volumetric", False))
    if cfg.test.overlay_color is not None and not all(0 <= v <= 255 for v in cfg.test.overlay_color):
        raise ctx.error("test.overlay_color", f"must be an RGB triple [r, g, b] with values 0-255, "
                        f"got {list(cfg.test.overlay_color)}")
    if cfg.device != "auto" and cfg.device != "cpu" and not cfg.device.startswith("cuda"):
        raise ctx.error("device", f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {cfg.device!r}")
    if isinstance(cfg.data.check, bool):  # YAML reads a bare off as false
        cfg.data.check = "quick" if cfg.data.check else "off"
    _check_sampling(ctx, cfg, planned=getattr(dataset_cls, "volumetric", False))
    if cfg.data.num_workers != "auto" and cfg.data.num_workers < 0:
        raise ctx.error("data.num_workers", f"must be 0 or more, got {cfg.data.num_workers}")
    # A dataset that writes its own files on first use (synthetic) has no folder to check yet.
    if check_paths and not getattr(dataset_cls, "generates_its_files", False):
        if not cfg.data.root:
            raise ctx.error("data.root", "is required: the folder holding the dataset")
        if not Path(cfg.data.root).is_dir():
            raise ctx.error("data.root", f"folder {cfg.data.root!r} does not exist "
                            f"(resolved against {os.getcwd()}); fix the path or override it with "
                            f"--set data.root=/path/to/data")


def _check_sampling(ctx: _Context, cfg: Config, planned: bool) -> None:
    """Patch sampling needs a patch size (volumes plan one); the foreground share is a fraction."""
    data = cfg.data
    if data.sampling == "patch" and not data.patch_size and not planned:
        raise ctx.error("data.patch_size", "data.sampling: patch needs a patch size per spatial axis, "
                        "e.g. data.patch_size: [256, 256]")
    if data.patch_size is not None and min(data.patch_size, default=0) < 1:
        raise ctx.error("data.patch_size", f"sizes must be positive, got {data.patch_size}")
    if not 0.0 <= data.foreground_oversampling <= 1.0:
        raise ctx.error("data.foreground_oversampling", f"is a share of the samples in [0, 1], "
                        f"got {data.foreground_oversampling}")
    if data.target_spacing is not None and (len(data.target_spacing) != 3 or min(data.target_spacing) <= 0):
        raise ctx.error("data.target_spacing", f"needs three positive voxel sizes [z, y, x] in mm, "
                        f"got {data.target_spacing}")
    if cfg.plan.memory_gb <= 0 or cfg.plan.anisotropy_threshold <= 1:
        raise ctx.error("plan", f"memory_gb must be positive and anisotropy_threshold above 1, got "
                        f"{cfg.plan.memory_gb} and {cfg.plan.anisotropy_threshold}")
    if cfg.train.iterations_per_epoch < 1:
        raise ctx.error("train.iterations_per_epoch", f"must be at least 1, got {cfg.train.iterations_per_epoch}")


def _check_classes(ctx: _Context, cfg: Config) -> None:
    """Classes against output channels, class names, the threshold, the mask mapping, the monitored metric."""
    from utils.metrics import scalar_metric_names

    n, out = cfg.data.num_classes, cfg.model.out_channels
    if n < 2:
        raise ctx.error("data.num_classes", f"must be at least 2 (background + one class), got {n}")
    if not (out == n or (n == 2 and out == 1)):
        raise ctx.error(
            "model.out_channels",
            f"{out} output channels do not fit data.num_classes={n}: use model.out_channels: {n} "
            "(softmax)" + (" or 1 (sigmoid + model.threshold)" if n == 2 else ""),
        )
    if cfg.data.class_names is not None and len(cfg.data.class_names) != n:
        raise ctx.error("data.class_names", f"has {len(cfg.data.class_names)} names but data.num_classes={n}")
    if not 0.0 < cfg.model.threshold < 1.0:
        raise ctx.error("model.threshold", f"must lie strictly between 0 and 1, got {cfg.model.threshold}")
    if "mask_mapping" in cfg.data.options and cfg.data.options["mask_mapping"] is not None:
        try:
            parse_mask_mapping(cfg.data.options["mask_mapping"])
        except ValueError as exc:
            raise ctx.error("data.mask_mapping", str(exc)) from None
    metrics = scalar_metric_names(n)
    if cfg.train.monitor not in metrics:
        raise ctx.error("train.monitor", f"unknown metric {cfg.train.monitor!r}"
                        f"{_suggest(cfg.train.monitor, metrics)}; valid: {', '.join(metrics)}")


def _check_training(ctx: _Context, cfg: Config) -> None:
    """Counts of at least 1, the EMA decay, the learning rate; ``amp: true/false`` becomes fp16/off."""
    train = cfg.train
    for keypath, value in (("train.epochs", train.epochs), ("train.batch_size", train.batch_size),
                           ("train.val_batch_size", train.val_batch_size), ("train.val_interval", train.val_interval),
                           ("train.accumulate", train.accumulate)):
        if value < 1:
            raise ctx.error(keypath, f"must be at least 1, got {value}")
    for keypath, value in (("train.iterations", train.iterations), ("train.early_stop", train.early_stop)):
        if value is not None and value < 1:
            raise ctx.error(keypath, f"must be at least 1 (or null), got {value}")
    if train.ema is not None and not 0.0 < train.ema < 1.0:
        raise ctx.error("train.ema", f"is the EMA decay and must lie strictly between 0 and 1 "
                        f"(e.g. 0.999), got {train.ema}")
    if isinstance(train.amp, bool):
        train.amp = "fp16" if train.amp else "off"
    if cfg.optimizer.lr <= 0:
        raise ctx.error("optimizer.lr", f"must be positive, got {cfg.optimizer.lr}")


def _check_inference(ctx: _Context, inf: InferenceConfig, dims: int = 2, planned: bool = False) -> None:
    """The one check of the inference settings (utils/inference.py trusts them), for a model of ``dims``
    spatial axes (2: images, 3: volumes); volumes may leave the tile to the plan (the patch size)."""
    axes = "[z, y, x]" if dims == 3 else "[h, w]"
    if isinstance(inf.tile, int):
        inf.tile = (inf.tile,) * dims
    if inf.mode == "slide" and inf.tile is None and not planned:
        raise ctx.error("inference.tile", f"mode: slide needs a tile size, e.g. inference.tile: "
                        f"{'[128, 128, 128]' if dims == 3 else '[512, 1024]'}")
    if inf.tile is not None and len(inf.tile) != dims:
        raise ctx.error("inference.tile", f"{list(inf.tile)} has {len(inf.tile)} sizes but the model is {dims}D "
                        f"(model.dims: {dims}); give {dims} sizes {axes} or one for every axis")
    if inf.tile is not None and min(inf.tile) < 1:
        raise ctx.error("inference.tile", f"sizes must be positive, got {list(inf.tile)}")
    if dims < 3 and isinstance(inf.flips, list) and "z" in inf.flips:
        raise ctx.error("inference.flips", f"'z' flips the depth of volumes, which a {dims}D model "
                        f"(model.dims: {dims}) lacks; use h, v or all")
    if not 0.0 <= inf.overlap < 1.0:
        raise ctx.error("inference.overlap", f"must lie in [0, 1), got {inf.overlap}")
    if not inf.scales or min(inf.scales) <= 0:
        raise ctx.error("inference.scales", f"needs positive scales, got {inf.scales}")
    if inf.tile_batch < 1:
        raise ctx.error("inference.tile_batch", f"must be at least 1, got {inf.tile_batch}")


# --------------------------------------------------------------------------
# Files and overrides
# --------------------------------------------------------------------------


def read_yaml(path: Union[str, Path]) -> Any:
    """``yaml.safe_load`` a file; parse errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with path.open("r", encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def apply_overrides(raw: Dict[str, Any], overrides: Sequence[str]) -> List[str]:
    """Apply ``key.path=value`` strings to ``raw`` in place; returns the key paths.

    Values are parsed as YAML scalars or flow collections (``3``, ``true``,
    ``[1, 2]``, ``null``). A numeric path part indexes into a list
    (``transforms.train.0.size=[64,64]``).
    """
    keys: List[str] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key.path=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set {item}: empty key")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: value is not valid YAML: {exc}") from None
        if key in keys:
            log.warning("--set %s is given more than once; the last value, %r, applies", key, value)
        node: Any = raw
        parts = key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: {'.'.join(parts[:depth]) or key} is a list of "
                                      f"{len(node)} items; {part!r} is not a valid index")
                part_key: Any = int(part)
            elif isinstance(node, dict):
                part_key = part
            else:
                raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is not a section")
            if last:
                node[part_key] = value
            else:
                if isinstance(node, dict) and node.get(part_key) is None:
                    node[part_key] = {}
                node = node[part_key]
        keys.append(key)
    return keys


def load_config(path: Union[str, Path], overrides: Sequence[str] = (), check_paths: bool = True) -> Config:
    """Read, override and validate the config file at ``path``."""
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections, got {describe_value(raw)}")
    file_model = raw.get("model", {}).get("name") if isinstance(raw.get("model"), dict) else None
    keys = apply_overrides(raw, overrides)
    drop_foreign_model_options(raw, file_model, keys, str(path))
    return config_from_dict(raw, source=str(path), overridden=keys, check_paths=check_paths)


def drop_foreign_model_options(raw: Dict[str, Any], file_model: Any, overridden: Sequence[str],
                               source: str) -> List[str]:
    """After ``--set model.name=X``, drop the file's options that only its own model takes.

    ``configs/demo.yaml`` sets ``base_channels: 16`` for ``unet``;
    ``--set model.name=deeplabv3`` should train DeepLabV3 with its defaults
    rather than fail on an option DeepLabV3 does not have. Only options that
    the file's model accepts and the new one does not are dropped (each with a
    warning): a misspelled key in the file, or a foreign option given with
    ``--set``, still fails validation. Returns the dropped keys.
    """
    model = raw.get("model")
    if "model.name" not in overridden or not isinstance(model, dict):
        return []
    new_model = model.get("name")
    if new_model == file_model or file_model not in MODELS or new_model not in MODELS:
        return []
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    old_params = signature_params(MODELS.get(file_model), _MODEL_PROVIDED)
    new_params = signature_params(MODELS.get(new_model), _MODEL_PROVIDED)
    dropped = [key for key in model
               if key not in fields and key in old_params and key not in new_params
               and f"model.{key}" not in overridden]
    for key in dropped:
        log.warning("%s: model.%s=%r applies to %r, not to %r (--set model.name); dropped",
                    source, key, model.pop(key), file_model, new_model)
    return dropped


def save_config(cfg: Config, path: Union[str, Path]) -> Path:
    """Write the resolved config as YAML, atomically; for volumes the plan too, as ``plan.json`` beside it."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
    header = f"# resolved config of experiment {cfg.experiment!r} (from {cfg.source})\n"
    if cfg.volume_plan is not None:
        write_json(Path(path).with_name("plan.json"), cfg.volume_plan)
    return write_text(path, header + text)
