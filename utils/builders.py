"""Turning a validated config into objects: the model and the class names with their palette.

test.py and train.py build through these, so the two always agree on what a
config means.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch

from utils.config import Config
from utils.registry import DATASETS, MODELS
from utils.visualize import default_palette


def build_model(cfg: Config) -> torch.nn.Module:
    """The model ``cfg.model`` names, with its options (raw logits out)."""
    return MODELS.build(cfg.model.name, **cfg.model_kwargs())


def class_info(cfg: Config) -> Tuple[Optional[List[str]], np.ndarray]:
    """Class names (config first, then the dataset's official ones) and the (256, 3) palette."""
    dataset_cls = DATASETS.get(cfg.data.name)
    names = cfg.data.class_names or getattr(dataset_cls, "class_names", None)
    palette = getattr(dataset_cls, "palette", None)
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
