"""Learning-rate schedules against hand-computed factors."""
from __future__ import annotations

import math

import pytest
import torch

from utils.schedulers import build_scheduler, lr_factor


def test_warmup_is_linear_from_start_factor() -> None:
    assert lr_factor(0, 100, "poly", 1.0, warmup=10, warmup_start_factor=0.1) == pytest.approx(0.1)
    assert lr_factor(5, 100, "poly", 1.0, warmup=10, warmup_start_factor=0.1) == pytest.approx(0.55)
    assert lr_factor(10, 100, "poly", 1.0, warmup=10) == pytest.approx(1.0)


def test_poly_decay() -> None:
    # After warmup 10 of 110 iterations, t = (it - 10) / 100.
    assert lr_factor(60, 110, "poly", 1.0, warmup=10, power=0.9) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(110, 110, "poly", 1.0, warmup=10, power=0.9) == pytest.approx(0.0)
    # min_lr is a floor: factor = floor + (1 - floor) * decay with floor = min_lr / base_lr.
    assert lr_factor(50, 100, "poly", 0.1, power=1.0, min_lr=0.01) == pytest.approx(0.1 + 0.9 * 0.5)


def test_cosine_and_step_and_none() -> None:
    assert lr_factor(50, 100, "cosine", 1.0) == pytest.approx(0.5)
    assert lr_factor(25, 100, "cosine", 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    # step: gamma ** (epoch // step_epochs) with 10 iterations per epoch.
    assert lr_factor(29, 1000, "step", 1.0, iters_per_epoch=10, step_epochs=3, gamma=0.1) == pytest.approx(1.0)
    assert lr_factor(30, 1000, "step", 1.0, iters_per_epoch=10, step_epochs=3, gamma=0.1) == pytest.approx(0.1)
    assert lr_factor(65, 1000, "step", 1.0, iters_per_epoch=10, step_epochs=3, gamma=0.1) == pytest.approx(0.01)
    assert lr_factor(999, 1000, "none", 1.0) == 1.0
    with pytest.raises(ValueError, match="unknown scheduler 'linear'"):
        lr_factor(1, 10, "linear", 1.0)


def test_build_scheduler_drives_the_optimizer() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.2)
    sched = build_scheduler(opt, "poly", total_iters=20, iters_per_epoch=5, warmup_epochs=1.0,
                            warmup_start_factor=0.5, power=1.0)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1)           # warmup start: 0.5 * 0.2
    assert lrs[5] == pytest.approx(0.2)           # warmup done
    assert lrs[10] == pytest.approx(0.2 * (1 - 5 / 15))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)
    state = sched.state_dict()
    assert state["last_epoch"] == 20
