"""Checkpoints as plain dicts of tensors and builtins, written atomically.

Layout of a checkpoint dict: ``model``, ``optimizer``, ``scheduler``,
``scaler`` (state dicts), ``ema`` (the averaged weights and update count, or
None) with ``ema_eval``, ``round`` and ``step`` (rounds and optimizer steps
completed), ``epoch`` (the same as ``round`` in epoch mode, None in iteration
mode), ``best_metric``, ``best_round``, ``monitor``, ``history`` (per-round
metrics), ``partial`` (where Ctrl-C cut a round short, with the RNG states,
or None) and ``config`` (the resolved config in its YAML form). Loading uses
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


def inference_weights(state: Dict[str, Any]) -> Dict[str, Any]:
    """The weights to predict with: the EMA average when the run validated with it, else the live ones."""
    ema = state.get("ema")
    if ema is not None and state.get("ema_eval", False):
        return ema["module"]
    return state["model"]
