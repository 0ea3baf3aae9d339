"""Mixed precision: the one place ``train.amp`` (bf16 | fp16 | off) becomes autocast.

* ``bf16``: autocast to bfloat16, no loss scaling (bf16 has fp32's exponent range).
  Runs on CUDA (Ampere or newer) and on the CPU.
* ``fp16``: autocast to float16 with a ``GradScaler`` against gradient
  underflow. CUDA only: on the CPU it falls back to ``off`` (logged), because
  CPU float16 kernels are slow and partly missing.
* ``off``: float32 throughout.

Losses and metrics always run in float32: ``utils.losses`` casts the logits
before any sigmoid/softmax.
"""
from __future__ import annotations

import contextlib
import logging
from typing import ContextManager, Dict, Optional

import torch

log = logging.getLogger(__name__)

AMP_DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
AMP_MODES = ("bf16", "fp16", "off")


def resolve_amp(amp: str, device: torch.device, warn: bool = True) -> str:
    """The mode that will actually run on ``device``: ``fp16`` becomes ``off`` on the CPU."""
    if amp not in AMP_MODES:
        raise ValueError(f"train.amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        # Logged as information: the shipped configs ask for fp16 so that they use it on GPUs,
        # and running them on a CPU is expected, not a mistake.
        if warn:
            log.info("train.amp: fp16 needs CUDA; running in float32 on %s (bf16 works on the CPU)", device)
        return "off"
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if warn:
            log.warning("train.amp: this GPU has no bfloat16 support; using fp16 with loss scaling instead")
        return "fp16"
    return amp


def autocast(device: torch.device, amp: str) -> ContextManager[None]:
    """``torch.autocast`` for a resolved mode; a no-op context for ``off``."""
    dtype: Optional[torch.dtype] = AMP_DTYPES.get(amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 on CUDA (a pass-through otherwise)."""
    return torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu",
                                enabled=amp == "fp16" and device.type == "cuda")
