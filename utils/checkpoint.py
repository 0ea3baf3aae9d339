"""Checkpoints as plain dicts of tensors and builtins, written atomically.

Layout of ``last.pt`` (everything resume needs): ``model``, ``optimizer``,
``scheduler``, ``scaler`` (state dicts), ``ema`` (the averaged weights and
update count, or None) with ``ema_eval``, ``round`` and ``step`` (rounds and
optimizer steps completed), ``epoch`` (the same as ``round`` in epoch mode,
None in iteration mode), ``best_metric``, ``best_round``, ``monitor``,
``history`` (per-round metrics), ``partial`` (where Ctrl-C cut a round short,
with the RNG states, or None) and ``config`` (the resolved config in its YAML
form). ``best.pt`` holds what inference needs (:data:`INFERENCE_KEYS`: the
weights, the config and the metrics), not the optimizer state. Loading uses
``torch.load(weights_only=True)``, so nothing but tensors and builtins can
come back out of a file.

A checkpoint that is missing, unreadable or does not fit the model raises
:class:`~utils.errors.CheckpointError` saying what it holds against what the
config asks; a write that fails (disk full) raises
:class:`~utils.errors.DiskError` and leaves the previous file as it was.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from utils.errors import CheckpointError
from utils.fileio import atomic_open, write_failure

#: What ``best.pt`` keeps: enough to predict, export and report, nothing to resume the optimizer.
INFERENCE_KEYS = ("model", "ema", "ema_eval", "round", "step", "epoch", "best_metric", "best_round",
                  "monitor", "history", "config", "plan")
#: What resuming needs beyond the inference keys.
RESUME_KEYS = ("optimizer", "scheduler", "scaler")


class _RecordingFile:
    """A file wrapper that remembers the OSError of a failed write.

    ``torch.save`` turns an error of the file's ``write`` into a RuntimeError
    ("enforce fail at inline_container.cc"); the recorded OSError says what
    really happened (e.g. the disk is full).
    """

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def save_checkpoint(state: Dict[str, Any], path: Union[str, Path]) -> Path:
    """``torch.save`` to a temp file beside ``path``, then ``os.replace``; a failed write raises DiskError."""
    path = Path(path)
    try:
        with atomic_open(path, "wb") as fh:
            recorder = _RecordingFile(fh)
            try:
                torch.save(state, recorder)
            except RuntimeError as exc:
                if recorder.error is None:
                    raise
                raise recorder.error from exc
    except OSError as exc:
        raise write_failure(path, exc) from exc
    return path


def inference_state(state: Dict[str, Any]) -> Dict[str, Any]:
    """The part of a full checkpoint that ``best.pt`` keeps (:data:`INFERENCE_KEYS`)."""
    return {key: state[key] for key in INFERENCE_KEYS if key in state}


def load_checkpoint(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu",
                    missing_hint: str = "train first, or give the path of an existing checkpoint",
                    ) -> Dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "no checkpoint there"
        raise CheckpointError(f"{path}: {what}; {missing_hint}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated or not a plain-typed checkpoint
        if "Unsupported global" in str(exc):  # a pickled object, refused by weights_only
            raise CheckpointError(f"{path}: holds objects other than tensors and plain Python values, which are "
                                  "never loaded (they could run code); use a checkpoint written by this "
                                  "framework") from exc
        first_line = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()[:1] or [""]
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: "
                              f"{first_line[0][:120]}); it is truncated or not a checkpoint: use another one "
                              "(the run's last.pt or best.pt)") from exc
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a checkpoint of this framework (no 'model' entry)")
    return state


def require_resumable(state: Dict[str, Any], path: Path) -> None:
    """Raise when ``state`` lacks what resuming needs (``best.pt`` holds weights only)."""
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path}: holds weights for inference only (no {', '.join(missing)} state); "
                              f"resume from the run's last.pt: --resume {path.parent / 'last.pt'}")


def inference_weights(state: Dict[str, Any]) -> Dict[str, Any]:
    """The weights to predict with: the EMA average when the run validated with it, else the live ones."""
    ema = state.get("ema")
    if ema is not None and state.get("ema_eval", False):
        return ema["module"]
    return state["model"]


def load_weights(model: torch.nn.Module, weights: Dict[str, Any], path: Path, state: Dict[str, Any],
                 wanted: Dict[str, Any], fix: str) -> None:
    """``model.load_state_dict(weights)``; a mismatch raises CheckpointError saying what the checkpoint
    holds (from its stored config) against what ``wanted`` (the config's dict form) asks, and ``fix``."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        saved = state.get("config") if isinstance(state.get("config"), dict) else {}
        held, asked = describe_model(saved), describe_model(wanted)
        if held == asked or not saved:
            held = f"weights that do not fit ({_first_differences(model, weights)})"
        raise CheckpointError(f"{path}: holds {held} but the config asks for {asked}; {fix}") from exc


def describe_model(raw: Dict[str, Any]) -> str:
    """"unet (base_channels=16, depth=4), 1 output channel, 2 classes" from a config's dict form."""
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    skip = {"name", "in_channels", "out_channels", "threshold"}
    options = ", ".join(f"{k}={v}" for k, v in sorted(model.items()) if k not in skip)
    out = model.get("out_channels")
    return (f"{model.get('name', '?')}{f' ({options})' if options else ''}, {model.get('in_channels', '?')} input / "
            f"{out} output channel{'s' if out != 1 else ''}, {data.get('num_classes', '?')} classes")


def _first_differences(model: torch.nn.Module, weights: Dict[str, Any], limit: int = 3) -> str:
    """The first few parameter names missing, unexpected or of another shape."""
    own = model.state_dict()
    notes: List[str] = []
    for key, tensor in weights.items():
        if key not in own:
            notes.append(f"unexpected {key}")
        elif hasattr(tensor, "shape") and tuple(tensor.shape) != tuple(own[key].shape):
            notes.append(f"{key} {tuple(tensor.shape)} vs {tuple(own[key].shape)}")
    notes += [f"missing {key}" for key in own if key not in weights]
    more = f", and {len(notes) - limit} more" if len(notes) > limit else ""
    return "; ".join(notes[:limit]) + more


def saved_config(state: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The config stored in a checkpoint, or None."""
    raw = state.get("config")
    return raw if isinstance(raw, dict) else None
