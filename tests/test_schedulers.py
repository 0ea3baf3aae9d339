"""Learning-rate schedules (built on torch.optim.lr_scheduler) against hand-computed rates."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Tuple

import pytest
import torch

from utils.errors import ConfigError
from utils.schedulers import build_scheduler


def _optimizer(lrs: Tuple[float, ...] = (1.0,)) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


def _rates(opt: torch.optim.Optimizer, scheduler, steps: int, group: int = 0) -> List[float]:
    """The rate each of ``steps`` optimizer steps uses, stepping the scheduler after each."""
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[group]["lr"])
        opt.step()
        scheduler.step()
    return out


def rates(name: str, total: int, per_epoch: int = 1, base: float = 1.0, extra: int = 0, **kw) -> List[float]:
    """The rates of steps 0 .. total + extra - 1 of a fresh run."""
    opt = _optimizer((base,))
    return _rates(opt, build_scheduler(opt, name, total, per_epoch, **kw), total + extra)


def test_warmup_is_linear_from_start_factor() -> None:
    lr = rates("poly", 100, per_epoch=10, warmup_epochs=1.0, warmup_start_factor=0.1)
    assert lr[0] == pytest.approx(0.1)
    assert lr[5] == pytest.approx(0.55)
    assert lr[9] == pytest.approx(0.1 + 0.9 * 9 / 10)
    assert lr[10] == pytest.approx(1.0)


def test_poly_decay() -> None:
    # After warmup 10 of 110 iterations, t = (it - 10) / 100.
    lr = rates("poly", 110, per_epoch=10, warmup_epochs=1.0, power=0.9, extra=3)
    assert lr[11] == pytest.approx((1 - 1 / 100) ** 0.9)
    assert lr[60] == pytest.approx(0.5 ** 0.9)
    assert lr[109] == pytest.approx((1 / 100) ** 0.9)
    assert lr[110] == lr[112] == pytest.approx(0.0)   # stays at the end value past the last step
    # min_lr is a floor: lr = min_lr + (base - min_lr) * (1 - t) ** power (mmseg's PolyLR with eta_min).
    lr = rates("poly", 100, base=0.1, power=1.0, min_lr=0.01, extra=2)
    assert lr[50] == pytest.approx(0.1 * (0.1 + 0.9 * 0.5))
    assert lr[0] == pytest.approx(0.1) and lr[100] == lr[101] == pytest.approx(0.01)


def test_cosine_and_step_and_none() -> None:
    lr = rates("cosine", 100)
    assert lr[50] == pytest.approx(0.5)
    assert lr[25] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    # step: gamma ** (epoch // step_epochs) with 10 iterations per epoch.
    lr = rates("step", 1000, per_epoch=10, step_epochs=3, gamma=0.1)
    assert lr[29] == pytest.approx(1.0)
    assert lr[30] == pytest.approx(0.1)
    assert lr[65] == pytest.approx(0.01)
    assert set(rates("none", 1000)) == {1.0}
    with pytest.raises(ConfigError, match=r"scheduler\.name: unknown scheduler 'linear'.*poly, cosine, step, none"):
        build_scheduler(_optimizer(), "linear", 10, 1)


@pytest.mark.parametrize("kw,key", [({"warmup_start_factor": 0.0}, "warmup_start_factor"),
                                    ({"warmup_start_factor": 1.5}, "warmup_start_factor"),
                                    ({"name": "step", "step_epochs": 0}, "step_epochs")])
def test_settings_the_schedules_cannot_take_name_the_key(kw: dict, key: str) -> None:
    args = {"name": "poly", "warmup_epochs": 1.0, **kw}
    with pytest.raises(ConfigError, match=rf"scheduler\.{key}: must"):
        build_scheduler(_optimizer(), args.pop("name"), 10, 2, **args)
    # Without a warmup its start factor is unused.
    build_scheduler(_optimizer(), "poly", 10, 2, warmup_start_factor=0.0)


def test_cosine_warmup_boundary_and_floor() -> None:
    # Warmup of 4 steps from 0.1, then half a cosine over T = 12 - 4 = 8 steps down to min_lr 0.2.
    lr = rates("cosine", 12, per_epoch=2, warmup_epochs=2.0, min_lr=0.2)
    assert lr[3] == pytest.approx(0.1 + 0.9 * 3 / 4)
    assert lr[4] == pytest.approx(1.0)
    assert lr[5] == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi / 8)) / 2)
    assert lr[8] == pytest.approx(0.6)
    assert lr[11] == pytest.approx(0.2 + 0.8 * (1 + math.cos(7 * math.pi / 8)) / 2)


def test_step_drops_on_whole_epochs_after_a_warmup() -> None:
    # Warmup 5 steps (1 epoch of 5), drops every 2 epochs = 10 steps counted from step 0, not from the warmup.
    lr = rates("step", 40, per_epoch=5, warmup_epochs=1.0, warmup_start_factor=0.5, step_epochs=2, gamma=0.5)
    assert lr[0] == pytest.approx(0.5) and lr[4] == pytest.approx(0.9)
    assert lr[5] == pytest.approx(1.0) and lr[9] == pytest.approx(1.0)
    assert lr[10] == pytest.approx(0.5) and lr[19] == pytest.approx(0.5)
    assert lr[20] == pytest.approx(0.25) and lr[39] == pytest.approx(0.125)


def test_warmup_longer_than_the_run_stays_a_ramp() -> None:
    lr = rates("poly", 4, per_epoch=10, warmup_epochs=1.0, warmup_start_factor=0.2)
    assert lr == pytest.approx([0.2, 0.28, 0.36, 0.44])


def test_min_lr_is_the_same_floor_for_every_group() -> None:
    for name in ("poly", "cosine"):
        opt = _optimizer((1.0, 0.1))
        scheduler = build_scheduler(opt, name, 10, 1, min_lr=0.01, power=1.0)
        _rates(opt, scheduler, 5)
        half = [g["lr"] for g in opt.param_groups]
        assert half == pytest.approx([0.01 + 0.99 * 0.5, 0.01 + 0.09 * 0.5])
        _rates(opt, scheduler, 5)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.01])


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
    assert lrs[4] == pytest.approx(0.1 + 0.1 * 4 / 5)
    assert lrs[5] == pytest.approx(0.2)           # warmup done
    assert lrs[6] == pytest.approx(0.2 * (1 - 1 / 15))
    assert lrs[10] == pytest.approx(0.2 * (1 - 5 / 15))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)
    state = sched.state_dict()
    assert state["last_epoch"] == 20


SCHEDULES = [
    ("poly", {"power": 0.9}), ("poly", {"power": 0.9, "min_lr": 0.05}), ("cosine", {"min_lr": 0.05}),
    ("step", {"step_epochs": 1, "gamma": 0.5}), ("none", {}),
]


@pytest.mark.parametrize("name,kw", SCHEDULES, ids=[f"{n}-{'-'.join(k)}" for n, k in SCHEDULES])
@pytest.mark.parametrize("cut", [2, 4, 9])
def test_resume_through_a_checkpoint_continues_the_same_rates(tmp_path: Path, name: str, kw: dict, cut: int) -> None:
    """Cut inside the warmup, at its end and during the decay: save, load into new objects, continue."""
    args = dict(warmup_epochs=1.0, warmup_start_factor=0.25, **kw)

    def fresh() -> Tuple[torch.optim.Optimizer, object]:
        opt = _optimizer((0.4, 0.4))
        return opt, build_scheduler(opt, name, 16, 4, **args)

    opt, scheduler = fresh()
    whole = _rates(opt, scheduler, 16)
    opt, scheduler = fresh()
    first = _rates(opt, scheduler, cut)
    torch.save({"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    opt, scheduler = fresh()
    opt.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert first + _rates(opt, scheduler, 16 - cut) == whole
