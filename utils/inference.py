"""Turning logits into probabilities and labels: the one place it happens.

Models return raw logits. One output channel means a binary task scored by
``sigmoid`` and a threshold; more channels mean ``softmax`` and ``argmax``.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from utils.amp import autocast, resolve_amp


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for 1-channel logits, softmax over channels otherwise.

    Shape: (N, C, H, W) -> (N, C, H, W), float32.
    """
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def labels_from_probabilities(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Class indices (N, H, W) int64 from probabilities (N, C, H, W)."""
    if probs.shape[1] == 1:
        return (probs[:, 0] > threshold).long()
    return probs.argmax(dim=1)


def labels_from_logits(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Class indices (N, H, W) int64 from logits without building probabilities.

    For one channel, ``sigmoid(x) > t`` is ``x > log(t / (1 - t))``; softmax
    is monotonic, so ``argmax`` of the logits is the argmax of the softmax.
    """
    if logits.shape[1] == 1:
        return (logits[:, 0] > math.log(threshold / (1.0 - threshold))).long()
    return logits.argmax(dim=1)


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, image: torch.Tensor,
                          out_size: Optional[Tuple[int, int]] = None,
                          amp: str = "off") -> torch.Tensor:
    """Probabilities for a batch, resized (bilinear) to ``out_size`` if given.

    Shape: image (N, C_in, H, W) -> (N, C, *out_size) float32 on image's device.
    """
    with autocast(image.device, resolve_amp(amp, image.device, warn=False)):
        logits = model(image)
    probs = probabilities(logits)
    if out_size is not None and tuple(probs.shape[-2:]) != tuple(out_size):
        probs = F.interpolate(probs, size=out_size, mode="bilinear", align_corners=False)
    return probs
