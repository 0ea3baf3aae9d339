"""Turning a validated config into objects: datasets and loaders, the model, the criterion, the
optimizer and its schedule, the class names with their palette; and the data check and the
augmentation preview, which train.py runs on request.

train.py and test.py build through these, so they always agree on what a
config means. Names are looked up in the registries (utils/registry.py),
which import their plugin packages on first use.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from datasets.check import (DATA_CHECK_CACHE, SPLITS, TRAINING_SPLITS, CheckReport, check_before_training,
                            check_dataset)
from datasets.patches import PatchDataset
from utils.class_stats import CLASS_STATS_FILE, cached_class_counts, class_weights, format_weights
from utils.config import Config
from utils.distributed import DistInfo, ShardSampler
from utils.errors import ConfigError, DataError
from utils.losses import CombinedLoss, build_loss
from utils.metrics import default_class_names
from utils.registry import DATASETS, MODELS
from utils.sampling import SeededDataset, SeededSampler, collate, worker_init
from utils.schedulers import build_scheduler as build_lr_scheduler
from utils.transforms import build_transforms, preview_grid
from utils.visualize import default_palette, save_png
from utils.volume_plan import build_volume_datasets, is_volumetric

log = logging.getLogger("train")


def build_datasets(cfg: Config, world_size: int = 1) -> Tuple[Dataset, Dataset]:
    """The train and val datasets; with ``data.sampling: patch`` the train set draws random patches of its
    cases, ``train.iterations_per_epoch`` optimizer steps of them per epoch (over all processes). Volumes
    are planned and preprocessed first (utils/volume_plan.py), which fills ``cfg`` with the plan."""
    kwargs = cfg.dataset_kwargs()
    train_transforms = build_transforms(cfg.transforms.train) if cfg.transforms.train else None
    val_transforms = build_transforms(cfg.transforms.val) if cfg.transforms.val else None
    if is_volumetric(cfg):
        cases, val_ds = build_volume_datasets(cfg, val_transforms)
        if cfg.data.sampling == "image":
            cases.transforms = train_transforms
    else:
        cases = DATASETS.build(cfg.data.name, split="train", transforms=None if cfg.data.sampling == "patch"
                               else train_transforms, **kwargs)
        val_ds = DATASETS.build(cfg.data.name, split="val", transforms=val_transforms, **kwargs)
    if cfg.data.sampling != "patch":
        return cases, val_ds
    t = cfg.train
    train_ds = PatchDataset(cases, cfg.data.patch_size, t.iterations_per_epoch * t.batch_size * t.accumulate *
                            world_size, t.batch_size, cfg.data.num_classes, cfg.data.foreground_oversampling,
                            train_transforms)
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
                  dist: Optional[DistInfo] = None) -> Tuple[DataLoader, DataLoader]:
    """Shuffled training batches (``train.batch_size`` per process) and the validation split in order.

    Under DDP the training set is split by a ``DistributedSampler`` (same seed on
    every process, reshuffled each round) and the validation set by a
    :class:`ShardSampler`, which never repeats a sample.
    """
    dist = dist or DistInfo()
    patches = isinstance(train_ds, PatchDataset)  # random patches: the order is fixed, so batches keep their share
    per_process = len(train_ds) // dist.world_size
    if per_process < cfg.train.batch_size:
        share = "" if dist.world_size == 1 else f", {per_process} per process for {dist.world_size} processes"
        raise DataError(f"{cfg.data.root}: the train split has {len(train_ds)} images{share}, fewer than "
                         f"train.batch_size={cfg.train.batch_size}; lower the batch size")
    workers = resolve_num_workers(cfg.data.num_workers, device)
    common: Dict[str, Any] = dict(num_workers=workers, pin_memory=device.type == "cuda",
                                  collate_fn=collate, worker_init_fn=worker_init,
                                  persistent_workers=workers > 0)
    generator = torch.Generator().manual_seed(cfg.seed)  # reseeded each round by round_batches
    if dist.distributed:
        order: Sampler = DistributedSampler(train_ds, num_replicas=dist.world_size, rank=dist.rank,
                                            shuffle=not patches, seed=cfg.seed, drop_last=True)
        val_loader = DataLoader(val_ds, batch_size=cfg.train.val_batch_size,
                                sampler=ShardSampler(val_ds, dist.rank, dist.world_size), **common)
    else:
        order = (SequentialSampler(train_ds) if patches
                 else RandomSampler(train_ds, generator=torch.Generator().manual_seed(cfg.seed)))
        val_loader = DataLoader(val_ds, batch_size=cfg.train.val_batch_size, shuffle=False, **common)
    train_loader = DataLoader(SeededDataset(train_ds), batch_size=cfg.train.batch_size,
                              sampler=SeededSampler(order, dist.rank), drop_last=True, generator=generator, **common)
    return train_loader, val_loader


def build_model(cfg: Config) -> torch.nn.Module:
    """The model ``cfg.model`` names, with its options (raw logits out)."""
    return MODELS.build(cfg.model.name, **cfg.model_kwargs())


def prepare_model(cfg: Config, device: torch.device, dist: DistInfo) -> torch.nn.Module:
    """The model on ``device``: SyncBatchNorm and channels_last when asked (and possible); an encoder to
    freeze checked."""
    model = build_model(cfg)
    if cfg.train.sync_bn:
        if dist.distributed and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            log.info("train.sync_bn: BatchNorm statistics synchronised over %d processes", dist.world_size)
        else:
            why = "it runs on CUDA only" if dist.distributed else "this is a single process (no process group)"
            log.warning("train.sync_bn: keeping plain BatchNorm, because %s", why)
    if cfg.train.freeze_encoder_epochs:
        try:
            model.set_encoder_frozen(False)
        except (AttributeError, ValueError) as exc:
            raise ConfigError(f"{cfg.source}: train.freeze_encoder_epochs: model {cfg.model.name!r} has no "
                              f"encoder to freeze ({exc}); set it to 0") from None
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def wrap_for_training(model: torch.nn.Module, cfg: Config, device: torch.device, dist: DistInfo) -> torch.nn.Module:
    """DDP under torchrun, then ``torch.compile`` when asked; the plain module stays what is saved."""
    wrapped = model
    if dist.distributed:
        # Frozen encoder epochs leave parameters without gradients; DDP must be told to expect that.
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=cfg.train.freeze_encoder_epochs > 0)
    if cfg.train.compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def resolve_class_weights(cfg: Config, train_ds: Dataset, run_dir: Path) -> List[Dict[str, Any]]:
    """``cfg.loss`` with ``class_weights: inverse | median_frequency`` replaced by one number per class,
    computed from the training masks (counted once, cached in ``<run_dir>/class_stats.json``)."""
    specs = [dict(spec) for spec in cfg.loss]
    named = [spec for spec in specs if isinstance(spec.get("class_weights"), str)]
    if not named:
        return specs
    counts = cached_class_counts(train_ds, cfg.data.name, run_dir / CLASS_STATS_FILE, progress=cfg.train.progress)
    names = class_names_and_palette(cfg)[0]
    for spec in named:
        method = spec["class_weights"]
        spec["class_weights"] = class_weights(counts, method)
        log.info("%s class weights (%s): %s", spec["name"], method, format_weights(spec["class_weights"], names))
    return specs


def build_criterion(cfg: Config, train_ds: Dataset, run_dir: Path) -> CombinedLoss:
    """The weighted sum of ``cfg.loss`` (class weights resolved), with the deep-supervision weights."""
    cases = getattr(train_ds, "cases", train_ds)  # patch sampling: the weights come from the whole cases
    return build_loss(resolve_class_weights(cfg, cases, run_dir), cfg.train.deep_supervision_weights,
                      cfg.train.deep_supervision_targets)


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


def class_names_and_palette(cfg: Config) -> Tuple[List[str], np.ndarray]:
    """Class names (the config's, else the dataset's official ones, else
    :func:`utils.metrics.default_class_names`) and the (256, 3) palette."""
    dataset_cls = DATASETS.get(cfg.data.name)
    names = cfg.data.class_names or getattr(dataset_cls, "class_names", None)
    palette = getattr(dataset_cls, "palette", None)
    names = list(names) if names else default_class_names(cfg.data.num_classes)
    return names, (palette if palette is not None else default_palette(cfg.data.num_classes))


def build_check_splits(cfg: Config, splits: Tuple[str, ...]
                       ) -> Tuple[dict[str, torch.utils.data.Dataset], dict[str, Exception]]:
    """The config's dataset built without transforms for each of ``splits``, for the data check.

    Returns ``(datasets, failures)``: split -> dataset for the splits that
    could be built, split -> the error (OSError or ValueError) for those that
    could not (a split the layout lacks, unpaired files, a bad argument);
    ``datasets.check`` sorts the failures into absent splits and problems.
    """
    built: dict[str, torch.utils.data.Dataset] = {}
    failures: dict[str, Exception] = {}
    for split in splits:
        try:
            built[split] = DATASETS.build(cfg.data.name, split=split, transforms=None, **cfg.dataset_kwargs())
        except (OSError, ValueError) as exc:
            failures[split] = exc
    return built, failures


def data_report(cfg: Config, progress: bool = True) -> CheckReport:
    """The data check of every split the layout has (``train.py --check-data``)."""
    return check_dataset(*build_check_splits(cfg, SPLITS), cfg.data.root, cfg.data.name, cfg.data.num_classes,
                         class_names_and_palette(cfg)[0], progress=progress)


def check_data_at_start(cfg: Config, progress: bool = True) -> None:
    """train.py's start-up data check of the train and val splits (``data.check``; cached per file)."""
    splits, failures = build_check_splits(cfg, TRAINING_SPLITS if cfg.data.check != "off" else ())
    check_before_training(splits, failures, cfg.data.check, Path(cfg.train.checkpoint_dir) / DATA_CHECK_CACHE,
                          f"python train.py --config {cfg.source} --check-data", root=cfg.data.root,
                          dataset_name=cfg.data.name, num_classes=cfg.data.num_classes,
                          class_names=class_names_and_palette(cfg)[0], progress=progress)


def write_preview(cfg: Config, num: int, path: str) -> Path:
    """A grid of ``num`` training samples after the train transforms, each beside its mask (seeded)."""
    torch.manual_seed(cfg.seed)
    dataset = DATASETS.build(cfg.data.name, split="train", transforms=build_transforms(cfg.transforms.train),
                             **cfg.dataset_kwargs())
    return save_png(preview_grid(dataset, num, class_names_and_palette(cfg)[1]), path)
