"""Learning-rate schedules stepped once per iteration, with linear warmup.

``lr_factor`` returns the multiplier of the base learning rate at iteration
``it`` (0-based) of ``total`` iterations: a linear ramp from
``warmup_start_factor`` to 1 over ``warmup`` iterations, then

* ``poly``:   ``(1 - t) ** power`` decaying to ``min_lr`` (nnU-Net, mmseg default),
* ``cosine``: half a cosine from 1 to ``min_lr``,
* ``step``:   ``gamma ** (epoch // step_epochs)``,
* ``none``:   constant,

where ``t`` is the fraction of the post-warmup iterations done.
"""
from __future__ import annotations

import math

import torch


def lr_factor(it: int, total: int, name: str, base_lr: float, warmup: int = 0,
              warmup_start_factor: float = 0.1, power: float = 0.9, min_lr: float = 0.0,
              iters_per_epoch: int = 1, step_epochs: int = 30, gamma: float = 0.1) -> float:
    """Multiplier of ``base_lr`` at iteration ``it``."""
    if warmup > 0 and it < warmup:
        return warmup_start_factor + (1.0 - warmup_start_factor) * it / warmup
    if name == "none":
        return 1.0
    if name == "step":
        return gamma ** ((it // max(iters_per_epoch, 1)) // step_epochs)
    span = max(total - warmup, 1)
    t = min(max(it - warmup, 0) / span, 1.0)
    floor = min_lr / base_lr if base_lr > 0 else 0.0
    if name == "poly":
        decay = (1.0 - t) ** power
    elif name == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        raise ValueError(f"unknown scheduler {name!r}; valid: poly, cosine, step, none")
    return floor + (1.0 - floor) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_iters: int, iters_per_epoch: int,
                    warmup_epochs: float = 0.0, warmup_start_factor: float = 0.1, power: float = 0.9,
                    min_lr: float = 0.0, step_epochs: int = 30, gamma: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor`; call ``.step()`` after every iteration."""
    base_lr = optimizer.param_groups[0]["lr"]
    warmup = int(round(warmup_epochs * iters_per_epoch))

    def factor(it: int) -> float:
        return lr_factor(it, total_iters, name, base_lr, warmup, warmup_start_factor, power, min_lr,
                         iters_per_epoch, step_epochs, gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
