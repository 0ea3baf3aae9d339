"""Checkpoints as plain dicts of tensors and builtins, written atomically.

Layout of a checkpoint dict: ``model``, ``optimizer``, ``scheduler``,
``scaler`` (state dicts), ``epoch`` (last completed epoch, 1-based),
``best_metric``, ``monitor``, ``history`` (per-epoch metrics) and ``config``
(the resolved config in its YAML form). Loading uses
``torch.load(weights_only=True)``, so nothing but tensors and builtins can
come back out of a file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

import torch

from utils.fileio import atomic_open


def save_checkpoint(state: Dict[str, Any], path: Union[str, Path]) -> Path:
    """``torch.save`` to a temp file beside ``path``, then ``os.replace``."""
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)
    return Path(path)


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; train first or pass --checkpoint PATH")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated or not a plain-typed checkpoint
        raise ValueError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not a checkpoint of this framework (no 'model' entry)")
    return state
