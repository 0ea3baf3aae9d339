"""Learning-rate schedules stepped once per optimizer step, built from ``torch.optim.lr_scheduler``.

A linear warmup (``LinearLR``) from ``warmup_start_factor`` x the base rate to
the base rate over ``warmup`` steps, then, with ``t`` the steps since the
warmup ended and ``T = total - warmup``:

* ``poly``:   ``(base - min_lr) * (1 - t / T) ** power + min_lr`` (nnU-Net, mmseg ``PolyLR``): ``PolynomialLR``,
  or ``LambdaLR`` when ``min_lr > 0``, a floor ``PolynomialLR`` lacks,
* ``cosine``: ``min_lr + (base - min_lr) * (1 + cos(pi * t / T)) / 2`` (``CosineAnnealingLR``),
* ``step``:   ``base * gamma ** (epoch // step_epochs)`` (``StepLR``), epochs counted from the start of
  training, so the drops fall on epochs ``step_epochs``, ``2 * step_epochs``, ... warmup or not,
* ``none``:   constant (``ConstantLR`` with factor 1).

``SequentialLR`` hands over from the warmup to the decay at step ``warmup``;
``step`` multiplies the two instead (``ChainedScheduler``), which keeps its
drops on whole epochs. ``min_lr`` is the same absolute floor for every
parameter group. Stepped past ``total`` (train.py never does), ``poly``
stays at its floor while torch's cosine climbs back up.

The scheduler's ``state_dict`` holds plain types only; restored after the
optimizer's (whose ``lr`` it continues from) it resumes the same sequence. It
also holds the schedule's lengths, so a resume continues the schedule the run
started with even if ``train.epochs`` has changed since.
"""
from __future__ import annotations

from typing import Callable

from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from utils.errors import ConfigError

NAMES = ("poly", "cosine", "step", "none")


def build_scheduler(optimizer: Optimizer, name: str, total_iters: int, iters_per_epoch: int,
                    warmup_epochs: float = 0.0, warmup_start_factor: float = 0.1, power: float = 0.9,
                    min_lr: float = 0.0, step_epochs: int = 30, gamma: float = 0.1) -> sched.LRScheduler:
    """The schedule ``name`` over ``total_iters`` optimizer steps; call ``.step()`` after every step."""
    warmup = int(round(warmup_epochs * iters_per_epoch))
    check_settings(name, warmup, warmup_start_factor, step_epochs)
    span = max(total_iters - warmup, 1)
    if name == "step":
        decay: sched.LRScheduler = sched.StepLR(optimizer, max(iters_per_epoch, 1) * step_epochs, gamma)
    elif name == "cosine":
        decay = sched.CosineAnnealingLR(optimizer, T_max=span, eta_min=min_lr)
    elif name == "poly" and min_lr == 0.0:
        decay = sched.PolynomialLR(optimizer, total_iters=span, power=power)
    elif name == "poly":
        # LambdaLR: PolynomialLR has no floor (it decays to 0); this is mmseg's PolyLR with eta_min.
        decay = sched.LambdaLR(optimizer, [_poly_with_floor(g.get("initial_lr", g["lr"]), min_lr, power, span)
                                           for g in optimizer.param_groups])
    else:
        decay = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 0:
        return decay
    ramp = sched.LinearLR(optimizer, start_factor=warmup_start_factor, end_factor=1.0, total_iters=warmup)
    if name == "step":
        return sched.ChainedScheduler([ramp, decay], optimizer)
    return sched.SequentialLR(optimizer, [ramp, decay], milestones=[warmup])


def check_settings(name: str, warmup: int, warmup_start_factor: float, step_epochs: int) -> None:
    """ConfigError for the values the schedules cannot take, naming the key and the fix."""
    if name not in NAMES:
        raise ConfigError(f"scheduler.name: unknown scheduler {name!r}; valid: {', '.join(NAMES)}")
    if warmup > 0 and not 0.0 < warmup_start_factor <= 1.0:
        raise ConfigError(f"scheduler.warmup_start_factor: must lie in (0, 1], got {warmup_start_factor}; "
                          "to warm up from almost zero use a small value such as 0.001")
    if name == "step" and step_epochs < 1:
        raise ConfigError(f"scheduler.step_epochs: must be at least 1 with scheduler.name step, got {step_epochs}")


def _poly_with_floor(base_lr: float, min_lr: float, power: float, span: int) -> Callable[[int], float]:
    """The factor of ``base_lr`` giving ``(base_lr - min_lr) * (1 - t / span) ** power + min_lr``."""
    floor = min_lr / base_lr if base_lr > 0 else 0.0

    def factor(t: int) -> float:
        return floor + (1.0 - floor) * (1.0 - min(t, span) / span) ** power

    return factor

