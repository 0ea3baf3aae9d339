"""Exponential moving average of a model's weights (``train.ema: 0.999``), on ``torch.optim.swa_utils``.

An ``AveragedModel`` over parameters and buffers (``use_buffers=True``). The
copy starts as the model's weights at construction; after every optimizer
step each floating-point parameter and buffer (BatchNorm's running mean and
variance) moves towards the live value::

    ema = d * ema + (1 - d) * live,    d = min(decay, (1 + n) / (10 + n))

where ``n`` counts the updates including this one. The ramp keeps the first
updates from being dominated by the random initial weights in short runs (the
rule of TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``); after
a few thousand steps ``d`` is ``decay``. Integer buffers (BatchNorm's batch
count) are copied. With ``train.ema_eval`` the copy is what gets validated and
what ``best.pt`` is chosen by; checkpoints hold it under ``ema`` as
``{"module": state dict, "updates": int, "decay": float}``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def ramped_ema(decay: float) -> Callable[[List[torch.Tensor], List[torch.Tensor], Any], None]:
    """``get_ema_multi_avg_fn`` with the decay ramp above, and integer tensors copied.

    Ours around the built-in: its decay is fixed, and it would average BatchNorm's
    integer batch count (truncating it) where the count must be copied.
    """
    def average(ema: List[torch.Tensor], live: List[torch.Tensor], n_averaged: Any) -> None:
        if not ema[0].is_floating_point():
            for e, m in zip(ema, live):
                e.copy_(m)
            return
        n = int(n_averaged)  # updates before this one, counting the copy made at construction
        get_ema_multi_avg_fn(min(decay, (1.0 + n) / (10.0 + n)))(ema, live, n_averaged)

    return average


class ModelEMA:
    """An averaged copy of ``model`` (pass the unwrapped model, not DDP or compiled)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie strictly between 0 and 1, got {decay}")
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=ramped_ema(decay), use_buffers=True)
        self.averaged.update_parameters(model)  # the first update copies: the average starts at these weights
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model, to evaluate or save."""
        return self.averaged.module

    @property
    def updates(self) -> int:
        """Updates since construction."""
        return int(self.averaged.n_averaged) - 1

    def current_decay(self) -> float:
        """The decay the next update uses."""
        n = self.updates + 1
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (after each optimizer step)."""
        self.averaged.update_parameters(model)

    def state_dict(self) -> Dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.averaged.n_averaged.fill_(int(state["updates"]) + 1)
