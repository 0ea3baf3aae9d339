"""Volumes from one YAML: plan from the data, preprocess once, train and predict on the plan.

No separate command to remember: ``train.py`` on a volume config

1. reads the training cases and plans (``datasets.volumes.planning``): the
   target spacing with the anisotropy rule, the intensity statistics, the
   normalisation per modality, the patch size and the per-axis pooling that
   fit ``plan.memory_gb``; every value the YAML gives (``data.target_spacing``,
   ``data.patch_size``, ``data.normalization``, ``model.strides``) wins;
2. preprocesses every case once into ``<data.cache_dir or data.root/.preprocessed>/<plan key>/``
   (reused while the plan's preprocessing part and the files are unchanged);
3. writes the planned values into the resolved config (``config.yaml`` holds
   the patch size and strides it trained with) and keeps the whole plan as
   ``cfg.volume_plan``: ``plan.json`` in the run folder and ``plan`` in every
   checkpoint, so ``test.py`` preprocesses new cases exactly alike.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import torch.distributed as torch_dist

from datasets.volumes.planning import format_plan, make_plan, plan_key
from datasets.volumes.prepared import PreparedVolumes
from datasets.volumes.preprocessing import PreprocessedCache
from utils.config import Config
from utils.distributed import barrier, initialized
from utils.errors import CheckpointError
from utils.registry import DATASETS, MODELS, signature_params

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"


def is_volumetric(cfg: Config) -> bool:
    """Whether the config's dataset holds volumes (planned and preprocessed before training)."""
    return bool(getattr(DATASETS.get(cfg.data.name), "volumetric", False))


def cache_folder(cfg: Config, plan: Dict[str, Any]) -> Path:
    """Where the cases preprocessed with ``plan`` live."""
    root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else Path(cfg.data.root) / ".preprocessed"
    return root / plan_key(plan)


def plan_overrides(cfg: Config) -> Dict[str, Any]:
    """The planned values the YAML fixes itself."""
    given = {"target_spacing": cfg.data.target_spacing, "patch_size": cfg.data.patch_size,
             "strides": cfg.model.options.get("strides")}
    if cfg.data.normalization is not None:
        norm = cfg.data.normalization
        given["normalization"] = [norm] * cfg.model.in_channels if isinstance(norm, str) else list(norm)
    return {key: value for key, value in given.items() if value is not None}


def plan_for(cfg: Config, cases: Any) -> Dict[str, Any]:
    """The plan of the training ``cases`` (the VolumeDataset of the train split)."""
    plan = make_plan(cases, cfg.data.num_classes, cfg.model.in_channels, memory_gb=cfg.plan.memory_gb,
                     overrides=plan_overrides(cfg), mask_resampling=cfg.data.mask_resampling,
                     batch_size=cfg.train.batch_size, base_channels=cfg.model.options.get("base_channels", 32),
                     seed=cfg.seed, anisotropy_threshold=cfg.plan.anisotropy_threshold)
    log.info("volume plan (%d training cases):\n%s", len(cases), format_plan(plan))
    return plan


def apply_plan(cfg: Config, plan: Dict[str, Any]) -> None:
    """Write the planned patch size, pooling and sliding-window tile into ``cfg`` where the YAML left them out."""
    cfg.volume_plan = plan
    if cfg.data.patch_size is None:
        cfg.data.patch_size = list(plan["patch_size"])
    takes = signature_params(MODELS.get(cfg.model.name))
    if "strides" in takes and "strides" not in cfg.model.options:
        cfg.model.options["strides"] = [list(s) for s in plan["strides"]]
        if "depth" in takes:
            cfg.model.options["depth"] = len(plan["strides"])
    if cfg.inference.tile is None:
        cfg.inference.tile = tuple(cfg.data.patch_size)


def prepare_split(cfg: Config, plan: Dict[str, Any], split: str, transforms: Any = None,
                  cases: Any = None) -> PreparedVolumes:
    """The ``split`` cases preprocessed with ``plan`` (computed once; rank 0 first under DDP)."""
    if cases is None:
        cases = DATASETS.build(cfg.data.name, split=split, transforms=None, **cfg.dataset_kwargs())
    cache = PreprocessedCache(cache_folder(cfg, plan))
    _main_rank_first(lambda: cache.ensure(cases, plan, cfg.data.num_classes))
    names = [cases.case_name(i) for i in range(len(cases))]
    return PreparedVolumes(cache, names, cfg.data.num_classes, transforms, root=cfg.data.root)


def build_volume_datasets(cfg: Config, val_transforms: Any = None) -> Tuple[PreparedVolumes, PreparedVolumes]:
    """Plan on the train split, preprocess train and val, fill ``cfg`` with the plan; the train cases are
    served whole (the patch sampler wraps them), the val cases whole for the sliding window."""
    cases = DATASETS.build(cfg.data.name, split="train", transforms=None, **cfg.dataset_kwargs())
    plan = plan_for(cfg, cases)
    apply_plan(cfg, plan)
    return prepare_split(cfg, plan, "train", cases=cases), prepare_split(cfg, plan, "val", val_transforms)


def plan_of_checkpoint(state: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """The plan a volume checkpoint was trained with (its ``plan``, else ``plan.json`` beside it)."""
    plan = state.get("plan")
    if isinstance(plan, dict):
        return plan
    beside = Path(path).parent / PLAN_FILE
    if beside.is_file():
        return json.loads(beside.read_text(encoding="utf-8"))
    raise CheckpointError(f"{path}: holds no volume plan and no {PLAN_FILE} lies beside it; predict with a "
                          "checkpoint written by train.py on this volume config")


def _main_rank_first(work: Callable[[], Any]) -> Any:
    """Run ``work`` on rank 0, then on the other ranks (which then find its results), under DDP."""
    if initialized() and torch_dist.get_rank() != 0:
        barrier()
        return work()
    result = work()
    if initialized():
        barrier()
    return result
