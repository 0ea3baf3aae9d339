"""The process around a run: device, seeds, determinism, RNG states, and the Ctrl-C flag.

* :func:`select_device`: ``auto`` picks CUDA when present, else the CPU;
* :func:`seed_everything`, :func:`capture_rng` / :func:`restore_rng`: the global
  random streams, saved as plain values in a checkpoint for an exact resume;
* :func:`configure_runtime` / :func:`restore_runtime`: determinism and cuDNN settings;
* :class:`StopFlag`: set by the first Ctrl-C, so the loop finishes its step and saves.
"""
from __future__ import annotations

import logging
import os
import random
import signal
from typing import TYPE_CHECKING, Any, Dict

import numpy as np
import torch

from utils.errors import ConfigError

if TYPE_CHECKING:
    from utils.config import Config

log = logging.getLogger("train")


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for but CUDA is not available; use device: auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_runtime(cfg: "Config", device: torch.device) -> Dict[str, Any]:
    """Determinism and cuDNN settings for this run; returns the previous ones for :func:`restore_runtime`."""
    previous = {"deterministic": torch.are_deterministic_algorithms_enabled(),
                "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
                "cudnn_deterministic": torch.backends.cudnn.deterministic,
                "cudnn_benchmark": torch.backends.cudnn.benchmark}
    if cfg.deterministic:
        # cuBLAS needs this before its first call to pick deterministic kernels.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: some CUDA backward kernels (bilinear upsampling) have no deterministic
        # version; they warn instead of stopping the run.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark and device.type == "cuda"
    return previous


def restore_runtime(previous: Dict[str, Any]) -> None:
    torch.use_deterministic_algorithms(previous["deterministic"], warn_only=previous["warn_only"])
    torch.backends.cudnn.deterministic = previous["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = previous["cudnn_benchmark"]


def capture_rng() -> Dict[str, Any]:
    """The global RNG states as plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: Dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
                             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopFlag:
    """Set by the first Ctrl-C; the loops finish the current step and return."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("interrupt received: finishing this step, saving last.pt (Ctrl-C again to abort)")
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def install(self) -> "StopFlag":
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
